"""Write one planned shard atomically: temp name, rename when complete, then the done-marker.

A shard job `NNNNNN` of a set writes `NNNNNN.tar` (plus `NNNNNN-1.tar`, `NNNNNN-2.tar`... only
when the size limit splits it) and finally `NNNNNN.stats.json`. The stats file is the done-marker,
and it records each tar's size and sha256. A shard is done only when its marker says so *and*
every tar it lists is there with the recorded size (`shard_state`); anything else is redone from
scratch on resume. Redoing a shard removes its marker first, so an interruption at any point
leaves it either done and whole, or not done.
"""
from __future__ import annotations

import errno
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


class ShardWriteError(Exception):
    """Writing a shard failed (an I/O error, a full disk): the shard was dropped, not marked done."""

    def __init__(self, set_dir: Path, index: int, cause: OSError):
        self.set_dir, self.index, self.cause = Path(set_dir), index, cause
        super().__init__(f"writing shard '{Path(set_dir) / shard_stem(index)}' failed: "
                         f"{type(cause).__name__}: {cause}")

    @property
    def disk_full(self) -> bool:
        return getattr(self.cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT)

    @property
    def transient(self) -> bool:
        """Worth going on with other shards (an EIO hiccup), unlike a full disk or a read-only folder."""
        return getattr(self.cause, "errno", None) not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                          errno.EPERM)


def read_stats(set_dir: Path, index: int) -> dict | None:
    """The shard's stats (done-marker), or None when it is missing or unreadable."""
    try:
        return json.loads(stats_path(set_dir, index).read_text())
    except (OSError, ValueError):
        return None


def list_shard_files(set_dir: Path) -> dict[str, set[str]]:
    """The files of a set folder grouped by shard stem ("000012" -> {"000012.tar", "000012.stats.json", ...}),
    listed once so that checking every shard does not rescan the folder."""
    out: dict[str, set[str]] = {}
    if Path(set_dir).is_dir():
        for p in Path(set_dir).iterdir():
            stem = re.split(r"[.-]", p.name, maxsplit=1)[0]
            out.setdefault(stem, set()).add(p.name)
    return out


def shard_state(set_dir: Path, index: int, *, without_failures: bool = False, check_hash: bool = False,
                existing: dict[str, set[str]] | None = None) -> tuple[bool, str | None]:
    """(done, reason). Done means: the done-marker says so, and every tar it lists exists with the
    recorded size (and sha256, with `check_hash`), and no other part of the shard lies beside it.
    `reason` says why a shard with a done-marker is not done (None for a shard never finished).
    `existing`: `list_shard_files(set_dir)`, listed once by the caller; without it stray parts are not
    looked for."""
    set_dir = Path(set_dir)
    p = stats_path(set_dir, index)
    stem = shard_stem(index)
    names = existing.get(stem, set()) if existing is not None else None
    if names is not None and p.name not in names or names is None and not p.is_file():
        return False, None
    stats = read_stats(set_dir, index)
    if not isinstance(stats, dict) or not stats.get("done") or not isinstance(stats.get("tars"), list):
        return False, f"its done-marker {p.name} is unreadable"
    listed = set()
    for t in stats["tars"]:
        tar = set_dir / str(t.get("name"))
        listed.add(tar.name)
        try:
            size = tar.stat().st_size
        except OSError:
            return False, f"{tar.name} is missing"
        if size != t.get("bytes"):
            return False, f"{tar.name} has {size} bytes, its done-marker says {t.get('bytes')}"
        if check_hash and sha256_file(tar) != t.get("sha256"):
            return False, f"{tar.name} does not match its recorded sha256"
    if names is not None:
        stray = sorted(n for n in names if _is_part_of(n, stem) and n.endswith(".tar") and n not in listed)
        if stray:
            return False, f"{stray[0]} lies beside it but is not listed in its done-marker"
    if sum(int(t.get("count", 0)) for t in stats["tars"]) != stats.get("written"):
        return False, f"its done-marker {p.name} counts do not add up"
    if without_failures and stats.get("failed"):
        return False, f"it recorded {stats['failed']} failed sample(s) (--retry-failed)"
    return True, None


