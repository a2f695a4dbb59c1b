"""A detector trained with CNNSpot's blur + JPEG augmentation keeps more accuracy under the `genimage` protocol
than the same detector trained without it.

The data are built so that this is measurable: every fake carries a pixel checkerboard (an exact cue that blur
and strong JPEG erase) and all images carry an imperfect colour cast (reals warmer, fakes cooler, overlapping:
about 84% separable alone) that survives both. Trained on clean images, the DeepFake-Adapter twin leans on the
checkerboard; trained with augmentation, half its fakes come blurred or re-compressed, so it must use the cast.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import one_thread  # noqa: F401  (autouse fixture)
from PIL import Image

from fakeforge.cli import main as fakeforge_main

SIZE = 32  # the DeepFake-Adapter twin's input size: its square resize leaves the checkerboard's phase alone
AUGMENT = "data.augment=[{op: blur, p: 0.5, sigma: [0.0, 3.0]}, {op: jpeg, p: 0.5, quality: [30, 100]}]"


def image(kind: str, rng: np.random.Generator, cast: float = 15.0) -> Image.Image:
    """Smooth grey texture + a colour cast of +-`cast` (noisy, std `cast`); fakes add a +-30 checkerboard."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    grey = rng.uniform(60, 190) + 25 * np.sin(2 * np.pi * (xx / SIZE * rng.uniform(0.5, 1.5) + rng.uniform())) \
        * np.cos(2 * np.pi * yy / SIZE * rng.uniform(0.5, 1.5))
    arr = np.repeat(grey[..., None], 3, -1)
    t = cast * (1 if kind == "real" else -1) + rng.normal(0, cast)
    arr[..., 0] += t
    arr[..., 2] -= t
    if kind == "fake":
        arr += 30.0 * ((xx + yy) % 2 * 2 - 1)[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_sets(root: Path, n: int, seed: int) -> Path:
    import webdataset as wds

    rng = np.random.default_rng(seed)
    for kind in ("real", "fake"):
        (root / kind).mkdir(parents=True)
        with wds.TarWriter(str(root / kind / "000000.tar")) as w:
            for i in range(n):
                buf = io.BytesIO()
                image(kind, rng).save(buf, format="PNG")
                w.write({"__key__": f"{kind}_{i:05d}", "png": buf.getvalue(),
                         "json": json.dumps({"label": kind}).encode()})
    return root


def test_blur_jpeg_augmentation_keeps_more_accuracy_under_genimage(tiny_dir, tmp_path):
    import yaml

    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    train, test = write_sets(tmp_path / "train", 64, 0), write_sets(tmp_path / "test", 40, 1)
    for name, extra in (("plain", []), ("augmented", [AUGMENT])):
        cfg = load_train_config("deepfake_adapter", [f"data.train=[{train}]", "train.epochs=8", "optim.blr=1.0",
                                                     *extra], tiny=True, out=str(tmp_path / name))
        Trainer(cfg).fit()
    recorded = yaml.safe_load((tmp_path / "augmented" / "config.yaml").read_text())["data"]["augment"]
    assert recorded == [{"op": "blur", "p": 0.5, "sigma": [0.0, 3.0]}, {"op": "jpeg", "p": 0.5, "quality": [30, 100]}]
    assert fakeforge_main(["eval", "--checkpoint", str(tmp_path / "plain" / "last"),
                           str(tmp_path / "augmented" / "last"),
                           "--name", "plain", "augmented", "--sets", str(test), "--out", str(tmp_path / "eval"),
                           "--no-plots", "--robustness", "genimage"]) == 0
    rob = json.loads((tmp_path / "eval" / "robustness.json").read_text())["conditions"]
    acc = {d: {c: v["detectors"][d]["average_accuracy"] for c, v in rob.items()} for d in ("plain", "augmented")}
    degraded = [c for c in rob if c != "clean"]

    def mean(d, conds):
        return float(np.mean([acc[d][c] for c in conds]))

    assert acc["plain"]["clean"] >= 0.9 and acc["augmented"]["clean"] >= 0.9, acc  # both learned the task
    assert mean("augmented", degraded) >= mean("plain", degraded) + 0.04, acc
    blur = ["blur_s3", "blur_s5"]
    assert mean("plain", blur) <= 0.7 and mean("augmented", blur) >= mean("plain", blur) + 0.15, acc
    assert mean("plain", ["clean"]) - mean("plain", blur) > mean("augmented", ["clean"]) - mean("augmented", blur)


@pytest.mark.parametrize("kind", ["real", "fake"])
def test_the_checkerboard_is_what_blur_erases(kind):
    from fakeforge.degrade import parse_chain

    img = image(kind, np.random.default_rng(0))
    a = np.asarray(img, dtype=float).mean(-1)
    b = np.asarray(parse_chain("blur:3").apply(img), dtype=float).mean(-1)
    board = ((np.add.outer(np.arange(SIZE), np.arange(SIZE)) % 2) * 2 - 1)
    energy = [abs((x * board).mean()) for x in (a, b)]
    assert (energy[0] > 20) == (kind == "fake") and energy[1] < 1.0
