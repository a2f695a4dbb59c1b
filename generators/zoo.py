"""Zoo sets: many generators in one set, each sample made by one model chosen from its key.

    generator:
      type: zoo
      failure_budget: 1            # models allowed to fail (a count >= 1, or a fraction < 1)
      models:
        - sd2                                              # a preset name
        - {preset: sdxl, weight: 2}                        # a preset with a weight (share of samples)
        - {name: sd14_fast, preset: sd14, num_inference_steps: {choice: [10, 25]}}
        - {name: mine, type: text2image, model_id: org/model, revision: 0123abc}   # inline config
      models_file: models.yaml     # more entries: a YAML list (or {models: [...]}) or a CSV with a header
      models_dir: /data/models     # more entries: every diffusers folder (model_index.json) below it

`resolve_zoo` checks every entry before any model loads (unknown preset, pipeline or scheduler, a
duplicate entry, a weight <= 0, bad distribution bounds: one line naming the entry). The builder plans
which samples each model makes (`fakeforge/builder/zoo_plan.py`) and hands this generator one model's
shards after another; `activate` loads that model once (releasing the previous one), and a model that
cannot be loaded, runs out of memory at batch 1, or fails every sample becomes one recorded model
failure (`ModelFailure`, classed by `classify`), not a crash. Out of memory halves that model's batch
and retries first.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import hashlib
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakeforge.config import ConfigError, load_yaml
from fakeforge.registry import UnknownNameError
from generators.base import Generator, GeneratorConfig, GeneratorFailure, GenRequest, GenResult

log = logging.getLogger(__name__)
ENTRY_KEYS = ("name", "weight", "revision")


@dataclass
class ZooConfig(GeneratorConfig):
    """A zoo set's generator. `models` are entries (preset names or generator configs with optional
    `name`, `weight`, `revision`); after `resolve_zoo` each is {name, weight, revision, model, generator}
    with the full generator config, so the set's hash covers every model's settings.

    failure_budget: how many models may fail while the set still finishes: a count (>= 1) or a
        fraction of the models (< 1); 0 = none.
    """

    models: list = field(default_factory=list)
    models_file: str | None = None
    models_dir: str | None = None
    failure_budget: float = 0

    def validate(self) -> None:
        super().validate()
        if self.failure_budget < 0:
            raise ValueError(f"generator.failure_budget = {self.failure_budget} must be >= 0 (a count of models, "
                             "or a fraction below 1)")

    def allowed_failures(self) -> int:
        """The failure budget as a number of models."""
        n = len(self.models)
        return int(self.failure_budget * n) if self.failure_budget < 1 else int(self.failure_budget)


@dataclass
class ZooEntry:
    """One resolved model of a zoo: its generator class and config, share weight and provenance label."""

    name: str
    weight: float
    cls: type
    cfg: Any
    label: str
    revision: str | None
    twin: str | None


class ModelFailure(Exception):
    """One model of a zoo failed as a whole; `info` is its record (class, reason, traceback tail)."""

    def __init__(self, info: dict):
        super().__init__(f"[{info['class']}] {info['reason']}")
        self.info = info


def classify(exc: BaseException) -> str:
    """The fault class of a model-level error: missing, gated, unsupported pipeline, OOM, NaN or error."""
    import sys

    name = type(exc).__name__
    text = str(exc)
    torch = sys.modules.get("torch")
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())))\
            or "out of memory" in text.lower():
        return "OOM"
    if name == "GatedRepoError" or "gated" in text.lower() or " 401" in text or " 403" in text:
        return "gated"
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "LocalEntryNotFoundError",
                "FileNotFoundError") or "model_index.json" in text or "no such file" in text.lower():
        return "missing"
    if "nan" in text.lower().split() or "NaN" in text:
        return "NaN"
    if isinstance(exc, (ImportError, AttributeError, NotImplementedError)) or "pipeline" in text.lower():
        return "unsupported pipeline"
    return "error"


def failure_record(exc: BaseException, model: str, stage: str) -> dict:
    """A model failure as data: class, one-line reason, where it happened and the traceback's tail."""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).strip().splitlines()[-6:]
    return {"model": model, "class": classify(exc), "stage": stage,
            "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "traceback": "\n".join(tail)[-1500:]}


def _read_models_file(path: str, where: str) -> list:
    """Entries of a YAML list / {models: [...]} file or of a CSV with a header row (empty cells dropped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}.models_file = '{path}' does not exist")
    if p.suffix.lower() == ".csv":
        rows = []
        with p.open(newline="") as fh:
            for row in csv.DictReader(fh):
                entry: dict[str, Any] = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
                if "weight" in entry:
                    try:
                        entry["weight"] = float(entry["weight"])
                    except ValueError:
                        raise ConfigError(f"{where}.models_file '{path}': weight {entry['weight']!r} of "
                                          f"{entry.get('name') or entry.get('model_id')} is not a number") from None
                rows.append(entry)
        return rows
    data = load_yaml(p)
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list):
        raise ConfigError(f"{where}.models_file '{path}' must hold a list of models (or 'models: [...]')")
    return data


def _scan_models_dir(path: str, where: str) -> list:
    """One text-to-image entry per diffusers folder (holding model_index.json) below `path`, sorted."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{where}.models_dir = '{path}' is not a folder")
    return [{"name": str(p.parent.relative_to(root)).replace("/", "_") or root.name, "type": "text2image",
             "model_id": str(p.parent)} for p in sorted(root.rglob("model_index.json"))]


