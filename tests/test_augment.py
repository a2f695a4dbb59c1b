"""Training augmentation (`data.augment`): the draws follow the published recipe's distribution, are fixed by
the seed and the sample key, reach the training stream before the transform, and are recorded in config.yaml."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fakeforge.augment import parse_augment
from fakeforge.config import ConfigError
from fakeforge.degrade import Blur, Jpeg

CNNSPOT = [{"op": "blur", "p": 0.5, "sigma": [0.0, 3.0]},
           {"op": "jpeg", "p": 0.5, "quality": [30, 100], "library": ["cv2", "pil"]}]


def draws(aug, n: int, seed: int = 0):
    return [aug.sample(f"key_{i:05d}", seed) for i in range(n)]


def test_cnnspot_recipe_matches_its_distribution():
    chains = draws(parse_augment(CNNSPOT), 4000)
    blurs = [op for c in chains for op in c.ops if isinstance(op, Blur)]
    jpegs = [op for c in chains for op in c.ops if isinstance(op, Jpeg)]
    n = len(chains)
    assert abs(len(blurs) / n - 0.5) < 0.03 and abs(len(jpegs) / n - 0.5) < 0.03  # 4 sigma at n = 4000
    both = sum(1 for c in chains if len(c.ops) == 2) / n
    assert abs(both - 0.25) < 0.03  # the two steps are independent
    sigmas = np.array([op.sigma for op in blurs])
    assert sigmas.min() >= 0.0 and sigmas.max() < 3.0
    assert np.allclose(np.histogram(sigmas, bins=3, range=(0, 3))[0] / sigmas.size, 1 / 3, atol=0.05)
    assert abs(sigmas.mean() - 1.5) < 0.1
    qualities = np.array([op.quality for op in jpegs])
    assert all(isinstance(op.quality, int) for op in jpegs)
    assert qualities.min() == 30 and qualities.max() == 100  # inclusive ends
    assert abs(qualities.mean() - 65) < 2.0
    libraries = [op.library for op in jpegs]
    assert abs(libraries.count("cv2") / len(libraries) - 0.5) < 0.05
    order = [type(op).__name__ for c in chains if len(c.ops) == 2 for op in c.ops]
    assert order[::2] == ["Blur"] * (len(order) // 2)  # listed order: blur, then jpeg


def test_draws_are_fixed_by_seed_key_and_visit():
    aug = parse_augment(CNNSPOT)
    specs = [c.spec() for c in draws(aug, 200, seed=3)]
    assert specs == [c.spec() for c in draws(parse_augment(CNNSPOT), 200, seed=3)]
    assert specs != [c.spec() for c in draws(aug, 200, seed=4)]
    assert [c.spec() for c in draws(aug, 200, seed=3)[::-1]] == specs[::-1]  # order-free
    assert [aug.sample(f"key_{i:05d}", 3, visit=1).spec() for i in range(200)] != specs
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    always = parse_augment([{"op": "noise", "p": 1.0, "std": [2.0, 9.0]}])
    assert np.array_equal(np.asarray(always(img, "a", 1)), np.asarray(always(img, "a", 1)))
    assert not np.array_equal(np.asarray(always(img, "a", 1)), np.asarray(always(img, "a", 2)))


def test_p_zero_and_one_and_fixed_values():
    assert all(not c for c in draws(parse_augment([{"op": "blur", "p": 0.0, "sigma": [0.0, 3.0]}]), 100))
    fixed = draws(parse_augment([{"op": "jpeg", "p": 1.0, "quality": 50}]), 50)
    assert {c.spec() for c in fixed} == {"jpeg:50"}


@pytest.mark.parametrize("bad, named", [
    ([{"op": "blur", "p": 1.5}], "data.augment.0.p = 1.5"),
    ([{"op": "jpeg", "quality": [0, 100]}], "quality = 0"),
    ([{"op": "jpeg", "quality": [30.5, 100]}], "data.augment.0.quality"),
    ([{"op": "blur", "sigma": [3.0, 1.0]}], "[3.0, 1.0]"),
    ([{"op": "blur", "sigma": [-1.0, 1.0]}], "sigma = -1"),
    ([{"op": "jpeg", "library": ["pil", "turbo"]}], "'turbo'"),
    ([{"op": "sharpen", "p": 0.5}], "'sharpen'"),
    ([{"p": 0.5}], "data.augment.0"),
])
def test_bad_steps_name_the_key_and_value(bad, named):
    with pytest.raises(ConfigError) as info:
        parse_augment(bad)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_training_config_takes_records_and_checks_augment(tmp_path):
    from detector.train.config import load_train_config
    from fakeforge.config import to_dict

    cfg = load_train_config("deepfake_adapter", ["data.train=[x]", "data.augment=[{op: blur, p: 0.5, "
                                                 "sigma: [0.0, 3.0]}, {op: jpeg, p: 0.5, quality: [30, 100]}]"],
                            tiny=True)
    assert to_dict(cfg)["data"]["augment"] == CNNSPOT[:1] + [{"op": "jpeg", "p": 0.5, "quality": [30, 100]}]
    with pytest.raises(ConfigError, match="data.augment.0.p"):
        load_train_config("deepfake_adapter", ["data.train=[x]", "data.augment=[{op: blur, p: 2}]"], tiny=True)
    with pytest.raises(ConfigError, match="data.augment: 'linear_probe'"):
        load_train_config("linear_probe", ["data.train=[x]", "data.augment=[{op: blur, p: 0.5}]"], tiny=True)


def test_shard_stream_augments_before_the_transform_deterministically(tmp_path):
    from detector_helpers import write_set

    from detector.data import ShardStream

    tars = write_set(tmp_path / "coco", "real", 12)
    seen: list[tuple[int, int]] = []

    def transform(img):
        seen.append(img.size)
        return torch.from_numpy(np.asarray(img, dtype=np.float32).copy())

    aug = parse_augment([{"op": "crop", "p": 1.0, "size": 20}, {"op": "noise", "p": 0.5, "std": [1.0, 20.0]}])

    def run(augment, seed=5):
        ds = ShardStream({"coco": tars}, transform, split="val", seed=seed, augment=augment)
        return {key: t for t, _label, key in ds}

    plain, a, b = run(None), run(aug), run(aug)
    assert set(seen) == {(44, 36), (20, 20)}  # the transform saw the augmented image
    assert a.keys() == plain.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], run(aug, seed=6)[k]) for k in a)
