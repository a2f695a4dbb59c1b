"""One writer per output: an exclusive `flock` on `<folder>/.fakeforge.lock` (`OutputLock`), or on an
object store a lock object created with a conditional write and kept alive by a heartbeat (`ObjectLock`);
`output_lock(store, purpose)` picks the right one.

The lock file records who holds it (purpose, PID, host, start time, command line) so a second
launch can say exactly what is using the folder. The kernel drops a `flock` when its process dies
(`kill -9`, a crash, a node that reboots on a local disk), so a stale lock file from a dead process
is simply taken over: there is nothing to clean up by hand.

Filesystems:
  * local disks, and NFSv4 / NFSv3 with lockd (Linux emulates `flock` with byte-range locks there):
    the lock works across processes and hosts.
  * filesystems that refuse locks (Lustre mounted without `-o flock`, some FUSE mounts): acquiring
    fails with ENOLCK/ENOSYS/EOPNOTSUPP; `OutputLock` then logs a warning and carries on unlocked,
    so two launches on such a folder are not detected (the shard done-markers still keep each
    finished shard whole).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".fakeforge.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class FolderLockedError(ConfigError):
    """Another live process holds the output folder's lock (the message names it)."""


class OutputLock:
    """Exclusive lock on an output folder for the duration of a `with` block (or acquire/release).

    `purpose` ("build", "train", ...) is written into the lock file and shown to a second launch.
    """

    def __init__(self, folder: str | Path, purpose: str, name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.purpose = purpose
        self.path = self.folder / name
        self._fh = None
        self.locked = False

    def holder(self) -> dict:
        """What the lock file says about its (last) holder; {} if unreadable."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "OutputLock":
        """Take the lock or raise FolderLockedError naming the holder. Creates the folder if needed."""
        if self._fh is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise FolderLockedError(self._locked_message()) from None
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                fh.close()
                raise
            log.warning("the filesystem of '%s' does not support file locks (%s): a second launch on this "
                        "folder will not be detected", self.folder, exc.strerror)
            self._fh = fh
            return self
        info = {"purpose": self.purpose, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500]}
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info))
        fh.flush()
        self._fh, self.locked = fh, True
        return self

    def _locked_message(self) -> str:
        h = self.holder()
        who = (f"{h.get('purpose', 'a fakeforge run')} (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
               f"started {h.get('started', '?')}: {h.get('command', '?')})") if h else "another process"
        return (f"output folder '{self.folder}' is in use by {who}; wait for it to finish, stop it, or choose "
                "another output folder")

    def release(self) -> None:
        """Drop the lock (the file stays; it is harmless once unlocked)."""
        if self._fh is None:
            return
        try:
            if self.locked:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh, self.locked = None, False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Nothing to do: a held flock cannot be lost while the process lives."""



# ------------------------------------------------------------------------------------------ object stores
LEASE_SECONDS = float(os.environ.get("FAKEFORGE_LOCK_LEASE_S", "120"))


class LockLostError(ConfigError):
    """The lock object was taken over while this process held it (its heartbeat stopped for too long)."""


class ObjectLock:
    """One writer per output prefix on an object store, without file locks.

    * Acquire: create `<prefix>/.fakeforge.lock` with a conditional write ("create only if absent":
      S3's `If-None-Match: *`, used by s3fs for `mode="create"`). The object holds the holder's purpose,
      PID, host, command, and a heartbeat time.
    * Heartbeat: a thread rewrites the object every lease/4 seconds, conditionally on its own last ETag
      (`If-Match`), so a holder that was taken over notices at its next beat (`check()` then raises).
    * Stale lock: a lock whose last write is older than the lease (default 120 s,
      $FAKEFORGE_LOCK_LEASE_S) belongs to a dead or stuck process; it is taken over by a conditional
      overwrite on the ETag that was read, so of two launches taking it over at once exactly one wins.
    * Release: the holder deletes the object.

    Guarantees rest on the store honouring conditional writes (S3 and S3-compatible stores that support
    If-None-Match / If-Match) and on clocks within a few seconds of the store's (the lease is judged from
    the object's LastModified). Protocols whose fsspec backend has no atomic create (checked with
    `mode="create"` support) fall back to check-then-write: a warning says a second launch is then
    detected only on a best-effort basis.
    """

    def __init__(self, store, purpose: str, name: str = LOCK_FILE, lease: float | None = None):
        self.store, self.purpose, self.rel = store, purpose, name
        self.lease = float(lease if lease is not None else LEASE_SECONDS)
        self.path = store.path(name)
        self.locked = False
        self._etag = None
        self._stop = None
        self._thread = None
        self.lost: str | None = None
        self.atomic = store.protocol in ("s3", "s3a")

    def _info(self) -> bytes:
        return json.dumps({"purpose": self.purpose, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": getattr(self, "_started", None) or self._now_iso(),
                           "heartbeat": self._now_iso(), "lease_s": self.lease,
                           "command": " ".join(sys.argv)[:500]}).encode()

    @staticmethod
    def _now_iso() -> str:
        return datetime.datetime.now().isoformat(timespec="seconds")

    def holder(self) -> dict:
        try:
            return json.loads(self.store.fs.cat_file(self.path) or b"{}")
        except (OSError, ValueError):
            return {}

    def _stat(self):
        info = self.store.fresh("info", self.path)
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        if isinstance(modified, str):
            modified = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00"))
        age = None
        if isinstance(modified, datetime.datetime):
            age = (datetime.datetime.now(datetime.timezone.utc) - modified.astimezone(datetime.timezone.utc)
                   ).total_seconds()
        return info.get("ETag"), age

    def _write(self, **cond) -> None:
        self.store.fs.pipe_file(self.path, self._info(), **cond)
        self._etag = self._stat()[0]

    def acquire(self) -> "ObjectLock":
        """Take the lock or raise FolderLockedError naming the holder (and how old its heartbeat is)."""
        self._started = self._now_iso()
        try:
            if self.atomic:
                self._write(mode="create")
            else:
                if self.store.fs.exists(self.path):
                    raise FileExistsError(self.path)
                log.warning("'%s' has no conditional writes in fakeforge's lock: a second launch on it is "
                            "detected only on a best-effort basis", self.store)
                self._write()
        except FileExistsError:
            etag, age = self._stat()
            if age is None or age < self.lease:
                raise FolderLockedError(self._locked_message(age)) from None
            log.warning("taking over the lock of '%s': its holder's last heartbeat is %.0f s old (lease %.0f s)",
                        self.store, age, self.lease)
            try:
                self._write(**({"IfMatch": etag} if self.atomic else {}))
            except OSError:  # another launch took it over first
                raise FolderLockedError(self._locked_message(0.0)) from None
        self.locked = True
        self._start_heartbeat()
        return self

    def _locked_message(self, age) -> str:
        h = self.holder()
        who = (f"{h.get('purpose', 'a fakeforge run')} (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
               f"started {h.get('started', '?')}: {h.get('command', '?')})") if h else "another process"
        beat = f"; its last heartbeat is {age:.0f} s old, it is taken over after {self.lease:.0f} s" \
            if age is not None else ""
        return (f"output '{self.store}' is in use by {who}{beat}; wait for it to finish, stop it, or choose another "
                "output")

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(max(self.lease / 4, 0.5)):
                try:
                    self._write(**({"IfMatch": self._etag} if self.atomic else {}))
                except OSError as exc:
                    if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
                        h = self.holder()
                        self.lost = (f"the lock of '{self.store}' was taken over by pid {h.get('pid', '?')} on "
                                     f"{h.get('host', '?')} (this process's heartbeat was late); stopping")
                        return
                    log.warning("lock heartbeat on '%s' failed (%s); retrying", self.store, exc)

        self._thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LockLostError when another process took the lock over."""
        if self.lost:
            raise LockLostError(self.lost)

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=30)
        if self.locked and not self.lost:
            try:
                if self.holder().get("pid") == os.getpid():
                    self.store.fs.rm_file(self.path)
            except OSError:
                pass
        self.locked = False

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def output_lock(store, purpose: str, name: str = LOCK_FILE):
    """The lock for an output: `OutputLock` (flock) on local folders, `ObjectLock` on other stores."""
    if store.local:
        return OutputLock(store.root, purpose, name)
    return ObjectLock(store, purpose, name)
