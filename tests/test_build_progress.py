"""Build progress in a non-terminal log: one line per interval (images/s, done/total, ETA), never one per
image, and tqdm only when stderr is a terminal."""
from __future__ import annotations

import logging
import os
import pty

from fakeforge.builder.progress import LogProgress, make_progress


def test_log_progress_writes_one_line_per_interval_not_per_image(caplog):
    """1000 images at 10 a second with a 30 s interval: lines at 30, 60 and 90 s plus the closing one."""
    now = [0.0]
    bar = LogProgress(total=1000, rank=2, every=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="fakeforge.builder"):
        for i in range(1, 1001):
            now[0] = i / 10
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("build[")]
    assert lines == ["build[2]: 300/1000 images (30.0%), 10.00 img/s, ETA 1m10s",
                     "build[2]: 600/1000 images (60.0%), 10.00 img/s, ETA 0m40s",
                     "build[2]: 900/1000 images (90.0%), 10.00 img/s, ETA 0m10s",
                     "build[2]: 1000/1000 images (100.0%), 10.00 img/s, ETA 0m00s"]


def test_tqdm_only_on_a_terminal(tmp_path):
    from tqdm.std import tqdm

    with open(tmp_path / "job.log", "w") as log_file:                  # a cluster job's log file
        assert isinstance(make_progress(10, 0, True, 30.0, stream=log_file), LogProgress)
    leader, follower = pty.openpty()                                    # a real terminal
    try:
        with os.fdopen(follower, "w") as terminal:
            bar = make_progress(10, 0, True, 30.0, stream=terminal)
            assert isinstance(bar, tqdm)
            bar.close()
    finally:
        os.close(leader)
