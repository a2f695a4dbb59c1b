"""Checkpoint files of non-diffusers generators (LaMa's TorchScript, LIIF's .pth): where to find them.

Precedence: `model_id` (what --tiny sets to the twin folder, so a dry run never loads the real
weights even when `model_path` is set), else the config's `model_path`, else an environment
variable; a folder means `<folder>/<filename>`. A missing file is a configuration error whose
message says what the file is and where users get it.

These generators run in float32 (`RUN_DTYPE`): a config asking for another dtype is refused rather
than silently ignored, and `dtype_resolved` in every sample's settings records what really ran.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fakeforge.config import ConfigError, MissingCheckpointError  # noqa: F401  (raised here, importable from here)
from generators.base import Generator, GeneratorConfig


def resolve_checkpoint(cfg: GeneratorConfig, model_path: str | None, env: str, filename: str, help: str) -> Path:
    """The checkpoint file: `model_id` (what --tiny sets), else `model_path`, else $env; a folder means
    `<folder>/<filename>`. Raises MissingCheckpointError naming the file and where to get it."""
    raw = cfg.model_id or model_path or os.environ.get(env)
    if not raw:
        raise MissingCheckpointError(f"generator '{cfg.type}' has no checkpoint configured. {help}")
    path = Path(raw).expanduser()
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise MissingCheckpointError(f"checkpoint file not found: '{path}'. {help}")
    return path


def _is_pending_twin(cfg: GeneratorConfig) -> bool:
    """True when model_id is a tiny-twin folder that --tiny will build before loading."""
    return bool(cfg.tiny_twin and cfg.model_id and Path(cfg.model_id).name == cfg.tiny_twin
                and not Path(cfg.model_id).exists())


def ensure_pending_twin(cfg: GeneratorConfig) -> None:
    """Build the tiny twin named by `cfg` if model_id points at its (missing) folder."""
    if _is_pending_twin(cfg):
        from fakeforge.twins import ensure_tiny

        ensure_tiny(cfg.tiny_twin, Path(cfg.model_id).parent)


def check_checkpoint(cfg: GeneratorConfig, model_path, env, filename, help) -> None:
    """Config-time check (no loading): the checkpoint must exist, unless it is a twin built on demand."""
    if not _is_pending_twin(cfg):
        resolve_checkpoint(cfg, model_path, env, filename, help)


RUN_DTYPE = "float32"


@dataclass
class CheckpointFileConfig(GeneratorConfig):
    """Config of a generator whose weights are one file: the tiny twin's folder (`model_id`, set by
    --tiny) first, else `model_path`, else the environment variable `checkpoint_env`.
    `dtype` must be "auto" or "float32" (what these generators run in).

    Subclasses set the class attributes `checkpoint_env`, `checkpoint_name` (the file inside a
    folder) and `checkpoint_help` (what the file is and where to get it).
    """

    model_path: str | None = None
    checkpoint_env: ClassVar[str] = ""
    checkpoint_name: ClassVar[str] = ""
    checkpoint_help: ClassVar[str] = ""

    def validate(self) -> None:
        super().validate()
        if self.dtype not in ("auto", RUN_DTYPE):
            raise ConfigError(f"generator.dtype = '{self.dtype}': generator type '{self.type}' runs in {RUN_DTYPE} "
                              "only; use auto or float32")

    def check(self) -> None:
        super().check()
        check_checkpoint(self, self.model_path, self.checkpoint_env, self.checkpoint_name, self.checkpoint_help)

    def checkpoint_path(self) -> Path:
        """The checkpoint file to load (building a pending tiny twin first)."""
        ensure_pending_twin(self)
        return resolve_checkpoint(self, self.model_path, self.checkpoint_env, self.checkpoint_name,
                                  self.checkpoint_help)


class CheckpointFileGenerator(Generator):
    """Base of the generators whose weights are one file (`self.model_file`, set by `load()`): their
    settings record that file and, where the network always runs in RUN_DTYPE, `dtype_resolved`."""

    records_run_dtype: ClassVar[bool] = True

    def settings(self) -> dict:
        data = super().settings()
        data["model_file"] = str(getattr(self, "model_file", "")) or None
        if self.records_run_dtype:
            data["dtype_resolved"] = RUN_DTYPE
        return data
