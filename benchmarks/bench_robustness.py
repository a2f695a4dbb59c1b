"""Robustness eval cost: one pass under K conditions against K separate evals on degraded copies of the files,
and one condition against a clean eval.

    python benchmarks/bench_robustness.py                       # tiny twins on CPU, genimage, 64 + 64 images
    python benchmarks/bench_robustness.py --protocol cnnspot_jpeg --n 128 --size 384 --workers 3

In one run, on the same inputs (a real and a fake shard set of noisy JPEGs) and the same detectors (a linear probe
and a kNN on one open_clip twin, plus a DeepFake-Adapter twin, all side by side):
  * `detector.eval.robustness.score_robustness` under clean + every condition of the protocol (each image decoded
    once, degraded in worker threads while the detectors score), against `score_sets` once per condition on
    degraded copies written beforehand as PNG shards (writing them is not counted); the scores must agree;
  * the one-pass eval under clean + one condition against a clean `score_sets` eval (goal <= 1.15x the clean
    eval's time on the tiny twins: the degradation work hides behind the scoring), measured alternately, median.
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


def write_shards(root: Path, n: int, size: int) -> Path:
    """`n` real + `n` fake noisy JPEGs of `size` px (smooth colour field + noise) as sets coco and sd2."""
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for name, label, base in (("coco", "real", (190, 80, 60)), ("sd2", "fake", (60, 80, 190))):
        (root / name).mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(root / name / "000000.tar")) as tw:
            for i in range(n):
                field = 40 * np.sin(2 * np.pi * (xx * rng.uniform(1, 4) + yy * rng.uniform(1, 4)))[..., None]
                arr = np.clip(np.array(base) + field + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                tw.write({"__key__": f"{name}_{i:06d}", "jpg": buf.getvalue(),
                          "json": json.dumps({"label": label}).encode()})
    return root


def degraded_copy(data: Path, out: Path, chain) -> Path:
    """Every sample of `data` degraded by `chain` (same keys, labels) as lossless PNG shard sets under `out`."""
    import webdataset as wds
    from PIL import Image

    from detector.data import parse_set_specs
    from fakeforge.shards.reader import sample_image_bytes

    for spec in parse_set_specs([str(data)]):
        (out / spec.name).mkdir(parents=True, exist_ok=True)
        with wds.TarWriter(str(out / spec.name / "000000.tar")) as w:
            for sample in wds.WebDataset([str(p) for p in spec.paths], shardshuffle=False, empty_check=False):
                _ext, raw = sample_image_bytes(sample)
                img = chain.apply(Image.open(io.BytesIO(raw)).convert("RGB"), key=sample["__key__"])
                buf = io.BytesIO()
                img.save(buf, format="PNG", compress_level=1)
                w.write({"__key__": sample["__key__"], "png": buf.getvalue(), "json": sample["json"]})
    return out


def build_checkpoints(root: Path) -> list[str]:
    """A probe and a kNN on one open_clip twin (fitted on random features) and a DeepFake-Adapter twin."""
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig
    from detector.families.frozen.feature_cache import FeatureSet
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig, NearestNeighbor, NearestNeighborConfig
    from detector.checkpoint import save_detector

    g = torch.Generator().manual_seed(0)
    paths = []
    for name, det in (("probe", LinearProbe.from_config(LinearProbeConfig(backbone="tiny:open_clip_vit",
                                                                          dtype="float32"), "cpu")),
                      ("knn", NearestNeighbor.from_config(NearestNeighborConfig(backbone="tiny:open_clip_vit",
                                                                                dtype="float32", k=3), "cpu"))):
        feats = torch.randn(64, det.backbone.feature_dim, generator=g)
        det.fit_features(FeatureSet(feats, (feats[:, 0] > 0).long(), torch.full((64,), -1),
                                    [str(i) for i in range(64)]))
        paths.append(str(save_detector(det, root / name)))
    dfa = DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16), "cpu")
    paths.append(str(save_detector(dfa, root / "dfa")))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", default="genimage")
    p.add_argument("--n", type=int, default=64, help="images per set (two sets)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="degradation threads")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", default=None, help="the condition of the one-condition measurement (default: the first)")
    args = p.parse_args(argv)

    from detector.data import parse_set_specs
    from detector.checkpoint import load_detectors
    from detector.eval.robustness import score_robustness
    from detector.eval.side_by_side import Entry, score_sets
    from fakeforge.protocols import load_protocol, protocol_from_dict

    torch.set_num_threads(args.torch_threads)
    protocol = load_protocol(args.protocol)
    conditions = protocol.all_conditions()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_shards(root / "data", args.n, args.size)
        dets = load_detectors(build_checkpoints(root / "ckpt"), device="cpu")
        labels = ["probe", "knn", "dfa"]

        def entries():
            return [Entry(lbl, d) for lbl, d in zip(labels, dets)]

        specs = parse_set_specs([str(data)])
        copies = {c: parse_set_specs([str(degraded_copy(data, root / "copies" / c, chain))])
                  for c, chain in conditions.items()}
        score_sets(entries(), specs, args.batch_size, progress=False)  # warm-up

        t0 = time.perf_counter()
        run = score_robustness(entries(), specs, protocol, args.batch_size, workers=args.workers, progress=False)
        one_pass = time.perf_counter() - t0
        t0 = time.perf_counter()
        separate = {}
        for c in conditions:
            separate[c] = entries()
            score_sets(separate[c], copies[c], args.batch_size, progress=False)
        k_evals = time.perf_counter() - t0
        diff = max(abs(a - b) for c in conditions for ea, eb in zip(run.conditions[c], separate[c])
                   for ra, rb in zip(ea.results, eb.results) for a, b in zip(ra.scores, rb.scores))

        t0 = time.perf_counter()
        for c, chain in conditions.items():
            degraded_copy(data, root / "copies2" / c, chain)
        copying = time.perf_counter() - t0
        per_condition = {}
        for c in ([args.one] if args.one else list(protocol.conditions)):
            single = protocol_from_dict("one", {"conditions": {c: protocol.conditions[c].spec()}})
            clean_t, one_t, waits = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                score_sets(entries(), specs, args.batch_size, progress=False)
                clean_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r1 = score_robustness(entries(), specs, single, args.batch_size, workers=args.workers,
                                      progress=False, include_clean=False)
                one_t.append(time.perf_counter() - t0)
                waits.append(r1.timing["wait_for_workers_s"])
            per_condition[c] = (statistics.median(one_t), statistics.median(clean_t), statistics.median(waits))
        images = 2 * args.n
        print(f"robustness benchmark: protocol {protocol.name} ({len(conditions)} conditions incl. clean), "
              f"{images} images of {args.size}px, 3 detectors (probe + kNN on one backbone, DeepFake-Adapter), "
              f"batch {args.batch_size}, {args.workers} degradation threads, torch threads {args.torch_threads}")
        print(f"  one pass, {len(conditions)} conditions: {one_pass:.2f} s "
              f"(waited {run.timing['wait_for_workers_s']:.2f}"
              f" s for the degradation threads, {run.timing['scoring_s']:.2f} s scoring)")
        print(f"  {len(conditions)} separate evals on degraded copies: {k_evals:.2f} s -> "
              f"{k_evals / one_pass:.2f}x the "
              f"one pass; with making the copies ({copying:.2f} s): {(k_evals + copying) / one_pass:.2f}x; "
              f"max |score difference| {diff:.2e}")
        for c, (o, cl, w) in per_condition.items():
            print(f"  one condition {c:12s} ({protocol.conditions[c].spec():>12s}) on the fly: {o:.2f} s vs clean eval "
                  f"{cl:.2f} s -> {o / cl:.2f}x (waited {w:.2f} s for the threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