def is_done(set_dir: Path, index: int, without_failures: bool = False, check_hash: bool = False) -> bool:
    """True when shard `index` is finished and whole (see `shard_state`)."""
    return shard_state(set_dir, index, without_failures=without_failures, check_hash=check_hash)[0]


def _is_part_of(name: str, stem: str) -> bool:
    return name == f"{stem}.tar" or name.startswith(f"{stem}-") or name.startswith(f"{stem}.tar")


def clear_partial(set_dir: Path, index: int) -> None:
    """Remove the done-marker first, then every file of the shard (tars, parts, temp files), so an
    interruption at any point leaves the shard not done."""
    stem = shard_stem(index)
    marker = stats_path(set_dir, index)
    if marker.exists():
        marker.unlink()
        fsync_dir(set_dir)  # the marker's removal must reach the disk before any tar goes
    for p in Path(set_dir).glob(f"{stem}*"):
        if _is_part_of(p.name, stem) or p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make renames/removals in `folder` durable (a no-op where the filesystem does not support it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON under a temp name, fsync, rename; an interruption leaves no temp file behind."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ShardSink:
    """Collects the samples of one shard job and writes them as tar part(s) + a stats file.

    Any I/O error while writing raises `ShardWriteError`: the tar stream may be misaligned by then,
    so the caller must `abort()` the whole shard (never just skip the sample).
    """

    #: how tar part files are opened (tests wrap it to inject real I/O errors into the file object)
    open_file = staticmethod(open)

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
        try:
            self.set_dir.mkdir(parents=True, exist_ok=True)
            clear_partial(self.set_dir, index)  # the done-marker goes first
        except OSError as exc:
            raise ShardWriteError(self.set_dir, index, exc) from exc

    def _part_name(self) -> str:
        n = len(self.parts)
        return f"{shard_stem(self.index)}.tar" if n == 0 else f"{shard_stem(self.index)}-{n}.tar"

    def _open(self) -> None:
        self._final = self.set_dir / self._part_name()
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._fh = self.open_file(self._tmp, "wb")
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

    def _io(self, action, *args):
        try:
            return action(*args)
        except OSError as exc:
            raise ShardWriteError(self.set_dir, self.index, exc) from exc

    def write(self, sample: dict) -> None:
        """Write one sample: {"__key__": key, "<ext>": bytes, "json": dict, ...}."""
        key = sample["__key__"]
        if not _KEY_OK.match(key):
            raise ValueError(f"sample key '{key}' may only contain letters, digits, '_' and '-'")
        if key in self.keys:
            raise ValueError(f"duplicate sample key '{key}' in shard {shard_stem(self.index)}")
        if self._writer is None:
            self._io(self._open)
        self._io(self._writer.write, sample)
        self.keys.add(key)
        self._count += 1
        if self._fh.tell() >= self.max_size:
            self._io(self._close_part)

    def fail(self, key: str, error: str) -> None:
        """Record a sample that could not be made (it is not written; rerunning does not retry it)."""
        self.failures.append({"key": key, "error": error})

    def close(self, extra: dict | None = None) -> dict:
        """Finish the last part, then write the done-marker; returns the stats."""
        self._io(self._close_part)
        stats = dict(self.header)
        stats.update({
            "shard": shard_stem(self.index), "done": True, "written": len(self.keys), "failed": len(self.failures),
            "tars": self.parts, "failures": self.failures, "seconds": round(time.time() - self.started, 3),
        })
        stats.update(extra or {})
        self._io(write_json_atomic, stats_path(self.set_dir, self.index), stats)
        return stats

    def abort(self) -> None:
        """Drop everything written so far (the shard stays incomplete and is redone on resume)."""
        if self._writer is not None:  # the tar stream may hold unwritten bytes: never flush them later
            tar = getattr(self._writer, "tarstream", None)
            for obj in (getattr(tar, "fileobj", None), tar):
                if obj is not None and hasattr(obj, "closed"):
                    obj.closed = True
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
        self._writer = self._fh = None
        clear_partial(self.set_dir, self.index)
