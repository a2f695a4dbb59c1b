"""Build configs: which sets to make from which source, with which generator, encoded how.

A build config (configs/build/*.yaml) names a common source, an image policy, shard limits and a
list of sets; a set names a generator preset (configs/generators/) and may override the source.
`resolve_build` turns YAML + CLI overrides into a `ResolvedBuild`, checking everything that can be
checked without loading a model.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakeforge.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    deep_merge,
    from_dict,
    load_yaml,
    resolve_named_config,
    to_dict,
)
from fakeforge.images import ImagePolicy
from fakeforge.registry import UnknownNameError
from fakeforge.sources import SourceConfig, missing_data

log = logging.getLogger("fakeforge.builder")

DEFAULT_BUILD = "default"
_SET_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class ShardsConfig:
    """Shard limits: a new shard job every `max_count` samples; a tar is split at `max_size_mb`."""

    max_count: int = 1000
    max_size_mb: float = 1024.0

    def validate(self) -> None:
        if self.max_count < 1:
            raise ValueError(f"shards.max_count = {self.max_count} must be >= 1")
        if self.max_size_mb <= 0:
            raise ValueError(f"shards.max_size_mb = {self.max_size_mb} must be > 0")


@dataclass
class SetConfig:
    """One output set: its name (folder and key prefix), generator preset/spec, source overrides."""

    name: str
    generator: Any = "real"
    source: dict = field(default_factory=dict)
    optional: bool = False  # skip the set (one log line naming the missing path) when its source data is absent

    def validate(self) -> None:
        if not _SET_NAME.match(self.name):
            raise ValueError(f"set name {self.name!r} may only contain letters, digits and '_' (it is a folder "
                             "name and the first part of every key, '<set>-<image id>-<caption id>')")


@dataclass
class BuildConfig:
    """Top-level build config (see configs/build/default.yaml for a commented example).

    max_failed_fraction: a set whose failed samples exceed this fraction fails the build (non-zero
        exit, and `verify` rejects it); 1.0 accepts any number of failures.
    """

    output: str = "runs/default"
    seed: int = 0
    source: SourceConfig = field(default_factory=SourceConfig)
    image: ImagePolicy = field(default_factory=ImagePolicy)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    sets: list[SetConfig] = field(default_factory=list)
    num_workers: int = 4
    max_failed_fraction: float = 0.05
    description: str = ""

    def validate(self) -> None:
        if not self.output.strip():
            raise ValueError("output = '' must name a folder (an empty output would write into the current folder)")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction = {self.max_failed_fraction} must be within [0, 1]")
        if self.num_workers < 1:
            raise ValueError(f"num_workers = {self.num_workers} must be >= 1")
        if not self.sets:
            raise ValueError("sets = []: a build config needs at least one entry under 'sets'")
        names = [s.name for s in self.sets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"set names must be unique; repeated: {dup}")
        folded: dict[str, str] = {}
        for n in names:
            if n.lower() in folded and folded[n.lower()] != n:
                raise ValueError(f"sets '{folded[n.lower()]}' and '{n}' would claim the same folder on "
                                 "case-insensitive filesystems and stores; rename one of them")
            folded.setdefault(n.lower(), n)


@dataclass
class ResolvedSet:
    """A set ready to build: its source config, generator class and config, and provenance labels."""

    name: str
    source: SourceConfig
    generator_name: str
    generator_cls: type
    generator_cfg: Any
    generator_raw: dict
    model_label: str | None
    image: ImagePolicy | None = None  # this set's image policy (the build's, unless its generator overrides it)
    settings: dict = field(default_factory=dict)  # what the set's hash covers (see set_settings)
    set_hash: str = ""


@dataclass
class ResolvedBuild:
    config: BuildConfig
    sets: list[ResolvedSet]
    tiny: bool
    hash: str
    raw: dict
    tiny_root: str | None = None
    skipped: list[str] = field(default_factory=list)  # optional sets whose data is absent

    @property
    def output(self) -> Path | str:
        """The output folder (a Path) or object-store URL (a str)."""
        from fakeforge.shards.store import Store, is_url

        return self.config.output if is_url(self.config.output) else Store(self.config.output).root


#: what a set whose source is of another kind keeps from the common source: the selection policy, not its files
_SELECTION_KEYS = ("limit", "seed", "captions_per_image", "require_images", "image_limits")


def _inherited_source(common: SourceConfig, override: dict) -> dict:
    """The common source settings a set's source starts from (all of them for the same kind)."""
    data = to_dict(common)
    if override.get("kind", common.kind) != common.kind:
        data = {k: v for k, v in data.items() if k in _SELECTION_KEYS}
    return data


