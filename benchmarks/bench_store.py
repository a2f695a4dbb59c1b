"""Build throughput into an object store (s3:// on a local moto server) against a local folder, in one run.

    python benchmarks/bench_store.py [--images 240] [--side 256] [--shard 40] [--generator real] [--repeats 2]

The same build config (a COCO-layout source of `--images` noise JPEGs, `--shard` samples per shard,
JPEG q95 at 256 px) is built into a fresh local folder and into a fresh s3:// prefix on a moto S3 server
started on a free loopback port, alternating, `--repeats` times each; then `fakeforge verify` runs over
both. Reported: images/s of each and the ratios s3/local. With the pass-through `real` generator nothing
hides the store's cost (the worst case); `--generator sd2` (tiny twin) shows a generator-bound build.
moto keeps objects in memory in a Python process: a real store adds network latency and bandwidth, but
the builder's own overhead (staging, upload, size read-back, LIST-based resume checks) is what is measured.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _moto(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _noise_coco(root: Path, n: int, side: int) -> dict:
    import json

    import numpy as np
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries, anns = [], []
    for i in range(n):
        name = f"{i + 1:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(images / name, quality=90)
        entries.append({"id": i + 1, "file_name": name})
        anns.append({"id": i + 1, "image_id": i + 1, "caption": f"noise {i}"})
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": entries, "annotations": anns}))
    return {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--shard", type=int, default=40)
    p.add_argument("--generator", default="real")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    port_number = port.getsockname()[1]
    port.close()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port_number}", AWS_EC2_METADATA_DISABLED="true",
                      HF_HUB_OFFLINE="1")
    server = _moto(port_number)
    import logging

    import s3fs
    from builder_helpers import write_build_config

    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import build
    from fakeforge.shards.verify import verify_dataset

    logging.basicConfig(level=logging.WARNING)
    s3fs.S3FileSystem().mkdir("bench")
    times: dict[str, list[float]] = {"local": [], "s3": [], "verify local": [], "verify s3": []}
    server_cpu: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            src = _noise_coco(tmp / "coco", args.images, args.side)
            sets = [{"name": "set", "generator": args.generator}]
            image = {"format": "jpeg", "quality": 95, "size": 256, "resize": "center_crop"}
            for r in range(args.repeats):
                for kind in ("local", "s3"):
                    out = str(tmp / f"local{r}") if kind == "local" else f"s3://bench/run{r}"
                    cfg = write_build_config(tmp / f"{kind}{r}.yaml", out, sets, src, image=image,
                                             shards={"max_count": args.shard, "max_size_mb": 1024})
                    resolved = resolve_build(str(cfg), tiny=True)
                    cpu = _cpu_seconds(server.pid)
                    start = time.perf_counter()
                    summary = build(resolved, progress=False)
                    times[kind].append(time.perf_counter() - start)
                    if kind == "s3":
                        server_cpu.append(_cpu_seconds(server.pid) - cpu)
                    assert summary["written"] == args.images, summary
                    start = time.perf_counter()
                    verify_dataset(out)
                    times[f"verify {kind}"].append(time.perf_counter() - start)
            mb = sum(p.stat().st_size for p in (tmp / "local0" / "set").glob("*.tar")) / 2**20
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.images} images ({mb:.1f} MiB of shards, {args.images // args.shard} shards), generator "
          f"{args.generator}, median of {args.repeats}")
    for k in ("local", "s3"):
        print(f"  build  {k:6s} {med[k]:7.2f} s  {args.images / med[k]:7.1f} img/s")
    for k in ("local", "s3"):
        print(f"  verify {k:6s} {med['verify ' + k]:7.2f} s  {mb / med['verify ' + k]:7.1f} MiB/s")
    print(f"  build throughput s3/local = {med['local'] / med['s3']:.2f}  (1.00 = no cost); the moto server "
          f"itself used {statistics.median(server_cpu):.2f} CPU s per s3 build, on {os.cpu_count()} cores "
          "shared with the build")
    print(f"  verify throughput s3/local = {med['verify local'] / med['verify s3']:.2f}")


if __name__ == "__main__":
    main()
