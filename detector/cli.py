"""Command-line front ends of the detector: train, stats, detect, eval, convert-antifakeprompt.

`fakeforge.cli` imports this module to build its parser, so it must stay light: torch, transformers
and the detector modules are imported inside the run_* functions only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `--tiny` on a full-size config: the twin's model id, input size and dtype.
TINY_OVERRIDES = ["model.model_id=tiny:instructblip", "model.dtype=float32", "data.image_size=32",
                  "train.gradient_checkpointing=false"]


# ----------------------------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge train` and `python train.py`."""
    p.add_argument("--config", default="antifakeprompt",
                   help="config file, or a name under configs/detector/ (default: antifakeprompt)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.train=[data/out] --set train.epochs=2")
    p.add_argument("--tiny", action="store_true",
                   help=f"use the tiny random-weight InstructBLIP twin ({', '.join(TINY_OVERRIDES)})")
    p.add_argument("--resume", action="store_true", help="continue the run in train.output_dir from last/")
    p.add_argument("--out", default=None, help="shortcut for --set train.output_dir=DIR")


def load_train_config(config: str, overrides: list[str] | None = None, tiny: bool = False, out: str | None = None):
    """Resolve, merge and type-check a training config (errors name the key and value)."""
    from detector.trainer import TrainConfig
    from fakeforge.config import apply_overrides, from_dict, load_yaml, resolve_named_config

    data = load_yaml(resolve_named_config(config, "detector"))
    extra = (TINY_OVERRIDES if tiny else []) + list(overrides or [])
    if out:
        extra.append(f"train.output_dir={out}")
    return from_dict(TrainConfig, apply_overrides(data, extra))


def run_train(args: argparse.Namespace) -> int:
    """Train a detector; prints the best checkpoint folder."""
    from detector.trainer import Trainer

    cfg = load_train_config(args.config, args.overrides, args.tiny, args.out)
    trainer = Trainer(cfg, tiny=args.tiny, resume=args.resume)
    best = trainer.fit()
    if trainer.is_main_process:
        print(f"best checkpoint: {best}")
    return 0


