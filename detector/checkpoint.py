"""AntifakePrompt checkpoints: two embedding rows in safetensors + a JSON to rebuild the detector + a model card.

A checkpoint folder holds:
  pseudo_word.safetensors   "qformer_row" [1, Q-Former width] and "lm_row" [1, LM width], float32
  detector.json             base model id, prompt settings, answers, preprocessing (image size, mean/std),
                            training data summary, library versions
  README.md                 a model card
  training_state.pt         (run folders' `last/` only) optimizer/scheduler state for --resume,
                            loaded with torch.load(weights_only=True)

`convert_lavis` turns an official AntifakePrompt LAVIS .pth into this format without unpickling code.
"""
from __future__ import annotations

import datetime
import json
import logging
import pickle
import platform
from pathlib import Path
from typing import Any

import torch

from detector.antifakeprompt import DEFAULT_MODEL_ID, AntifakePrompt, AntifakePromptConfig
from fakeforge.config import ConfigError, from_dict, to_dict

log = logging.getLogger(__name__)

FORMAT = "fakeforge.antifakeprompt"
FORMAT_VERSION = 1
ROWS_FILE = "pseudo_word.safetensors"
META_FILE = "detector.json"
CARD_FILE = "README.md"
LAVIS_QFORMER_KEY = "Qformer.bert.embeddings.train_word_embeddings.weight"
LAVIS_LM_KEY = "llm_model.model.train_embed_tokens.weight"
# Preprocessing of the official checkpoints (COCO + SD2 + SD2IP training set), from the official config.
PAPER_MEAN = [0.4730, 0.4499, 0.4129]
PAPER_STD = [0.2780, 0.2713, 0.2872]
ZERO_SHOT = ("zero-shot", "zeroshot", "zero_shot")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: wrong format, unsafe pickle, rows for another base model."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the detector's numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("fakeforge", "torch", "transformers", "tokenizers", "accelerate", "safetensors", "webdataset"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def default_preprocess(detector: AntifakePrompt) -> dict:
    """Image size and normalisation of the base model's own image processor (used when none is given)."""
    ip = detector.image_processor
    size = ip.size
    if not isinstance(size, int):  # a dict in some versions, a SizeDict in others
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        size = get("height") or get("shortest_edge")
    return {"image_size": int(size), "mean": [float(v) for v in ip.image_mean],
            "std": [float(v) for v in ip.image_std], "source": "base model image processor"}