def _entry_name(spec: dict, raw: dict, i: int) -> str:
    if spec.get("name"):
        return str(spec["name"])
    if spec.get("preset"):
        return str(spec["preset"])
    if raw.get("model_id"):
        return str(raw["model_id"]).rstrip("/").split("/")[-1]
    return f"model{i}"


def resolve_zoo(raw: dict, tiny: bool = False, tiny_root=None, path: str = "generator"):
    """Validate a zoo generator config: every entry resolved and checked (no model loads). Returns
    (ZooGenerator, ZooConfig) with `cfg.models` normalised and the resolved entries on `cfg.entries`."""
    from fakeforge.config import deep_merge, from_dict
    from generators import generator_config, resolve_generator_spec

    if tiny and isinstance(raw.get("tiny"), dict):
        raw = deep_merge(raw, raw["tiny"])
    cfg: ZooConfig = from_dict(ZooConfig, raw, path)
    specs = list(cfg.models)
    if cfg.models_file:
        specs += _read_models_file(cfg.models_file, path)
    if cfg.models_dir:
        specs += _scan_models_dir(cfg.models_dir, path)
    if not specs:
        raise ConfigError(f"{path}: a zoo needs at least one model (models, models_file or models_dir)")
    problems: list[str] = []
    entries: list[ZooEntry] = []
    normalised: list[dict] = []
    seen_names: dict[str, int] = {}
    seen_content: dict[str, str] = {}
    for i, spec in enumerate(specs):
        where = f"{path}.models.{i}"
        spec = {"preset": spec} if isinstance(spec, str) else copy.deepcopy(spec)
        if not isinstance(spec, dict):
            problems.append(f"{where}: {spec!r} must be a preset name or a mapping")
            continue
        weight = spec.get("weight", 1.0)
        gen_spec = {k: v for k, v in spec.items() if k not in ENTRY_KEYS}
        if "type" not in gen_spec and "preset" not in gen_spec and "model_id" in gen_spec:
            gen_spec["type"] = "text2image"
        try:
            gen_raw = resolve_generator_spec(gen_spec)
            name = _entry_name(spec, gen_raw, i)
            where = f"{where} ({name})"
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ConfigError(f"{where}: weight = {weight!r} must be a number > 0")
            if gen_raw.get("type") == "zoo":
                raise ConfigError(f"{where}: a zoo cannot hold another zoo")
            gcls, gcfg = generator_config(gen_raw, tiny=tiny, tiny_root=tiny_root, path=where)
        except (ConfigError, UnknownNameError) as exc:
            lines = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            problems += [ln if ln.startswith(f"{path}.models.") else f"{where}: {ln}" for ln in lines]
            continue
        if gcls.needs_source_image or gcls.label != "fake" or getattr(gcls, "label_from_source", False):
            problems.append(f"{where}: generator type '{gcfg.type}' starts from a real image or is not a fake "
                            "generator; a zoo holds text-to-image generators (make that one its own set)")
            continue
        if name in seen_names:
            problems.append(f"{where}: duplicate model name '{name}' (also entry {seen_names[name]}); give one a "
                            "different 'name'")
            continue
        label = gen_raw.get("model_id") or ", ".join(str(st.get("model_id")) for st in gen_raw.get("stages") or []
                                                     if isinstance(st, dict)) or None
        twin = gen_raw.get("tiny_twin") if tiny else None
        if twin:
            label = f"tiny-twin:{twin} (of {label})"
        revision = spec.get("revision")
        content = repr(sorted({**_identity(gcfg), "model": label, "revision": revision}.items()))
        if content in seen_content and not twin:
            problems.append(f"{where}: duplicate entry: same model and settings as '{seen_content[content]}'")
            continue
        seen_names[name] = i
        seen_content.setdefault(content, name)
        entries.append(ZooEntry(name, float(weight), gcls, gcfg, label, revision, twin))
        normalised.append({"name": name, "weight": float(weight), "model": label, "revision": revision,
                           "generator": _identity(gcfg)})
    if problems:
        raise ConfigError(problems=problems)
    cfg.models = normalised
    cfg.entries = entries
    cfg.tiny_root = tiny_root
    return ZooGenerator, cfg


