"""Image input and output policy shared by the dataset builder and the detectors.

`load_rgb` turns whatever a user hands us (CMYK, 16-bit, palette with transparency, EXIF-rotated...)
into an upright 8-bit RGB PIL image, or raises `ImageLoadError` naming the file. Every outside image
is hostile until its header passed `ImageLimits` (pixel count, aspect ratio, longest side): the
limits are checked from the header, before any pixel is decoded and before any resize, so a
65-byte PNG that declares 60000x60000 or a 40000x1 strip costs nothing. Whatever PIL raises while
opening or decoding (its DecompressionBombError included) becomes an `ImageLoadError`.
`ImagePolicy` is the single resize + encoding policy applied to real and fake images alike.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXT_FOR_FORMAT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
#: PIL's own decompression-bomb threshold (its warning level; it raises at twice this).
PIL_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# `ImageLimits` rejects oversized images from their header, so PIL's warning for images between
# one and two times its threshold is redundant noise (and `warnings.catch_warnings` is not
# thread-safe, which matters because sources are decoded in threads).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageLoadError(ValueError):
    """An input file that is not a readable image (zero bytes, truncated, not an image, over the limits)."""


@dataclass
class ImageLimits:
    """Resource limits for every image read from outside (build sources, detect, eval, stats, train).

    max_pixels: width x height above this is refused (default: PIL's own bomb threshold, ~89.5 MP).
    max_aspect: longer side / shorter side above this is refused (a 40000x1 strip would blow up to
        tens of GB when its shorter side is resized to 512).
    max_side: a longer side above this is refused.
    All are checked from the file header, before decoding.
    """

    max_pixels: int = PIL_MAX_PIXELS
    max_aspect: float = 20.0
    max_side: int = 16384

    def validate(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"image_limits.max_pixels = {self.max_pixels} must be >= 1")
        if self.max_aspect < 1:
            raise ValueError(f"image_limits.max_aspect = {self.max_aspect} must be >= 1")
        if self.max_side < 1:
            raise ValueError(f"image_limits.max_side = {self.max_side} must be >= 1")

    def check(self, width: int, height: int, name: str) -> None:
        """Raise ImageLoadError naming the file when a `width` x `height` image breaks a limit."""
        if width < 1 or height < 1:
            raise ImageLoadError(f"image '{name}' declares an empty size {width}x{height}")
        if width * height > self.max_pixels:
            raise ImageLoadError(f"image '{name}' declares {width}x{height} = {width * height} pixels, over the "
                                 f"limit of {self.max_pixels} (image_limits.max_pixels)")
        if max(width, height) / min(width, height) > self.max_aspect:
            raise ImageLoadError(f"image '{name}' declares {width}x{height}, an aspect ratio over the limit of "
                                 f"{self.max_aspect:g}:1 (image_limits.max_aspect)")
        if max(width, height) > self.max_side:
            raise ImageLoadError(f"image '{name}' declares {width}x{height}, a side over the limit of "
                                 f"{self.max_side} (image_limits.max_side)")


DEFAULT_LIMITS = ImageLimits()


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images into 8-bit greyscale."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535):
        scaled = arr.astype(np.float64) / 257.0
    else:  # "I" beyond 16 bits or "F": stretch to the observed range
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF orientation applied, transparency composited on white, 16-bit scaled."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_rgb(source: str | Path | bytes | Image.Image, limits: ImageLimits | None = None, *,
             min_side: int | None = None, name: str | None = None) -> Image.Image:
    """Load a path, raw bytes or PIL image as upright 8-bit RGB; raise ImageLoadError naming the source.

    `limits` (default `DEFAULT_LIMITS`) are checked from the header before anything is decoded.
    `min_side`: the caller only needs the shorter side to be at least this many pixels (it resizes
    down anyway); a large JPEG is then decoded at a reduced scale (PIL's `draft`, DCT scaling by
    1/2, 1/4 or 1/8), which is much cheaper. `name` labels bytes in messages (e.g. a sample key).
    """
    limits = limits or DEFAULT_LIMITS
    if isinstance(source, Image.Image):
        limits.check(*source.size, name or "<image>")
        return to_rgb(source)
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("<bytes>" if is_bytes else str(source))
    if is_bytes:
        if len(source) == 0:
            raise ImageLoadError(f"image '{name}' is empty (0 bytes)")
        opener = lambda: Image.open(io.BytesIO(bytes(source)))  # noqa: E731
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"image file not found: '{path}'")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"image file '{path}' is empty (0 bytes)")
        opener = lambda: Image.open(path)  # noqa: E731
    try:
        img = opener()  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image '{name}' is refused by PIL as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - anything PIL raises on hostile input is this file's error
        raise ImageLoadError(f"cannot read image '{name}': {type(exc).__name__}: {exc}") from None
    try:
        limits.check(*img.size, name)
        if min_side and img.format == "JPEG" and min(img.size) > 2 * min_side:
            scale = min_side / min(img.size)
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()  # decode now so truncated files fail here, not later
        return to_rgb(img)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - decode errors, bad EXIF, MemoryError: this file's error
        raise ImageLoadError(f"cannot read image '{name}': {type(exc).__name__}: {exc}") from None
    finally:
        img.close()


def find_images(folder: str | Path) -> list[Path]:
    """All image files (.jpg/.jpeg/.png/.webp, any case) under `folder`, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: '{folder}'")
    return image_files(folder)


def image_files(folder: str | Path, inside: str | Path | None = None) -> list[Path]:
    """Image files (by extension) under `folder`, recursively, sorted: regular files only (a FIFO or
    device is never opened), and a symlink only when it resolves inside `inside` (default `folder`);
    links leading outside are skipped with one warning naming them."""
    import logging

    folder = Path(folder)
    root = Path(inside if inside is not None else folder).resolve()
    found, outside = [], []
    for p in folder.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():  # is_file: regular files (FIFOs are not)
            continue
        if p.is_symlink() or any(parent.is_symlink() for parent in p.relative_to(folder).parents
                                 if str(parent) != "."):
            target = p.resolve()
            if target != root and root not in target.parents:
                outside.append(p)
                continue
        found.append(p)
    if outside:
        names = ", ".join(str(p.relative_to(folder)) for p in sorted(outside)[:5])
        logging.getLogger("fakeforge.sources").warning(
            "skipped %d link(s) in '%s' leading outside it: %s%s", len(outside), folder, names,
            " ..." if len(outside) > 5 else "")
    return sorted(found)


#: largest stored side accepted by an image policy (the default `image_limits.max_side` of a source)
MAX_STORED_SIDE = 16384


@dataclass
class ImagePolicy:
    """One resize + encoding policy for real and fake images (recorded per sample).

    resize: "none" keeps the size; "shorter_side" scales the shorter side to `size`;
    "center_crop" scales the shorter side to `size` then crops the centre `size`x`size`;
    "exact" resizes to `size`x`size` ignoring aspect.
    """

    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = 95
    size: int | None = None
    resize: Literal["none", "shorter_side", "center_crop", "exact"] = "none"

    def validate(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"image.quality = {self.quality} must be within 1..100")
        if self.resize != "none" and (self.size is None or self.size < 1):
            raise ValueError(f"image.resize = '{self.resize}' needs a positive image.size, got {self.size!r}")
        if self.size is not None and self.size > MAX_STORED_SIDE:
            raise ValueError(f"image.size = {self.size} is above {MAX_STORED_SIDE} px (one such RGB image needs "
                             f"{3 * self.size ** 2 / 2 ** 30:.0f} GiB of memory)")

    @property
    def extension(self) -> str:
        return _EXT_FOR_FORMAT[self.format]

    def apply(self, img: Image.Image) -> Image.Image:
        """Resize/crop per the policy (bicubic)."""
        if self.resize == "none" or self.size is None:
            return img
        w, h = img.size
        if self.resize == "exact":
            return img.resize((self.size, self.size), Image.BICUBIC)
        scale = self.size / min(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != img.size:
            img = img.resize(new, Image.BICUBIC)
        if self.resize == "center_crop":
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        return img

    def encode(self, img: Image.Image) -> tuple[bytes, dict]:
        """Apply the policy and encode; returns (bytes, metadata describing size and encoding)."""
        img = self.apply(to_rgb(img))
        buf = io.BytesIO()
        if self.format == "jpeg":
            img.save(buf, format="JPEG", quality=self.quality, subsampling=0 if self.quality >= 90 else 2)
        elif self.format == "webp":
            img.save(buf, format="WEBP", quality=self.quality)
        else:
            img.save(buf, format="PNG", compress_level=3)
        info = {"width": img.width, "height": img.height, "format": self.format,
                "quality": self.quality if self.format != "png" else None, "resize": self.resize, "size": self.size}
        return buf.getvalue(), info


def encode_mask(mask: np.ndarray | Image.Image) -> bytes:
    """A binary mask (1/255 = hole) as an 8-bit PNG."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    arr = (np.asarray(mask) > 0).astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()
