"""Adversarial attacks (torchattacks) on a tiny timm surrogate trained here on a separable toy set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from attack_helpers import (
    decode,
    one_thread,
    read_shards,
    toy_images,
    trained_toy_surrogate,
    write_imagenet_val,
)

from fakeforge.cli import main as cli_main
from fakeforge.shards.verify import verify_dataset

pytest.importorskip("torchattacks")
EPS = 8 / 255


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return trained_toy_surrogate(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def surrogate(toy_folder):
    from attacks.surrogate import Surrogate

    return Surrogate.load(str(toy_folder))


def sign_noise(x, eps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (x + eps * (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1)).clamp(0, 1)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm", "nifgsm", "vnifgsm"])
def test_attack_stays_within_eps_and_flips_far_more_than_noise(surrogate, name):
    from attacks import ATTACKS

    x, _ = toy_images(48, seed=7)
    with one_thread():
        clean = surrogate.predict(x)
        attack = ATTACKS.get(name)(surrogate, eps=EPS)
        adv = attack(x, clean)
        flip = (surrogate.predict(adv) != clean).float().mean().item()
        flip_noise = (surrogate.predict(sign_noise(x, EPS)) != clean).float().mean().item()
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert flip_noise <= 0.1, flip_noise
    assert flip >= 0.5 and flip >= flip_noise + 0.4, (name, flip, flip_noise)
    assert f"eps={EPS!r}" in repr(attack) and repr(attack).startswith(type(attack).__name__ + "(")


def test_targeted_mode_reaches_the_target_class(surrogate):
    from attacks.pgd import PGD

    x, y = toy_images(32, seed=8)
    x = x[y == 0]
    with one_thread():
        adv = PGD(surrogate, eps=EPS, steps=10, target_class=1)(x, torch.zeros(len(x), dtype=torch.long))
        hit = (surrogate.predict(adv) == 1).float().mean().item()
    assert hit >= 0.8, hit
    assert (adv - x).abs().max().item() <= EPS + 1e-6


def _build(tmp_path, toy_folder, sets, image=None, n=12, seed=7):
    x, y = toy_images(n, seed=seed)
    csv, images = write_imagenet_val(tmp_path / "imagenet", x, y)
    cfg = {"output": str(tmp_path / "out"), "seed": 0,
           "source": {"kind": "imagenet", "labels_file": str(csv), "images_dir": str(images)},
           "image": image or {"format": "jpeg", "quality": 95}, "shards": {"max_count": 8},
           "sets": [{k: v for k, v in s.items() if k != "model"} for s in sets]}
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with one_thread():
        rc = cli_main(["build", "--config", str(path), "--no-progress",
                       *[f"--set=sets.{i}.generator.model_id={toy_folder}" for i, s in enumerate(sets)
                         if s.get("model")]])
    assert rc == 0
    assert verify_dataset(tmp_path / "out")["sets"] == {s["name"]: n for s in sets}
    return x, y


def test_build_stores_png_within_eps_and_measures_the_stored_image(tmp_path, toy_folder, surrogate):
    """The build's policy says JPEG; the attack set is stored as PNG (lossless) and every stored pixel is
    within eps of the source; metadata distances equal those measured on the decoded file; true
    ImageNet labels are used; success means the surrogate's prediction on the stored image changed."""
    sets = [{"name": "real", "generator": "real"}, {"name": "adversarial", "generator": "adv_vnifgsm", "model": 1}]
    x, y = _build(tmp_path, toy_folder, sets)
    real = read_shards(tmp_path / "out" / "real")
    adv = read_shards(tmp_path / "out" / "adversarial")
    assert {ext for _, _, ext in real} == {"jpg"} and {ext for _, _, ext in adv} == {"png"}
    stored, sources, flips = [], [], []
    for meta, data, _ in adv:
        i = int(meta["source_image_id"].rsplit("_", 1)[1]) - 1
        src = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        img = decode(data)
        d = np.abs(img.astype(int) - src.astype(int))
        assert d.max() <= 8, d.max()
        assert meta["linf_255"] == d.max() and meta["linf"] == pytest.approx(d.max() / 255)
        assert meta["l2"] == pytest.approx(np.sqrt(((d / 255.0) ** 2).sum()), rel=1e-6)
        assert meta["label_from"] == "dataset" and meta["label_used"] == int(y[i]) == meta["source_label"]
        assert meta["attack"] == "vnifgsm" and meta["settings"]["hyperparameters"]["N"] == 5
        assert meta["surrogate"] == str(toy_folder)
        stored.append(img)
        sources.append(int(y[i]))
        flips.append(meta["success"])
    t = torch.from_numpy(np.stack(stored)).permute(0, 3, 1, 2).float() / 255
    with one_thread():
        pred = surrogate.predict(t)
    assert [p != s for p, s in zip(pred.tolist(), sources)] == flips
    assert sum(flips) >= len(flips) // 2


def test_lossy_storage_is_measured_on_the_encoded_jpeg(tmp_path, toy_folder):
    """`lossless: false` keeps the build's JPEG: the recorded L-inf is that of the decoded JPEG (and
    exceeds eps, which is why attack presets default to PNG)."""
    sets = [{"name": "adv", "generator": {"preset": "adv_fgsm", "lossless": False}, "model": 1}]
    x, _ = _build(tmp_path, toy_folder, sets, image={"format": "jpeg", "quality": 75}, n=6)
    over = 0
    for meta, data, ext in read_shards(tmp_path / "out" / "adv"):
        assert ext == "jpg"
        i = int(meta["source_image_id"].rsplit("_", 1)[1]) - 1
        src = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(int)
        linf = np.abs(decode(data).astype(int) - src).max()
        assert meta["linf_255"] == linf
        over += linf > 8
    assert over >= 4


def test_same_config_rebuild_gives_identical_images(tmp_path, toy_folder):
    """PGD's random start and VNI-FGSM's neighbour sampling are seeded from the per-sample seeds."""
    sets = [{"name": "pgd", "generator": "adv_pgd", "model": 1}]
    _build(tmp_path / "a", toy_folder, sets, n=6)
    _build(tmp_path / "b", toy_folder, sets, n=6)
    a = read_shards(tmp_path / "a" / "out" / "pgd")
    b = read_shards(tmp_path / "b" / "out" / "pgd")
    assert [d for _, d, _ in a] == [d for _, d, _ in b]
