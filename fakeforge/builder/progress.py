"""Build progress: a tqdm bar on a terminal, one log line every N seconds per rank elsewhere.

A cluster job's log is a file: tqdm's redraws (about ten a second) would fill it with tens of MB over a
long build. `LogProgress` writes one line per interval instead, with images/s, done/total and an ETA.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("fakeforge.builder")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class LogProgress:
    """tqdm's `update` / `set_postfix_str` / `close`, as one log line per `every` seconds."""

    def __init__(self, total: int, rank: int = 0, every: float = 30.0, clock=time.monotonic):
        self.total, self.rank, self.every, self.clock = total, rank, every, clock
        self.done = 0
        self.where = ""
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info("build[%d]: %d/%d images (%.1f%%), %.2f img/s, ETA %s%s", self.rank, self.done, self.total, pct,
                 rate, eta, f", at {self.where}" if self.where else "")

    def set_postfix_str(self, text: str) -> None:
        self.where = text

    def close(self) -> None:
        if self.done and self.clock() - self.last > 0:
            self.emit()


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(total: int, rank: int, enabled: bool, every: float, stream=None):
    """A tqdm bar when `stream` (default stderr) is a terminal, else `LogProgress`; nothing when disabled."""
    if not enabled:
        return NoProgress()
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="img", desc=f"build[{rank}]", position=rank, dynamic_ncols=True)
    return LogProgress(total, rank, every)
