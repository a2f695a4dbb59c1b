"""Write one planned shard atomically: temp name, rename when complete, then the done-marker.

A shard job `NNNNNN` of a set writes `NNNNNN.tar` (plus `NNNNNN-1.tar`, `NNNNNN-2.tar`... only
when the size limit splits it) and finally `NNNNNN.stats.json`. The stats file is the done-marker:
a shard without it is incomplete, whatever tars exist, and is redone from scratch on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import webdataset as wds

STATS_SUFFIX = ".stats.json"
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def shard_stem(index: int) -> str:
    return f"{index:06d}"


def stats_path(set_dir: Path, index: int) -> Path:
    return Path(set_dir) / f"{shard_stem(index)}{STATS_SUFFIX}"


def is_done(set_dir: Path, index: int, without_failures: bool = False) -> bool:
    """True when shard `index` finished (its stats file exists and parses); with `without_failures`,
    only when no sample of it failed either."""
    p = stats_path(set_dir, index)
    if not p.is_file():
        return False
    try:
        stats = json.loads(p.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return bool(stats.get("done")) and not (without_failures and stats.get("failed"))


def clear_partial(set_dir: Path, index: int) -> None:
    """Remove every file of an unfinished shard (tars, parts, temp files) before redoing it."""
    stem = shard_stem(index)
    for p in Path(set_dir).glob(f"{stem}*"):
        if p.name == f"{stem}.tar" or p.name.startswith(f"{stem}-") or p.name.startswith(f"{stem}.tar") \
                or p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ShardSink:
    """Collects the samples of one shard job and writes them as tar part(s) + a stats file."""

    def __init__(self, set_dir: str | Path, index: int, max_size_bytes: int, header: dict | None = None):
        self.set_dir = Path(set_dir)
        self.index = index
        self.max_size = max_size_bytes
        self.header = header or {}
        self.parts: list[dict] = []
        self.failures: list[dict] = []
        self.keys: set[str] = set()
        self.started = time.time()
        self._fh = None
        self._writer = None
        self._count = 0
        self.set_dir.mkdir(parents=True, exist_ok=True)
        clear_partial(self.set_dir, index)

    def _part_name(self) -> str:
        n = len(self.parts)
        return f"{shard_stem(self.index)}.tar" if n == 0 else f"{shard_stem(self.index)}-{n}.tar"

    def _open(self) -> None:
        self._final = self.set_dir / self._part_name()
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._fh = open(self._tmp, "wb")
        self._writer = wds.TarWriter(self._fh)
        self._count = 0

    def _close_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()  # closes the tar stream; the file object stays ours
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._tmp.replace(self._final)
        self.parts.append({"name": self._final.name, "count": self._count, "bytes": self._final.stat().st_size,
                           "sha256": sha256_file(self._final)})
        self._writer = self._fh = None

    def write(self, sample: dict) -> None:
        """Write one sample: {"__key__": key, "<ext>": bytes, "json": dict, ...}."""
        key = sample["__key__"]
        if not _KEY_OK.match(key):
            raise ValueError(f"sample key '{key}' may only contain letters, digits, '_' and '-'")
        if key in self.keys:
            raise ValueError(f"duplicate sample key '{key}' in shard {shard_stem(self.index)}")
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self.keys.add(key)
        self._count += 1
        if self._fh.tell() >= self.max_size:
            self._close_part()

    def fail(self, key: str, error: str) -> None:
        """Record a sample that could not be made (it is not written; rerunning does not retry it)."""
        self.failures.append({"key": key, "error": error})

    def close(self, extra: dict | None = None) -> dict:
        """Finish the last part, then write the done-marker; returns the stats."""
        self._close_part()
        stats = dict(self.header)
        stats.update({
            "shard": shard_stem(self.index), "done": True, "written": len(self.keys), "failed": len(self.failures),
            "tars": self.parts, "failures": self.failures, "seconds": round(time.time() - self.started, 3),
        })
        stats.update(extra or {})
        write_json_atomic(stats_path(self.set_dir, self.index), stats)
        return stats

    def abort(self) -> None:
        """Drop everything written so far (the shard stays incomplete and is redone on resume)."""
        if self._writer is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._writer = self._fh = None
        clear_partial(self.set_dir, self.index)
