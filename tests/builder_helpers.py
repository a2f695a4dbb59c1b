"""Helpers for dataset-builder tests: small COCO/Flickr files and build configs written to tmp folders."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image


def write_coco(root: Path, n: int = 6, captions: int = 2, size=(40, 32)) -> tuple[Path, Path]:
    """A COCO captions file with `n` images (solid colours) and `captions` captions each."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        name = f"{i + 1:012d}.jpg"
        Image.new("RGB", size, (40 * i % 255, 90, 200 - 20 * i % 200)).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
        for j in range(captions):
            anns.append({"id": 100 * (i + 1) + j, "image_id": i + 1, "caption": f"a red cat number {i} take {j}"})
    path = root / "captions_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path, images_dir


def write_build_config(path: Path, output: Path, sets: list[dict], source: dict | None = None, **top) -> Path:
    """A build config YAML with the demo source by default and small shards."""
    cfg = {"output": str(output), "source": source or {"kind": "demo", "limit": 8},
           "image": {"format": "png", "size": 64, "resize": "center_crop"},
           "shards": {"max_count": 4, "max_size_mb": 64}, "sets": sets}
    cfg.update(top)
    path.write_text(yaml.safe_dump(cfg))
    return path


def keys_of(out: Path) -> list[str]:
    """Sorted sample keys of every tar under a dataset folder (read with tarfile)."""
    import tarfile

    keys = set()
    for tar in sorted(Path(out).glob("*/*.tar")):
        with tarfile.open(tar) as tf:
            keys |= {m.name.split(".", 1)[0] for m in tf if m.isfile()}
    return sorted(keys)


def set_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member extension: bytes} of every sample in the tars of one set folder."""
    import tarfile

    found: dict[str, dict[str, bytes]] = {}
    for tar in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return found
