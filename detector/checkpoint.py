"""Save and load any detector: its trained tensors as safetensors + a JSON that says how to rebuild it.

A checkpoint folder holds:
  weights.safetensors   `detector.checkpoint_state()` (the class's `weights_file` may name it otherwise)
  detector.json         format "fakeforge.detector", format_version, detector name, detector state
                        version, model config, identity of the frozen base (architecture, weights
                        SHA-256), preprocessing, trainable-parameter count, training summary, versions
  README.md             a short model card

`load_detector` rebuilds the detector from the JSON (`DETECTORS[name].from_config`), refuses a
checkpoint made for another detector (`expect`) or another backbone (identity), then loads the tensors
strictly and restores the preprocessing. Nothing is unpickled: safetensors and JSON only.

`load_detector` opens ANY checkpoint folder: a family with its own format (AntifakePrompt's
`fakeforge.antifakeprompt`, versions 1 and 2) is recognised by the `format` field and loaded by its class's
`load`; "zero-shot" is AntifakePrompt's untuned baseline. `load_detectors` loads several at once, letting each
family share what it can (one base model, one backbone).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from detector.errors import CheckpointError  # noqa: F401  (raised here, importable from here)
from detector.checkpoint_files import not_a_detector_checkpoint, sniff
from detector.official_weights import official_detector_name
from detector.preprocess import Preprocess
from detector.sharing import sharing_loads
from fakeforge import versions
from fakeforge.config import ConfigError, from_dict, to_dict
from fakeforge.files import atomic_path, write_atomic

if TYPE_CHECKING:
    from detector.base import Detector

FORMAT = "fakeforge.detector"
FORMAT_VERSION = 1
# formats of families that keep their own checkpoint layout -> the detector that reads them
FAMILY_FORMATS = {"fakeforge.antifakeprompt": "antifakeprompt"}
ZERO_SHOT = ("zero-shot", "zeroshot", "zero_shot")
META_FILE = "detector.json"
CARD_FILE = "README.md"


def save_detector(detector: Detector, out_dir: str | Path, training: dict | None = None) -> Path:
    """Write weights, detector.json and README.md into `out_dir` (each file atomically); returns the folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = detector.checkpoint_state()
    with atomic_path(out_dir / detector.weights_file) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"format": FORMAT, "detector": detector.name})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "detector": detector.name,
        "state_version": detector.state_version, "fit_mode": detector.fit_mode,
        "model": to_dict(detector.config), "identity": detector.identity(),
        "preprocess": detector.preprocess.to_dict(), "trainable_parameters": detector.num_trainable(),
        "state_tensors": {k: list(v.shape) for k, v in state.items()}, "describe": detector.describe(),
        "training": training or {}, "versions": versions.library_versions(versions.DETECTOR_LIBRARIES, missing="not installed"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(out_dir / META_FILE, json.dumps(meta, indent=2, default=str))
    write_atomic(out_dir / CARD_FILE, model_card(meta))
    return out_dir


def read_detector_meta(path: str | Path) -> dict:
    """detector.json of a checkpoint folder, checked for format and a registered detector name."""
    from detector import DETECTORS
    from fakeforge.registry import UnknownNameError

    path = Path(path)
    meta_file = path / META_FILE if path.is_dir() else path
    if not meta_file.is_file():
        raise CheckpointError(f"'{path}' is not a detector checkpoint folder (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{meta_file}' is not valid JSON: {exc}") from None
    name = meta.get("detector") if isinstance(meta, dict) else None
    try:
        DETECTORS.check(str(name))
    except UnknownNameError as exc:
        raise CheckpointError(f"'{meta_file}': {exc}") from None
    cls = DETECTORS.get(name)
    formats = (FORMAT, *cls.accepted_formats)
    if meta.get("format") not in formats:
        raise CheckpointError(f"'{meta_file}' has format {meta.get('format')!r}; {name!r} reads {list(formats)}")
    if meta.get("format") == FORMAT and int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"'{meta_file}' has format_version {meta.get('format_version')}; this fakeforge "
                              f"reads up to {FORMAT_VERSION} (upgrade fakeforge)")
    if int(meta.get("state_version", cls.state_version)) != cls.state_version:
        raise CheckpointError(f"'{meta_file}' stores {name!r} state version {meta.get('state_version')}, this "
                              f"fakeforge uses version {cls.state_version}")
    return meta


