"""Helpers for the tests of the new detector families (DeepFake-Adapter, frozen-feature detectors)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_helpers import encode, write_dataset
from PIL import Image


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models run ~40x faster on one thread than on two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Separable shard data: `train` (64 real + 64 fake) and a disjoint held-out `test` (32 + 32)."""
    root = tmp_path_factory.mktemp("family_data")
    return {"train": write_dataset(root / "train", 64, 64, shards=2, seed=0),
            "test": write_dataset(root / "test", 32, 32, shards=1, seed=100)}


def load_tensors(path: Path | str, preprocess, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every readable image of the set specs under `path` as one normalised batch + labels."""
    from detector.data import iter_set_images, parse_set_specs

    tf = preprocess.transform(train)
    xs, ys = [], []
    for spec in parse_set_specs([str(path)]):
        for _key, img, label, err in iter_set_images(spec, split_nodes=False):
            if err is None:
                xs.append(tf(img))
                ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def train_steps(det, x: torch.Tensor, y: torch.Tensor, optim, epochs: int, batch_size: int, seed: int = 0) -> list[float]:
    """A plain loop with the config's optimizer and schedule (no data pipeline); returns the per-step losses."""
    from detector.train.config import build_optimizer, lr_at

    steps_per_epoch = len(y) // batch_size
    peak = optim.peak_lr(batch_size)
    opt = build_optimizer(det.trainable_parameters(), optim, peak)
    gen = torch.Generator().manual_seed(seed)
    losses, step = [], 0
    det.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(optim, epoch, i, step, epochs, steps_per_epoch, peak=peak)
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = det(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
    det.eval()
    return losses


def accuracy(det, x: torch.Tensor, y: torch.Tensor) -> float:
    det.eval()
    return float(((det.score(x) >= 0.5).long() == y).float().mean())


def write_parent_child(root: Path, n: int, seed: int) -> Path:
    """Sets `coco` (real) and `sd2` (fake) where fake i is real i's content (a random block pattern)
    with another colour cast, and both carry source_image_id i: "parents and children"."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    writers = {}
    for kind, name in (("real", "coco"), ("fake", "sd2")):
        (root / name).mkdir(parents=True, exist_ok=True)
        writers[kind] = wds.TarWriter(str(root / name / "000000.tar"))
    tint = {"real": np.array([1.0, 0.75, 0.7]), "fake": np.array([0.7, 0.75, 1.0])}
    for i in range(n):
        pattern = np.kron(rng.uniform(0.15, 1.0, size=(4, 4)), np.ones((9, 11)))  # 36 x 44
        for kind, writer in writers.items():
            noise = rng.normal(0, 0.03, size=(*pattern.shape, 3))
            arr = np.clip(pattern[..., None] * tint[kind] + noise, 0, 1)
            key = f"{kind}_{seed}_{i:05d}"
            meta = {"key": key, "label": kind, "source_image_id": f"{seed}-{i}", "generator": kind}
            writer.write({"__key__": key, "png": encode(Image.fromarray((arr * 255).astype(np.uint8)), "PNG"),
                          "json": json.dumps(meta).encode()})
    for writer in writers.values():
        writer.close()
    return root
