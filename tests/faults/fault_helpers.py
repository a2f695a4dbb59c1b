"""Helpers of the fault-injection suite: real child processes, hurt from outside, and a check that
nothing outside the output changed."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict:
    """Environment of a child command: offline hub, the session's twins, two threads (bit-alike with
    the test process)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false", **extra)


def start(args: list[str], **extra_env: str) -> subprocess.Popen:
    """Start `python ARGS...` from the repository root, stdout and stderr together."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(args: list[str], timeout: float = 300, **extra_env: str) -> tuple[int, str]:
    """Run `python ARGS...` to its end; returns (exit code, output)."""
    proc = start(args, **extra_env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def hurt(proc: subprocess.Popen, sig: int, when=None, after: float = 0.0, timeout: float = 240) -> tuple[int, str]:
    """Send `sig` to `proc` once `when()` is true (or the child ended), `after` seconds later; returns
    (exit code, output)."""
    deadline = time.time() + timeout
    while when is not None and proc.poll() is None and not when() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(after)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def past_interpreter_start(proc: subprocess.Popen):
    """A `when` for `hurt`: the child runs fakeforge code (it has mapped torch's library, which only the
    command's own lazy imports load). A signal before that point meets Python's start-up, before any
    fakeforge code can install a handler (the process just ends, having done nothing)."""
    def ready() -> bool:
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False
    return ready


def one_line_stop(code: int, out: str, sig: int) -> None:
    """A clean stop: exit 130 / 143, the matching line exactly once, no traceback."""
    want = {signal.SIGINT: (130, "interrupted (Ctrl-C)"), signal.SIGTERM: (143, "terminated (SIGTERM)")}[sig]
    assert code == want[0], out[-3000:]
    assert out.count(want[1]) == 1 and "Traceback" not in out and "Exception ignored" not in out, out[-3000:]


def snapshot(root: Path, *skip: Path) -> dict[str, str]:
    """sha256 of every file under `root` except those under `skip` (to assert nothing else changed)."""
    skip_s = [str(Path(s)) for s in skip]
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skip_s):
            dirnames[:] = []
            continue
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                found[str(path)] = "special"
                continue
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def tar_bytes(out: Path) -> dict[str, bytes]:
    """Every tar of a built folder, by path relative to it (its bytes are the dataset's bytes)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).glob("*/*.tar"))}
