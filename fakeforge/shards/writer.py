"""Write one planned shard atomically: temp name, rename when complete, then the done-marker.

A shard job `NNNNNN` of a set writes `NNNNNN.tar` (plus `NNNNNN-1.tar`, `NNNNNN-2.tar`... only
when the size limit splits it) and finally `NNNNNN.done.json`, the done-marker (outputs of earlier
releases name it `NNNNNN.stats.json`; both are read, new shards write `.done.json`),
and it records each tar's size and sha256. A shard is done only when its marker says so *and*
every tar it lists is there with the recorded size (`shard_state`); anything else is redone from
scratch on resume. Redoing a shard removes its marker first, so an interruption at any point
leaves it either done and whole, or not done. The marker also records the samples the shard was
planned for (`plan_record`): a set that grew redoes its partial last shard.

The set folder lives in a `Store`: locally the tar is made in place (temp name, fsync, rename); on
object stores it is made in a local staging folder, uploaded and its size read back, and the marker
is written only after that.
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

from fakeforge.shards.store import Store, sha256_of, write_file_atomic

DONE_SUFFIX = ".done.json"
LEGACY_DONE_SUFFIX = ".stats.json"  # the done-marker's name before fakeforge 0.2: still read, never written
MARKER_SUFFIXES = (DONE_SUFFIX, LEGACY_DONE_SUFFIX)
STATS_SUFFIX = DONE_SUFFIX  # the earlier name of this constant
_warned_legacy = False
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def shard_stem(index: int) -> str:
    return f"{index:06d}"


def marker_name(index: int) -> str:
    """The done-marker a shard gets when it is written now."""
    return f"{shard_stem(index)}{DONE_SUFFIX}"


def is_marker(name: str) -> bool:
    """True for a done-marker file name, new or legacy ("000012.done.json", "000012.stats.json")."""
    return name[:6].isdigit() and name.endswith(MARKER_SUFFIXES) and len(name) == 6 + len(
        next(s for s in MARKER_SUFFIXES if name.endswith(s)))


def existing_marker(names, index: int) -> str | None:
    """The name of shard `index`'s done-marker among the file `names` of its set folder (the new name first,
    then the legacy one, which is logged once); None when it has none."""
    global _warned_legacy
    stem = shard_stem(index)
    if f"{stem}{DONE_SUFFIX}" in names:
        return f"{stem}{DONE_SUFFIX}"
    if f"{stem}{LEGACY_DONE_SUFFIX}" in names:
        if not _warned_legacy:
            _warned_legacy = True
            import logging

            logging.getLogger("fakeforge.builder").warning(
                "reading done-markers named NNNNNN%s (written by an earlier fakeforge); they count as done, "
                "new shards write NNNNNN%s", LEGACY_DONE_SUFFIX, DONE_SUFFIX)
        return f"{stem}{LEGACY_DONE_SUFFIX}"
    return None


def stats_path(set_dir: Path, index: int) -> Path:
    return Path(set_dir) / marker_name(index)


class ShardWriteError(Exception):
    """Writing a shard failed (an I/O error, a full disk): the shard was dropped, not marked done."""

    def __init__(self, set_dir: Path | str, index: int, cause: OSError, local_dir: Path | None = None):
        self.set_dir, self.index, self.cause = set_dir, index, cause
        self.local_dir = Path(local_dir if local_dir is not None else set_dir)  # where free space is measured
        super().__init__(f"writing shard '{set_dir}/{shard_stem(index)}' failed: {type(cause).__name__}: {cause}")

    @property
    def disk_full(self) -> bool:
        return getattr(self.cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT)

    @property
    def transient(self) -> bool:
        """Worth going on with other shards (an EIO hiccup), unlike a full disk or a read-only folder."""
        return getattr(self.cause, "errno", None) not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                          errno.EPERM)


def read_stats(store: Store, set_rel: str, index: int, marker: str | None = None) -> dict | None:
    """The shard's stats (done-marker `marker`, default the current name), or None when missing or unreadable."""
    try:
        return store.read_json(f"{set_rel}/{marker or marker_name(index)}")
    except (OSError, ValueError):
        return None


