"""`fakeforge validate`: check build configs and generator presets without loading any model.

Every set of every config is checked and every problem is collected, each on one line naming its
dotted key: config values, generator configs (class names, checkpoint files), the source files this
machine would read, and where each model comes from. A `model_id` must be an existing local folder,
or a well-formed hub id that is in the local hub cache when `HF_HUB_OFFLINE=1` (otherwise the build
would download it, and validate says so).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from fakeforge.config import ConfigError, load_yaml

_TRUE = {"1", "true", "yes", "on"}


@dataclass
class Report:
    """What validate found for one config file."""

    target: str
    kind: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detail: str = ""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def in_hub_cache(repo_id: str) -> bool:
    """True when the hub cache holds a snapshot of model `repo_id` (no network, no file read)."""
    from huggingface_hub.file_download import repo_folder_name

    snapshots = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def check_model_id(key: str, model_id: str, twin: str | None = None) -> tuple[str | None, str | None]:
    """(problem, note) for one model id: a local folder, a pending tiny twin (built on first use),
    or a hub id (well formed; cached, or downloaded by the build unless HF_HUB_OFFLINE=1)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model_id).expanduser()
    if path.is_dir():
        return None, None
    if twin and path.name == twin:
        return None, f"{key} = tiny twin '{twin}', built on first use in '{path.parent}'"
    if path.exists():
        return f"{key} = '{model_id}' is a file; it must be a model folder or a hub id", None
    looks_local = model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id
    try:
        if looks_local:
            raise HFValidationError("looks like a path")
        validate_repo_id(model_id)
    except HFValidationError:
        return f"{key} = '{model_id}' is neither an existing folder nor a well-formed hub id", None
    if in_hub_cache(model_id):
        return None, None
    if hub_offline():
        return (f"{key} = '{model_id}' is not in the local hub cache ({hub_cache_dir()}) and HF_HUB_OFFLINE=1: "
                "download it once online, point model_id at a local folder, or use --tiny"), None
    return None, f"{key} = '{model_id}' is not in the local hub cache: the build would download it from the hub"


def model_id_checks(prefix: str, cfg, tiny: bool) -> tuple[list[str], list[str]]:
    """Problems and notes for every `*model_id` field of a generator config."""
    problems, notes = [], []
    twin = getattr(cfg, "tiny_twin", None) if tiny else None
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name.endswith("model_id") and isinstance(value, str) and value:
            problem, note = check_model_id(f"{prefix}.{f.name}", value, twin if f.name == "model_id" else None)
            problems += [problem] if problem else []
            notes += [note] if note else []
    for i, spec in enumerate(getattr(cfg, "lora", None) or []):  # LoRA adapters are model ids too
        problem, note = check_model_id(f"{prefix}.lora.{i}.id", spec.id, spec.tiny_twin if tiny else None)
        problems += [problem] if problem else []
        notes += [note] if note else []
    return problems, notes


def source_checks(prefix: str, source, needs_images: bool) -> list[str]:
    """The captions file and images folder a set would read must exist on this machine."""
    if source.kind == "demo":
        return []
    problems = []
    if source.captions_file and not Path(source.captions_file).is_file():
        problems.append(f"{prefix}.captions_file = '{source.captions_file}' not found")
    if needs_images and source.require_images and not (source.images_dir and Path(source.images_dir).is_dir()):
        problems.append(f"{prefix}.images_dir = {source.images_dir!r} is not a folder (this set needs the images)")
    return problems


def validate_build(target: str, tiny: bool) -> Report:
    """Every set of a build config: config values, generator, source files, model ids."""
    from fakeforge.builder.config import resolve_build_collect

    report = Report(target, "build")
    resolved, report.problems = resolve_build_collect(target, tiny=tiny)
    if resolved is None:
        return report
    index = {s.name: i for i, s in enumerate(resolved.config.sets)}
    for rset in resolved.sets:
        i = index[rset.name]
        needs = rset.generator_cls.needs_source_image
        report.problems += source_checks(f"sets.{i}.source", rset.source, needs)
        problems, notes = model_id_checks(f"sets.{i}.generator", rset.generator_cfg, tiny)
        for j, entry in enumerate(getattr(rset.generator_cfg, "entries", [])):  # a zoo: every model's ids
            more, more_notes = model_id_checks(f"sets.{i}.generator.models.{j} ({entry.name})", entry.cfg, tiny)
            problems, notes = problems + more, notes + more_notes
        report.problems += problems
        report.notes += notes
    report.detail = f"sets {', '.join(s.name for s in resolved.sets)} (config_hash {resolved.hash})"
    return report


def validate_preset(target: str, tiny: bool) -> Report:
    """A generator preset file: its config and model ids."""
    from fakeforge.registry import UnknownNameError
    from generators import generator_config, resolve_generator_spec

    report = Report(target, "preset")
    try:
        _cls, cfg = generator_config(resolve_generator_spec(load_yaml(target)), tiny=tiny)
    except ConfigError as exc:
        report.problems = exc.problems
        return report
    except UnknownNameError as exc:
        report.problems = [f"type: {exc}"]
        return report
    report.problems, report.notes = model_id_checks("generator", cfg, tiny)
    return report


def validate_target(target: str, tiny: bool) -> Report:
    """A YAML with a top-level `type:` (and no `sets:`) is a generator preset, anything else a build config."""
    try:
        raw = load_yaml(target) if Path(target).is_file() else {}
    except ConfigError as exc:
        return Report(target, "config", exc.problems)
    if "type" in raw and "sets" not in raw:
        return validate_preset(target, tiny)
    try:
        return validate_build(target, tiny)
    except ConfigError as exc:
        return Report(target, "build", exc.problems)