# ----------------------------------------------------------------------------------------------- stats
def add_stats_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge stats`."""
    p.add_argument("--sets", nargs="+", required=True, metavar="SPEC",
                   help="shard sets (dataset folder, set folder, .tar, NAME=PATH) or NAME=real:DIR / NAME=fake:DIR")
    p.add_argument("--image-size", type=int, default=224, help="resize + center crop before measuring (224)")
    p.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    p.add_argument("--out", default=None, help="write the JSON here (use it as data.stats_file)")


def run_stats(args: argparse.Namespace) -> int:
    """Per-channel mean/std of the given sets, as JSON."""
    from detector.data import compute_mean_std, parse_set_specs

    if args.image_size < 1:
        print(f"fakeforge stats: error: --image-size = {args.image_size} must be positive", file=sys.stderr)
        return 2
    stats = compute_mean_std(parse_set_specs(args.sets), args.image_size, args.max_images)
    text = json.dumps(stats, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    print(text)
    return 0


# ----------------------------------------------------------------------------------------------- shared
def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, or 'zero-shot' for the untuned baseline (\"Is this photo real?\")")
    p.add_argument("--model-id", default=None, help="base model of the zero-shot baseline")
    p.add_argument("--tiny", action="store_true", help="use the tiny InstructBLIP twin as the base model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--scoring", choices=["logits", "loss"], default=None,
                   help="logits: one forward pass (default); loss: the paper's two-candidate loss rule")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=8)


def _load(args):
    from detector.checkpoint import load_checkpoint
    from detector.data import build_transform
    from fakeforge.config import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size = {args.batch_size} must be >= 1")
    detector, pre = load_checkpoint(args.checkpoint, device=args.device, tiny=args.tiny, scoring=args.scoring,
                                    model_id=args.model_id)
    transform = build_transform(int(pre["image_size"]), pre["mean"], pre["std"], train=False)
    return detector, transform


class _Out:
    """Print to stdout and append the same lines to --log."""

    def __init__(self, path: str | None):
        self.fh = open(path, "a") if path else None

    def __call__(self, text: str = "") -> None:
        print(text)
        if self.fh:
            self.fh.write(text + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def format_confusion(cm) -> list[str]:
    """The paper's test.py summary: a 2x2 table, rows = true class, columns = predicted."""
    return ["confusion matrix (rows = true, columns = predicted):",
            f"{'':>6} {'real':>8} {'fake':>8}",
            f"{'real':>6} {cm[0][0]:>8} {cm[0][1]:>8}",
            f"{'fake':>6} {cm[1][0]:>8} {cm[1][1]:>8}"]


# ----------------------------------------------------------------------------------------------- detect
def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge detect` (same flags as the paper's test.py)."""
    _add_model_arguments(p)
    p.add_argument("--img_path", "--img-path", dest="img_path", default=None, help="one image to classify")
    p.add_argument("--real_dir", "--real-dir", dest="real_dir", default=None, help="folder of real images")
    p.add_argument("--fake_dir", "--fake-dir", dest="fake_dir", default=None, help="folder of fake images")
    p.add_argument("--log", default=None, help="append verdicts, skipped files and the summary to this file")
    p.add_argument("--threshold", type=float, default=0.5, help="call an image fake when P(fake) >= this")


def run_detect(args: argparse.Namespace) -> int:
    """Classify one image or real/fake folders; print verdicts, accuracy and the confusion matrix."""
    import numpy as np

    from detector.data import SetSpec
    from detector.evaluate import accuracy, confusion_matrix, score_set
    from fakeforge.images import ImageLoadError, load_rgb

    if not (args.img_path or args.real_dir or args.fake_dir):
        print("fakeforge detect: error: give --img_path IMG, or --real_dir and/or --fake_dir", file=sys.stderr)
        return 2
    if not 0.0 <= args.threshold <= 1.0:
        print(f"fakeforge detect: error: --threshold = {args.threshold} must be within [0, 1]", file=sys.stderr)
        return 2
    detector, transform = _load(args)
    out, code = _Out(args.log), 0
    try:
        out(f"checkpoint: {args.checkpoint}  prompt: {detector.prompt!r}  scoring: {detector.config.scoring}")
        if args.img_path:
            try:
                img = load_rgb(args.img_path)
            except ImageLoadError as exc:
                out(f"error: {exc}")
                return 2
            p = float(detector.score(transform(img).unsqueeze(0))[0])
            out(f"{args.img_path}: {'Fake' if p >= args.threshold else 'Real'} (P(fake) = {p:.4f})")
        labels, preds = [], []
        for folder, label in ((args.real_dir, 0), (args.fake_dir, 1)):
            if not folder:
                continue
            spec = SetSpec(Path(folder).name, "folder", [Path(folder)], label)
            try:
                res = score_set(detector, spec, transform, args.batch_size)
            except FileNotFoundError as exc:
                out(f"error: {exc}")
                code = 2
                continue
            for key, p in zip(res.keys, res.scores):
                out(f"{key}: {'Fake' if p >= args.threshold else 'Real'} (P(fake) = {p:.4f})")
            for key, err in res.errors:
                out(f"skipped {key}: {err}")
            out(f"{folder}: {len(res.keys)} scored, {len(res.errors)} skipped")
            labels += res.labels
            preds += [int(s >= args.threshold) for s in res.scores]
        if labels:
            y, yp = np.asarray(labels), np.asarray(preds)
            out(f"accuracy: {100 * accuracy(y, yp):.2f}% ({int((y == yp).sum())}/{len(y)})")
            for line in format_confusion(confusion_matrix(y, yp)):
                out(line)
    finally:
        out.close()
    return code


# ----------------------------------------------------------------------------------------------- eval
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge eval`."""
    _add_model_arguments(p)
    p.add_argument("--sets", nargs="+", required=True, metavar="SPEC",
                   help="shard sets (dataset folder -> one set per subfolder, set folder, .tar, NAME=PATH; "
                        "labels from each sample's json) and/or image folders NAME=real:DIR, NAME=fake:DIR")
    p.add_argument("--out", required=True, help="output folder for results.md/.csv/.json, scores.csv, plots")
    p.add_argument("--threshold", type=float, default=None, help="P(fake) decision threshold (default 0.5)")
    p.add_argument("--calibrate-on", nargs="+", default=None, metavar="SET",
                   help="pick the threshold maximising balanced accuracy on these sets (names from --sets, "
                        "or extra set specs); needs real and fake samples")
    p.add_argument("--limit", type=int, default=None, help="score at most this many images per set")
    p.add_argument("--name", default=None, help="row label in the table (default: checkpoint folder name)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")


def run_eval(args: argparse.Namespace) -> int:
    """Per-set accuracy (paper layout), AUC/AP per fake set; Markdown, CSV, JSON and PNG under --out."""
    from detector.data import parse_set_specs
    from detector.evaluate import calibrate_threshold, check_plotting, score_set, summarize, write_reports

    if args.threshold is not None and args.calibrate_on:
        print("fakeforge eval: error: give --threshold or --calibrate-on, not both", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print(f"fakeforge eval: error: --threshold = {args.threshold} must be within [0, 1]", file=sys.stderr)
        return 2
    if not args.no_plots:
        try:
            check_plotting()
        except ImportError as exc:
            print(f"fakeforge eval: error: {exc}", file=sys.stderr)
            return 2
    specs = parse_set_specs(args.sets)
    detector, transform = _load(args)
    results = []
    for spec in specs:
        try:
            results.append(score_set(detector, spec, transform, args.batch_size, limit=args.limit))
        except FileNotFoundError as exc:
            print(f"fakeforge eval: error: {exc}", file=sys.stderr)
            return 2
    threshold, calib = 0.5 if args.threshold is None else args.threshold, None
    if args.calibrate_on:
        by_name = {r.name: r for r in results}
        pool = []
        for item in args.calibrate_on:
            if item in by_name:
                pool.append(by_name[item])
            else:
                pool += [score_set(detector, s, transform, args.batch_size, limit=args.limit)
                         for s in parse_set_specs([item])]
        import numpy as np

        y = np.concatenate([r.label_array for r in pool])
        s = np.concatenate([r.score_array for r in pool])
        try:
            threshold = calibrate_threshold(y, s)
        except ValueError as exc:
            print(f"fakeforge eval: error: --calibrate-on {args.calibrate_on}: {exc}", file=sys.stderr)
            return 2
        calib = {"sets": list(args.calibrate_on), "threshold": threshold, "n": int(y.size)}
        print(f"calibrated threshold on {args.calibrate_on}: {threshold:.4f}")
    summary = summarize(results, threshold)
    name = args.name or ("zero-shot" if str(args.checkpoint).lower().startswith("zero") else
                         Path(args.checkpoint).name)
    paths = write_reports(results, summary, args.out, method=name, plots=not args.no_plots,
                          extra={"checkpoint": str(args.checkpoint), "calibration": calib,
                                 "scoring": detector.config.scoring, "prompt": detector.prompt})
    skipped = sum(len(r.errors) for r in results)
    if skipped:
        print(f"{skipped} unreadable item(s) skipped; listed under 'errors' in {Path(args.out) / 'results.json'}")
    print((Path(args.out) / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


# ----------------------------------------------------------------------------------------------- convert
def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge convert-antifakeprompt`."""
    from detector.antifakeprompt import DEFAULT_MODEL_ID

    p.add_argument("src", help="official AntifakePrompt LAVIS checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--base-model", default=DEFAULT_MODEL_ID, help=f"InstructBLIP model id ({DEFAULT_MODEL_ID})")
    p.add_argument("--llm-id", default="lmsys/vicuna-7b-v1.3",
                   help="LLM weights the official checkpoints were trained with ('none': keep the base model's)")
    p.add_argument("--question", default="Is this photo real?")
    p.add_argument("--position", choices=["postfix", "prefix", "replace"], default="postfix")
    p.add_argument("--pseudo-word", default="[*]")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)


def run_convert(args: argparse.Namespace) -> int:
    """Convert a LAVIS .pth (loaded with weights_only=True) into a checkpoint folder."""
    from detector.antifakeprompt import AntifakePromptConfig
    from detector.checkpoint import convert_lavis, read_meta

    llm = None if str(args.llm_id).lower() in ("", "none", "null") else args.llm_id
    model = AntifakePromptConfig(model_id=args.base_model, llm_id=llm, question=args.question,
                                 position=args.position, pseudo_word=args.pseudo_word)
    out = convert_lavis(args.src, args.out, model=model, image_size=args.image_size, mean=args.mean, std=args.std)
    meta = read_meta(out)
    w = meta["row_widths"]
    print(f"converted {args.src} -> {out}: {meta['trainable_parameters']:,} parameters = {w['qformer']} (Q-Former) "
          f"+ {w['lm']} (LM); prompt {meta['prompt']!r}; mean {meta['preprocess']['mean']} "
          f"std {meta['preprocess']['std']} ({meta['preprocess']['source']})")
    return 0
