"""Scoring throughput of the new detector families, and fitting a probe from cached features vs from images.

    python benchmarks/bench_detectors.py                 # tiny twins on CPU (default)
    python benchmarks/bench_detectors.py --full-size     # DeepFake-Adapter on ViT-B/16 and the feature detectors
                                                         # on open_clip ViT-L/14, random weights (no download), CUDA

In one run, on the same inputs:
  * images/s of `score()` for DeepFake-Adapter, the linear probe, kNN and the contrastive head, each next to
    the plain library call it wraps (the timm ViT forward / the backbone forward) — median batch time,
    the two measured alternately;
  * a linear probe fitted on a synthetic shard set (JPEG, decoded like real shards) twice: from images
    (decode + backbone + fit, empty cache) and from the feature cache (read + fit).
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


def build_detectors(full_size: bool, device: torch.device) -> dict:
    """name -> (detector, plain library callable it wraps); the feature detectors share one loaded backbone."""
    from detector.backbones import FeatureBackbone
    from detector.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig
    from detector.disentangle import ContrastiveDisentangle, ContrastiveDisentangleConfig
    from detector.frozen_features import LinearProbe, LinearProbeConfig, NearestNeighbor, NearestNeighborConfig

    backbone = "open_clip:ViT-L-14" if full_size else "tiny:open_clip_vit"  # full size: no tag = random weights
    dfa_cfg = DeepFakeAdapterConfig(backbone="vit_base_patch16_224", pretrained=False) if full_size else \
        DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16, autocast=False)
    dfa = DeepFakeAdapter.from_config(dfa_cfg, device).eval()
    out = {"deepfake_adapter": (dfa, dfa.vit)}
    shared = FeatureBackbone.load(backbone, device, dtype="auto")
    for cls, cfg_cls in ((LinearProbe, LinearProbeConfig), (NearestNeighbor, NearestNeighborConfig),
                         (ContrastiveDisentangle, ContrastiveDisentangleConfig)):
        det = cls(cfg_cls(backbone=backbone, dtype="auto"), shared).to(device).eval()
        out[cls.name] = (det, shared)
    return out


def fit_knn_bank(det, n: int) -> None:
    """Give the kNN detector a bank of `n` random features so scoring does real work."""
    from detector.feature_cache import FeatureSet

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, det.backbone.feature_dim, generator=g)
    det.fit_features(FeatureSet(feats, torch.arange(n) % 2, torch.full((n,), -1), [str(i) for i in range(n)]))


def probe_fit_timing(probe, n_per_class: int, batch_size: int, workers: int) -> dict:
    """Fit the probe from images (empty cache) and then from the cache; seconds and cache state of both."""
    from detector.data import parse_set_specs
    from detector.feature_cache import FeatureCache, fit_from_cache

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


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-size", action="store_true", help="full-size architectures, random weights, CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch (default 32 tiny, 64 full size)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bank", type=int, default=None, help="kNN bank size (default 1,000 tiny, 100,000 full size)")
    p.add_argument("--fit-images", type=int, default=None, help="images per class for the probe fit "
                                                                "(default 256 tiny, 1,000 full size)")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
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
        if name == "deepfake_adapter":
            print(f"  {det.trainable_summary()}")
        size = det.preprocess.image_size
        x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
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
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
