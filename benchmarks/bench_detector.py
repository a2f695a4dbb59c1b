"""Detection throughput: the one-pass scorer vs the paper's two-candidate loss rule, same model/batch/inputs.

    python benchmarks/bench_detector.py                 # tiny InstructBLIP twin on CPU (default)
    python benchmarks/bench_detector.py --full-size     # InstructBLIP-Vicuna-7B architecture, random weights,
                                                        # official precision (ViT/LLM fp16, Q-Former fp32), CUDA

The full-size model is built from its config (EVA ViT-g/14, 12-layer Q-Former with 32 queries, Llama-7B)
with random weights, so no download is needed; it borrows the tiny twin's tokenizers, which give the same
prompt pieces as LLaMA's. Three rules are timed alternately (median batch time):
  * one-pass: one forward pass over the prompt, P(fake) from the next-token logits of "yes"/"no";
  * loss rule: the official `predict_class`: each image encoded once, one LM pass over images x candidates;
  * loss rule, one pass per candidate: the loss rule run once per candidate (image encoded twice), how
    fakeforge computed it before it followed the official batching.
Prints images/s, the speed-ups and whether the decisions agree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig  # noqa: E402


def full_size_config(image_token_index: int):
    """InstructBlipConfig with the shapes of Salesforce/instructblip-vicuna-7b."""
    from transformers import InstructBlipConfig, LlamaConfig

    text = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, tie_word_embeddings=False)
    return InstructBlipConfig(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=dict(vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, encoder_hidden_size=1408, cross_attention_frequency=2),
        text_config=text.to_dict(), num_query_tokens=32, image_token_index=image_token_index)


def build(full_size: bool, device: torch.device) -> tuple[AntifakePrompt, int]:
    """The detector (random rows) and its input size."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from detector.families.antifakeprompt.loading import FP32_PARTS, resolve_precision
    from fakeforge.tiny import ensure_tiny

    twin = ensure_tiny("instructblip")
    processor = InstructBlipProcessor.from_pretrained(twin)
    cfg = AntifakePromptConfig(model_id=str(twin), attn_implementation="sdpa")
    precision = None
    if full_size:
        config = full_size_config(processor.tokenizer.convert_tokens_to_ids("<image>"))
        config._attn_implementation = "sdpa"
        precision = resolve_precision("official", device)
        with torch.device(device):
            model = InstructBlipForConditionalGeneration._from_config(config, dtype=torch.float16)
        for name, module in model.named_modules():  # the official precision: these parts in float32
            if any(name == part for part in FP32_PARTS):
                module.float()
        model.query_tokens.data = model.query_tokens.data.float()
        cfg.model_id = "instructblip-vicuna-7b architecture (random weights)"
        size = 224
    else:
        model = InstructBlipForConditionalGeneration.from_pretrained(twin, attn_implementation="sdpa")
        size = processor.image_processor.size.height
    det = AntifakePrompt(model, processor, cfg, precision).to(device)
    return det.eval(), size


def loss_rule_per_candidate(det: AntifakePrompt, x: torch.Tensor) -> torch.Tensor:
    """The loss rule with one full pass per candidate (the image encoded again for each)."""
    with torch.no_grad():
        real, fake = (det.candidate_losses(x, [cand])[:, 0] for cand in det.answer_ids)
    return torch.sigmoid(real - fake).cpu()


def timed(fns: list, x: torch.Tensor, iters: int, warmup: int, device: torch.device) -> list[float]:
    """Median seconds per call of each fn(x), measured round-robin so that background load hits all alike."""
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        for fn in fns:
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for t, fn in zip(times, fns):
            t.append(once(fn))
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print images/s of both rules and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", default=True, help="tiny twin on CPU (default)")
    mode.add_argument("--full-size", action="store_true", help="full-size architecture, official precision, CUDA")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full_size and not torch.cuda.is_available():
        print("--full-size needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.full_size else "cpu")
    torch.manual_seed(0)
    det, size = build(args.full_size, device)
    with torch.no_grad():
        for prm in det.trainable_parameters():
            prm.normal_(0, 0.5)
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    one, loss, per_cand = det.score(x, "logits"), det.score(x, "loss"), loss_rule_per_candidate(det, x)
    same = bool(torch.equal(one >= 0.5, loss >= 0.5) and torch.equal(one >= 0.5, per_cand >= 0.5))
    t_one, t_loss, t_per = timed([lambda v: det.score(v, "logits"), lambda v: det.score(v, "loss"),
                                  lambda v: loss_rule_per_candidate(det, v)], x, args.iters, args.warmup, device)
    res = {"model": "full-size (vicuna-7b shapes, official precision)" if args.full_size else "tiny twin",
           "device": torch.cuda.get_device_name() if args.full_size else f"cpu x{torch.get_num_threads()} threads",
           "precision": det.precision.describe(), "batch_size": args.batch_size, "iters": args.iters,
           "one_pass_images_per_s": args.batch_size / t_one, "loss_rule_images_per_s": args.batch_size / t_loss,
           "loss_rule_per_candidate_images_per_s": args.batch_size / t_per,
           "speedup": t_loss / t_one, "speedup_vs_per_candidate": t_per / t_one, "decisions_agree": same,
           "max_prob_difference": float((one - loss).abs().max())}
    print(f"model: {res['model']}  device: {res['device']}  batch {args.batch_size}  x{args.iters} batches")
    print(f"precision: {res['precision']}")
    print(f"one-pass scorer (logits):             {res['one_pass_images_per_s']:10.1f} images/s")
    print(f"loss rule, one batched pass:          {res['loss_rule_images_per_s']:10.1f} images/s")
    print(f"loss rule, one pass per candidate:    {res['loss_rule_per_candidate_images_per_s']:10.1f} images/s")
    print(f"speed-up: {res['speedup']:.2f}x (vs one pass per candidate: {res['speedup_vs_per_candidate']:.2f}x)   "
          f"decisions agree: {same}   max |P difference| {res['max_prob_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
