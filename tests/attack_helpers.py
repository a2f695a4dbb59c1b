"""Helpers for attack tests: a trivially separable toy image set and a tiny timm surrogate trained on it,
saved in timm's local folder format (config.json + model.safetensors) like a user's own weights."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: toy resnet50 (the real timm class) small enough to train in seconds on a CPU
TOY_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}


def toy_images(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: horizontal stripes, class 1: vertical stripes, on a random flat colour; low contrast
    (amplitude 0.05), random phase and period. Returns (images (n, 3, size, size) in [0, 1], labels)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = 0.25 + 0.5 * torch.rand((n, 3, 1, 1), generator=gen)
    period = 4 + 4 * torch.rand((n, 1, 1, 1), generator=gen)
    phase = 2 * math.pi * torch.rand((n, 1, 1, 1), generator=gen)
    coord = torch.arange(size, dtype=torch.float32)
    rows = coord.view(1, 1, size, 1).expand(n, 1, size, size)
    cols = coord.view(1, 1, 1, size).expand(n, 1, size, size)
    along = torch.where(labels.view(n, 1, 1, 1) == 0, rows, cols)
    stripes = 0.05 * torch.sin(2 * math.pi * along / period + phase)
    images = (base + stripes).clamp(0, 1)
    return torch.round(images * 255) / 255, labels  # on 8-bit levels, like decoded files


def train_toy_surrogate(folder: Path, steps: int = 120, size: int = 32, seed: int = 0) -> tuple[Path, float]:
    """Train the toy timm resnet50 on stripes (1000-class head, classes 0/1 used), save it with
    `timm.models.save_for_hf`; returns (folder, held-out accuracy)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000, **TOY_ARGS)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x, y = toy_images(512, size, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model((x[idx] - mean) / std), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = toy_images(256, size, seed=seed + 1000)
    with torch.no_grad():
        acc = (model((xt - mean) / std).argmax(1) == yt).float().mean().item()
    timm.models.save_for_hf(model, str(folder), model_args=dict(TOY_ARGS), safe_serialization=True,
                            data_config={"input_size": (3, size, size), "interpolation": "bilinear"})
    return folder, acc


def save_pngs(images: torch.Tensor, folder: Path, prefix: str = "img") -> list[Path]:
    """Write (n, 3, H, W) [0, 1] images as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = folder / f"{prefix}_{i:04d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


_TRAINED: dict[str, Path] = {}


def trained_toy_surrogate(root: Path) -> Path:
    """The toy surrogate folder, trained once per test session (under `root`, a session tmp folder)."""
    if "path" not in _TRAINED:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny convolutions: one thread is faster on a shared CPU
        try:
            folder, acc = train_toy_surrogate(Path(root) / "toy_surrogate")
        finally:
            torch.set_num_threads(threads)
        assert acc >= 0.95, f"toy surrogate did not learn the stripes (held-out accuracy {acc:.3f})"
        _TRAINED["path"] = folder
    return _TRAINED["path"]


class one_thread:
    """Context manager: torch on one thread (faster for tiny models on a shared CPU), restored after."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def write_imagenet_val(root: Path, images: torch.Tensor, labels: torch.Tensor) -> tuple[Path, Path]:
    """A flat ImageNet-style val folder (ILSVRC2012_val_%08d.png) and a `filename,label` CSV."""
    images_dir = root / "val"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, (img, label) in enumerate(zip(images, labels)):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(images_dir / f"{name}.png")
        rows.append(f"{name},{int(label)}")
    csv = root / "val_labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, images_dir


def read_shards(set_dir: Path) -> list[tuple[dict, bytes, str]]:
    """(metadata, image bytes, image extension) of every sample in a set folder's tars, by key."""
    import json
    import tarfile

    samples: dict[str, dict] = {}
    for tar in sorted(Path(set_dir).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    out = []
    for key in sorted(samples):
        ext = next(e for e in samples[key] if e != "json" and not e.endswith("mask.png"))
        out.append((json.loads(samples[key]["json"]), samples[key][ext], ext))
    return out


def decode(data: bytes) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def run_attack_generator(spec, images, model_id=None, policy=None, metas=None):
    """Run the `attack` generator (preset name or mapping) on PIL images the way the builder does:
    the set's storage policy, load, one batched generate_safe. Returns the GenResults."""
    from fakeforge.images import ImagePolicy
    from generators import generator_config, resolve_generator_spec
    from generators.base import GenRequest

    raw = resolve_generator_spec(spec)
    if model_id is not None:
        raw["model_id"] = str(model_id)
    cls, cfg = generator_config(raw)
    gen = cls(cfg)
    gen.image_policy = cls.storage_policy(cfg, policy or ImagePolicy(format="png"))
    gen.load()
    reqs = [GenRequest(key=f"s-{i}", prompt="", seed=i, source_image_id=str(i), image=img,
                       meta=dict((metas or [{}] * len(images))[i])) for i, img in enumerate(images)]
    with one_thread():
        return gen.generate_safe(reqs)


def pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(arr, dtype=np.uint8))
