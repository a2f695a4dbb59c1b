"""Find and read the shard sets that the dataset builder writes.

Layout of a built dataset folder:

    OUT/manifest.json              counts per set, sha256 per tar (written at the end of a build)
    OUT/build_config.yaml          the resolved build config
    OUT/<set>/NNNNNN.tar           WebDataset shards: <key>.<jpg|png|webp>, <key>.json, maybe <key>.mask.png
    OUT/<set>/NNNNNN.stats.json    per-shard done-marker (written after the tar is complete)
"""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_KEYS = ("jpg", "png", "webp", "jpeg")


def list_tars(path: str | Path) -> list[Path]:
    """Complete tar shards at `path`: a .tar file, a set folder, or a dataset folder (all sets)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".tar":
            raise ValueError(f"'{path}' is not a .tar shard")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"shard path not found: '{path}'")
    return sorted(p for p in path.rglob("*.tar") if p.is_file())


def find_sets(path: str | Path) -> dict[str, list[Path]]:
    """Map set name -> tar shards. A folder of tars is one set (named after the folder); a dataset
    folder with one subfolder per set gives one entry per subfolder; `NAME=PATH` names a set explicitly."""
    text = str(path)
    if "=" in text and not Path(text).exists():
        name, p = text.split("=", 1)
        return {name: list_tars(p)}
    path = Path(path)
    if path.is_file():
        return {path.parent.name: list_tars(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"shard path not found: '{path}'")
    direct = sorted(path.glob("*.tar"))
    if direct:
        return {path.name: direct}
    sets = {sub.name: sorted(sub.glob("*.tar")) for sub in sorted(path.iterdir()) if sub.is_dir()}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise FileNotFoundError(f"no .tar shards found under '{path}'")
    return sets


def read_manifest(path: str | Path) -> dict:
    """The manifest.json of a dataset folder."""
    p = Path(path) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"no manifest.json in '{path}' (is the build finished? rerun the build command)")
    return json.loads(p.read_text())


def sample_image_bytes(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes) of the image member of a raw webdataset sample."""
    for ext in IMAGE_KEYS:
        if ext in sample:
            return ext, sample[ext]
    raise KeyError(f"sample '{sample.get('__key__')}' has no image member (looked for {IMAGE_KEYS})")
