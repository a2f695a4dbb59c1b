"""The cascade (DeepFloyd IF) and StyleGAN-XL generators against their plain counterparts, same inputs, one run.

    python benchmarks/bench_cascade_stylegan.py [--images 8] [--batch-size 4] [--repeats 3] [--threads N]

cascade: the `cascade` generator (DeepFloyd IF twin, stages I + II: T5 run once per batch, stage II
    loaded without its encoder) against the hand-written diffusers chain of the IF model card where
    each stage encodes the prompts itself; same prompts, seeds, steps (2) and batch size.
stylegan_xl: the StyleGAN-XL generator with `per_sample: true` (one image at a time, bit-identical to
    the official script) against `per_sample: false` (one batched synthesis) on the tiny twin.
Sides alternate; the median and best of `--repeats` runs are reported as images/s and as a ratio.
The tiny twins show the overheads, not the real models' speed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _alternating(fn_a, fn_b, repeats):
    """(median, best) seconds of each side, the sides run in turn so machine load hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return (statistics.median(ta), min(ta)), (statistics.median(tb), min(tb))


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    from fakeforge.tiny import build_tiny
    from generators import generator_config, load_preset
    from generators.base import GenRequest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_cascade_stylegan_"))
    reqs = [GenRequest(f"k{i}", f"a red cat number {i} on a beach", seed=i) for i in range(args.images)]
    batches = [reqs[i:i + args.batch_size] for i in range(0, len(reqs), args.batch_size)]

    build_tiny("deepfloyd_if", root)
    cls, cfg = generator_config(dict(load_preset("deepfloyd_if"), batch_size=args.batch_size), tiny=True,
                                tiny_root=root)
    cascade = cls(cfg, "cpu")
    cascade.load()
    p1 = IFPipeline.from_pretrained(root / "deepfloyd_if" / "stage_I")
    p2 = IFSuperResolutionPipeline.from_pretrained(root / "deepfloyd_if" / "stage_II")
    for pipe in (p1, p2):
        pipe.set_progress_bar_config(disable=True)

    def ours():
        for b in batches:
            cascade.generate(b)

    def plain():
        for b in batches:
            gens = [torch.Generator("cpu").manual_seed(r.seed) for r in b]
            prompts = [r.prompt for r in b]
            low = p1(prompt=prompts, num_inference_steps=2, guidance_scale=7.0, generator=gens, output_type="pt").images
            p2(prompt=prompts, image=low, num_inference_steps=2, guidance_scale=4.0, noise_level=250, generator=gens,
               output_type="np")

    rows = []
    ours()  # warm-up
    plain()
    a, b = _alternating(ours, plain, args.repeats)
    rows.append(("cascade (IF twin, I+II)", "cascade generator", "diffusers chain", a, b))

    build_tiny("stylegan_xl", root)
    cls, cfg = generator_config(dict(load_preset("stylegan_xl"), batch_size=args.batch_size), tiny=True,
                                tiny_root=root)
    single = cls(cfg, "cpu")
    single.load()
    batched = cls(replace(cfg, per_sample=False), "cpu")
    batched.model, batched.spec = single.model, single.spec
    a, b = _alternating(lambda: [single.generate(x) for x in batches], lambda: [batched.generate(x) for x in batches],
                        args.repeats)
    rows.append(("stylegan_xl (twin)", "per_sample: true", "per_sample: false", a, b))

    print(f"{args.images} images, batch size {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats (median / best)")
    for name, left, right, (am, ab), (bm, bb) in rows:
        n = args.images
        print(f"{name:26s} {left}: {n / am:7.2f} / {n / ab:7.2f} img/s   {right}: {n / bm:7.2f} / {n / bb:7.2f} img/s"
              f"   ratio {bm / am:5.2f} (median), {bb / ab:5.2f} (best)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
