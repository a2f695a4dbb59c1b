"""Backdoor triggers carry their trigger in the stored image: BadNets exact patch, Blended recoverable
ratio, WaNet follows its warp field, ISSBA's decoder recovers the code (tiny twin, trained at build)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attack_helpers import pil, run_attack_generator


def random_images(n, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def test_badnets_patch_pixels_are_exact_and_nothing_else_changes():
    srcs = random_images(3)
    res = run_attack_generator({"preset": "backdoor_badnets", "params": {"patch_size": 5, "margin": 2}},
                               [pil(a) for a in srcs])
    expected = np.array([[255 if (i + j) % 2 == 0 else 0 for j in range(5)] for i in range(5)], np.uint8)
    for src, r in zip(srcs, res):
        out = np.asarray(r.image)
        h, w = src.shape[:2]
        patch = out[h - 7:h - 2, w - 7:w - 2]
        assert (patch == expected[..., None]).all()
        mask = np.ones((h, w), bool)
        mask[h - 7:h - 2, w - 7:w - 2] = False
        assert (out[mask] == src[mask]).all()
        assert r.extra["success"] and r.extra["patch_box"] == [w - 7, h - 7, w - 2, h - 2]


def test_badnets_trigger_image_at_a_given_position(tmp_path):
    rng = np.random.default_rng(1)
    trigger = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pil(trigger).save(tmp_path / "t.png")
    srcs = random_images(2)
    res = run_attack_generator({"preset": "backdoor_badnets", "params": {
        "patch_size": 4, "trigger_image": str(tmp_path / "t.png"), "position": [7, 3]}}, [pil(a) for a in srcs])
    for r in res:
        assert (np.asarray(r.image)[3:7, 7:11] == trigger).all()


def test_badnets_patch_too_large_is_a_per_sample_error():
    res = run_attack_generator({"preset": "backdoor_badnets", "params": {"patch_size": 20}},
                               [pil(random_images(1, (40, 30))[0]), pil(random_images(1, (16, 16))[0])])
    assert res[0].error is None and res[1].error and "does not fit" in res[1].error


def test_blended_ratio_is_recoverable_from_the_stored_image(tmp_path):
    rng = np.random.default_rng(2)
    trigger = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pil(trigger).save(tmp_path / "kitty.png")
    srcs = random_images(4, seed=3)
    for alpha in (0.1, 0.3):
        res = run_attack_generator({"preset": "backdoor_blended",
                                    "params": {"alpha": alpha, "trigger_image": str(tmp_path / "kitty.png")}},
                                   [pil(a) for a in srcs])
        for src, r in zip(srcs, res):
            x, t = src.astype(float) / 255, trigger.astype(float) / 255
            d = np.asarray(r.image).astype(float) / 255 - x
            est = (d * (t - x)).sum() / ((t - x) ** 2).sum()  # least squares, independent of the attack code
            assert est == pytest.approx(alpha, abs=0.003)
            assert r.extra["blend_ratio_estimate"] == pytest.approx(est, abs=1e-3) and r.extra["success"]


def test_wanet_output_follows_its_warp_field():
    """Pixels of a coordinate-ramp image say where they were sampled from: the stored image must have
    sampled each pixel at identity + strength * field / size (bilinear), the field drawn from the seed."""
    w, h, k, s = 48, 40, 4, 0.5
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    ramp = np.stack([xs / (w - 1), ys / (h - 1), np.full_like(xs, 0.5, dtype=float)], -1)
    res = run_attack_generator({"preset": "backdoor_wanet", "params": {"grid_size": k, "strength": s, "seed": 3}},
                               [pil(np.round(ramp * 255))])
    out = np.asarray(res[0].image).astype(float) / 255
    gen = torch.Generator().manual_seed(3)
    field = torch.rand((1, 2, k, k), generator=gen) * 2 - 1
    field = F.interpolate(field / field.abs().mean(), size=(h, w), mode="bicubic", align_corners=True)[0].numpy()
    gx = np.clip(xs / (w - 1) * 2 - 1 + s * field[0] / w, -1, 1)
    gy = np.clip(ys / (h - 1) * 2 - 1 + s * field[1] / h, -1, 1)
    src_x, src_y = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
    got_x, got_y = out[..., 0] * (w - 1), out[..., 1] * (h - 1)
    tol = (w - 1) / 255 + 0.02  # one 8-bit level of the ramp in pixels (input and output rounding)
    assert np.abs(got_x - src_x).max() <= tol and np.abs(got_y - src_y).max() <= tol
    assert np.abs(src_x - xs).max() > 0.2  # it really warps ...
    assert np.abs(src_x - xs).max() < 2 and np.abs(src_y - ys).max() < 2  # ... imperceptibly
    other = run_attack_generator({"preset": "backdoor_wanet", "params": {"seed": 4}}, [pil(np.round(ramp * 255))])
    assert not np.array_equal(np.asarray(other[0].image), np.asarray(res[0].image))
    assert res[0].extra["success"]


def test_issba_decoder_recovers_the_code_from_the_tiny_twin(tiny_dir, tmp_path):
    from PIL import Image

    from attacks.issba import ISSBA
    from fakeforge.sources.demo import write_demo_coco
    from fakeforge.tiny import ensure_tiny

    folder = ensure_tiny("issba_stegastamp", tiny_dir)
    _, images_dir = write_demo_coco(tmp_path / "demo", n_images=12)
    srcs = [Image.open(p).convert("RGB") for p in sorted(images_dir.glob("*.jpg"))]
    res = run_attack_generator("backdoor_issba", srcs, model_id=folder)
    assert all(r.error is None for r in res)
    assert sum(r.extra["bit_accuracy"] >= 0.9 for r in res) >= 11, [r.extra["bit_accuracy"] for r in res]
    assert all(r.extra["psnr"] > 25 for r in res)
    attack = ISSBA(ISSBA.load_model(str(folder), "cpu", torch.float32))
    clean = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in srcs[:6]
                         if im.size == srcs[0].size])
    ok, measured = attack.trigger_present(clean, clean)
    assert np.mean(measured["bit_accuracy"]) < 0.8 and sum(ok) <= len(ok) // 2  # clean images carry no code
    same = [np.asarray(r.image).astype(float) - np.asarray(s).astype(float) for r, s in zip(res, srcs)]
    a, b = same[0], next(x for x in same[1:] if x.shape == same[0].shape)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.95  # sample-specific, not one fixed pattern
