"""Zoo sets: one zoo of K models vs K separate sets, per-sample settings vs fixed, model loads per rank.

    python benchmarks/bench_zoo.py [--models 3] [--samples 24] [--repeats 5] [--threads 2]
                                   [--plan-models 100] [--plan-ranks 4] [--plan-samples 20000]

Three measurements in one run, on tiny twins (CPU or GPU, offline):
  * zoo vs separate: a zoo set of K twin presets against K plain sets, one per preset, each limited to
    the number of samples the zoo gives that model, so both sides make the same number of images with
    the same settings. Whole `build()` calls into fresh folders (twins prebuilt); sides alternate; the
    median of --repeats is reported. Ratio = separate seconds / zoo seconds (>= 0.95 expected).
  * per-sample vs fixed: one sd2-twin set with fixed settings against the same set whose scheduler
    (2 choices) and guidance (2 choices) are drawn per sample, same steps (the same work per image).
    Ratio = fixed seconds / per-sample seconds (>= 0.9 expected).
  * model loads per rank: the real zoo planner (`plan_zoo_shards` + `assign_jobs`) for a zoo of
    --plan-models equal-weight models and --plan-samples samples on --plan-ranks ranks: distinct models
    per rank, model switches while a rank walks its jobs (= loads), and models placed on two ranks.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PRESETS = ["sd2", "sd14", "sd20", "sdxl", "sd3"]


def _config(path: Path, out: Path, sets: list[dict], limit: int, max_count: int) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"output": str(out), "source": {"kind": "demo", "limit": limit},
                                    "image": {"format": "png", "size": 64, "resize": "center_crop"},
                                    "shards": {"max_count": max_count, "max_size_mb": 64}, "sets": sets}))
    return path


def _timed_build(cfg: Path, tiny_dir: str, cpu: dict | None = None, side: str = "") -> float:
    """Wall seconds of one whole build (the CPU seconds of this process go into `cpu[side]`)."""
    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import build

    resolved = resolve_build(cfg, tiny=True, tiny_root=tiny_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    build(resolved, progress=False)
    if cpu is not None:
        cpu.setdefault(side, []).append(time.process_time() - cpu_start)
    return time.perf_counter() - start


def zoo_vs_separate(k: int, samples: int, repeats: int, tiny_dir: str, work: Path) -> dict:
    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import plan_build
    from fakeforge.builder.ranks import process_state

    presets = PRESETS[:k]
    zoo_sets = [{"name": "zoo", "generator": {"type": "zoo", "models": presets}}]
    probe = resolve_build(_config(work / "probe.yaml", work / "probe", zoo_sets, samples, 16), tiny=True,
                          tiny_root=tiny_dir)
    (_rset, jobs), = plan_build(probe, process_state(), work / "probe")
    share = Counter()
    for job in jobs:
        share[job.model] += len(job.records)
    times: dict[str, list[float]] = {"zoo": [], "separate": []}
    cpu: dict[str, list[float]] = {}
    sep = [{"name": p, "generator": p, "source": {"limit": share[p]}} for p in presets if share[p]]
    _timed_build(_config(work / "warm.yaml", work / "warm", sep, samples, 16), tiny_dir)  # imports, caches
    for r in range(repeats):
        times["zoo"].append(_timed_build(_config(work / f"z{r}.yaml", work / f"z{r}", zoo_sets, samples, 16),
                                         tiny_dir, cpu, "zoo"))
        times["separate"].append(_timed_build(_config(work / f"s{r}.yaml", work / f"s{r}", sep, samples, 16),
                                              tiny_dir, cpu, "separate"))
    z, s = statistics.median(times["zoo"]), statistics.median(times["separate"])
    zc, sc = statistics.median(cpu["zoo"]), statistics.median(cpu["separate"])
    return {"models": presets, "shares": dict(share), "zoo_s": round(z, 2), "separate_s": round(s, 2),
            "ratio": round(s / z, 3), "cpu_ratio": round(sc / zc, 3),
            "best_ratio": round(min(times["separate"]) / min(times["zoo"]), 3),
            "runs": {k2: [round(v, 2) for v in vs] for k2, vs in times.items()}}


def sampled_vs_fixed(samples: int, repeats: int, tiny_dir: str, work: Path) -> dict:
    fixed = [{"name": "sd2", "generator": {"preset": "sd2", "scheduler": "DDIMScheduler", "guidance_scale": 7.5}}]
    sampled = [{"name": "sd2", "generator": {"preset": "sd2",
                                             "scheduler": {"choice": ["DDIMScheduler", "EulerDiscreteScheduler"]},
                                             "guidance_scale": {"choice": [5.0, 7.5]}}}]
    times: dict[str, list[float]] = {"fixed": [], "sampled": []}
    cpu: dict[str, list[float]] = {}
    for r in range(repeats):
        times["fixed"].append(_timed_build(_config(work / f"f{r}.yaml", work / f"f{r}", fixed, samples, 64), tiny_dir,
                                           cpu, "fixed"))
        times["sampled"].append(_timed_build(_config(work / f"p{r}.yaml", work / f"p{r}", sampled, samples, 64),
                                             tiny_dir, cpu, "sampled"))
    f, p = statistics.median(times["fixed"]), statistics.median(times["sampled"])
    return {"fixed_s": round(f, 2), "sampled_s": round(p, 2), "ratio": round(f / p, 3),
            "best_ratio": round(min(times["fixed"]) / min(times["sampled"]), 3),
            "cpu_ratio": round(statistics.median(cpu["fixed"]) / statistics.median(cpu["sampled"]), 3),
            "runs": {k: [round(v, 2) for v in vs] for k, vs in times.items()}}


def loads_per_rank(n_models: int, ranks: int, n_samples: int, max_count: int = 1000) -> dict:
    from fakeforge.builder.zoo_plan import assign_jobs, plan_zoo_shards
    from fakeforge.sources import Record

    records = [Record(image_id=str(i), image_path=None, caption_id=str(i), caption="") for i in range(n_samples)]
    models = [(f"model{m:04d}", 1.0) for m in range(n_models)]
    start = time.perf_counter()
    jobs = [(None, j) for j in plan_zoo_shards("zoo", records, max_count, models)]
    plan_s = time.perf_counter() - start
    per_rank, switches, placed = [], [], Counter()
    for r in range(ranks):
        mine = assign_jobs(jobs, r, ranks)
        names = [j.model for _, j in mine]
        per_rank.append(len(set(names)))
        switches.append(sum(1 for i, n in enumerate(names) if i == 0 or names[i - 1] != n))
        placed.update(set(names))
        samples = sum(len(j.records) for _, j in mine)
        per_rank[-1] = (per_rank[-1], samples)
    return {"models_per_rank": [m for m, _ in per_rank], "samples_per_rank": [s for _, s in per_rank],
            "loads_per_rank": switches, "models_on_two_ranks": sum(1 for v in placed.values() if v > 1),
            "plan_seconds": round(plan_s, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=3, help=f"K twin presets for the zoo side (<= {len(PRESETS)})")
    p.add_argument("--samples", type=int, default=24, help="images per side (the demo source has 24)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plan-models", type=int, default=100)
    p.add_argument("--plan-ranks", type=int, default=4)
    p.add_argument("--plan-samples", type=int, default=20000)
    p.add_argument("--skip-builds", action="store_true", help="only the planning measurement")
    args = p.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from fakeforge.twins import ensure_tiny

    loads = loads_per_rank(args.plan_models, args.plan_ranks, args.plan_samples)
    print(f"plan: {args.plan_models} models, {args.plan_samples} samples, {args.plan_ranks} ranks: models per rank "
          f"{loads['models_per_rank']}, loads per rank {loads['loads_per_rank']}, samples per rank "
          f"{loads['samples_per_rank']}, models on two ranks {loads['models_on_two_ranks']} "
          f"(planned in {loads['plan_seconds']} s)")
    if args.skip_builds:
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        work = Path(tmp)
        tiny_dir = os.environ.get("FAKEFORGE_TINY_DIR") or str(work / "tiny")
        for twin in ("sd2", "sdxl", "sd3"):
            ensure_tiny(twin, tiny_dir)
        zs = zoo_vs_separate(args.models, args.samples, args.repeats, tiny_dir, work)
        print(f"zoo of {args.models} models vs {args.models} separate sets ({args.samples} images, shares "
              f"{zs['shares']}): zoo {zs['zoo_s']} s, separate {zs['separate_s']} s, separate/zoo = {zs['ratio']} "
              f"(best-of-runs ratio {zs['best_ratio']}, CPU seconds ratio {zs['cpu_ratio']}; runs {zs['runs']})")
        sf = sampled_vs_fixed(args.samples, args.repeats, tiny_dir, work)
        print(f"per-sample settings vs fixed ({args.samples} images): fixed {sf['fixed_s']} s, per-sample "
              f"{sf['sampled_s']} s, fixed/per-sample = {sf['ratio']} (best-of-runs ratio {sf['best_ratio']}, CPU seconds ratio {sf['cpu_ratio']}; runs {sf['runs']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
