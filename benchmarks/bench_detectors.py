"""Scoring throughput of every detector family, the probe fit from cached features vs from images, and the
side-by-side eval of several checkpoints vs scoring them one after another.

    python benchmarks/bench_detectors.py                 # tiny twins on CPU (default)
    python benchmarks/bench_detectors.py --full-size     # AntifakePrompt on the InstructBLIP-Vicuna-7B architecture
                                                         # (official precision), DeepFake-Adapter on ViT-B/16, the
                                                         # feature detectors on open_clip ViT-L/14; random weights
                                                         # (no download), CUDA

In one run, on the same inputs:
  * images/s of `score()` for AntifakePrompt, DeepFake-Adapter, the linear probe, kNN and the contrastive head,
    each next to the plain library call it wraps (the timm ViT forward / the backbone forward) where there is
    one — median batch time, measured alternately;
  * a linear probe fitted on a synthetic shard set (JPEG, decoded like real shards) twice: from images
    (decode + backbone + fit, empty cache) and from the feature cache (read + fit);
  * `detector.eval.side_by_side.score_sets` over a shard set with K AntifakePrompt checkpoints on one base model (same
    statistics: the vision encoder runs once per batch, the Q-Former + LLM per checkpoint), DeepFake-Adapter, and a
    probe and a kNN on one backbone (one features() pass), against scoring each checkpoint alone one after
    another (decoding the images again each time); the scores must be identical. In tiny mode also from the
    checkpoint folders, loading included (`fakeforge eval --checkpoint A B C ...` vs one eval per checkpoint).
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fa, fb, x, iters: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per call of fa(x) and fb(x), measured alternately."""
    ta, tb = [], []
    with torch.no_grad():
        for i in range(warmup + iters):
            for fn, out in ((fa, ta), (fb, tb)):
                _sync(device)
                start = time.perf_counter()
                fn(x)
                _sync(device)
                if i >= warmup:
                    out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def write_shards(root: Path, n: int, size: int) -> Path:
    """`n` real + `n` fake noisy JPEGs of `size` px as two shard sets (coco, sd2)."""
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, label, base in (("coco", "real", (200, 60, 50)), ("sd2", "fake", (50, 60, 200))):
        (root / name).mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(root / name / "000000.tar")) as tw:
            for i in range(n):
                arr = np.clip(np.array(base) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                tw.write({"__key__": f"{name}_{i:06d}", "jpg": buf.getvalue(),
                          "json": json.dumps({"label": label, "source_image_id": str(i)}).encode()})
    return root


def build_antifakeprompt(full_size: bool, device: torch.device):
    """AntifakePrompt with random rows: the tiny twin, or the full-size architecture (bench_detector.build)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_detector", Path(__file__).with_name("bench_detector.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    det, size = module.build(full_size, device)
    det.preprocess.image_size = size
    with torch.no_grad():
        for prm in det.trainable_parameters():
            prm.normal_(0, 0.5, generator=torch.Generator(device=prm.device).manual_seed(0))
    return det


def build_detectors(full_size: bool, device: torch.device) -> dict:
    """name -> (detector, plain library callable it wraps or None); the feature detectors share one backbone."""
    from detector.families.frozen.backbones import FeatureBackbone
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig
    from detector.families.frozen.disentangle import ContrastiveDisentangle, ContrastiveDisentangleConfig
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig, NearestNeighbor, NearestNeighborConfig

    backbone = "open_clip:ViT-L-14" if full_size else "tiny:open_clip_vit"  # full size: no tag = random weights
    dfa_cfg = DeepFakeAdapterConfig(backbone="vit_base_patch16_224", pretrained=False) if full_size else \
        DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16, autocast=False)
    dfa = DeepFakeAdapter.from_config(dfa_cfg, device).eval()
    out = {"antifakeprompt": (build_antifakeprompt(full_size, device), None), "deepfake_adapter": (dfa, dfa.vit)}
    shared = FeatureBackbone.load(backbone, device, dtype="auto")
    for cls, cfg_cls in ((LinearProbe, LinearProbeConfig), (NearestNeighbor, NearestNeighborConfig),
                         (ContrastiveDisentangle, ContrastiveDisentangleConfig)):
        det = cls(cfg_cls(backbone=backbone, dtype="auto"), shared).to(device).eval()
        out[cls.name] = (det, shared)
    return out


def fit_knn_bank(det, n: int) -> None:
    """Give the kNN detector a bank of `n` random features so scoring does real work."""
    from detector.families.frozen.feature_cache import FeatureSet

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, det.backbone.feature_dim, generator=g)
    det.fit_features(FeatureSet(feats, torch.arange(n) % 2, torch.full((n,), -1), [str(i) for i in range(n)]))


def probe_fit_timing(probe, n_per_class: int, batch_size: int, workers: int) -> dict:
    """Fit the probe from images (empty cache) and then from the cache; seconds and cache state of both."""
    from detector.data import parse_set_specs
    from detector.families.frozen.feature_cache import FeatureCache, fit_from_cache

    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(Path(tmp) / "data", n_per_class, max(probe.preprocess.image_size, 64))
        specs = parse_set_specs([str(data)])
        times = {}
        for label in ("from_images", "from_cache"):
            cache = FeatureCache(Path(tmp) / "cache")
            start = time.perf_counter()
            history, summary = fit_from_cache(probe, specs, cache=cache, batch_size=batch_size, workers=workers)
            times[label] = {"seconds": time.perf_counter() - start, "built": summary["cache_built"],
                            "reused": summary["cache_reused"], "train_acc": history[0]["train_acc"]}
    times["images"] = 2 * n_per_class
    times["speedup"] = times["from_images"]["seconds"] / times["from_cache"]["seconds"]
    return times


def _side_by_side_entries(dets: dict, k: int) -> list:
    """K AntifakePrompt checkpoints on the one loaded base (random rows, the same statistics), DeepFake-Adapter,
    and the probe and kNN (one backbone)."""
    from detector.families.antifakeprompt.model import SharedBaseCheckpoint
    from detector.eval.side_by_side import Entry

    afp = dets["antifakeprompt"][0]
    entries = []
    for i in range(k):
        g = torch.Generator().manual_seed(100 + i)
        rows = {n: 0.5 * torch.randn(t.shape, generator=g) for n, t in afp.rows().items()}
        view = SharedBaseCheckpoint(afp, rows, afp.config, afp.preprocess, {}, f"random rows {i}")
        entries.append(Entry(f"antifakeprompt_{i}", view))
    return entries + [Entry(n, dets[n][0]) for n in ("deepfake_adapter", "linear_probe", "nearest_neighbor")]


def _fresh(entries: list) -> list:
    from detector.eval.side_by_side import Entry

    return [Entry(e.label, e.detector, e.method) for e in entries]


def _median_pair(run_a, run_b, repeats: int) -> tuple[float, float]:
    """Median wall seconds of run_a() and run_b(), run alternately `repeats` times (the first round also warms up)."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((run_a, ta), (run_b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def multi_eval_timing(dets: dict, k: int, n_per_class: int, batch_size: int, size: int, repeats: int) -> dict:
    """One side-by-side pass vs each checkpoint alone, one after another, over the same shard set."""
    from detector.data import parse_set_specs
    from detector.eval.side_by_side import score_sets

    entries = _side_by_side_entries(dets, k)
    runs: dict[str, list] = {}

    def together():
        runs["together"] = _fresh(entries)
        runs["timing"] = score_sets(runs["together"], specs, batch_size, progress=False)

    def one_by_one():
        runs["alone"] = _fresh(entries)
        for e in runs["alone"]:
            score_sets([e], specs, batch_size, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        specs = parse_set_specs([str(write_shards(Path(tmp) / "data", n_per_class, size))])
        t_multi, t_single = _median_pair(together, one_by_one, repeats)
    same = all([r.scores for r in a.results] == [r.scores for r in b.results]
               for a, b in zip(runs["together"], runs["alone"]))
    afp_alone = sum(e.seconds for e in runs["alone"] if e.label.startswith("antifakeprompt"))
    afp_together = sum(e.seconds for e in runs["together"] if e.label.startswith("antifakeprompt"))
    return {"checkpoints": [e.label for e in entries], "images": 2 * n_per_class, "image_size": size,
            "side_by_side_s": t_multi, "one_by_one_s": t_single, "speedup": t_single / t_multi,
            "antifakeprompt_scoring_s": {"side_by_side": afp_together, "one_by_one": afp_alone,
                                         "speedup": afp_alone / max(afp_together, 1e-9)},
            "decode_transform_s_side_by_side": runs["timing"]["decode_transform_s"], "scores_identical": same}


def folder_eval_timing(dets: dict, k: int, n_per_class: int, batch_size: int, size: int, repeats: int) -> dict:
    """Tiny twins only: the same comparison from checkpoint folders, loading included (load_detectors + one pass vs
    load_detector + one pass per checkpoint)."""
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.data import parse_set_specs
    from detector.checkpoint import load_detector, load_detectors, save_detector
    from detector.eval.side_by_side import Entry, score_sets

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = parse_set_specs([str(write_shards(root / "data", n_per_class, size))])
        afp = dets["antifakeprompt"][0]
        afp.config.model_id = "tiny:instructblip"
        paths = []
        for i, e in enumerate(_side_by_side_entries(dets, k)[:k]):
            afp.load_rows(e.detector.rows)
            paths.append(save_checkpoint(afp, root / f"afp_{i}", afp.preprocess))
        paths += [save_detector(dets[n][0], root / n) for n in ("deepfake_adapter", "linear_probe",
                                                                 "nearest_neighbor")]

        def together():
            score_sets([Entry(str(i), d) for i, d in enumerate(load_detectors(paths, device="cpu"))], specs,
                       batch_size, progress=False)

        def one_by_one():
            for i, path in enumerate(paths):
                score_sets([Entry(str(i), load_detector(path, device="cpu"))], specs, batch_size, progress=False)

        t_multi, t_single = _median_pair(together, one_by_one, repeats)
    return {"side_by_side_s": t_multi, "one_by_one_s": t_single, "speedup": t_single / t_multi}


def main(argv: list[str] | None = None) -> int:
    """Run the three benchmarks and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-size", action="store_true", help="full-size architectures, random weights, CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch (default 32 tiny, 64 full size)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bank", type=int, default=None, help="kNN bank size (default 1,000 tiny, 100,000 full size)")
    p.add_argument("--fit-images", type=int, default=None, help="images per class for the probe fit "
                                                                "(default 256 tiny, 1,000 full size)")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--checkpoints", type=int, default=3, help="AntifakePrompt checkpoints in the side-by-side eval")
    p.add_argument("--eval-images", type=int, default=None, help="images per class of the side-by-side eval "
                                                                 "(default 64 tiny, 256 full size)")
    p.add_argument("--eval-size", type=int, default=256, help="side of the side-by-side eval's JPEGs (256)")
    p.add_argument("--repeats", type=int, default=3, help="side-by-side vs one-by-one rounds (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="default: cuda with --full-size, else cpu")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if args.full_size else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (pass --device cpu to run the full-size shapes on the CPU, slowly)", file=sys.stderr)
        return 2
    bs = args.batch_size or (64 if args.full_size else 32)
    dets = build_detectors(args.full_size, device)
    fit_knn_bank(dets["nearest_neighbor"][0], args.bank or (100_000 if args.full_size else 1_000))
    res = {"mode": "full size (ViT-B/16 adapter, open_clip ViT-L/14), random weights" if args.full_size
           else "tiny twins",
           "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
           "batch_size": bs, "scoring": {}}
    print(f"{res['mode']}  device: {res['device']}  batch {bs}  x{args.iters} batches")
    print(f"{'detector':26s} {'score() img/s':>14s} {'plain call img/s':>17s} {'ratio':>7s}  plain call")
    for name, (det, plain) in dets.items():
        if name in ("antifakeprompt", "deepfake_adapter"):
            print(f"  {name}: {det.trainable_summary()}")
        size = det.preprocess.image_size
        x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        if plain is None:  # AntifakePrompt: bench_detector.py compares its scoring rules
            t_det, _ = timed_pair(det.score, det.score, x, args.iters, args.warmup, device)
            res["scoring"][name] = {"images_per_s": bs / t_det, "plain": None}
            print(f"{name:26s} {bs / t_det:14.1f} {'-':>17s} {'-':>7s}  (rules: benchmarks/bench_detector.py)")
            continue
        plain_dtype = next(plain.parameters()).dtype
        t_det, t_plain = timed_pair(det.score, lambda v: plain(v.to(plain_dtype)), x, args.iters, args.warmup, device)
        what = "timm ViT forward" if name == "deepfake_adapter" else "backbone forward"
        res["scoring"][name] = {"images_per_s": bs / t_det, "plain_images_per_s": bs / t_plain,
                                "ratio": t_plain / t_det, "plain": what}
        print(f"{name:26s} {bs / t_det:14.1f} {bs / t_plain:17.1f} {t_plain / t_det:7.2f}  {what}")
    probe = dets["linear_probe"][0]
    fit = probe_fit_timing(probe, args.fit_images or (1000 if args.full_size else 256), bs, args.workers)
    res["probe_fit"] = fit
    print(f"linear probe fit on {fit['images']} images: from images {fit['from_images']['seconds']:.2f} s "
          f"(cache built: {fit['from_images']['built']}), from cached features {fit['from_cache']['seconds']:.3f} s "
          f"(reused: {fit['from_cache']['reused']}); speed-up {fit['speedup']:.1f}x")
    n_eval = args.eval_images or (256 if args.full_size else 64)
    multi = multi_eval_timing(dets, args.checkpoints, n_eval, bs, args.eval_size, args.repeats)
    res["multi_eval"] = multi
    a = multi["antifakeprompt_scoring_s"]
    print(f"side-by-side eval of {len(multi['checkpoints'])} detectors ({args.checkpoints} AntifakePrompt checkpoints "
          f"on one base, DeepFake-Adapter, probe + kNN on one backbone) on {multi['images']} images: "
          f"{multi['side_by_side_s']:.2f} s vs {multi['one_by_one_s']:.2f} s one after another, speed-up "
          f"{multi['speedup']:.2f}x (AntifakePrompt scoring alone {a['one_by_one']:.2f} s -> "
          f"{a['side_by_side']:.2f} s, "
          f"{a['speedup']:.2f}x); scores identical: {multi['scores_identical']}")
    if not args.full_size:
        folders = folder_eval_timing(dets, args.checkpoints, n_eval, bs, args.eval_size, args.repeats)
        res["multi_eval_from_folders"] = folders
        print(f"  from checkpoint folders, loading included: {folders['side_by_side_s']:.2f} s vs "
              f"{folders['one_by_one_s']:.2f} s, speed-up {folders['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