def list_shard_files(store: Store | Path, set_rel: str = "") -> dict[str, dict[str, int]]:
    """The files of a set folder grouped by shard stem ("000012" -> {"000012.tar": bytes, ...}), listed
    once (one LIST on object stores) so that checking every shard does not rescan the folder."""
    store = as_store(store)
    out: dict[str, dict[str, int]] = {}
    for name, size in store.listdir(set_rel).items():
        stem = re.split(r"[.-]", name, maxsplit=1)[0]
        out.setdefault(stem, {})[name] = size
    return out


def plan_record(keys: list[str]) -> dict:
    """What a shard job holds, recorded in its done-marker: the number of samples and a digest of their keys.
    A finished shard whose record differs from the current plan (a set that grew) is redone."""
    return {"count": len(keys), "keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]}


_UNREAD = object()


def shard_state(store: Store | Path, set_rel: str, index: int, *, plan: dict | None = None,
                without_failures: bool = False, check_hash: bool = False,
                existing: dict[str, dict[str, int]] | None = None, stats=_UNREAD) -> tuple[bool, str | None]:
    """(done, reason). Done means: the done-marker says so, it was made for `plan` (when given), every tar
    it lists exists with the recorded size (and sha256, with `check_hash`), and no other part of the shard
    lies beside it. `reason` says why a shard with a done-marker is not done (None for a shard never
    finished). `existing`: `list_shard_files(store, set_rel)`, listed once by the caller (without it the
    folder is listed here); `stats`: the marker's content when the caller already read it."""
    store = as_store(store)
    stem = shard_stem(index)
    names = (existing if existing is not None else list_shard_files(store, set_rel)).get(stem, {})
    marker = existing_marker(names, index)
    if marker is None:
        return False, None
    if stats is _UNREAD:
        stats = read_stats(store, set_rel, index, marker)
    if not isinstance(stats, dict) or not stats.get("done") or not isinstance(stats.get("tars"), list):
        return False, f"its done-marker {marker} is unreadable"
    if plan is not None and stats.get("plan") != plan:
        old = stats.get("plan") or {}
        if old.get("count") != plan["count"]:
            return False, (f"it holds {old.get('count', '?')} planned samples, the plan now has {plan['count']} "
                           "(the set grew)")
        return False, "its samples are not the ones the plan now puts in this shard"
    listed = set()
    for t in stats["tars"]:
        name = str(t.get("name"))
        listed.add(name)
        if name not in names:
            return False, f"{name} is missing"
        if names[name] != t.get("bytes"):
            return False, f"{name} has {names[name]} bytes, its done-marker says {t.get('bytes')}"
        if check_hash and store.sha256(f"{set_rel}/{name}") != t.get("sha256"):
            return False, f"{name} does not match its recorded sha256"
    stray = sorted(n for n in names if _is_part_of(n, stem) and n.endswith(".tar") and n not in listed)
    if stray:
        return False, f"{stray[0]} lies beside it but is not listed in its done-marker"
    if sum(int(t.get("count", 0)) for t in stats["tars"]) != stats.get("written"):
        return False, f"its done-marker {marker} counts do not add up"
    if without_failures and stats.get("failed"):
        return False, f"it recorded {stats['failed']} failed sample(s) (--retry-failed)"
    if without_failures and stats.get("model_failure"):
        return False, f"its model '{stats.get('model')}' failed (--retry-failed)"
    return True, None


def _is_part_of(name: str, stem: str) -> bool:
    return name == f"{stem}.tar" or name.startswith(f"{stem}-") or name.startswith(f"{stem}.tar")


def clear_partial(store: Store | Path, set_rel: str, index: int) -> None:
    """Remove the done-marker first, then every file of the shard (tars, parts, temp files), so an
    interruption at any point leaves the shard not done."""
    store = as_store(store)
    stem = shard_stem(index)
    names = store.listdir(set_rel)
    markers = [f"{stem}{s}" for s in MARKER_SUFFIXES if f"{stem}{s}" in names]
    for marker in markers:
        store.remove(f"{set_rel}/{marker}")
    if markers and store.local:
        fsync_dir(Path(store.path(set_rel)))  # the marker's removal must reach the disk before any tar goes
    for name in names:
        if name not in markers and name.startswith(stem) and (_is_part_of(name, stem) or name.endswith(".tmp")):
            store.remove(f"{set_rel}/{name}")


def as_store(location) -> Store:
    return location if isinstance(location, Store) else Store(location)


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


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_of(fh)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON under a temp name, fsync, rename; an interruption leaves no temp file behind."""
    write_file_atomic(path, json.dumps(data, indent=1).encode())


class ShardSink:
    """Collects the samples of one shard job and writes them as tar part(s) + a stats file.

    Local output: parts are written as `NNNNNN.tar.tmp` in the set folder, fsynced and renamed. Other
    stores: parts are written in `staging` (a local folder), uploaded when complete and their size read
    back. Either way the done-marker is written last, after every part is in place.

    Any I/O error while writing raises `ShardWriteError`: the tar stream may be misaligned by then,
    so the caller must `abort()` the whole shard (never just skip the sample).
    """

    #: how tar part files are opened (tests wrap it to inject real I/O errors into the file object)
    open_file = staticmethod(open)

    def __init__(self, store: Store | Path, set_rel: str | int, index: int | None = None,
                 max_size_bytes: int | None = None, header: dict | None = None, staging: Path | None = None,
                 plan: dict | None = None):
        if not isinstance(store, Store):  # ShardSink(set_dir, index, max_size_bytes, header): a local folder
            store, set_rel, index, max_size_bytes, header = (Store(Path(store).parent), Path(store).name, set_rel,
                                                             index, max_size_bytes if header is None else header)
        self.store, self.set_rel, self.index = store, str(set_rel), int(index)
        self.set_dir = Path(store.path(self.set_rel)) if store.local else Path(staging or ".") / self.set_rel
        self.max_size = int(max_size_bytes)
        self.header = header or {}
        self.plan = plan
        self.parts: list[dict] = []
        self.failures: list[dict] = []
        self.keys: set[str] = set()
        self.started = time.time()
        self._fh = None
        self._writer = None
        self._count = 0
        try:
            self.set_dir.mkdir(parents=True, exist_ok=True)
            clear_partial(store, self.set_rel, self.index)  # the done-marker goes first
            if not store.local:
                clear_partial(Store(self.set_dir.parent), self.set_dir.name, self.index)  # staged leftovers
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> "ShardWriteError":
        return ShardWriteError(self.set_dir if self.store.local else self.store.show(self.set_rel), self.index, exc,
                               local_dir=self.set_dir)

    def _part_name(self) -> str:
        n = len(self.parts)
        return f"{shard_stem(self.index)}.tar" if n == 0 else f"{shard_stem(self.index)}-{n}.tar"

    def _open(self) -> None:
        self._final = self.set_dir / self._part_name()
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        self._fh = self.open_file(self._tmp, "wb")
        # a fixed member mtime makes a shard's bytes depend on its samples only (reproducible builds)
        self._writer = wds.TarWriter(self._fh, mtime=float(os.environ.get("SOURCE_DATE_EPOCH", "0")))
        self._count = 0

    def _close_part(self) -> None:
        if self._writer is None:
            return
        self._writer.close()  # closes the tar stream; the file object stays ours
        self._fh.flush()
        if self.store.local:
            os.fsync(self._fh.fileno())
        self._fh.close()
        digest = sha256_file(self._tmp)
        size = self.store.upload(self._tmp, f"{self.set_rel}/{self._final.name}")
        self.parts.append({"name": self._final.name, "count": self._count, "bytes": size, "sha256": digest})
        self._writer = self._fh = None

    def _io(self, action, *args):
        try:
            return action(*args)
        except OSError as exc:
            raise self._error(exc) from exc

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
        if self.plan is not None:
            stats["plan"] = self.plan
        stats.update(extra or {})
        self._io(self.store.write_json, f"{self.set_rel}/{marker_name(self.index)}", stats)
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
        if not self.store.local:
            clear_partial(Store(self.set_dir.parent), self.set_dir.name, self.index)
        clear_partial(self.store, self.set_rel, self.index)
