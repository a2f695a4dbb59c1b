"""Command-line front ends of the detectors: train, stats, detect, eval, convert-antifakeprompt.

Every command works for every registered detector through the interface in `detector/base.py`: `train` runs the
generic trainer on any config under configs/detector/, `detect` and `eval` open any checkpoint folder with
`detector.checkpoint.load_detector(s)` ("zero-shot" is AntifakePrompt's untuned baseline), and `eval` with several
`--checkpoint`s scores them side by side (`detector/eval/side_by_side.py`).

`fakeforge.cli` imports this module to build its parser, so it must stay light: torch, transformers
and the detector modules are imported inside the run_* functions only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


# ----------------------------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge train` and `python train.py`."""
    p.add_argument("--config", default="antifakeprompt",
                   help="config file, or a name under configs/detector/ (default: antifakeprompt; "
                        "`fakeforge ls detectors` lists them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.train=[data/out] --set train.epochs=2")
    p.add_argument("--tiny", action="store_true",
                   help="run on the tiny random-weight twins: the config's `tiny:` block, then --set, then every "
                        "model id swapped for its twin")
    p.add_argument("--resume", action="store_true", help="continue the run in train.output_dir from last/")
    p.add_argument("--resume-force", action="store_true",
                   help="with --resume: accept a config that changes the model, data or optimizer "
                        "(the new values are applied and recorded in config.yaml)")
    p.add_argument("--out", default=None, help="shortcut for --set train.output_dir=DIR")
    p.add_argument("--checkpoint", default=None, metavar="FILE.pth",
                   help="start from a published weight file (CNNSpot, NPR): shortcut for --set "
                        "model.init_checkpoint=FILE.pth")


def load_train_config(config: str, overrides: list[str] | None = None, tiny: bool = False, out: str | None = None):
    """Resolve, merge and type-check a training config (errors name the key and value); see
    `detector.train.config.load_train_config`."""
    from detector.train.config import load_train_config as load

    return load(config, overrides, tiny, out)


def run_train(args: argparse.Namespace) -> int:
    """Train a detector (`detector.train.train`); prints the best checkpoint folder."""
    from accelerate import PartialState

    from detector.train import train

    extra = [f"model.init_checkpoint={args.checkpoint}"] if getattr(args, "checkpoint", None) else []
    run = train(args.config, overrides=[*args.overrides, *extra], tiny=args.tiny, out=args.out, resume=args.resume,
                resume_force=args.resume_force)
    if PartialState().is_main_process:
        print(f"best checkpoint: {run.best}")
        print(f"untrained detector: {run.init} (compare: fakeforge eval --checkpoint {run.init} {run.best} "
              "--sets ... --out ...)")
    return 0


# ----------------------------------------------------------------------------------------------- stats
def add_stats_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge stats`."""
    p.add_argument("--sets", nargs="+", required=True, metavar="SPEC",
                   help="shard sets (dataset folder, set folder, .tar, NAME=PATH) or NAME=real:DIR / NAME=fake:DIR")
    p.add_argument("--image-size", type=int, default=None,
                   help="bicubic resize of the shorter side + center crop before measuring (default 224)")
    p.add_argument("--checkpoint", default=None,
                   help="measure after this checkpoint's own resize rule and size instead (any detector; only its "
                        "detector.json is read)")
    p.add_argument("--max-images", type=int, default=None, help="stop after this many images")
    p.add_argument("--out", default=None, help="write the JSON here (use it as data.stats_file)")


def run_stats(args: argparse.Namespace) -> int:
    """Per-channel mean/std of the given sets, as JSON."""
    from detector.data import compute_mean_std, parse_set_specs

    if args.image_size is not None and args.image_size < 1:
        print(f"fakeforge stats: error: --image-size = {args.image_size} must be positive", file=sys.stderr)
        return 2
    if args.image_size is not None and args.checkpoint:
        print("fakeforge stats: error: give --image-size or --checkpoint, not both", file=sys.stderr)
        return 2
    geometry = checkpoint_preprocess(args.checkpoint) if args.checkpoint else None
    specs = parse_set_specs(args.sets)
    if args.out:  # checked before the scan, not after it
        if Path(args.out).is_dir():
            print(f"fakeforge stats: error: --out = '{args.out}' is a folder; name the JSON file", file=sys.stderr)
            return 2
        _writable(Path(args.out).parent, "--out's folder")
    stats = compute_mean_std(specs, args.image_size or 224, args.max_images, geometry=geometry)
    if geometry is not None:
        stats["preprocess"] = {k: v for k, v in geometry.to_dict().items() if k not in ("mean", "std", "source")}
    from fakeforge.shards.manifest import zoo_models_of_specs

    if zoo_models_of_specs(args.sets):  # zoo sets: samples and failures per model
        stats["models"] = zoo_models_of_specs(args.sets)
    text = json.dumps(stats, indent=2)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    print(text)
    return 0


def checkpoint_preprocess(path: str):
    """The `Preprocess` stored in a checkpoint folder's detector.json (any detector), without loading a model."""
    from detector.base import CheckpointError, Preprocess
    from detector.checkpoint import META_FILE, detector_class_of
    from fakeforge.config import ConfigError

    detector_class_of(path)  # a checkpoint folder of a known detector
    try:
        return Preprocess.from_dict(json.loads((Path(path) / META_FILE).read_text())["preprocess"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"'{Path(path) / META_FILE}' has no valid preprocess entry ({exc})") from None


# ----------------------------------------------------------------------------------------------- shared
def _add_model_arguments(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT",
                       help="checkpoint folder(s) of any detector, or 'zero-shot' for AntifakePrompt's untuned "
                            "baseline (\"Is this photo real?\"); several: one side-by-side table")
    else:
        p.add_argument("--checkpoint", required=True,
                       help="checkpoint folder of any detector, or 'zero-shot' for AntifakePrompt's untuned "
                            "baseline (\"Is this photo real?\")")
    p.add_argument("--model-id", default=None, help="base model of the zero-shot baseline")
    p.add_argument("--tiny", action="store_true", help="build the detectors on their tiny twins")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--scoring", choices=["logits", "loss"], default=None,
                   help="AntifakePrompt: logits = one forward pass (default); loss = the paper's two-candidate "
                        "loss rule (other detectors have one scoring rule)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--image-loading", choices=["fakeforge", "official"], default="fakeforge",
                   help="fakeforge: EXIF rotation, alpha on white, 16-bit scaled (default); official: "
                        "test.py's Image.open().convert('RGB') and its .jpg/.jpeg/.png filter, for exact parity")


def _writable(path, what):
    from detector.eval.run import check_writable_folder

    return check_writable_folder(path, what)


def _options(args, **more):
    from detector.eval.run import EvalOptions

    return EvalOptions(out=getattr(args, "out", "") or "", batch_size=args.batch_size, device=args.device,
                       tiny=args.tiny, scoring=args.scoring, model_id=args.model_id, image_loading=args.image_loading,
                       **more)


def _open(args, checkpoints: list[str]) -> list:
    """Load every checkpoint (each family sharing what it can); the scoring method of each detector."""
    from detector.eval.run import open_detectors

    opts = _options(args)
    opts.validate(len(checkpoints))
    return open_detectors(checkpoints, opts)


class _Out:
    """Print to stdout and append the same lines to --log (opened, and so checked, before any work)."""

    def __init__(self, path: str | None):
        from fakeforge.config import ConfigError

        self.fh = None
        if path:
            target = Path(path)
            if target.is_dir():
                raise ConfigError(f"--log = '{target}' is a folder, not a file")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(target, "a")
            except OSError as exc:
                raise ConfigError(f"--log = '{target}' is not writable: {exc.strerror or exc}") from None

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

    from detector.data import SetSpec, load_image
    from detector.eval.evaluate import accuracy, confusion_matrix, score_set
    from fakeforge.images import ImageLoadError

    if not (args.img_path or args.real_dir or args.fake_dir):
        print("fakeforge detect: error: give --img_path IMG, or --real_dir and/or --fake_dir", file=sys.stderr)
        return 2
    if not 0.0 <= args.threshold <= 1.0:
        print(f"fakeforge detect: error: --threshold = {args.threshold} must be within [0, 1]", file=sys.stderr)
        return 2
    out, code = _Out(args.log), 0
    try:
        [(detector, method)] = _open(args, [args.checkpoint])
        transform = detector.preprocess.transform(train=False)
        for line in detector.banner(str(args.checkpoint), args.image_loading, method):
            out(line)
        if args.img_path:
            try:
                img = load_image(args.img_path, args.image_loading)
            except ImageLoadError as exc:
                out(f"error: {exc}")
                return 2
            p = float(detector.score(transform(img).unsqueeze(0), method)[0])
            out(f"{args.img_path}: {'Fake' if p >= args.threshold else 'Real'} (P(fake) = {p:.4f})")
        labels, preds = [], []
        for folder, label in ((args.real_dir, 0), (args.fake_dir, 1)):
            if not folder:
                continue
            spec = SetSpec(Path(folder).name, "folder", [Path(folder)], label)
            try:
                res = score_set(detector, spec, transform, args.batch_size, method=method, loading=args.image_loading)
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
    _add_model_arguments(p, several=True)
    p.add_argument("--sets", nargs="+", required=True, metavar="SPEC",
                   help="shard sets (dataset folder -> one set per subfolder, set folder, .tar, NAME=PATH; "
                        "labels from each sample's json) and/or image folders NAME=real:DIR, NAME=fake:DIR")
    p.add_argument("--out", required=True,
                   help="output folder: results.md/.csv/.json, scores.csv, plots (several checkpoints: one such "
                        "sub-folder per detector + comparison.md/.csv/.json)")
    p.add_argument("--threshold", type=float, default=None, help="P(fake) decision threshold (default 0.5)")
    p.add_argument("--calibrate-on", nargs="+", default=None, metavar="SET",
                   help="pick the threshold maximising balanced accuracy on these sets (names from --sets, "
                        "or extra set specs), per detector; needs real and fake samples")
    p.add_argument("--limit", type=int, default=None, help="score at most this many images per set")
    p.add_argument("--name", nargs="+", default=None,
                   help="row label(s) in the table, one per checkpoint (default: checkpoint folder names)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--robustness", default=None, metavar="PROTOCOL",
                   help="also score under every condition of a protocol (configs/robustness/: genimage, aigcdetect, "
                        "cnnspot_jpeg, cnnspot_blur, social; a YAML path; or chains 'jpeg:75;blur:1') in the same "
                        "pass -> robustness.md/.csv/.json")
    p.add_argument("--degrade-workers", type=int, default=2,
                   help="threads making the degraded copies while the detectors score (--robustness)")


def run_eval(args: argparse.Namespace) -> int:
    """Per-set accuracy (paper layout), AUC/AP per fake set; Markdown, CSV, JSON and PNG under --out. Several
    checkpoints: every image decoded once for all of them, one sub-folder per detector and one side-by-side
    table (`detector.eval.run.evaluate`)."""
    from detector.eval.run import evaluate

    opts = _options(args, names=args.name, limit=args.limit, threshold=args.threshold,
                    calibrate_on=list(args.calibrate_on or []), plots=not args.no_plots,
                    robustness=args.robustness, degrade_workers=args.degrade_workers)
    try:
        result = evaluate(args.checkpoint, args.sets, opts, banner=print)
    except FileNotFoundError as exc:
        print(f"fakeforge eval: error: {exc}", file=sys.stderr)
        return 2
    first = next(iter(result.folders.values()))
    skipped = sum(v["errors"] for v in next(iter(result.summaries.values()))["sets"].values())
    if skipped:
        print(f"{skipped} unreadable item(s) skipped; listed under 'errors' in {first / 'results.json'}")
    if result.robustness_markdown:
        print(result.robustness_markdown)
    print(result.table_markdown)
    print("wrote " + ", ".join(str(p) for p in result.written))
    return 0


# ----------------------------------------------------------------------------------------------- convert
def add_convert_dire_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge convert-dire`."""
    p.add_argument("src", help="released DIRE classifier (.pth, e.g. lsun_adm.pth): {'model': ResNet-50 state dict}")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--model-id", default=None,
                   help="diffusers id or folder of the diffusion model the file was trained with (default: "
                        "configs/detector/dire.yaml's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps each way (default: the config's: 20, or 4 "
                   "with --tiny)")
    p.add_argument("--tiny", action="store_true", help="the tiny twins (the file must be a twin-sized ResNet)")
    p.add_argument("--device", default=None)


def run_convert_dire(args: argparse.Namespace) -> int:
    """A released DIRE `.pth` (tensors only) -> a DIRE checkpoint folder that eval/detect open like any other."""
    from dataclasses import replace

    from detector.families.dire import DireConfig, dire_from_official
    from detector.official_weights import read_weight_file
    from detector.train.config import resolve_train_data
    from fakeforge.config import from_dict

    read_weight_file(args.src)  # an odd or unsafe file is refused before --out is made
    _writable(args.out, "--out")
    recipe = resolve_train_data("dire", tiny=args.tiny)  # the shipped recipe (with its tiny: block)
    config = from_dict(DireConfig, recipe.get("model") or {}, "model")
    if args.model_id:
        config = replace(config, model_id=args.model_id)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    detector = dire_from_official(args.src, config, device=args.device, tiny=args.tiny)
    out = detector.save(args.out, training={"source": f"converted from official DIRE checkpoint {Path(args.src).name}"})
    print(f"converted {args.src} -> {out}: DIRE classifier, {detector.num_trainable():,} parameters, on diffusion "
          f"model {detector.config.model_id!r} with {detector.config.steps} DDIM steps each way")
    return 0


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `fakeforge convert-antifakeprompt`."""
    from detector.families.antifakeprompt.model import DEFAULT_MODEL_ID, OFFICIAL_LLM_ID

    p.add_argument("src", help="official AntifakePrompt LAVIS checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--base-model", default=DEFAULT_MODEL_ID, help=f"InstructBLIP model id ({DEFAULT_MODEL_ID})")
    p.add_argument("--llm-id", default=OFFICIAL_LLM_ID,
                   help="LLM weights the official checkpoints were trained with ('none': keep the base model's)")
    p.add_argument("--question", default="Is this photo real?")
    p.add_argument("--position", choices=["postfix", "prefix", "replace"], default=None,
                   help="where [*] goes (default: from the run config's model.prompt, else postfix)")
    p.add_argument("--pseudo-word", default="[*]")
    p.add_argument("--dtype", default="official",
                   help="precision policy stored with the checkpoint (default official: ViT and LLM fp16, "
                        "Q-Former fp32 on CUDA)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)


def run_convert(args: argparse.Namespace) -> int:
    """Convert a LAVIS .pth (loaded with weights_only=True) into a checkpoint folder."""
    from detector.families.antifakeprompt.checkpoint import check_torch_file, convert_lavis, read_meta
    from detector.families.antifakeprompt.model import AntifakePromptConfig
    from fakeforge.config import from_dict

    llm = None if str(args.llm_id).lower() in ("", "none", "null") else args.llm_id
    model = from_dict(AntifakePromptConfig, {"model_id": args.base_model, "llm_id": llm, "question": args.question,
                                             "pseudo_word": args.pseudo_word, "dtype": args.dtype}, "model")
    check_torch_file(args.src)  # before --out is made: an odd file leaves nothing behind
    _writable(args.out, "--out")
    out = convert_lavis(args.src, args.out, model=model, image_size=args.image_size, mean=args.mean, std=args.std,
                        position=args.position)
    meta = read_meta(out)
    w, pre, m = meta["row_widths"], meta["preprocess"], meta["model"]
    print(f"converted {args.src} -> {out}: {meta['trainable_parameters']:,} parameters = {w['qformer']} (Q-Former) "
          f"+ {w['lm']} (LM)")
    print(f"base model {m['model_id']} + LLM {m.get('llm_id') or '(base model)'}; precision {m['dtype']}; "
          f"prompt {meta['prompt']!r} (position {m['position']}, LM BOS {m['lm_bos_token']}, answers "
          f"{m['real_answer']!r}/{m['fake_answer']!r})")
    print(f"preprocess: {pre['image_size']} px; mean {pre['mean']} std {pre['std']} ({pre['source']})")
    return 0
