"""Detection throughput: the one-pass scorer vs the paper's two-candidate loss rule, same model/batch/inputs.

    python benchmarks/bench_detector.py                 # tiny InstructBLIP twin on CPU (default)
    python benchmarks/bench_detector.py --full-size     # InstructBLIP-Vicuna-7B architecture, random bf16
                                                        # weights, on CUDA (needs ~16 GB of GPU memory)

The full-size model is built from its config (EVA ViT-g/14, 12-layer Q-Former with 32 queries, Llama-7B)
with random weights, so no download is needed; it borrows the tiny twin's tokenizers, which gives a
prompt of about the same length. Prints images/s of both rules (median batch time, the two rules measured alternately) and their ratio.
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

from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig  # noqa: E402


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

    from fakeforge.tiny import ensure_tiny

    twin = ensure_tiny("instructblip")
    processor = InstructBlipProcessor.from_pretrained(twin)
    cfg = AntifakePromptConfig(model_id=str(twin), attn_implementation="sdpa")
    if full_size:
        config = full_size_config(processor.tokenizer.convert_tokens_to_ids("<image>"))
        config._attn_implementation = "sdpa"
        with torch.device(device):
            model = InstructBlipForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        cfg.model_id = "instructblip-vicuna-7b architecture (random weights)"
        size = 224
    else:
        model = InstructBlipForConditionalGeneration.from_pretrained(twin, attn_implementation="sdpa")
        size = processor.image_processor.size.height
    det = AntifakePrompt(model, processor, cfg).to(device)
    return det.eval(), size


def timed_pair(fa, fb, x: torch.Tensor, iters: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per call of fa(x) and fb(x), measured alternately so that background load hits
    both rules alike."""
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        fa(x)
        fb(x)
    ta, tb = [], []
    for _ in range(iters):
        ta.append(once(fa))
        tb.append(once(fb))
    return statistics.median(ta), statistics.median(tb)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print images/s of both rules and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", default=True, help="tiny twin on CPU (default)")
    mode.add_argument("--full-size", action="store_true", help="full-size architecture, bf16, CUDA")
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
    same = bool(torch.equal(det.score(x, "logits") >= 0.5, det.score(x, "loss") >= 0.5))
    t_one, t_loss = timed_pair(lambda v: det.score(v, "logits"), lambda v: det.score(v, "loss"), x, args.iters,
                               args.warmup, device)
    res = {"model": "full-size (vicuna-7b shapes, bf16)" if args.full_size else "tiny twin",
           "device": torch.cuda.get_device_name() if args.full_size else f"cpu x{torch.get_num_threads()} threads",
           "batch_size": args.batch_size, "iters": args.iters,
           "one_pass_images_per_s": args.batch_size / t_one, "loss_rule_images_per_s": args.batch_size / t_loss,
           "speedup": t_loss / t_one, "decisions_agree": same}
    print(f"model: {res['model']}  device: {res['device']}  batch {args.batch_size}  x{args.iters} batches")
    print(f"one-pass scorer (logits): {res['one_pass_images_per_s']:10.1f} images/s")
    print(f"paper loss rule (2 cand.): {res['loss_rule_images_per_s']:10.1f} images/s")
    print(f"speed-up: {res['speedup']:.2f}x   decisions agree: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