def save_checkpoint(detector: AntifakePrompt, out_dir: str | Path, preprocess: dict,
                    training: dict | None = None) -> Path:
    """Write the two rows, detector.json and README.md into `out_dir`; returns the folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = detector.rows()
    tmp = out_dir / (ROWS_FILE + ".tmp")
    save_file({k: v.contiguous() for k, v in rows.items()}, str(tmp), metadata={"format": FORMAT})
    tmp.replace(out_dir / ROWS_FILE)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "detector": "antifakeprompt",
        "model": to_dict(detector.config), "prompt": detector.prompt,
        "row_widths": detector.row_widths(), "trainable_parameters": detector.num_trainable(),
        "preprocess": preprocess, "training": training or {}, "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_text(out_dir / META_FILE, json.dumps(meta, indent=2, default=str))
    _write_text(out_dir / CARD_FILE, model_card(meta))
    return out_dir


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_meta(path: str | Path) -> dict:
    """detector.json of a checkpoint folder, checked for format."""
    path = Path(path)
    meta_file = path / META_FILE if path.is_dir() else path
    if not meta_file.is_file():
        raise CheckpointError(f"'{path}' is not an AntifakePrompt checkpoint folder (no {META_FILE}); "
                              f"convert an official .pth with `fakeforge convert-antifakeprompt`")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{meta_file}' has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device | None = None, tiny: bool = False,
                    scoring: str | None = None, model_id: str | None = None) -> tuple[AntifakePrompt, dict]:
    """Rebuild the detector from a checkpoint folder (or "zero-shot"); returns (detector, preprocess).

    `tiny` swaps the base model for the tiny twin; a width mismatch raises CheckpointError naming both.
    `model_id` picks the base model of the zero-shot baseline.
    """
    from safetensors.torch import load_file

    if str(path).lower() in ZERO_SHOT:
        cfg = AntifakePromptConfig(zero_shot=True, model_id=model_id or DEFAULT_MODEL_ID)
        if scoring:
            cfg.scoring = scoring
        detector = AntifakePrompt.from_config(cfg, device=device, tiny=tiny)
        return detector, default_preprocess(detector)
    path = Path(path)
    if path.is_file() and path.suffix in (".pth", ".pt"):
        raise CheckpointError(f"'{path}' looks like an official LAVIS checkpoint; convert it first: "
                              f"fakeforge convert-antifakeprompt {path} --out DIR")
    meta = read_meta(path)
    model_cfg = dict(meta["model"])
    if scoring:
        model_cfg["scoring"] = scoring
    cfg = from_dict(AntifakePromptConfig, model_cfg, "model")
    rows_file = path / ROWS_FILE
    if not rows_file.is_file():
        raise CheckpointError(f"checkpoint '{path}' has no {ROWS_FILE}")
    rows = load_file(str(rows_file))
    missing = {"qformer_row", "lm_row"} - set(rows)
    if missing:
        raise CheckpointError(f"'{rows_file}' lacks tensors {sorted(missing)}")
    detector = AntifakePrompt.from_config(cfg, device=device, tiny=tiny)
    try:
        detector.load_rows(rows, source=f"checkpoint '{path}'")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return detector, dict(meta["preprocess"])


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with weights_only=True; a pickle that needs arbitrary Python objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ModuleNotFoundError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load '{path}': it is not a plain tensor/dict checkpoint that loads with "
            f"torch.load(weights_only=True) ({first}). Only checkpoints made of tensors, numbers, strings, "
            f"lists and dicts are accepted; nothing from the file is executed.") from None


def _find_key(tree: Any, keys: tuple[str, ...]) -> Any:
    """First value under any of `keys` in a nested dict/list (depth-first)."""
    if isinstance(tree, dict):
        for k in keys:
            if k in tree:
                return tree[k]
        for v in tree.values():
            found = _find_key(v, keys)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for v in tree:
            found = _find_key(v, keys)
            if found is not None:
                return found
    return None


def _lavis_preprocess(config: Any, image_size: int | None, mean: list[float] | None,
                      std: list[float] | None) -> dict:
    """Preprocessing of a LAVIS run: explicit values, else the run config's vis_processor, else the paper's."""
    proc = _find_key(config, ("vis_processor",)) if isinstance(config, dict) else None
    evalp = proc.get("eval", proc) if isinstance(proc, dict) else {}
    found_mean, found_std = _find_key(evalp, ("mean",)), _find_key(evalp, ("std",))
    found_size = _find_key(evalp, ("image_size",))
    source = "LAVIS run config" if found_mean and found_std else "paper defaults (COCO+SD2+SD2IP)"
    return {"image_size": int(image_size or found_size or 224),
            "mean": [float(v) for v in (mean or found_mean or PAPER_MEAN)],
            "std": [float(v) for v in (std or found_std or PAPER_STD)],
            "source": "given" if mean and std else source}


def convert_lavis(src: str | Path, out_dir: str | Path, model: AntifakePromptConfig | None = None,
                  image_size: int | None = None, mean: list[float] | None = None,
                  std: list[float] | None = None) -> Path:
    """Convert an official AntifakePrompt LAVIS checkpoint (.pth) into a checkpoint folder.

    Reads only `model[Qformer...train_word_embeddings.weight]` [1, 768] and
    `model[llm_model...train_embed_tokens.weight]` [1, 4096] (plus the run config for mean/std),
    with torch.load(weights_only=True). The base model is not loaded.
    """
    from safetensors.torch import save_file

    ckpt = safe_torch_load(src)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or LAVIS_QFORMER_KEY not in state or LAVIS_LM_KEY not in state:
        have = sorted(state)[:8] if isinstance(state, dict) else type(ckpt).__name__
        raise CheckpointError(f"'{src}' is not an AntifakePrompt LAVIS checkpoint: expected "
                              f"model['{LAVIS_QFORMER_KEY}'] and model['{LAVIS_LM_KEY}'], found {have}")
    qf, lm = state[LAVIS_QFORMER_KEY].float().reshape(1, -1), state[LAVIS_LM_KEY].float().reshape(1, -1)
    if state[LAVIS_QFORMER_KEY].shape[0] != 1 or state[LAVIS_LM_KEY].shape[0] != 1:
        raise CheckpointError(f"'{src}': expected one row per table, got {tuple(state[LAVIS_QFORMER_KEY].shape)} "
                              f"and {tuple(state[LAVIS_LM_KEY].shape)}")
    model = model or AntifakePromptConfig(llm_id="lmsys/vicuna-7b-v1.3")
    model.validate()
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    found_prompt = _find_key(config, ("prompt",)) if isinstance(config, dict) else None
    if isinstance(found_prompt, str) and found_prompt.strip() and found_prompt.strip() != model.prompt:
        log.warning("the LAVIS run config's prompt %r differs from the converted prompt %r; pass "
                    "--question/--position to match it", found_prompt, model.prompt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"qformer_row": qf.contiguous(), "lm_row": lm.contiguous()}, str(out_dir / ROWS_FILE),
              metadata={"format": FORMAT})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "detector": "antifakeprompt",
        "model": to_dict(model), "prompt": model.prompt,
        "row_widths": {"qformer": qf.shape[1], "lm": lm.shape[1]}, "trainable_parameters": qf.numel() + lm.numel(),
        "preprocess": _lavis_preprocess(config, image_size, mean, std),
        "training": {"source": f"converted from LAVIS checkpoint {Path(src).name}",
                     "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None},
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_text(out_dir / META_FILE, json.dumps(meta, indent=2, default=str))
    _write_text(out_dir / CARD_FILE, model_card(meta))
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
