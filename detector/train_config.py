"""The training config of AntifakePrompt (configs/detector/antifakeprompt*.yaml), its learning-rate schedules
and the rule for which changes a `--resume` accepts."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from detector.antifakeprompt import AntifakePromptConfig
from fakeforge.config import ConfigError

# Keys a resumed run may change freely: they do not change what is trained on or how (or only lengthen
# the run). Every other key of model/data/optim/train must match the run's config.yaml.
RESUME_FREE_KEYS = frozenset({
    "train.epochs", "train.eval_batch_size", "train.max_val_batches", "train.log_every",
    "train.gradient_checkpointing", "train.output_dir", "train.device", "data.num_workers",
})


@dataclass
class DataConfig:
    """Training data: shard set specs (see detector.data), mixing weights and preprocessing."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)  # empty: hold out `val_fraction` of the train samples
    val_fraction: float = 0.05
    mix: dict[str, float] = field(default_factory=dict)  # set name -> sampling weight; empty: by sample count
    image_size: int = 224
    mean: list[float] | None = None  # both None: use stats_file, else compute from the training shards
    std: list[float] | None = None
    stats_file: str | None = None  # JSON written by `fakeforge stats`
    stats_max_images: int | None = 5000
    num_workers: int = 2
    shuffle_buffer: int = 1000

    def validate(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std must be given together")
        for key, value in (("data.mean", self.mean), ("data.std", self.std)):
            if value is not None and len(value) != 3:
                raise ConfigError(f"{key} = {value} must be three numbers (R, G, B)")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"data.std = {self.std} must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {self.val_fraction} must be within [0, 1)")
        if self.image_size < 1:
            raise ConfigError(f"data.image_size = {self.image_size} must be >= 1")
        if self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ConfigError(f"data.num_workers = {self.num_workers} must be >= 0 and data.shuffle_buffer = "
                              f"{self.shuffle_buffer} >= 1")


@dataclass
class OptimConfig:
    """AdamW on the two rows and its learning-rate schedule.

    schedule:
      cosine_epoch  LAVIS's linear_warmup_cosine_lr (official): in epoch 0 the lr climbs from warmup_lr over
                    warmup_steps steps (warmup_steps 0: the first step runs at warmup_lr, the rest at lr);
                    from epoch 1 on it is lr * cosine(epoch / epochs), constant within an epoch.
      cosine_step   linear warmup from warmup_lr over warmup_steps, then a cosine over every step down to
                    min_lr: a smoother decay for short runs of a few epochs.
      constant      warmup, then lr.
    """

    lr: float = 1e-5
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["cosine_epoch", "cosine_step", "constant"] = "cosine_epoch"
    warmup_lr: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float | None = None

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas = {self.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr = {self.lr} must be positive")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"optim.min_lr = {self.min_lr} must be within [0, optim.lr = {self.lr}]")
        if self.warmup_lr < 0 or self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_lr = {self.warmup_lr} and optim.warmup_steps = {self.warmup_steps} "
                              "must be >= 0")
        if self.weight_decay < 0 or not self.eps > 0:
            raise ConfigError(f"optim.weight_decay = {self.weight_decay} must be >= 0 and optim.eps = {self.eps} > 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"optim.max_grad_norm = {self.max_grad_norm} must be positive (or null)")


@dataclass
class LoopConfig:
    """Epochs, batch sizes, precision, logging and output."""

    epochs: int = 10
    batch_size: int = 6
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
    """The whole training config (configs/detector/antifakeprompt.yaml)."""

    detector: str = "antifakeprompt"
    model: AntifakePromptConfig = field(default_factory=AntifakePromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def validate(self) -> None:
        if self.detector != "antifakeprompt":
            raise ConfigError(f"detector = {self.detector!r}: only 'antifakeprompt' can be trained here")
        if not self.data.train:
            raise ConfigError("data.train is empty: list the training shard sets (paths accepted by "
                              "`fakeforge eval --sets`, e.g. a dataset folder with real and fake sets)")
        if self.model.zero_shot:
            raise ConfigError("model.zero_shot = true has nothing to train")


def lr_at(cfg: OptimConfig, epoch: int, step_in_epoch: int, step: int, epochs: int, steps_per_epoch: int) -> float:
    """Learning rate of the optimizer step `step_in_epoch` of `epoch` (both from 0; `step` counts all steps)."""
    def warm(i: int) -> float:
        return min(cfg.lr, cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * i / max(cfg.warmup_steps, 1))

    if cfg.schedule == "cosine_epoch":
        if epoch == 0:
            return warm(step_in_epoch)
        return (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) + cfg.min_lr
    if step < cfg.warmup_steps:
        return warm(step)
    if cfg.schedule == "constant":
        return cfg.lr
    total = max(1, epochs * steps_per_epoch - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / total)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
