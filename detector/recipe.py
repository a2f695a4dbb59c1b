"""Training recipes of the new detector families: the YAML schema, the optimizer and the LR schedule.

A recipe (`configs/detector/<name>.yaml`) has the sections `detector` (a `DETECTORS` name), `model` (that
detector's `config_class`), `data` (sets, as for AntifakePrompt, plus the feature cache), `optim` and
`train`. `load_recipe` resolves a named config, applies `--set` overrides and `--tiny`, and types every
section; the `model` section is typed by the detector's own config class. This is meant to become the
generic training config of phase B (AntifakePrompt's `TrainConfig` maps onto it: its `data.image_size /
mean / std / stats_file` are AntifakePrompt's preprocessing choices and would stay in its own section).

Schedule (`lr_factor`): the LR is `optim.lr`, or when that is null `optim.blr * effective batch /
optim.lr_batch_base` (DeepFake-Adapter: 0.1 x batch / 256). Warm-up is linear per step, from 0 over
`warmup_epochs` (DeepFake-Adapter's `util/lr_sched.py`, fractional epochs) or from 1/W over
`warmup_steps` (AntifakePrompt's rule); then a half-cycle cosine to `min_lr` at the last step
(or constant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fakeforge.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_named_config


@dataclass
class OptimConfig:
    """Optimizer and LR schedule (per step)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = None  # absolute LR; null: blr * effective batch / lr_batch_base
    blr: float = 0.1
    lr_batch_base: int = 256
    momentum: float = 0.9  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 0.0
    max_grad_norm: float | None = None

    def validate(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"optim.lr = {self.lr} must be positive (or null to scale optim.blr)")
        if self.lr is None and self.blr <= 0:
            raise ConfigError(f"optim.blr = {self.blr} must be positive")
        if self.lr_batch_base < 1:
            raise ConfigError(f"optim.lr_batch_base = {self.lr_batch_base} must be >= 1")
        if self.warmup_epochs < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.warmup_epochs and optim.warmup_steps must be >= 0")
        if self.warmup_epochs and self.warmup_steps:
            raise ConfigError("give optim.warmup_epochs or optim.warmup_steps, not both")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas = {self.betas} must have two values")

    def base_lr(self, effective_batch: int) -> float:
        """The peak LR for a global batch of `effective_batch` images."""
        return self.lr if self.lr is not None else self.blr * effective_batch / self.lr_batch_base


def build_optimizer(params, cfg: OptimConfig, effective_batch: int) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over `params` at the peak LR; weight decay on every given parameter."""
    lr = cfg.base_lr(effective_batch)
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, total_steps: int, peak_lr: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based)."""
    floor = min(1.0, cfg.min_lr / peak_lr)
    if cfg.warmup_steps:
        warm = cfg.warmup_steps
        if step < warm:
            return (step + 1) / warm
    else:
        warm = cfg.warmup_epochs * steps_per_epoch
        if step < warm:
            return step / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1e-9, total_steps - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepping `lr_factor` once per optimizer step."""
    total, peak = steps_per_epoch * epochs, opt.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step, steps_per_epoch, total, peak))


# ------------------------------------------------------------------------------------------- the recipe
@dataclass
class DataSection:
    """Sets (specs as for AntifakePrompt: dataset folder, set folder, .tar, NAME=PATH, NAME=real:DIR)."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)  # empty: hold out val_fraction of the training samples
    val_fraction: float = 0.05
    mix: dict[str, float] = field(default_factory=dict)  # gradient detectors: set -> sampling weight
    num_workers: int = 2
    shuffle_buffer: int = 1000
    feature_cache: str | None = None  # feature detectors: cache root (null: $FAKEFORGE_FEATURE_CACHE or ~/.cache)
    feature_batch_size: int = 64

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {self.val_fraction} must be within [0, 1)")
        if self.feature_batch_size < 1:
            raise ConfigError(f"data.feature_batch_size = {self.feature_batch_size} must be >= 1")


@dataclass
class LoopSection:
    """Epochs, batch sizes, logging, output (gradient detectors; feature detectors use seed/output_dir/device)."""

    epochs: int = 100
    batch_size: int = 32  # per process
    eval_batch_size: int = 128
    steps_per_epoch: int | None = None
    max_val_batches: int | None = None
    log_every: int = 50
    seed: int = 777
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    output_dir: str = "runs/detector"
    device: str = "auto"

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} = {getattr(self, key)} must be >= 1")


@dataclass
class RecipeConfig:
    """A whole recipe; `model` holds the detector's typed config."""

    detector: str = ""
    model: Any = None
    data: DataSection = field(default_factory=DataSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopSection = field(default_factory=LoopSection)


def load_recipe(config: str | Path, overrides: list[str] | None = None, tiny: bool = False,
                out: str | None = None) -> RecipeConfig:
    """Resolve a recipe by name or path, apply overrides, type-check every section (errors name the key)."""
    from detector import DETECTORS

    data = apply_overrides(load_yaml(resolve_named_config(str(config), "detector")),
                           list(overrides or []) + ([f"train.output_dir={out}"] if out else []))
    name = data.get("detector")
    if not isinstance(name, str):
        raise ConfigError(f"config {config!r} has no 'detector:' key naming one of {DETECTORS.names()}")
    DETECTORS.check(name)
    cls = DETECTORS.get(name)
    model = from_dict(cls.config_class, data.get("model") or {}, "model")
    if tiny:
        model = model.to_tiny()
    rest = {k: v for k, v in data.items() if k not in ("detector", "model")}
    recipe = from_dict(RecipeConfig, rest)
    recipe.detector, recipe.model = name, model
    return recipe
