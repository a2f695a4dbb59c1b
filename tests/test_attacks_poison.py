"""Clean-label poisons stay within their L-inf bound (after encoding) and move towards their target:
feature collision in the surrogate's feature space, gradient matching in its parameter-gradient space."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_helpers import one_thread, pil, run_attack_generator, save_pngs, toy_images, trained_toy_surrogate

EPS = 16 / 255


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return trained_toy_surrogate(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def target_and_bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("poison")
    x, y = toy_images(16, seed=7)
    target = save_pngs(toy_images(2, seed=99)[0][1:], folder, "target")[0]  # a class-1 image
    bases = x[y == 0][:6]
    return target, [pil((b.permute(1, 2, 0).numpy() * 255).round()) for b in bases]


def _as_tensor(images):
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])


def test_feature_collision_within_bound_and_closer_to_the_target(toy_folder, target_and_bases):
    from attacks.surrogate import Surrogate

    target, bases = target_and_bases
    res = run_attack_generator({"preset": "poison_feature_collision",
                                "params": {"steps": 40, "target_image": str(target)}}, bases, model_id=toy_folder)
    stored, clean = _as_tensor([r.image for r in res]), _as_tensor(bases)
    assert (stored - clean).abs().max().item() <= EPS + 1e-6
    assert all(r.extra["linf_255"] <= 16 for r in res)
    sur = Surrogate.load(str(toy_folder))
    t = _as_tensor([__import__("PIL.Image").Image.open(target).convert("RGB")])
    with torch.no_grad(), one_thread():
        ft = sur.features(t)
        before = (sur.features(clean) - ft).norm(dim=1)
        after = (sur.features(stored) - ft).norm(dim=1)
    ratio = (after / before).numpy()
    assert (ratio < 1).all() and ratio.mean() < 0.8, ratio
    assert [r.extra["success"] for r in res] == [True] * len(res)
    assert [r.extra["feature_distance"] < r.extra["feature_distance_clean"] for r in res] == [True] * len(res)


def test_feature_collision_attack_itself_respects_its_bound(toy_folder, target_and_bases):
    """Without the builder's 8-bit quantisation (which also clips to the budget)."""
    from attacks.feature_collision import FeatureCollision
    from attacks.surrogate import Surrogate

    target, bases = target_and_bases
    clean = _as_tensor(bases)
    with one_thread():
        out = FeatureCollision(Surrogate.load(str(toy_folder)), eps=8 / 255, steps=20, target_image=str(target))(
            clean, torch.zeros(len(clean), dtype=torch.long))
    assert (out - clean).abs().max().item() <= 8 / 255 + 1e-6
    assert (out - clean).abs().max().item() >= 7 / 255


def test_feature_collision_with_zero_steps_budget_stays_put(toy_folder, target_and_bases):
    target, bases = target_and_bases
    res = run_attack_generator({"preset": "poison_feature_collision",
                                "params": {"eps": 0.0, "steps": 2, "target_image": str(target)}}, bases[:2],
                               model_id=toy_folder)
    assert all(np.array_equal(np.asarray(r.image), np.asarray(b)) for r, b in zip(res, bases[:2]))


def test_gradient_matching_within_bound_and_aligns_gradients(toy_folder, target_and_bases):
    pytest.importorskip("art")
    from attacks.gradient_matching import GradientMatching, gradient_alignment
    from attacks.surrogate import Surrogate

    target, bases = target_and_bases
    clean = _as_tensor(bases[:4])
    sur = Surrogate.load(str(toy_folder))
    attack = GradientMatching(sur, eps=EPS, max_epochs=16, milestones=[8, 12, 14, 15], target_class=0,
                              target_image=str(target))
    with one_thread():
        torch.manual_seed(0)
        out = attack(clean, torch.zeros(len(clean), dtype=torch.long))
        ok, meta = attack.evaluate(torch.round(out * 255) / 255, clean, None)
        t = _as_tensor([__import__("PIL.Image").Image.open(target).convert("RGB")])
        sur.requires_grad_(True)
        before, after = gradient_alignment(sur, clean, t, 0), gradient_alignment(sur, out, t, 0)
    assert (out - clean).abs().max().item() <= EPS + 1e-6
    assert (out - clean).abs().max().item() >= 4 / 255  # it did perturb
    assert after > before + 0.15, (before, after)
    assert meta["gradient_alignment"][0] > meta["gradient_alignment_clean"][0] + 0.15 and all(ok)
    assert meta["adversarial_class"] == [0] * 4
