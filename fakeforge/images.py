"""Image input and output policy shared by the dataset builder and the detectors.

`load_rgb` turns whatever a user hands us (CMYK, 16-bit, palette with transparency, EXIF-rotated...)
into an upright 8-bit RGB PIL image, or raises `ImageLoadError` naming the file.
`ImagePolicy` is the single resize + encoding policy applied to real and fake images alike, so a
detector cannot learn file format or size instead of fakeness.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_EXT_FOR_FORMAT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


class ImageLoadError(ValueError):
    """An input file that is not a readable image (zero bytes, truncated, not an image)."""


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


def load_rgb(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Load a path, raw bytes or PIL image as upright 8-bit RGB; raise ImageLoadError naming the source."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            if len(source) == 0:
                raise ImageLoadError(f"image '{name}' is empty (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"image file not found: '{path}'")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"image file '{path}' is empty (0 bytes)")
            img = Image.open(path)
        img.load()  # decode now so truncated files fail here, not later
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image '{name}': {exc}") from None
    return to_rgb(img)


def find_images(folder: str | Path) -> list[Path]:
    """All image files (.jpg/.jpeg/.png/.webp, any case) under `folder`, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: '{folder}'")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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
