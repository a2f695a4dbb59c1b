"""Trigger images from files: size limits before decoding, mode and size checks with clear messages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError

#: an outside trigger image is refused before decoding when its header claims more pixels than this
MAX_TRIGGER_PIXELS = 4096 * 4096


def read_trigger(path: str, what: str, size: tuple[int, int] | None = None, min_size: int = 1) -> np.ndarray:
    """Read an RGB trigger image as float32 (H, W, 3) in [0, 1].

    ConfigError naming the file when it is missing, not an image, too large, not mode RGB, not exactly
    `size` (w, h) when given, or smaller than `min_size` on a side."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} = '{p}': file not found")
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > MAX_TRIGGER_PIXELS:
                raise ConfigError(f"{what} = '{p}' is {w}x{h}, larger than the {MAX_TRIGGER_PIXELS} pixel limit")
            if img.mode != "RGB":
                raise ConfigError(f"{what} = '{p}' has mode {img.mode}; the trigger must be an RGB image "
                                  f"(convert it: Image.open(f).convert('RGB').save(f))")
            if size is not None and (w, h) != tuple(size):
                raise ConfigError(f"{what} = '{p}' is {w}x{h}; it must be exactly {size[0]}x{size[1]} pixels")
            if min(w, h) < min_size:
                raise ConfigError(f"{what} = '{p}' is {w}x{h}; each side must be >= {min_size} pixels")
            img.load()
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except ConfigError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ConfigError(f"{what} = '{p}' is not a readable image: {exc}") from None
    return arr