def _read_tensors(path: Path, weights_file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = path / weights_file
    if not file.is_file():
        raise CheckpointError(f"checkpoint '{path}' has no {weights_file}")
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read '{file}': {exc}") from None


def load_detector_state(detector: Detector, path: str | Path) -> dict:
    """Load a checkpoint's tensors and preprocessing into an existing detector (e.g. to resume a run).

    Refuses a checkpoint of another detector or made on another backbone, naming both; returns the meta."""
    path = Path(path)
    meta = read_detector_meta(path)
    if meta["detector"] != detector.name:
        raise CheckpointError(f"checkpoint '{path}' is a {meta['detector']!r} detector, not {detector.name!r}")
    if "identity" in meta:
        detector.check_identity(meta["identity"], source=f"checkpoint '{path}'")
    detector.load_checkpoint_state(_read_tensors(path, detector.weights_file), source=f"checkpoint '{path}'")
    if meta.get("preprocess"):
        detector.preprocess = Preprocess.from_dict(meta["preprocess"])
    return meta


def detector_class_of(path: str | Path) -> type[Detector]:
    """The detector class that reads checkpoint `path` (from its detector.json's `format` and `detector`), without
    loading anything else; CheckpointError naming the problem otherwise."""
    from detector import DETECTORS
    from fakeforge.registry import UnknownNameError

    path = Path(path)
    if str(path).lower() in ZERO_SHOT:
        return DETECTORS.get("antifakeprompt")
    if path.is_file() and path.suffix in (".pth", ".pt") and sniff(path).plain_torch:
        official = official_detector_name(path)  # CNNSpot, NPR, UnivFD weight files (tensors only)
        if official:
            return DETECTORS.get(official)
    if path.is_file() and path.name != META_FILE:
        raise CheckpointError(not_a_detector_checkpoint(path))
    meta_file = path / META_FILE if path.is_dir() else path
    if not meta_file.is_file():
        raise CheckpointError(f"'{path}' is not a detector checkpoint folder (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{meta_file}' is not valid JSON ({exc}); the checkpoint is damaged") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read '{meta_file}': {exc.strerror or exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{meta_file}' holds a {type(meta).__name__}, not a detector description")
    fmt = meta.get("format")
    if fmt in FAMILY_FORMATS:
        return DETECTORS.get(FAMILY_FORMATS[fmt])
    if fmt != FORMAT:
        raise CheckpointError(f"'{meta_file}' has format {fmt!r}; fakeforge reads {[FORMAT, *FAMILY_FORMATS]}")
    try:
        DETECTORS.check(str(meta.get("detector")))
    except UnknownNameError as exc:
        raise CheckpointError(f"'{meta_file}': {exc}") from None
    return DETECTORS.get(meta["detector"])


def load_generic(cls: type[Detector], path: str | Path, device: str | torch.device | None = None,
                 tiny: bool = False, model_overrides: dict | None = None) -> Detector:
    """Rebuild a detector stored in this module's format (see `load_detector`)."""
    path = Path(path)
    meta = read_detector_meta(path)
    if meta["detector"] != cls.name:
        raise CheckpointError(f"checkpoint '{path}' is a {meta['detector']!r} detector, not {cls.name!r}")
    try:
        config = from_dict(cls.config_class, {**meta["model"], **(model_overrides or {})}, "model")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint '{path}': {exc}") from None
    if tiny and hasattr(config, "to_tiny"):
        config = config.to_tiny()
        tiny = False
    detector = cls.from_config(config, device=device, tiny=tiny)
    detector.eval()
    load_detector_state(detector, path)
    detector.checkpoint_meta = meta
    return detector


def load_detector(path: str | Path, device: str | torch.device | None = None, tiny: bool = False,
                  expect: str | None = None, model_overrides: dict | None = None) -> Detector:
    """Rebuild the detector of any checkpoint folder (or "zero-shot": AntifakePrompt's untuned baseline).

    `expect`: the detector name the caller needs (a checkpoint of another detector is refused, naming both).
    `tiny`: build on the tiny twins (a checkpoint trained on the real backbone is then refused as made for
    another backbone). `model_overrides`: config fields to change before building (e.g. {"k": 1}); a
    changed backbone is refused the same way. The loaded detector carries its detector.json as
    `checkpoint_meta`."""
    cls = detector_class_of(path)
    if expect and cls.name != expect:
        raise CheckpointError(f"checkpoint '{path}' is a {cls.name!r} detector, but {expect!r} was asked for")
    return cls.load(path, device=device, tiny=tiny, model_overrides=model_overrides)


def load_detectors(paths: list[str | Path], device: str | torch.device | None = None, tiny: bool = False,
                   zero_shot_model_id: str | None = None) -> list:
    """Several checkpoints (a side-by-side eval), in the given order. Every folder is checked first (format,
    detector name), then each family loads its checkpoints together and shares what it can (AntifakePrompt
    checkpoints on one base model come back as `detector.families.antifakeprompt.model.SharedBaseCheckpoint`s).
    `zero_shot_model_id`: the base model of "zero-shot" entries."""
    classes = [detector_class_of(p) for p in paths]
    out: list = [None] * len(paths)
    with sharing_loads():  # detectors of any family on the same frozen backbone load it once
        for i, path in enumerate(paths):
            if str(path).lower() in ZERO_SHOT:
                overrides = {"model_id": zero_shot_model_id} if zero_shot_model_id else None
                out[i] = classes[i].load(path, device=device, tiny=tiny, model_overrides=overrides)
        for cls in dict.fromkeys(classes):
            index = [i for i, c in enumerate(classes) if c is cls and out[i] is None]
            if len(index) == 1:
                out[index[0]] = cls.load(paths[index[0]], device=device, tiny=tiny)
            elif index:
                for i, det in zip(index, cls.load_many([paths[i] for i in index], device=device, tiny=tiny)):
                    out[i] = det
    return out


def model_card(meta: dict) -> str:
    """A short Markdown model card from detector.json."""
    ident, pre, t = meta.get("identity", {}), meta.get("preprocess", {}), meta.get("training") or {}
    lines = [f"# {meta['detector']} detector", "",
             "| field | value |", "|---|---|",
             f"| detector | `{meta['detector']}` ({meta.get('fit_mode')}) |",
             f"| backbone | `{ident.get('backbone') or ident.get('base_model')}` |",
             f"| backbone weights SHA-256 | `{ident.get('weights_sha256')}` |",
             f"| trainable parameters | {meta.get('trainable_parameters', 0):,} |",
             f"| input | {pre.get('image_size')} px, resize {pre.get('resize')} ({pre.get('interpolation')}, "
             f"crop {pre.get('crop_pct')}) |",
             f"| mean / std | {pre.get('mean')} / {pre.get('std')} ({pre.get('source', '')}) |"]
    for key in ("val_acc", "val_loss", "epoch"):
        if t.get(key) is not None:
            lines.append(f"| {key} | {t[key]} |")
    lines += ["", f"{(meta.get('describe') or {}).get('trainable_summary', '')}", "",
              "The saved tensors only make sense on the exact backbone weights named above; loading them "
              "on another backbone is refused. Evaluate on your own data.", "",
              f"Library versions: {meta.get('versions')}", ""]
    return "\n".join(lines)

