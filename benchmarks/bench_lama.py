"""LaMa runner: batched vs one image at a time, same model, images and masks, one run.

    python benchmarks/bench_lama.py [--model big-lama.pt] [--images 32] [--size 256x192] [--batch-size 8]
                                    [--repeats 3] [--device cpu] [--threads N]

Without --model the tiny TorchScript twin (big-lama's call contract, random weights) is built into a
temp folder; pass the real big-lama.pt to measure the real network. Both sides run
`LamaRunner.run` (symmetric pad to a multiple of 8, run, crop back): "batched" hands it
`--batch-size` images per call (one forward per padded size), "single" one image per call. Sizes
are odd on purpose so padding and cropping are exercised. Sides alternate and the median of
`--repeats` runs is reported, with the best run (more robust on a shared machine); outputs of both
sides are checked to agree.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from generators.lama import LamaRunner, load_torchscript
    from generators.masks import MaskConfig, make_mask

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="big-lama.pt (default: the tiny twin, built in a temp folder)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", default="253x189", help="WxH of every image (default odd: padded to 256x192)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if model_path is None:
            from fakeforge.tiny import build_tiny

            model_path = str(build_tiny("lama", tmp) / "big-lama.pt")
        runner = LamaRunner(load_torchscript(Path(model_path), args.device), args.device)

        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
        mask_cfg = MaskConfig(strategy="brush", brush="medium", min_area=0.1, max_area=0.4)
        masks = [make_mask(mask_cfg, (w, h), seed)[0] for seed in range(args.images)]

        def sync():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def batched():
            out = []
            for i in range(0, len(images), args.batch_size):
                out += runner.run(images[i:i + args.batch_size], masks[i:i + args.batch_size])
            sync()
            return out

        def single():
            out = [runner.run([img], [m])[0] for img, m in zip(images, masks)]
            sync()
            return out

        for _ in range(3):  # warm-up: allocator, kernel selection, TorchScript's profiling executor (per shape)
            batched(), single()
        times = {"batched": [], "single": []}
        outs = {}
        for _ in range(args.repeats):
            for name, fn in (("batched", batched), ("single", single)):
                start = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - start)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs["batched"], outs["single"]))

    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    best = {k: args.images / min(v) for k, v in times.items()}
    print(f"model: {args.model or 'tiny twin (random weights)'}; device: {args.device}; "
          f"threads: {torch.get_num_threads()}; {args.images} images {w}x{h}; batch size {args.batch_size}; "
          f"{args.repeats} runs per side")
    for k in ("batched", "single"):
        print(f"  {k:8s} median {rate[k]:8.1f} images/s, best {best[k]:8.1f} images/s   "
              f"(runs: {', '.join(f'{t:.3f}s' for t in times[k])})")
    print(f"  batched / single = {rate['batched'] / rate['single']:.2f}x (median), "
          f"{best['batched'] / best['single']:.2f}x (best)   max |batched - single| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
