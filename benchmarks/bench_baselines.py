"""Scoring throughput of the baseline detectors (CNNSpot, NPR) against the plain library forward each wraps.

    python benchmarks/bench_baselines.py                 # tiny twins on CPU (default)
    python benchmarks/bench_baselines.py --full-size     # the real architectures at 224 px (random weights, no
                                                         # download; CUDA when present)

In one run, on the same input batch: images/s of each detector's `score()` (device transfer, forward, sigmoid,
copy back to the CPU) next to the plain forward it wraps, timed alternately (median batch time):
  * CNNSpot: timm `resnet50` forward with a 1-logit head (`net(x)`);
  * NPR: the same timm ResNet (stem + layer1-2) on the residual computed by two `F.interpolate` calls.
The ratio detector / plain shows what the detector adds on top of the library.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_detectors import timed_pair


def plain_forward(name: str, det):
    """The library call the detector wraps, on the detector's own modules."""
    net = det.net
    if name == "npr":
        def run(x):
            down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
            up = F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)
            return net((x - up) * det.config.residual_scale)
        return run
    return net


def bench(full_size: bool, batch: int, iters: int, warmup: int) -> list[dict]:
    from detector.families.cnnspot import CNNSpot, CNNSpotConfig
    from detector.families.npr import NPR, NPRConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, cls, cfg in (("cnnspot", CNNSpot, CNNSpotConfig()), ("npr", NPR, NPRConfig())):
        det = cls.from_config(cfg, device=device, tiny=not full_size, pretrained=False).eval()
        size = det.preprocess.image_size
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        xd = x.to(device)
        plain = plain_forward(name, det)
        t_det, t_plain = timed_pair(lambda _x, d=det, c=x: d.score(c), lambda _x, f=plain, g=xd: f(g), x, iters,
                                    warmup, device)
        rows.append({"detector": name, "device": str(device), "input": f"{batch}x3x{size}x{size}",
                     "trainable": det.num_trainable(), "score_images_per_s": round(batch / t_det, 1),
                     "plain_images_per_s": round(batch / t_plain, 1), "ratio": round(t_plain / t_det, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size", action="store_true", help="real architectures at 224 px instead of tiny twins")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 64 tiny, 32 full size)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = bench(args.full_size, args.batch or (32 if args.full_size else 64), args.iters, args.warmup)
    print("| detector | device | input | trainable | score() img/s | plain forward img/s | score / plain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['device']} | {r['input']} | {r['trainable']:,} | {r['score_images_per_s']} | "
              f"{r['plain_images_per_s']} | {r['ratio']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
