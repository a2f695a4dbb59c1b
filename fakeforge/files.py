"""Atomic local file writes: one way for every marker, checkpoint, cache file and config fakeforge writes.

Readers see the old file or the whole new one; the temp name is unique to the process (concurrent writers
never share one) and an interruption leaves no temp file behind.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to (for writers that take a path: safetensors, torch.save);
    on success it is fsynced and renamed over `path`, on any exception removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str, fsync: bool = True) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
