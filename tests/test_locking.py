"""The output-folder lock: a second live holder is refused by name; a dead holder's lock is taken over."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fakeforge.locking import LOCK_FILE, FolderLockedError, OutputLock

HOLD = ("import sys, time; from fakeforge.locking import OutputLock\n"
        "lock = OutputLock(sys.argv[1], 'build').acquire(); print('held', flush=True); time.sleep(60)")


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_with_the_holder_named(tmp_path):
    proc = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderLockedError, match=rf"in use by build \(pid {proc.pid} on "):
            OutputLock(tmp_path / "out", "train").acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path / "out")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "out" / LOCK_FILE).is_file()  # the stale file is still there
    with OutputLock(tmp_path / "out", "build") as lock:
        assert lock.locked and lock.holder()["pid"] == os.getpid()
    again = OutputLock(tmp_path / "out", "build").acquire()  # released on exit
    again.release()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with OutputLock(tmp_path, "build"):
        start = time.time()
        with pytest.raises(FolderLockedError):
            OutputLock(tmp_path, "build").acquire()
        assert time.time() - start < 1  # refused at once, never waits
