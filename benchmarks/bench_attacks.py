"""Attacks: one batched call vs a per-image loop, and our wrapper vs the plain torchattacks call, one run.

    python benchmarks/bench_attacks.py [--attack pgd] [--model resnet50 | --tiny] [--images 32] [--size 224]
                                       [--repeats 3] [--device cuda] [--threads N]

The surrogate is a timm model with its real architecture and *random* weights (`pretrained=False`, so
nothing is downloaded; timing does not depend on the weights), wrapped in `attacks.surrogate.Surrogate`
(normalisation inside); `--tiny` uses the builder's tiny surrogate twin instead (toy resnet50, built
into a temp folder), where Python overhead per call dominates. Three sides run the same attack,
hyperparameters, images and labels:
  * "plain batched":   torchattacks' class called once on all images (the library baseline);
  * "ours batched":    `attacks.ATTACKS[attack]` called once on all images (what the builder does);
  * "ours per-image":  the same object called image by image in a Python loop.
Sides alternate; the median of --repeats runs is reported with the best run. With random starts
(PGD) every side reseeds torch before each call, and outputs of the three are checked to agree.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    import timm
    import torch
    import torchattacks

    from attacks import ATTACKS
    from attacks.surrogate import Surrogate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack", default="pgd", choices=["fgsm", "pgd", "mifgsm", "nifgsm", "vnifgsm"])
    p.add_argument("--model", default="resnet50", help="timm architecture (random weights)")
    p.add_argument("--tiny", action="store_true", help="the tiny surrogate twin instead of --model")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.tiny:
        import tempfile

        from fakeforge.tiny import build_tiny

        args.model = "tiny twin surrogate_resnet50"
        sur = Surrogate.load(str(build_tiny("surrogate_resnet50", tempfile.mkdtemp())), args.device)
    else:
        model = timm.create_model(args.model, pretrained=False).eval().requires_grad_(False)
        cfg = timm.data.resolve_model_data_config(model)
        sur = Surrogate(model, cfg["mean"], cfg["std"], cfg["input_size"][1:], cfg["interpolation"], args.model)
        sur = sur.to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((args.images, 3, args.size, args.size), generator=gen).to(args.device)
    with torch.no_grad():
        labels = sur(images).argmax(1)
    ours = ATTACKS.get(args.attack)(sur)
    plain = ours.make(torchattacks)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        torch.manual_seed(0)
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    sides = {
        "plain batched": lambda: plain(images, labels),
        "ours batched": lambda: ours(images, labels),
        "ours per-image": lambda: torch.cat([ours(images[i:i + 1], labels[i:i + 1]) for i in range(len(images))]),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    outs = {}
    timed(sides["ours batched"])  # warm-up (cudnn autotune, allocator)
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t, outs[name] = timed(fn)
            times[name].append(t)
    if args.attack in ("fgsm", "mifgsm", "nifgsm"):  # deterministic attacks: all sides must agree
        for name in sides:
            diff = (outs[name] - outs["plain batched"]).abs().max().item()
            assert diff < 1e-4 or args.device.startswith("cuda"), (name, diff)
    print(f"{args.attack} on {args.model} (random weights), {args.images} images {args.size}px, device "
          f"{args.device}, torch threads {torch.get_num_threads()}, {ours!r}")
    base = statistics.median(times["ours batched"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:15s} median {med:8.3f} s  best {min(ts):8.3f} s  {args.images / med:8.2f} img/s  "
              f"x{med / base:6.2f} of ours batched")
    print(f"  batched speed-up over the per-image loop: x{statistics.median(times['ours per-image']) / base:.2f}; "
          f"wrapper overhead vs plain torchattacks: x{base / statistics.median(times['plain batched']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
