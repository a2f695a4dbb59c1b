"""Shared helpers for the detector tests: synthetic real/fake images, shard sets and folders.

The tiny InstructBLIP twin fixture (`tiny_instructblip`) lives in conftest.py.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

REAL_RGB = (200, 60, 50)  # real = reddish noisy texture
FAKE_RGB = (50, 60, 200)  # fake = bluish noisy texture


def make_image(kind: str, rng: np.random.Generator, size: tuple[int, int] = (44, 36)) -> Image.Image:
    """A noisy texture of the real (reddish) or fake (bluish) colour family."""
    base = np.array(REAL_RGB if kind == "real" else FAKE_RGB, dtype=np.float64)
    w, h = size
    arr = base[None, None, :] + rng.normal(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_set(folder: Path, kind: str, n: int, shards: int = 1, seed: int = 0, generator: str | None = None,
              labels: list[str] | None = None) -> list[Path]:
    """Write `n` samples of one colour family as a shard set (<key>.jpg + <key>.json) through the product's shard
    writer (`ShardSink`: temp name, rename, done-marker), as the builder writes them."""
    from fakeforge.shards.writer import ShardSink

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sinks = [ShardSink(folder, i, 2**40, {"set": folder.name}) for i in range(shards)]
    for i in range(n):
        label = labels[i] if labels else kind
        key = f"{folder.name}_{i:05d}"
        meta = {"key": key, "label": label, "set": folder.name, "generator": generator or kind,
                "model_id": None if kind == "real" else "tiny", "caption": "a photo", "source_image_id": str(i)}
        sinks[i % shards].write({"__key__": key, "jpg": encode(make_image(kind, rng)),
                                 "json": json.dumps(meta).encode()})
    for sink in sinks:
        sink.close()
    return [folder / f"{i:06d}.tar" for i in range(shards)]


def write_dataset(root: Path, n_real: int = 48, n_fake: int = 48, shards: int = 1, seed: int = 0) -> Path:
    """A dataset folder with sets `coco` (real) and `sd2` (fake)."""
    write_set(root / "coco", "real", n_real, shards, seed)
    write_set(root / "sd2", "fake", n_fake, shards, seed + 1, generator="sd2")
    return root


def write_folder(folder: Path, kind: str, n: int, seed: int = 0) -> list[Path]:
    """`n` good images (mixed .jpg/.png/.webp, some in a subfolder)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ext, fmt = [(".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP")][i % 3]
        path = folder / ("sub" if i % 2 else "") / f"{kind}_{i}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(make_image(kind, rng), fmt))
        out.append(path)
    return out


def write_odd_images(folder: Path, kind: str = "real") -> dict[str, list[Path]]:
    """Readable odd modes (CMYK, 16-bit, RGBA, palette) and bad files (corrupt, truncated, zero-byte, text)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = make_image(kind, rng)
    good = {"cmyk.jpg": (rgb.convert("CMYK"), "JPEG"), "rgba.png": (rgb.convert("RGBA"), "PNG"),
            "palette.png": (rgb.convert("P"), "PNG"),
            "gray16.png": (Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)), "PNG")}
    out = {"good": [], "bad": []}
    for name, (img, fmt) in good.items():
        (folder / name).write_bytes(encode(img, fmt))
        out["good"].append(folder / name)
    whole = encode(rgb, "JPEG")
    bad = {"zero.jpg": b"", "truncated.jpg": whole[: len(whole) // 3], "notes.png": b"this is not an image\n",
           "corrupt.webp": b"RIFF\x00\x00\x00\x00WEBPgarbage" * 3}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        out["bad"].append(folder / name)
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return out
