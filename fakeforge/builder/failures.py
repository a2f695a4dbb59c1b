"""How a build fails: shard write errors, a set whose first batch fails with one error, a set over its
failure budget. Everything here turns into `BuildFailed` (exit 1) with lines that name the set or shard.
"""
from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from pathlib import Path

from fakeforge.builder.worker import BatchReport
from fakeforge.shards.manifest import collect_stats
from fakeforge.shards.writer import ShardWriteError

log = logging.getLogger("fakeforge.builder")
MAX_SHARD_WRITE_FAILURES = 3  # transient write errors tolerated (other shards go on) before the build stops


class BuildFailed(Exception):
    """The build ran but did not produce a complete, within-budget dataset; the message says what failed."""


class DiskFullError(BuildFailed):
    """The output filesystem is full; the message names the folder and the free space."""


class SetGuard:
    """Stops a set whose first batch (at least two samples when the set has them) failed in the
    generator for every sample with one and the same error: that is a configuration or code problem
    (a rejected argument, NaN everywhere), not bad data. Failures on the samples' own input (source
    image, caption) are data and do not count."""

    def __init__(self, name: str, planned: int):
        self.name, self.planned = name, planned
        self.seen = 0
        self.errors: Counter = Counter()
        self.checking = True

    def __call__(self, report: BatchReport) -> None:
        if not self.checking:
            return
        self.seen += report.size - report.input_failed  # samples that reached the generator
        self.errors.update(report.generator_errors)
        if sum(self.errors.values()) < self.seen or len(self.errors) > 1:
            self.checking = False  # something was made, or the failures differ: the generator works
            return
        if self.seen and self.seen >= min(2, self.planned):
            self.checking = False
            error = next(iter(self.errors))
            raise BuildFailed(f"set '{self.name}': the first {self.seen} sample(s) all failed in the generator "
                              f"with the same error, stopping (a configuration or code problem, not bad data): "
                              f"{error}")


def shard_write_failed(exc: ShardWriteError, set_name: str, index: int, summary: dict) -> None:
    """Record a dropped shard; stop the build when the disk is full, the folder unwritable, or errors repeat."""
    if exc.disk_full:
        free = _free_bytes(exc.local_dir)
        raise DiskFullError(f"disk full: no space left for '{exc.set_dir}' ({_human(free)} free on that "
                            "filesystem); the unfinished shard was dropped, finished shards are kept. Free some "
                            "space (or use another --output) and rerun the same command to resume") from None
    summary["shard_errors"].append({"set": set_name, "shard": f"{index:06d}", "error": str(exc.cause)})
    log.error("%s; the shard was dropped and will be redone on the next run", exc)
    if not exc.transient or len(summary["shard_errors"]) >= MAX_SHARD_WRITE_FAILURES:
        raise BuildFailed("\n".join(f"shard {e['set']}/{e['shard']}: {e['error']}" for e in summary["shard_errors"])
                          + ("\nstopping: the output folder cannot be written" if not exc.transient else
                             f"\nstopping after {len(summary['shard_errors'])} shards failed to write")) from None


def over_budget(out, manifest: dict, max_fraction: float) -> list[str]:
    """One line per set whose failed samples exceed `max_fraction` (or that holds no sample at all),
    with its counts and most common errors."""
    lines = []
    for name, info in manifest["sets"].items():
        total = info["count"] + info["failed"]
        if total == 0 or (info["failed"] / total <= max_fraction and info["count"] > 0):
            continue
        common = most_common_errors(out, name)
        if info["count"] == 0:
            lines.append(f"set '{name}' holds 0 samples: all {total} failed; most common errors: {common}")
        else:
            lines.append(f"set '{name}': {info['failed']} of {total} samples failed "
                         f"({100 * info['failed'] / total:.1f}% > max_failed_fraction {100 * max_fraction:g}%); "
                         f"most common errors: {common}")
    return lines


def most_common_errors(out, set_name: str, n: int = 3) -> str:
    """The `n` most common failure messages of a set (paths and quoted names folded), with counts."""
    counts: Counter = Counter()
    for st in collect_stats(out, set_name):
        for f in st.get("failures", []):
            counts[re.sub(r"'[^']*'", "'...'", str(f.get("error")))[:200]] += 1
    return "; ".join(f"{c}x {msg}" for msg, c in counts.most_common(n)) or "(none recorded)"


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"
