"""Hostile image files written byte by byte (no pixel buffer is ever built, so writing them is cheap).

* `png_bomb`: 65 bytes, declares 60000x60000 (PIL raises DecompressionBombError on open).
* `png_strip`: a valid ~200-byte 40000x1 RGB PNG (passes PIL's pixel check; a shorter-side resize
  to 512 would make it 20,480,000x512).
* `png_huge`: a valid 12000x12000 greyscale PNG (~150 KB; PIL only warns, decoding takes 144 MB
  and converting to RGB 432 MB more).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb(path: Path) -> Path:
    """65 bytes declaring a 60000x60000 RGB image (an empty zlib stream as pixel data)."""
    path.write_bytes(_png(60000, 60000, 2, zlib.compress(b"")))
    return path


def png_strip(path: Path, width: int = 40000) -> Path:
    """A valid `width`x1 black RGB PNG."""
    path.write_bytes(_png(width, 1, 2, zlib.compress(b"\0" * (1 + 3 * width), 9)))
    return path


def png_huge(path: Path, side: int = 12000) -> Path:
    """A valid `side`x`side` black greyscale PNG, compressed row by row."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    path.write_bytes(_png(side, side, 0, b"".join(parts)))
    return path


def write_hostile(folder: Path) -> dict[str, Path]:
    """The three files in `folder` (created), by name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"bomb": png_bomb(folder / "bomb.png"), "strip": png_strip(folder / "strip.png"),
            "huge": png_huge(folder / "huge.png")}
