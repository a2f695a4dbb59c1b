"""Build configs: which sets to make from which source, with which generator, encoded how.

A build config (configs/build/*.yaml) names a common source, an image policy, shard limits and a
list of sets; a set names a generator preset (configs/generators/) and may override the source.
`resolve_build` turns YAML + CLI overrides into a `ResolvedBuild`, checking everything that can be
checked without loading a model.
"""
from __future__ import annotations

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
from fakeforge.sources import SourceConfig

DEFAULT_BUILD = "default"
_SET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


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

    def validate(self) -> None:
        if not _SET_NAME.match(self.name):
            raise ValueError(f"set name '{self.name}' may only contain letters, digits, '_' and '-'")


@dataclass
class BuildConfig:
    """Top-level build config (see configs/build/default.yaml for a commented example)."""

    output: str = "runs/demo"
    seed: int = 0
    source: SourceConfig = field(default_factory=SourceConfig)
    image: ImagePolicy = field(default_factory=ImagePolicy)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    sets: list[SetConfig] = field(default_factory=list)
    num_workers: int = 4
    description: str = ""

    def validate(self) -> None:
        if not self.sets:
            raise ValueError("a build config needs at least one entry under 'sets'")
        names = [s.name for s in self.sets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"set names must be unique; repeated: {dup}")


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


@dataclass
class ResolvedBuild:
    config: BuildConfig
    sets: list[ResolvedSet]
    tiny: bool
    hash: str
    raw: dict
    tiny_root: str | None = None

    @property
    def output(self) -> Path:
        return Path(self.config.output)


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
                  limit: int | None = None, output: str | None = None, tiny_root: str | None = None
                  ) -> ResolvedBuild:
    """Load a build config (a path or a name under configs/build/; None = the embedded default),
    apply `key=value` overrides, `limit` and `output`, and validate every set's generator config."""
    from generators import generator_config, resolve_generator_spec

    path = resolve_named_config(config or DEFAULT_BUILD, "build")
    raw = apply_overrides(_normalise_sets(load_yaml(path)), overrides)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit {limit} must be a positive integer")
        raw.setdefault("source", {})["limit"] = limit
        for s in raw.get("sets") or []:
            if isinstance(s, dict) and isinstance(s.get("source"), dict) and "limit" in s["source"]:
                s["source"]["limit"] = limit
    if output is not None:
        raw["output"] = output
    cfg: BuildConfig = from_dict(BuildConfig, raw)
    resolved = []
    for i, s in enumerate(cfg.sets):
        source = from_dict(SourceConfig, deep_merge(to_dict(cfg.source), s.source), f"sets.{i}.source")
        gen_raw = resolve_generator_spec(s.generator)
        try:
            cls, gcfg = generator_config(gen_raw, tiny=tiny, tiny_root=tiny_root)
        except ConfigError as exc:
            raise type(exc)(f"set '{s.name}': {exc}") from None
        model_label = gen_raw.get("model_id")
        if tiny and gen_raw.get("tiny_twin"):
            model_label = f"tiny-twin:{gen_raw['tiny_twin']} (of {gen_raw.get('model_id')})"
        resolved.append(ResolvedSet(s.name, source, _generator_label(s.generator), cls, gcfg, gen_raw, model_label,
                                    cls.storage_policy(gcfg, cfg.image)))
    content = {"seed": cfg.seed, "image": to_dict(cfg.image), "max_count": cfg.shards.max_count, "tiny": tiny,
               "sets": [{"name": r.name, "source": _source_identity(r.source), "generator": _content_settings(r),
                         **({"image": to_dict(r.image)} if r.image != cfg.image else {})} for r in resolved]}
    return ResolvedBuild(cfg, resolved, tiny, config_hash(content), raw, tiny_root)


def _source_identity(src: SourceConfig) -> dict:
    data = to_dict(src)
    if data.get("labels_file") is None:  # added later: absent keeps the hashes of earlier builds
        data.pop("labels_file", None)
    for k in ("captions_file", "images_dir", "labels_file"):  # the folder may move; the content stays
        if data.get(k):
            data[k] = Path(data[k]).name
    return data


def _content_settings(r: ResolvedSet) -> dict:
    """Generator settings that change the images (batch size and dtype choice do not enter the hash)."""
    data = to_dict(r.generator_cfg)
    for k in ("batch_size", "description", "tiny", "model_id"):
        data.pop(k, None)
    data["model"] = r.model_label
    return data
