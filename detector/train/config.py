"""The training config of every detector (`configs/detector/*.yaml`): its schema, `--tiny`, the optimizer, the
learning-rate schedules and the rule for which changes a `--resume` accepts.

A config has the sections `detector` (a `DETECTORS` name), `model` (typed by that detector's `config_class`),
`data`, `optim` and `train` (typed here, the same for every detector; the dataclass defaults are
AntifakePrompt's official recipe), an optional `description` (shown by `fakeforge ls`) and an optional
`tiny:` block.

`--tiny` works the same for every config: the config's `tiny:` block (nested like the config, e.g.
`tiny: {data: {image_size: 32}}`) is merged over it, then the `--set` overrides apply, and last the model
config's `to_tiny()` swaps every real model id for its tiny twin, so `--tiny` never loads real weights
whatever `--set` says. Precedence: config < its `tiny:` block < `--set`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fakeforge.config import ConfigError, apply_overrides, deep_merge, from_dict, load_yaml, resolve_named_config

# Keys a resumed run may change freely: they do not change what is trained on or how (or only lengthen
# the run). Every other key of model/data/optim/train must match the run's config.yaml.
RESUME_FREE_KEYS = frozenset({
    "description", "train.epochs", "train.eval_batch_size", "train.max_val_batches", "train.log_every",
    "train.gradient_checkpointing", "train.output_dir", "train.device", "data.num_workers", "data.feature_cache",
    "data.feature_batch_size",
})


@dataclass
class DataConfig:
    """Training data (shard set specs, see detector.data), mixing, validation, statistics and the feature cache."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)  # empty: hold out `val_fraction` of the train samples
    val_fraction: float = 0.05
    mix: dict[str, float] = field(default_factory=dict)  # set name -> sampling weight; empty: by sample count
    # Input size and normalisation, for detectors that take them from the data (AntifakePrompt). The others
    # read them from their model config or backbone and refuse these keys.
    image_size: int | None = None  # null: the detector's own input size
    mean: list[float] | None = None  # both null: use stats_file, else compute from the training shards
    std: list[float] | None = None
    stats_file: str | None = None  # JSON written by `fakeforge stats`
    stats_max_images: int | None = 5000
    num_workers: int = 2
    shuffle_buffer: int = 1000
    feature_cache: str | None = None  # feature detectors: cache root (null: $FAKEFORGE_FEATURE_CACHE or ~/.cache)
    feature_batch_size: int = 64
    # random degradations of the decoded training images (gradient training), see fakeforge.augment
    augment: list[dict] = field(default_factory=list)

    def validate(self) -> None:
        from fakeforge.augment import parse_augment

        parse_augment(self.augment)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std must be given together")
        for key, value in (("data.mean", self.mean), ("data.std", self.std)):
            if value is not None and len(value) != 3:
                raise ConfigError(f"{key} = {value} must be three numbers (R, G, B)")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"data.std = {self.std} must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {self.val_fraction} must be within [0, 1)")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"data.image_size = {self.image_size} must be >= 1 (or null)")
        if self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ConfigError(f"data.num_workers = {self.num_workers} must be >= 0 and data.shuffle_buffer = "
                              f"{self.shuffle_buffer} >= 1")
        if self.feature_batch_size < 1:
            raise ConfigError(f"data.feature_batch_size = {self.feature_batch_size} must be >= 1")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of gradient-trained detectors.

    name: adamw (betas, eps) or sgd (momentum); weight decay applies to every trainable parameter.
    lr: the peak learning rate; null: `blr * effective batch / lr_batch_base` (DeepFake-Adapter's rule).
    schedule:
      cosine_epoch  LAVIS's linear_warmup_cosine_lr (AntifakePrompt's official): in epoch 0 the lr climbs from
                    warmup_lr over warmup_steps steps (warmup_steps 0: the first step runs at warmup_lr, the rest
                    at lr); from epoch 1 on it is lr * cosine(epoch / epochs), constant within an epoch.
      cosine_step   linear warm-up from warmup_lr over warmup_steps (or warmup_epochs, fractional, in steps),
                    then a half cosine over every step down to min_lr at the last step (DeepFake-Adapter's
                    util/lr_sched.py with warmup_lr 0).
      constant      warm-up, then lr.
      step_epoch    lr * step_gamma ** (epoch // step_epochs) (NPR: x 0.9 every 10 epochs).
      plateau       lr, divided by 1 / plateau_factor each time the validation accuracy has not risen by
                    plateau_threshold for plateau_patience epochs; training stops once the lr would fall below
                    min_lr (CNNSpot's EarlyStopping + adjust_learning_rate; see detector/train/plateau.py).
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = 1e-5
    blr: float = 0.1
    lr_batch_base: int = 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    schedule: Literal["cosine_epoch", "cosine_step", "constant", "step_epoch", "plateau"] = "cosine_epoch"
    warmup_lr: float = 1e-8
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    max_grad_norm: float | None = None
    step_epochs: int = 10  # step_epoch: epochs per decay
    step_gamma: float = 0.9  # step_epoch: factor per decay
    plateau_patience: int = 5  # plateau: epochs without improvement before the lr drops
    plateau_factor: float = 0.1  # plateau: lr multiplier per drop
    plateau_threshold: float = 0.001  # plateau: the least rise of validation accuracy that counts as improvement

    def validate(self) -> None:
        if self.step_epochs < 1 or not 0 < self.step_gamma <= 1:
            raise ConfigError(f"optim.step_epochs = {self.step_epochs} must be >= 1 and optim.step_gamma = "
                              f"{self.step_gamma} within (0, 1]")
        if self.plateau_patience < 1 or not 0 < self.plateau_factor < 1 or self.plateau_threshold < 0:
            raise ConfigError(f"optim.plateau_patience = {self.plateau_patience} must be >= 1, optim.plateau_factor "
                              f"= {self.plateau_factor} within (0, 1) and optim.plateau_threshold = "
                              f"{self.plateau_threshold} >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas = {self.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"optim.lr = {self.lr} must be positive (or null to scale optim.blr by the batch)")
        if self.lr is None and not (self.blr > 0 and self.lr_batch_base >= 1):
            raise ConfigError(f"optim.blr = {self.blr} must be positive and optim.lr_batch_base = "
                              f"{self.lr_batch_base} >= 1")
        if not 0 <= self.min_lr <= (self.lr if self.lr is not None else math.inf):
            raise ConfigError(f"optim.min_lr = {self.min_lr} must be within [0, optim.lr = {self.lr}]")
        if self.warmup_lr < 0 or self.warmup_steps < 0 or self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_lr = {self.warmup_lr}, optim.warmup_steps = {self.warmup_steps} and "
                              f"optim.warmup_epochs = {self.warmup_epochs} must be >= 0")
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError("give optim.warmup_epochs or optim.warmup_steps, not both")
        if self.warmup_epochs and self.schedule == "cosine_epoch":
            raise ConfigError("optim.warmup_epochs needs optim.schedule cosine_step or constant (cosine_epoch warms "
                              "up within epoch 0: use optim.warmup_steps)")
        if self.weight_decay < 0 or not self.eps > 0 or self.momentum < 0:
            raise ConfigError(f"optim.weight_decay = {self.weight_decay} and optim.momentum = {self.momentum} must "
                              f"be >= 0 and optim.eps = {self.eps} > 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"optim.max_grad_norm = {self.max_grad_norm} must be positive (or null)")

    def peak_lr(self, effective_batch: int) -> float:
        """The peak learning rate for a global batch of `effective_batch` images."""
        return self.lr if self.lr is not None else self.blr * effective_batch / self.lr_batch_base


@dataclass
class LoopConfig:
    """Epochs, batch sizes, precision, logging and output."""

    epochs: int = 10
    batch_size: int = 6  # per process
    eval_batch_size: int = 8
    steps_per_epoch: int | None = None  # None: training samples / (batch_size * processes)
    max_val_batches: int | None = None
    log_every: int = 50
    seed: int = 42
    gradient_checkpointing: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"  # autocast + gradient scaler (CUDA only; CPU: no)
    output_dir: str = "runs/antifakeprompt"
    device: str = "auto"  # used without accelerate launch; "cpu" forces CPU

    def validate(self) -> None:
        for key, value in (("train.epochs", self.epochs), ("train.batch_size", self.batch_size),
                           ("train.eval_batch_size", self.eval_batch_size), ("train.log_every", self.log_every)):
            if value < 1:
                raise ConfigError(f"{key} = {value} must be >= 1")
        for key, value in (("train.steps_per_epoch", self.steps_per_epoch),
                           ("train.max_val_batches", self.max_val_batches)):
            if value is not None and value < 1:
                raise ConfigError(f"{key} = {value} must be >= 1 (or null)")
        if not str(self.output_dir).strip():
            raise ConfigError("train.output_dir is empty; name the run folder (or pass --out)")


@dataclass
class TrainConfig:
    """A whole training config; `model` holds the detector's typed config (a plain dict when read back from a
    run's config.yaml with `from_dict`)."""

    description: str = ""
    detector: str = "antifakeprompt"
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def validate(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is empty: list the training shard sets (paths accepted by "
                              "`fakeforge eval --sets`, e.g. a dataset folder with real and fake sets)")


# ------------------------------------------------------------------------------------------- loading
def resolve_train_data(config: str | Path, overrides: list[str] | None = None, tiny: bool = False,
                       out: str | None = None) -> dict:
    """The config's plain data with its `tiny:` block (when `tiny`) and the overrides applied, untyped."""
    data = load_yaml(resolve_named_config(str(config), "detector"))
    block = data.pop("tiny", None)
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"config {config!r}: 'tiny' must be a mapping of config sections, e.g. "
                          "{data: {image_size: 32}}")
    if tiny and block:
        data = deep_merge(data, block)
    extra = list(overrides or []) + ([f"train.output_dir={out}"] if out else [])
    return apply_overrides(data, extra)


def load_train_config(config: str | Path, overrides: list[str] | None = None, tiny: bool = False,
                      out: str | None = None) -> TrainConfig:
    """Resolve a training config by name or path, apply `--tiny` and `--set`, type-check every section and run
    the detector's own checks; every error is one line naming the key, raised before any model loads."""
    from detector import DETECTORS

    data = resolve_train_data(config, overrides, tiny, out)
    name = data.get("detector")
    if not isinstance(name, str):
        raise ConfigError(f"config {str(config)!r} has no 'detector:' key naming one of {DETECTORS.names()}")
    DETECTORS.check(name)
    cls = DETECTORS.get(name)
    model = from_dict(cls.config_class, data.get("model") or {}, "model")
    if tiny and hasattr(model, "to_tiny"):
        model = model.to_tiny()
    cfg = from_dict(TrainConfig, {k: v for k, v in data.items() if k != "model"})
    cfg.model = model
    cls.check_train_config(cfg)
    return cfg


# ------------------------------------------------------------------------------------------- optimizer
def build_optimizer(params, cfg: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum) over `params` at the peak learning rate."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def set_hyperparameters(opt: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """Put the config's hyper-parameters (not the learning rate) into every param group, e.g. after an optimizer
    state was loaded on `--resume-force`."""
    for group in opt.param_groups:
        group["weight_decay"] = cfg.weight_decay
        if cfg.name == "sgd":
            group["momentum"] = cfg.momentum
        else:
            group.update(betas=tuple(cfg.betas), eps=cfg.eps)


def lr_at(cfg: OptimConfig, epoch: int, step_in_epoch: int, step: int, epochs: int, steps_per_epoch: int,
          peak: float | None = None, scale: float = 1.0) -> float:
    """Learning rate of the optimizer step `step_in_epoch` of `epoch` (both from 0; `step` counts all steps).
    `peak`: the peak lr when `cfg.lr` is null (see `OptimConfig.peak_lr`). `scale`: the plateau schedule's
    current factor (`detector.train.plateau.PlateauState.scale`)."""
    lr = cfg.lr if peak is None else peak
    if lr is None:
        raise ValueError("optim.lr is null: pass the batch-scaled peak learning rate")
    warm_n = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch

    def warm(i: int) -> float:
        return min(lr, cfg.warmup_lr + (lr - cfg.warmup_lr) * i / max(warm_n, 1))

    if cfg.schedule == "cosine_epoch":
        if epoch == 0:
            return warm(step_in_epoch)
        return (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) + cfg.min_lr
    if step < warm_n:
        return warm(step)
    if cfg.schedule == "step_epoch":
        return lr * cfg.step_gamma ** (epoch // cfg.step_epochs)
    if cfg.schedule == "plateau":
        return lr * scale
    if cfg.schedule == "constant":
        return lr
    total = max(1.0, epochs * steps_per_epoch - warm_n)
    progress = min(1.0, (step - warm_n) / total)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------- resume
def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "mix":
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """"key: old -> new" for every key a resumed run must not change (see RESUME_FREE_KEYS)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_FREE_KEYS or key == "train.steps_per_epoch" and b.get(key) is None:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs
