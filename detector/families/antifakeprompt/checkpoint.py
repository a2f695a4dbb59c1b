"""AntifakePrompt checkpoints: two embedding rows in safetensors + a JSON to rebuild the detector + a model card.

A checkpoint folder holds:
  pseudo_word.safetensors   "qformer_row" [1, Q-Former width] and "lm_row" [1, LM width], float32
  detector.json             base model id, prompt settings, answers, preprocessing (image size, mean/std),
                            training data summary, library versions
  README.md                 a model card
  training_state.pt         (run folders' `last/` only) optimizer/scheduler state for --resume,
                            loaded with torch.load(weights_only=True)

`convert_lavis` turns an official AntifakePrompt LAVIS .pth into this format without unpickling code.
`load_checkpoints` loads several checkpoints for a side-by-side eval: those on the same base model and prompt
share one loaded model, each checkpoint's rows copied in before it scores.
"""
from __future__ import annotations

import datetime
import json
import logging
import pickle
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from detector.base import CheckpointError, Preprocess
from detector.checkpoint_files import sniff
from detector.checkpoint import META_FILE, ZERO_SHOT  # noqa: F401  (one folder layout for every detector)
from detector.families.antifakeprompt.config import OFFICIAL_LLM_ID, AntifakePromptConfig
from fakeforge import versions
from fakeforge.config import from_dict, to_dict
from fakeforge.files import atomic_path, write_atomic

if TYPE_CHECKING:
    from detector.families.antifakeprompt.model import AntifakePrompt

log = logging.getLogger(__name__)

FORMAT = "fakeforge.antifakeprompt"
# 2: rows trained on the official prompt tokens (BOS </s>, text around [*] stripped); version-1 rows were
# trained on fakeforge's earlier encoding and load with a warning.
FORMAT_VERSION = 2
ROWS_FILE = "pseudo_word.safetensors"
CARD_FILE = "README.md"
LAVIS_QFORMER_KEY = "Qformer.bert.embeddings.train_word_embeddings.weight"
LAVIS_LM_KEY = "llm_model.model.train_embed_tokens.weight"
# Preprocessing of the official checkpoints (COCO + SD2 + SD2IP training set), from the official config.
PAPER_MEAN = [0.4730, 0.4499, 0.4129]
PAPER_STD = [0.2780, 0.2713, 0.2872]
# config fields that do not change the loaded model or the prompt (checkpoints differing only in them can share
# one loaded base model in a side-by-side eval)
ROW_ONLY_FIELDS = ("seed", "init_word", "row_init", "row_init_std", "scoring", "train_dropout")


def default_preprocess(detector: AntifakePrompt) -> dict:
    """Image size and normalisation of the base model's own image processor (used when none is given)."""
    from detector.families.antifakeprompt.config import default_preprocess as from_processor

    return from_processor(detector.image_processor)


def preprocess_dict(pre: Preprocess | dict) -> dict:
    """The checkpoint's `preprocess` entry: {image_size, mean, std, source}, plus any resize rule that differs from
    AntifakePrompt's (bicubic shorter side + centre crop, random crop + flip in training)."""
    pre = pre if isinstance(pre, Preprocess) else Preprocess.from_dict(pre)
    out = {"image_size": pre.image_size, "mean": list(pre.mean), "std": list(pre.std), "source": pre.source}
    default = Preprocess()
    for f in fields(pre):
        if f.name not in out and getattr(pre, f.name) != getattr(default, f.name):
            out[f.name] = getattr(pre, f.name)
    return out


def save_checkpoint(detector: AntifakePrompt, out_dir: str | Path, preprocess: dict | Preprocess,
                    training: dict | None = None) -> Path:
    """Write the two rows, detector.json and README.md into `out_dir`; returns the folder."""
    from safetensors.torch import save_file

    preprocess = preprocess_dict(preprocess) if isinstance(preprocess, Preprocess) else dict(preprocess)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = detector.rows()
    with atomic_path(out_dir / ROWS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in rows.items()}, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "detector": "antifakeprompt",
        "model": to_dict(detector.config), "prompt": detector.prompt, "prompt_pieces": detector.prompt_pieces(),
        "precision": detector.precision.as_dict(),
        "row_widths": detector.row_widths(), "trainable_parameters": detector.num_trainable(),
        "preprocess": preprocess, "training": training or {}, "versions": versions.library_versions(versions.DETECTOR_LIBRARIES, missing="not installed"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(out_dir / META_FILE, json.dumps(meta, indent=2, default=str))
    write_atomic(out_dir / CARD_FILE, model_card(meta))
    return out_dir


def read_meta(path: str | Path) -> dict:
    """detector.json of a checkpoint folder, checked for format and for the keys the loader needs."""
    path = Path(path)
    meta_file = path / META_FILE if path.is_dir() else path
    if not meta_file.is_file():
        raise CheckpointError(f"'{path}' is not an AntifakePrompt checkpoint folder (no {META_FILE}); "
                              f"convert an official .pth with `fakeforge convert-antifakeprompt`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"'{meta_file}' is not valid JSON ({exc}); the checkpoint is damaged") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read '{meta_file}': {exc.strerror or exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"'{meta_file}' has format {found!r}, expected {FORMAT!r}")
    for key, kind in (("model", dict), ("preprocess", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"'{meta_file}' lacks a valid '{key}' entry; the checkpoint is damaged")
    pre = meta["preprocess"]
    if not (isinstance(pre.get("image_size"), int) and _three_numbers(pre.get("mean"))
            and _three_numbers(pre.get("std"))):
        raise CheckpointError(f"'{meta_file}': preprocess = {pre!r} needs an integer image_size and three-number "
                              "mean and std")
    return meta


def _three_numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)


def read_rows(path: str | Path) -> dict[str, torch.Tensor]:
    """The two rows of a checkpoint's safetensors file; a damaged or foreign file gives one clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path.parent}' has no {path.name}")
    try:
        rows = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({exc}); the checkpoint is "
                              "damaged") from None
    missing = {"qformer_row", "lm_row"} - set(rows)
    if missing:
        raise CheckpointError(f"'{path}' lacks tensors {sorted(missing)}")
    return rows


def check_torch_file(path: str | Path) -> Path:
    """Refuse, in one line naming what it is, a file that is missing, empty, not a PyTorch checkpoint or
    a pickle that would import code (`detector.checkpoint_files.sniff`: nothing is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)")
    kind = sniff(path)
    if kind.imports:
        raise CheckpointError(f"refusing to load '{path}': it is {kind.text}. Only checkpoints made of tensors, "
                              "numbers, strings, lists and dicts (what torch.load(weights_only=True) reads) are "
                              "accepted")
    if not kind.is_torch:
        raise CheckpointError(f"cannot read '{path}': it is {kind.text}")
    return path


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with weights_only=True, after `check_torch_file`; a pickle that needs arbitrary Python
    objects is refused, and an empty, truncated or non-PyTorch file gives one line naming it."""
    path = check_torch_file(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" not in first.lower():
            raise CheckpointError(f"cannot read '{path}': not a PyTorch checkpoint, or a damaged one "
                                  f"({first})") from None
        raise CheckpointError(
            f"refusing to load '{path}': it is not a plain tensor/dict checkpoint that loads with "
            f"torch.load(weights_only=True) ({first}). Only checkpoints made of tensors, numbers, strings, "
            f"lists and dicts are accepted; nothing from the file is executed.") from None
    except Exception as exc:  # noqa: BLE001 - a hostile or damaged file can make the unpickler raise anything
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"cannot read '{path}': not a PyTorch checkpoint, or a truncated/damaged one "
                              f"({type(exc).__name__}: {first})") from None


def _vis_processor_stats(config: Any) -> list[tuple[str, dict]]:
    """(dotted key, processor cfg) of every `datasets.*.vis_processor.{eval,train}` holding mean and std; the
    statistics the official run trained (and validated) with. The model section's `preprocess` is ignored."""
    found = []
    datasets = config.get("datasets") if isinstance(config, dict) else None
    for name, ds in (datasets or {}).items():
        proc = ds.get("vis_processor") if isinstance(ds, dict) else None
        if not isinstance(proc, dict):
            continue
        for split in ("eval", "train"):
            p = proc.get(split)
            if isinstance(p, dict) and _three_numbers(_as_list(p.get("mean"))) \
                    and _three_numbers(_as_list(p.get("std"))):
                found.append((f"datasets.{name}.vis_processor.{split}", p))
                break
    return found


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _lavis_preprocess(config: Any, image_size: int | None, mean: list[float] | None,
                      std: list[float] | None) -> dict:
    """Preprocessing of a LAVIS run: explicit values, else the run config's datasets.*.vis_processor, else
    the paper's COCO+SD2+SD2IP statistics; "source" says which."""
    found = _vis_processor_stats(config)
    distinct = {(tuple(p["mean"]), tuple(p["std"])) for _key, p in found}
    if len(distinct) > 1 and not (mean and std):
        raise CheckpointError("the LAVIS run config holds different mean/std per dataset: "
                              + "; ".join(f"{k}: mean {list(p['mean'])} std {list(p['std'])}" for k, p in found)
                              + ". Pass --mean and --std")
    key, proc = found[0] if found else (None, {})
    if mean and std:
        source = "given on the command line"
    elif key:
        source = f"LAVIS run config {key}"
    else:
        source = "paper defaults (COCO+SD2+SD2IP); the run config has no datasets.*.vis_processor mean/std"
    return {"image_size": int(image_size or proc.get("image_size") or 224),
            "mean": [float(v) for v in (mean or proc.get("mean") or PAPER_MEAN)],
            "std": [float(v) for v in (std or proc.get("std") or PAPER_STD)],
            "source": source}


def _position_from_prompt(prompt: Any, model: AntifakePromptConfig) -> str | None:
    """The `position` whose prompt equals the run config's prompt (None if none does)."""
    if not isinstance(prompt, str):
        return None
    for position in ("postfix", "prefix", "replace"):
        candidate = AntifakePromptConfig(**{**to_dict(model), "position": position})
        if candidate.prompt == prompt.strip():
            return position
    return None


def convert_lavis(src: str | Path, out_dir: str | Path, model: AntifakePromptConfig | None = None,
                  image_size: int | None = None, mean: list[float] | None = None,
                  std: list[float] | None = None, position: str | None = None) -> Path:
    """Convert an official AntifakePrompt LAVIS checkpoint (.pth) into a checkpoint folder.

    Reads only `model[Qformer...train_word_embeddings.weight]` [1, 768] and
    `model[llm_model...train_embed_tokens.weight]` [1, 4096], plus the run config (mean/std from its
    `datasets.*.vis_processor`, the prompt position from its `model.prompt`), with
    torch.load(weights_only=True). The base model is not loaded. The detector defaults to the official
    setup: InstructBLIP-Vicuna-7B with Vicuna v1.3 weights, official precision, tokens and answers.
    `position` None: taken from the run config's prompt (else postfix).
    """
    from safetensors.torch import save_file

    ckpt = safe_torch_load(src)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or LAVIS_QFORMER_KEY not in state or LAVIS_LM_KEY not in state:
        have = sorted(map(str, state))[:8] if isinstance(state, dict) else type(ckpt).__name__
        raise CheckpointError(f"'{src}' is not an AntifakePrompt LAVIS checkpoint: expected "
                              f"model['{LAVIS_QFORMER_KEY}'] and model['{LAVIS_LM_KEY}'], found {have}")
    raw = {"Q-Former": state[LAVIS_QFORMER_KEY], "LM": state[LAVIS_LM_KEY]}
    for name, t in raw.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != 1 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"'{src}': the {name} pseudo-word embedding must be one float row [1, width], "
                                  f"got {shape}")
        if not torch.isfinite(t.float()).all():
            raise CheckpointError(f"'{src}': the {name} pseudo-word row holds NaN/inf values")
    qf, lm = raw["Q-Former"].float().reshape(1, -1), raw["LM"].float().reshape(1, -1)
    model = model or AntifakePromptConfig(llm_id=OFFICIAL_LLM_ID)
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    model_section = config.get("model") if isinstance(config, dict) else None
    found_prompt = model_section.get("prompt") if isinstance(model_section, dict) else None
    if position is None:
        position = _position_from_prompt(found_prompt, model) or "postfix"
    model = from_dict(AntifakePromptConfig, {**to_dict(model), "position": position}, "model")
    if isinstance(found_prompt, str) and found_prompt.strip() and found_prompt.strip() != model.prompt:
        log.warning("the LAVIS run config's prompt %r differs from the converted prompt %r; pass "
                    "--question/--position to match it", found_prompt, model.prompt)
    preprocess = _lavis_preprocess(config, image_size, mean, std)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"qformer_row": qf.contiguous(), "lm_row": lm.contiguous()}, str(out_dir / ROWS_FILE),
              metadata={"format": FORMAT})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "detector": "antifakeprompt",
        "model": to_dict(model), "prompt": model.prompt,
        "row_widths": {"qformer": qf.shape[1], "lm": lm.shape[1]}, "trainable_parameters": qf.numel() + lm.numel(),
        "preprocess": preprocess,
        "training": {"source": f"converted from LAVIS checkpoint {Path(src).name}",
                     "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
                     "run_config_prompt": found_prompt if isinstance(found_prompt, str) else None},
        "versions": versions.library_versions(versions.DETECTOR_LIBRARIES, missing="not installed"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(out_dir / META_FILE, json.dumps(meta, indent=2, default=str))
    write_atomic(out_dir / CARD_FILE, model_card(meta))
    return out_dir


def model_card(meta: dict) -> str:
    """A short Markdown model card from detector.json."""
    m, p, t = meta["model"], meta["preprocess"], meta.get("training") or {}
    widths = meta.get("row_widths", {})
    data = t.get("data") or {}
    lines = [
        "# AntifakePrompt detector", "",
        "Prompt-tuned InstructBLIP fake-image detector (AntifakePrompt, arXiv 2310.17419), "
        "stored as two learned embedding rows.", "",
        "| field | value |", "|---|---|",
        f"| base model | `{m['model_id']}` |",
        f"| language-model weights | `{m.get('llm_id') or '(base model)'}` |",
        f"| prompt | `{meta.get('prompt')}` (pseudo-word `{m['pseudo_word']}`, {m['position']}) |",
        f"| answers | real = `{m['real_answer']}`, fake = `{m['fake_answer']}` |",
        f"| trainable parameters | {meta.get('trainable_parameters', 0):,} = {widths.get('qformer')} (Q-Former row)"
        f" + {widths.get('lm')} (LM row) |",
        f"| image size | {p['image_size']} (bicubic resize of the shorter side + center crop) |",
        f"| mean / std | {p['mean']} / {p['std']} ({p.get('source', '')}) |",
        f"| scoring | {m.get('scoring', 'logits')} |",
        f"| precision | {(meta.get('precision') or {}).get('text') or m.get('dtype', 'official')} |",
    ]
    if t.get("source"):
        lines.append(f"| origin | {t['source']} |")
    if t.get("best_val_loss") is not None:
        lines.append(f"| best validation loss | {t['best_val_loss']:.4f} (epoch {t.get('epoch')}) |")
    for name, counts in (data.get("sets") or {}).items():
        lines.append(f"| train set `{name}` | {counts} |")
    lines += ["", "## Use", "", "```bash",
              "fakeforge detect --checkpoint THIS_FOLDER --img_path image.jpg",
              "fakeforge eval --checkpoint THIS_FOLDER --sets DATASET_DIR --out results/", "```", "",
              "## Limitations", "",
              "The rows only make sense with the exact base model named above. Accuracy varies strongly "
              "across generators and post-processing; evaluate on your own data.", "",
              f"Library versions: {meta.get('versions')}", ""]
    return "\n".join(lines)