def _normalise_sets(raw: dict) -> dict:
    """`generator: sd2` -> `generator: {preset: sd2}`, so overrides like sets.1.generator.num_inference_steps=30
    can reach into a set named by preset."""
    for s in raw.get("sets") or []:
        if isinstance(s, dict) and isinstance(s.get("generator"), str):
            s["generator"] = {"preset": s["generator"]}
    return raw


def _generator_label(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return spec.get("preset") or spec.get("name") or spec.get("type", "custom")


def resolve_build(config: str | Path | None = None, overrides: list[str] | None = None, *, tiny: bool = False,
                  limit: int | None = None, output: str | None = None, tiny_root: str | None = None,
                  demo_data: bool = False) -> ResolvedBuild:
    """Load a build config (a path or a name under configs/build/; None = the embedded default),
    apply `key=value` overrides, `limit` and `output`, and validate every set's generator config.
    `demo_data` replaces every source with the built-in sample photos (fakeforge/builder/demo_data.py).

    Raises one ConfigError listing every problem found (each naming its dotted key)."""
    resolved, problems = resolve_build_collect(config, overrides, tiny=tiny, limit=limit, output=output,
                                               tiny_root=tiny_root, demo_data=demo_data)
    if problems:
        raise ConfigError(problems=problems)
    return resolved


def resolve_build_collect(config: str | Path | None = None, overrides: list[str] | None = None, *,
                          tiny: bool = False, limit: int | None = None, output: str | None = None,
                          tiny_root: str | None = None, demo_data: bool = False
                          ) -> tuple[ResolvedBuild | None, list[str]]:
    """Like `resolve_build`, but returns (resolved build or None, problems) and checks every set even
    when an earlier one is broken. The resolved build holds only the sets without problems."""
    from generators import generator_config, resolve_generator_spec

    path = resolve_named_config(config or DEFAULT_BUILD, "build")
    raw = apply_overrides(_normalise_sets(load_yaml(path)), overrides)
    if demo_data:
        from fakeforge.builder.demo_data import use_demo_data

        raw = use_demo_data(raw)
    problems: list[str] = []
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit {limit} must be a positive integer")
        if isinstance(raw.setdefault("source", {}), dict):
            raw["source"]["limit"] = limit
        for s in raw.get("sets") or []:
            if isinstance(s, dict) and isinstance(s.get("source"), dict) and "limit" in s["source"]:
                s["source"]["limit"] = limit
    if output is not None:
        raw["output"] = output
    try:
        cfg: BuildConfig = from_dict(BuildConfig, raw)
    except ConfigError as exc:
        return None, exc.problems
    resolved, skipped = [], []
    for i, s in enumerate(cfg.sets):
        where = f"sets.{i}"
        before = len(problems)
        try:
            source = from_dict(SourceConfig, deep_merge(_inherited_source(cfg.source, s.source), s.source),
                               f"{where}.source")
        except ConfigError as exc:
            problems += [_in_set(line, f"{where}.source", s.name) for line in exc.problems]
        try:
            gen_raw = resolve_generator_spec(s.generator)
            cls, gcfg = generator_config(gen_raw, tiny=tiny, tiny_root=tiny_root, path=f"{where}.generator")
        except (ConfigError, UnknownNameError) as exc:
            lines = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            problems += [_in_set(line, f"{where}.generator", s.name) for line in lines]
        if len(problems) > before:
            continue
        if getattr(cls, "label_from_source", False) and not source.label:
            problems.append(f"{where}.source (set '{s.name}'): generator type '{gcfg.type}' passes downloaded images "
                            "through and needs a downloaded-set source with a label (source.kind folder, shards, "
                            "diffusiondb or frames, and source.label real/fake)")
            continue
        model_label = gen_raw.get("model_id")
        if tiny and gen_raw.get("tiny_twin"):
            model_label = f"tiny-twin:{gen_raw['tiny_twin']} (of {gen_raw.get('model_id')})"
        resolved.append(ResolvedSet(s.name, source, _generator_label(s.generator), cls, gcfg, gen_raw, model_label,
                                    cls.storage_policy(gcfg, cfg.image)))
        missing = missing_data(source) if s.optional else None
        if missing:
            log.warning("set '%s' skipped (optional): %s not found", s.name, missing)
            skipped.append(s.name)
    originals = _bind_originals(resolved, [s.name for s in cfg.sets], problems)
    for r in resolved:
        if r.name in originals:  # a degrade set: labelled like its original, changed when its original is
            r.generator_cfg.of_label = set_label(originals[r.name])
            r.generator_cfg.of_set_hash = originals[r.name].set_hash
        r.settings = set_settings(r, cfg, tiny)
        r.set_hash = config_hash(r.settings)
    resolved = [r for r in resolved if not (getattr(r.generator_cls, "reads_other_set", False)
                                            and r.name not in originals)]
    built = [r for r in resolved if r.name not in skipped]
    if resolved and not built:
        problems.append(f"every set of this build was skipped: the data of the optional sets {skipped} is absent")
    from fakeforge.shards.manifest import dataset_hash

    # skipped sets stay in the hash, so the folder can be resumed once their data is there
    whole = dataset_hash({r.name: {"set_hash": r.set_hash, "limit": r.source.limit} for r in resolved})
    return ResolvedBuild(cfg, built, tiny, whole, raw, tiny_root, skipped), problems


def _bind_originals(resolved: list[ResolvedSet], order: list[str], problems: list[str]) -> dict[str, ResolvedSet]:
    """{degrade set name: the set it copies}. `of` must name a set listed before it (so no chain of copies can
    loop) with the same source, and not a zoo set; anything else is a problem naming the set."""
    from fakeforge.builder.zoo_plan import is_zoo

    by_name = {r.name: r for r in resolved}
    found = {}
    for r in resolved:
        if not getattr(r.generator_cls, "reads_other_set", False):
            continue
        of, where = r.generator_cfg.of, f"sets.{order.index(r.name)}.generator.of (set '{r.name}')"
        earlier = order[:order.index(r.name)]
        if of not in earlier:
            problems.append(f"{where}: '{of}' is not a set listed before this one "
                            f"({', '.join(earlier) or 'none is'}); a degrade set copies an earlier set of its build")
        elif of not in by_name:
            problems.append(f"{where}: set '{of}' has problems of its own (see above)")
        elif is_zoo(by_name[of]):
            problems.append(f"{where}: '{of}' is a zoo set, whose shards are spread over ranks by model; "
                            "degrade one of its models' sets instead")
        elif _source_identity(by_name[of].source) != _source_identity(r.source):
            problems.append(f"{where}: set '{of}' reads another source; a degrade set must keep its original's "
                            "source (same records, same keys)")
        else:
            found[r.name] = by_name[of]
    return found


def set_settings(r: ResolvedSet, cfg: BuildConfig, tiny: bool) -> dict:
    """Everything that decides what a set's samples are, and so its hash: the source selection (without
    `limit`: a larger limit extends the same seeded order), the generator's settings, the set's image
    policy, the shard size in samples and the build seed. Not in it: the set's name (its folder), batch
    sizes, `shards.max_size_mb` (it only splits a shard's tar into parts), the failure budget, worker
    counts, and `--tiny` as such (a tiny twin shows as the model, 'tiny-twin:...'; a set without a model
    is the same set either way)."""
    source = _source_identity(r.source)
    source.pop("limit", None)
    return {"seed": cfg.seed, "source": source, "generator": _content_settings(r),
            "image": to_dict(r.image if r.image is not None else cfg.image), "max_count": cfg.shards.max_count}


def _in_set(line: str, where: str, name: str) -> str:
    """A set's problem, prefixed with its dotted key and name unless the line already starts with them."""
    if line.startswith((where, f"'{where}")):
        return f"{line} (set '{name}')"
    return f"{where} (set '{name}'): {line}"


def _source_identity(src: SourceConfig) -> dict:
    data = to_dict(src)
    data.pop("image_limits", None)  # limits decide which samples fail, not what a sample is (--retry-failed)
    if data.get("labels_file") is None:  # added later: absent keeps the hashes of earlier builds
        data.pop("labels_file", None)
    for k in ("captions_file", "images_dir", "labels_file"):  # the folder may move; the content stays
        if data.get(k):
            data[k] = Path(data[k]).name
    return data


def _content_settings(r: ResolvedSet) -> dict:
    """Generator settings that change the images (batch size and dtype choice do not enter the hash)."""
    data = to_dict(r.generator_cfg)
    for k in ("batch_size", "description", "tiny", "model_id", "memory", "compile", "failure_budget",  # speed: same images
              "of_location", "of_label"):  # where a degrade set's original lies, and its label: not what it is
        data.pop(k, None)
    for k, empty in (("lora", []), ("fuse_lora", True), ("dtypes", {}), ("sample", {})):  # added later: the default keeps old hashes
        if data.get(k, empty) == empty:
            data.pop(k, None)
    for spec in data.get("lora") or []:  # a LoRA twin's folder is where it was built, not what it is
        if spec.get("tiny_twin") and Path(spec["id"]).name == spec["tiny_twin"]:
            spec["id"] = f"tiny-twin:{spec['tiny_twin']}"
    data["model"] = r.model_label
    return data


def set_label(rset: ResolvedSet) -> str:
    """A set's label: the generator's, except for pass-through generators of downloaded sets, whose
    label is the source's (`download` generator + `source.label`)."""
    if getattr(rset.generator_cls, "label_from_source", False) and rset.source.label:
        return rset.source.label
    if getattr(rset.generator_cls, "reads_other_set", False) and rset.generator_cfg.of_label:
        return rset.generator_cfg.of_label  # a degrade set: its original's label
    return rset.generator_cls.label