def _identity(gcfg) -> dict:
    from fakeforge.config import to_dict

    data = to_dict(gcfg)
    for k in ("model_id", "description", "tiny", "batch_size"):
        data.pop(k, None)
    if not data.get("sample"):
        data.pop("sample", None)
    return data


def folder_fingerprint(path: str) -> str | None:
    """A cheap content hash of a model folder: every file's relative path and size, and the bytes of its
    JSON/text configs (weights are not read). None when `path` is not a local folder."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\0".encode())
        if p.suffix in (".json", ".txt"):
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _snapshot_revision(path: str) -> str | None:
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


class ZooGenerator(Generator):
    """Makes each shard with the model the plan assigned it (`activate(name)` before its shards)."""

    config_class = ZooConfig

    def __init__(self, config: ZooConfig, device: str = "cpu"):
        super().__init__(config, device)
        self.zoo = config
        self.entries = {e.name: e for e in getattr(config, "entries", [])}
        self.current: str | None = None
        self.inner: Generator | None = None
        self.info: dict = {}
        self.failures: dict[str, dict] = {}
        self.batch: dict[str, int] = {}
        self.loads: list[str] = []  # model names in the order this process loaded them
        self._made: dict[str, list[int]] = {}

    def load(self) -> None:
        """Nothing up front: each model loads when its first shard comes (`activate`)."""

    def models(self) -> list[tuple[str, float]]:
        """(name, weight) of every model, in entry order."""
        return [(e.name, e.weight) for e in self.entries.values()]

    def release(self) -> None:
        """Drop the loaded model and free its memory."""
        if self.inner is None:
            return
        self.inner = None
        self.current = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def activate(self, name: str) -> dict | None:
        """Make model `name` the current one (loading it unless it already is); returns its failure
        record if it failed (now or before), else None."""
        if name in self.failures:
            return self.failures[name]
        if name == self.current:
            return None
        self.release()
        entry = self.entries[name]
        cfg = copy.deepcopy(entry.cfg)
        try:
            if entry.twin:
                from fakeforge.twins import ensure_tiny

                ensure_tiny(entry.twin, self.zoo.tiny_root)
            elif entry.revision and cfg.model_id and not Path(cfg.model_id).is_dir():
                from huggingface_hub import snapshot_download

                cfg.model_id = snapshot_download(cfg.model_id, revision=entry.revision)
            gen = entry.cls(cfg, device=self.device)
            gen.image_policy = self.image_policy
            self.loads.append(name)
            gen.load()
        except Exception as exc:  # noqa: BLE001 - a model that cannot load is that model's recorded failure
            return self.fail(name, exc, "load")
        self.inner, self.current = gen, name
        self.batch.setdefault(name, cfg.batch_size)
        self.config = dataclasses.replace(self.zoo, batch_size=self.batch[name])
        settings = gen.settings()
        settings.pop("batch_size", None)  # how it was batched does not change a sample
        if "model_id" in settings:
            settings["model_id"] = entry.label
        self.info = {"model": name, "model_id": entry.label,
                     "model_revision": entry.revision or _snapshot_revision(str(cfg.model_id or "")),
                     "model_hash": folder_fingerprint(str(cfg.model_id or "")), "settings": settings,
                     "generator_type": cfg.type}
        log.info("zoo: model '%s' loaded (%s)", name, entry.label)
        return None

    def fail(self, name: str, exc: BaseException, stage: str) -> dict:
        """Record model `name` as failed (its remaining shards become model-failure shards)."""
        info = exc.info if isinstance(exc, ModelFailure) else failure_record(exc, name, stage)
        self.failures[name] = info
        log.error("zoo: model '%s' failed [%s] while %s: %s", name, info["class"], stage, info["reason"])
        if name == self.current:
            self.release()
        return info

    def batch_order(self, keys: list[str]) -> list[int]:
        """Equal per-sample settings of the current model next to each other."""
        return self.inner.batch_order(keys) if self.inner is not None else list(range(len(keys)))

    def settings(self) -> dict:
        return {"type": "zoo", "models": [m["name"] for m in self.zoo.models],
                "failure_budget": self.zoo.failure_budget}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.generate_safe(requests)

    def generate_varied(self, requests: list[GenRequest], safe: bool = True) -> list[GenResult]:
        return self.generate_safe(requests)

    def generate_safe(self, requests: list[GenRequest]) -> list[GenResult]:
        """The current model's results for `requests`, in chunks of its batch size. Out of memory halves
        that batch size and retries; at batch 1 it is a `ModelFailure` (class OOM). Other errors fall back
        to the inner generator's one-by-one retry; an error that is not one sample's is a `ModelFailure`.
        A model whose first samples (at least two) all failed with one error is a `ModelFailure` too."""
        if self.inner is None:
            raise GeneratorFailure("zoo generator used before a model was activated")
        name, out, i = self.current, [], 0
        while i < len(requests):
            bs = self.batch[name]
            chunk = requests[i:i + bs]
            try:
                res = self.inner.generate_varied(chunk, safe=False)
                if not isinstance(res, list) or len(res) != len(chunk):
                    raise GeneratorFailure(f"generator returned {len(res)} results for {len(chunk)} requests")
            except GeneratorFailure as exc:
                raise ModelFailure(failure_record(exc, name, "generate")) from exc
            except Exception as exc:  # noqa: BLE001 - sorted below: OOM halves, others retried one by one
                if classify(exc) == "OOM":
                    if len(chunk) == 1:
                        raise ModelFailure(failure_record(exc, name, "generate at batch size 1")) from exc
                    self.batch[name] = max(1, len(chunk) // 2)
                    log.warning("zoo: model '%s' ran out of memory at batch size %d; retrying at %d", name,
                                len(chunk), self.batch[name])
                    continue
                try:
                    res = self.inner.generate_varied(chunk)
                except GeneratorFailure as exc2:
                    raise ModelFailure(failure_record(exc2, name, "generate")) from exc2
            out.extend(res)
            i += len(chunk)
            self._check_all_failed(name, res)
        self.config = dataclasses.replace(self.zoo, batch_size=self.batch[name])
        for res in out:
            res.extra = {**self.info, **res.extra}
        return out

    def _check_all_failed(self, name: str, results: list[GenResult]) -> None:
        made = self._made.setdefault(name, [0, 0])
        if made[0] < 0:
            return
        made[0] += sum(r.error is None and r.image is not None for r in results)
        made[1] += sum(r.error is not None or r.image is None for r in results)
        errors = {r.error for r in results if r.error is not None}
        if made[0]:
            made[0] = -1  # it works: stop checking
        elif made[1] >= 2 and len(errors) == 1:
            error = next(iter(errors))
            info = {"model": name, "class": "NaN" if "nan" in error.lower() else "error", "stage": "generate",
                    "reason": f"its first {made[1]} samples all failed: {error}"[:300], "traceback": ""}
            raise ModelFailure(info)
