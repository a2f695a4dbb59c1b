"""What deciding "done or redo" costs on a rerun, against the plain library calls it cannot do without.

    python benchmarks/bench_resume.py [--shards 200] [--samples 50] [--kb 20] [--repeats 3]

A finished dataset of `--shards` shards (each `--samples` samples of `--kb` KiB, written by the real
ShardSink) is checked the way a rerun checks it:
  * "resume": `shard_state` for every shard (done-marker + tar sizes + stray parts, one folder listing),
    against "marker+stat": `json.loads` of every done-marker and `os.stat` of every tar (the least a
    size check needs; the old marker-only check already paid the json part);
  * "verify-existing": `shard_state(check_hash=True)`, against "sha256": `hashlib.sha256` over every tar.
The ratios that matter are resume/(marker+stat) and verify-existing/sha256; the median of `--repeats` runs is
reported (the page cache is warm after the first run, for both sides alike).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_dataset(set_dir: Path, shards: int, samples: int, kb: int) -> None:
    from fakeforge.shards.writer import ShardSink

    payload = os.urandom(kb * 1024)
    for s in range(shards):
        sink = ShardSink(set_dir, s, 1 << 40, {"set": "bench"})
        for i in range(samples):
            sink.write({"__key__": f"bench-{s}-{i}", "jpg": payload, "json": {"i": i}})
        sink.close()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=200)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--kb", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from fakeforge.shards.store import Store
    from fakeforge.shards.writer import list_shard_files, shard_state

    with tempfile.TemporaryDirectory() as tmp:
        set_dir = Path(tmp) / "bench"
        make_dataset(set_dir, args.shards, args.samples, args.kb)
        tars = sorted(set_dir.glob("*.tar"))
        total_mb = sum(t.stat().st_size for t in tars) / 2**20

        store = Store(set_dir.parent)

        def resume():
            listing = list_shard_files(store, "bench")
            assert all(shard_state(store, "bench", i, existing=listing)[0] for i in range(args.shards))

        markers = sorted(set_dir.glob("*.done.json"))

        def stat():
            for m in markers:
                json.loads(m.read_text())
            for t in tars:
                os.stat(t)

        def verify_existing():
            listing = list_shard_files(store, "bench")
            assert all(shard_state(store, "bench", i, existing=listing, check_hash=True)[0]
                       for i in range(args.shards))

        def sha256():
            for t in tars:
                h = hashlib.sha256()
                with open(t, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)

        runs = {name: [] for name in ("resume", "marker+stat", "verify-existing", "sha256")}
        for _ in range(args.repeats):  # alternate so machine noise hits both sides alike
            for name, fn in (("resume", resume), ("marker+stat", stat), ("verify-existing", verify_existing),
                             ("sha256", sha256)):
                runs[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.shards} shards, {total_mb:.0f} MiB, median of {args.repeats} runs")
    for name, secs in med.items():
        print(f"  {name:16s} {secs * 1000:9.1f} ms")
    print(f"  resume / (marker+stat)    = {med['resume'] / med['marker+stat']:.2f}x "
          f"({med['resume'] / args.shards * 1e6:.0f} us per shard)")
    print(f"  verify-existing / sha256  = {med['verify-existing'] / med['sha256']:.2f}x")


if __name__ == "__main__":
    main()
