"""The InstructBLIP + LoRA, DE-FAKE and DIRE baselines: side by side on one base, score() costs, DIRE's cache.

    python benchmarks/bench_vlm_baselines.py            # tiny twins on CPU

In one run, on the same inputs:
  * `detector.eval.side_by_side.score_sets` over a shard set with K AntifakePrompt checkpoints and K InstructBLIP + LoRA
    checkpoints on one base model (random rows / random adapters; the same preprocessing, so the vision encoder
    runs once per batch for all 2K and the Q-Former + LLM per checkpoint), against scoring each checkpoint alone,
    one after another (decoding the images again each time); the scores must be identical, and the vision-encoder
    calls are counted;
  * DE-FAKE's `score()` images/s next to the plain transformers CLIP forward it wraps (`get_image_features` +
    `get_text_features` on fixed captions, the same batch), with the BLIP caption cache warm (every caption read
    from the cache) and cold (BLIP beam search included, a fresh cache each call);
  * DIRE: one training epoch (forward + backward + Adam step over every batch) reading the DIRE cache against
    the same epoch recomputing the DIRE images (DDIM inversion + reconstruction) as an uncached run would; and
    `score()` with a cold cache against the plain diffusers UNet loop (`ddim_reconstruct`) on the same batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _afp_and_lora(k: int, device: torch.device) -> tuple[list, list]:
    """K AntifakePrompt views (random rows) on one base and K LoRA views (random adapters) on another instance of
    the same base weights, all with the same preprocessing; returns (entries, the two base detectors)."""
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.families.antifakeprompt.model import SharedBaseCheckpoint
    from detector.families.instructblip_lora import InstructBlipLora, InstructBlipLoraConfig, SharedLoraCheckpoint
    from detector.eval.side_by_side import Entry

    afp = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip", dtype="float32"), device)
    lora = InstructBlipLora.from_config(InstructBlipLoraConfig(model_id="tiny:instructblip", dtype="float32"), device)
    lora.preprocess = afp.preprocess
    entries = []
    for i in range(k):
        g = torch.Generator().manual_seed(100 + i)
        rows = {n: 0.5 * torch.randn(t.shape, generator=g) for n, t in afp.rows().items()}
        entries.append(Entry(f"antifakeprompt_{i}", SharedBaseCheckpoint(afp, rows, afp.config, afp.preprocess, {},
                                                                          f"random rows {i}")))
    for i in range(k):
        g = torch.Generator().manual_seed(200 + i)
        tensors = {n: 0.3 * torch.randn(t.shape, generator=g) for n, t in lora.checkpoint_state().items()}
        entries.append(Entry(f"lora_{i}", SharedLoraCheckpoint(lora, tensors, lora.config, lora.preprocess, {},
                                                               f"random adapter {i}")))
    return entries, [afp, lora]


def side_by_side_timing(k: int, n_per_class: int, batch_size: int, size: int, repeats: int,
                        device: torch.device) -> dict:
    from bench_detectors import _fresh, _median_pair, write_shards

    from detector.data import parse_set_specs
    from detector.eval.side_by_side import score_sets

    entries, bases = _afp_and_lora(k, device)
    calls = {"vision": 0}
    for base in bases:
        base.model.vision_model.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
    runs: dict = {}

    def together():
        calls["vision"] = 0
        runs["together"] = _fresh(entries)
        score_sets(runs["together"], specs, batch_size, progress=False)
        runs["calls_together"] = calls["vision"]

    def one_by_one():
        calls["vision"] = 0
        runs["alone"] = _fresh(entries)
        for e in runs["alone"]:
            score_sets([e], specs, batch_size, progress=False)
        runs["calls_alone"] = calls["vision"]

    with tempfile.TemporaryDirectory() as tmp:
        specs = parse_set_specs([str(write_shards(Path(tmp) / "data", n_per_class, size))])
        t_multi, t_single = _median_pair(together, one_by_one, repeats)
    same = all([r.scores for r in a.results] == [r.scores for r in b.results]
               for a, b in zip(runs["together"], runs["alone"]))
    return {"checkpoints": [e.label for e in entries], "images": 2 * n_per_class, "image_size": size,
            "side_by_side_s": t_multi, "one_by_one_s": t_single, "speedup": t_single / t_multi,
            "vision_encoder_calls": {"side_by_side": runs["calls_together"], "one_by_one": runs["calls_alone"]},
            "scores_identical": same}


def defake_timing(batch_size: int, iters: int, device: torch.device) -> dict:
    """DE-FAKE score() with the caption cache warm / cold vs the plain CLIP forward on fixed captions."""
    from detector.families.defake import DeFake, DeFakeConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = DeFakeConfig(caption_cache=str(Path(tmp) / "warm"))
        det = DeFake.from_config(cfg, device, tiny=True)
        size = det.preprocess.image_size
        x = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        captions = det.blip_captions(x)  # fills the warm cache
        clip, tok = det.backbone.model, det.backbone.tokenizer

        @torch.no_grad()
        def plain():
            t = tok(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
            clip.get_image_features(pixel_values=x.to(device))
            clip.get_text_features(**{k: v.to(device) for k, v in t.items()})

        def warm():
            det.score(x)

        cold_dets = [DeFake.from_config(DeFakeConfig(caption_cache=str(Path(tmp) / f"cold{i}")), device, tiny=True)
                     for i in range(iters + 1)]

        times: dict[str, list[float]] = {"plain": [], "warm": [], "cold": []}
        for i in range(iters + 1):
            for name, fn in (("plain", plain), ("warm", warm), ("cold", lambda i=i: cold_dets[i].score(x))):
                start = time.perf_counter()
                fn()
                if i:
                    times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch_size / v for k, v in med.items()}
    return {"batch": batch_size, "image_size": size, "images_per_s": ips,
            "score_warm_vs_plain": med["warm"] / med["plain"], "score_cold_vs_plain": med["cold"] / med["plain"]}


def dire_timing(batch_size: int, batches: int, repeats: int, device: torch.device) -> dict:
    """A training epoch from the DIRE cache vs recomputing the DIRE images; cold score() vs the plain UNet loop."""
    from detector.families.dire import Dire, DireConfig, ddim_reconstruct

    with tempfile.TemporaryDirectory() as tmp:
        det = Dire.from_config(DireConfig(dire_cache=str(Path(tmp) / "dire"), steps=20), device, tiny=True)
        size = det.preprocess.image_size
        gen = torch.Generator().manual_seed(0)
        data = [(torch.rand(batch_size, 3, size, size, generator=gen) * 2 - 1,
                 torch.randint(0, 2, (batch_size,), generator=gen)) for _ in range(batches)]
        opt = torch.optim.Adam(det.trainable_parameters(), lr=1e-4)

        def epoch():
            det.train()
            for x, y in data:
                loss = det(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            det.eval()

        def recompute():
            det.cache = type(det.cache)(Path(tmp) / f"fresh{time.perf_counter_ns()}", det.dire_identity())
            epoch()

        epoch()  # fills the cache
        cached, fresh = [], []
        for _ in range(repeats):
            for fn, out in ((epoch, cached), (recompute, fresh)):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
        det.cache = type(det.cache)(Path(tmp) / "main", det.dire_identity())
        x = data[0][0]
        plain, cold = [], []
        for i in range(repeats):
            start = time.perf_counter()
            ddim_reconstruct(det.unet, det.scheduler_config, x, det.config.steps)
            plain.append(time.perf_counter() - start)
            det.cache = type(det.cache)(Path(tmp) / f"cold{i}", det.dire_identity())
            start = time.perf_counter()
            det.score(x)
            cold.append(time.perf_counter() - start)
    c, f = statistics.median(cached), statistics.median(fresh)
    p, s = statistics.median(plain), statistics.median(cold)
    return {"images_per_epoch": batch_size * batches, "image_size": size, "steps": 20,
            "epoch_from_cache_s": c, "epoch_recomputing_s": f, "cache_speedup": f / c,
            "score_cold_images_per_s": batch_size / s, "plain_unet_loop_images_per_s": batch_size / p,
            "score_cold_vs_plain": s / p}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=3, help="checkpoints of each kind in the side-by-side eval")
    p.add_argument("--eval-images", type=int, default=32, help="images per class of the side-by-side eval")
    p.add_argument("--eval-size", type=int, default=64, help="side of the side-by-side eval's JPEGs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    out = {"side_by_side": side_by_side_timing(args.checkpoints, args.eval_images, args.batch_size, args.eval_size,
                                               args.repeats, device),
           "defake": defake_timing(args.batch_size, args.iters, device),
           "dire": dire_timing(args.batch_size, 4, args.repeats, device)}
    s, d = out["side_by_side"], out["defake"]
    print(f"side by side, {args.checkpoints} AntifakePrompt + {args.checkpoints} LoRA checkpoints on one base, "
          f"{s['images']} images: {s['side_by_side_s']:.2f} s vs one after another {s['one_by_one_s']:.2f} s "
          f"(x{s['speedup']:.2f}); vision encoder calls {s['vision_encoder_calls']}; identical: "
          f"{s['scores_identical']}")
    ips = d["images_per_s"]
    print(f"DE-FAKE score(), batch {d['batch']}: {ips['warm']:.0f} img/s with cached captions, {ips['cold']:.0f} img/s "
          f"captioning with BLIP; plain CLIP image + text forward {ips['plain']:.0f} img/s "
          f"(score/plain time: x{d['score_warm_vs_plain']:.2f} warm, x{d['score_cold_vs_plain']:.2f} cold)")
    r = out["dire"]
    print(f"DIRE ({r['steps']} DDIM steps each way), a training epoch of {r['images_per_epoch']} images: "
          f"{r['epoch_from_cache_s']:.2f} s from the cache vs {r['epoch_recomputing_s']:.2f} s recomputing the DIRE "
          f"images (x{r['cache_speedup']:.1f}); score() with a cold cache {r['score_cold_images_per_s']:.1f} img/s vs "
          f"the plain UNet loop {r['plain_unet_loop_images_per_s']:.1f} img/s (x{r['score_cold_vs_plain']:.2f} time)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if s["scores_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
