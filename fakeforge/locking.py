"""One writer per output folder: an exclusive `flock` on `<folder>/.fakeforge.lock`.

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

    def __init__(self, folder: str | Path, purpose: str):
        self.folder = Path(folder)
        self.purpose = purpose
        self.path = self.folder / LOCK_FILE
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
