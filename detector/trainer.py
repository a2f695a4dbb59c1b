"""Training loop for AntifakePrompt: shard sets in, best/last checkpoints and metrics.csv out.

Works in one process or under `accelerate launch train.py` (accelerate's Accelerator; each process
reads its own shards through webdataset's split_by_node). Only the two pseudo-word rows are handed to
AdamW, so its decoupled weight decay touches nothing else.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig
from detector.checkpoint import save_checkpoint
from detector.data import ShardStream, build_transform, compute_mean_std, count_shards, parse_set_specs
from fakeforge.config import ConfigError, dump_yaml, to_dict

log = logging.getLogger(__name__)
STATE_FILE = "training_state.pt"
METRIC_FIELDS = ["time", "epoch", "step", "split", "loss", "lr", "images_per_s", "val_loss", "val_acc"]


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


@dataclass
class OptimConfig:
    """AdamW on the two rows with a warmup + cosine learning-rate schedule (per step)."""

    lr: float = 1e-5
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float | None = None


@dataclass
class LoopConfig:
    """Epochs, batch sizes, logging and output."""

    epochs: int = 10
    batch_size: int = 6
    eval_batch_size: int = 8
    steps_per_epoch: int | None = None  # None: training samples / (batch_size * processes)
    max_val_batches: int | None = None
    log_every: int = 50
    seed: int = 42
    gradient_checkpointing: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # the model itself runs in model.dtype
    output_dir: str = "runs/antifakeprompt"
    device: str = "auto"  # used without accelerate launch; "cpu" forces CPU


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
        for key, value in (("train.epochs", self.train.epochs), ("train.batch_size", self.train.batch_size),
                           ("train.log_every", self.train.log_every), ("data.image_size", self.data.image_size)):
            if value < 1:
                raise ConfigError(f"{key} = {value} must be >= 1")
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {self.data.val_fraction} must be within [0, 1)")
        if (self.data.mean is None) != (self.data.std is None):
            raise ConfigError("data.mean and data.std must be given together")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr = {self.optim.lr} must be positive")


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of optim.lr at a step: linear warmup, then cosine down to min_lr (or constant)."""
    floor = cfg.min_lr / cfg.lr

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


class Trainer:
    """Prompt-tunes the two pseudo-word rows; keeps `best/` (lowest validation loss) and `last/`."""

    def __init__(self, cfg: TrainConfig, tiny: bool = False, resume: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.tiny, self.resume = cfg, tiny, resume
        cpu = cfg.train.device == "cpu"
        self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu)
        set_seed(cfg.train.seed)
        self.out = Path(cfg.train.output_dir)
        if not resume and (self.out / "last" / STATE_FILE).is_file():
            raise ConfigError(f"train.output_dir = '{self.out}' already holds a run; pass --resume to continue "
                              "it or choose another output directory")
        if resume and not (self.out / "last" / STATE_FILE).is_file():
            raise ConfigError(f"--resume: nothing to resume in '{self.out}' (no last/{STATE_FILE})")

    # ------------------------------------------------------------------------------------------ setup
    def _data(self) -> None:
        d = self.cfg.data
        specs = parse_set_specs(d.train)
        folders = [s.name for s in specs if s.kind != "shards"]
        if folders:
            raise ConfigError(f"data.train: {folders} are image folders; training reads shard sets only")
        self.train_sets = {s.name: s.paths for s in specs}
        val_specs = parse_set_specs(d.val) if d.val else []
        self.val_sets = {s.name: s.paths for s in val_specs} or dict(self.train_sets)
        frac = 0.0 if d.val else d.val_fraction
        self.val_fraction = frac
        counts = {name: count_shards(tars, frac) for name, tars in self.train_sets.items()}
        totals = {"real": 0, "fake": 0}
        for c in counts.values():
            for k in totals:
                totals[k] += c["train"].get(k, 0)
        if min(totals.values()) == 0:
            per_set = {n: c["train"] for n, c in counts.items()}
            raise ConfigError(f"training data has only one class ({totals['real']} real, {totals['fake']} fake "
                              f"samples; per set: {per_set}). Training needs both real and fake samples: add a "
                              "set of the missing class to data.train")
        if d.val:
            val_counts = {n: count_shards(t)["train"] for n, t in self.val_sets.items()}
        else:
            val_counts = {n: c["val"] for n, c in counts.items()}
        n_val = sum(sum(c.values()) for c in val_counts.values())
        if n_val == 0:
            raise ConfigError("no validation samples: list data.val sets or raise data.val_fraction "
                              f"(now {d.val_fraction})")
        unknown = sorted(set(d.mix) - set(self.train_sets))
        if unknown:
            raise ConfigError(f"data.mix names unknown set(s) {unknown}; training sets: {sorted(self.train_sets)}")
        sizes = {n: sum(c["train"].values()) for n, c in counts.items()}
        if d.mix:
            missing = sorted(set(self.train_sets) - set(d.mix))
            if missing:
                raise ConfigError(f"data.mix has no weight for set(s) {missing}; give every training set a weight")
            if any(w < 0 for w in d.mix.values()) or sum(d.mix.values()) <= 0:
                raise ConfigError(f"data.mix = {d.mix}: weights must be >= 0 and not all zero")
        self.weights = dict(d.mix) if d.mix else {n: float(s) for n, s in sizes.items()}
        self.n_train = sum(sizes.values())
        self.summary = {"sets": {n: c["train"] for n, c in counts.items()}, "val": val_counts,
                        "generators": {n: c["generators"] for n, c in counts.items()},
                        "weights": self.weights, "train_samples": self.n_train, "val_samples": n_val,
                        "specs": {"train": list(d.train), "val": list(d.val)}, "val_fraction": frac}
        world = self.acc.num_processes
        self.steps_per_epoch = self.cfg.train.steps_per_epoch or max(
            1, math.ceil(self.n_train / (self.cfg.train.batch_size * world)))
        fewest = min(len(t) for t in [*self.train_sets.values(), *self.val_sets.values()])
        self.num_workers = max(0, min(d.num_workers, fewest // world))
        if self.num_workers < d.num_workers:
            log.info("data.num_workers %d -> %d (every worker needs a shard of every set)", d.num_workers,
                     self.num_workers)

    def _stats(self) -> dict:
        d = self.cfg.data
        if d.mean is not None:
            return {"image_size": d.image_size, "mean": d.mean, "std": d.std, "source": "config"}
        if d.stats_file:
            stats = json.loads(Path(d.stats_file).read_text())
            return {"image_size": d.image_size, "mean": stats["mean"], "std": stats["std"],
                    "source": f"stats file {d.stats_file}"}
        from accelerate.utils import broadcast_object_list

        box = [None]
        if self.acc.is_main_process:  # computed once, then shared: every process must normalise alike
            log.info("computing mean/std from the training shards (up to %s images)", d.stats_max_images)
            stats = compute_mean_std(parse_set_specs(d.train), d.image_size, d.stats_max_images)
            box = [{"image_size": d.image_size, "mean": stats["mean"], "std": stats["std"],
                    "source": f"training shards ({stats['images']} images)"}]
        if self.acc.num_processes > 1:
            broadcast_object_list(box)
        return box[0]

    def _loader(self, split: str, epoch: int):
        c = self.cfg
        transform = build_transform(c.data.image_size, self.preprocess["mean"], self.preprocess["std"],
                                    train=split == "train")
        sets = self.train_sets if split == "train" else self.val_sets
        ds = ShardStream(sets, transform, split=split, weights=self.weights, val_fraction=self.val_fraction,
                         seed=c.train.seed + 7919 * epoch, shuffle_buffer=c.data.shuffle_buffer)
        bs = c.train.batch_size if split == "train" else c.train.eval_batch_size
        return torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=self.num_workers,
                                           persistent_workers=False)

    # ------------------------------------------------------------------------------------------ fit
    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process

    def fit(self) -> Path:
        """Train; returns the best checkpoint folder."""
        c, acc = self.cfg, self.acc
        self._data()
        self.preprocess = self._stats()
        device = acc.device
        self.detector = AntifakePrompt.from_config(c.model, device=device, tiny=self.tiny)
        widths = self.detector.row_widths()
        acc.print(f"trainable parameters: {self.detector.num_trainable():,} = {widths['qformer']} (Q-Former row) "
                  f"+ {widths['lm']} (LM row)")
        if c.train.gradient_checkpointing:
            self.detector.enable_gradient_checkpointing()
        opt = torch.optim.AdamW(self.detector.trainable_parameters(), lr=c.optim.lr, betas=tuple(c.optim.betas),
                                weight_decay=c.optim.weight_decay)
        total = c.train.epochs * self.steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c.optim, total))
        start_epoch, step, best = 0, 0, math.inf
        if self.resume:
            start_epoch, step, best = self._load_state(opt, sched)
        model, opt = acc.prepare(self.detector, opt)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_yaml(to_dict(c), self.out / "config.yaml")
        acc.print(f"{self.n_train} training samples, {self.steps_per_epoch} steps/epoch x {c.train.epochs} epochs; "
                  f"mean {self.preprocess['mean']} std {self.preprocess['std']}")
        for epoch in range(start_epoch, c.train.epochs):
            step = self._train_epoch(model, opt, sched, epoch, step)
            val_loss, val_acc = self.validate()
            self._log_row({"epoch": epoch + 1, "step": step, "split": "val", "val_loss": val_loss,
                           "val_acc": val_acc})
            acc.print(f"epoch {epoch + 1}/{c.train.epochs}: val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
            improved = val_loss < best
            best = min(best, val_loss)
            if acc.is_main_process:
                self._save(epoch + 1, step, val_loss, val_acc, best, opt, sched, improved)
            acc.wait_for_everyone()
        return self.out / "best"

    def _train_epoch(self, model, opt, sched, epoch: int, step: int) -> int:
        from tqdm import tqdm

        c, acc = self.cfg, self.acc
        self.detector.train()
        it = iter(self._loader("train", epoch))
        run_loss, run_n, t0 = torch.zeros((), device=acc.device), 0, time.time()
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}", disable=not acc.is_local_main_process
                   or None)
        for _ in bar:
            try:
                images, labels, _keys = next(it)
            except StopIteration:
                raise ConfigError("the training stream ran dry: no readable training samples for this process "
                                  "(are there at least as many shards per set as processes?)") from None
            loss = model(images.to(acc.device), labels.to(acc.device))
            acc.backward(loss)
            if c.optim.max_grad_norm:
                acc.clip_grad_norm_(self.detector.trainable_parameters(), c.optim.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            run_loss = run_loss + loss.detach()
            run_n += 1
            if step % c.train.log_every == 0 or run_n == self.steps_per_epoch:
                dt = max(time.time() - t0, 1e-9)
                mean_loss = acc.reduce(run_loss / run_n, reduction="mean").item()  # over processes
                row = {"epoch": epoch + 1, "step": step, "split": "train", "loss": mean_loss,
                       "lr": sched.get_last_lr()[0],
                       "images_per_s": run_n * c.train.batch_size * acc.num_processes / dt}
                self._log_row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if acc.is_main_process:
                        log.info("epoch %d step %d loss %.4f lr %.3e %.1f img/s", epoch + 1, step, row["loss"],
                             row["lr"], row["images_per_s"])
                run_loss, run_n, t0 = torch.zeros((), device=acc.device), 0, time.time()
        self.detector.eval()
        return step

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Mean answer loss and accuracy (one-pass P(fake) >= 0.5) over the validation samples."""
        acc, det = self.acc, self.detector
        det.eval()
        totals = torch.zeros(3, device=acc.device)  # loss sum, correct, count
        for i, (images, labels, _keys) in enumerate(self._loader("val", 0)):
            if self.cfg.train.max_val_batches and i >= self.cfg.train.max_val_batches:
                break
            losses, p_fake = det.answer_losses(images, det.target_ids(labels), return_scores=True)
            totals += torch.stack([losses.sum(), ((p_fake.to(acc.device) >= 0.5).long() ==
                                                  labels.to(acc.device)).sum().float(),
                                   torch.tensor(float(len(labels)), device=acc.device)])
        totals = acc.reduce(totals, reduction="sum")
        n = max(totals[2].item(), 1.0)
        return totals[0].item() / n, totals[1].item() / n

    # ------------------------------------------------------------------------------------- state/logs
    def _log_row(self, row: dict) -> None:
        if not self.acc.is_main_process:
            return
        path = self.out / "metrics.csv"
        new = not path.is_file()
        self.out.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            w.writerow({"time": round(time.time(), 3), **{k: (f"{v:.6g}" if isinstance(v, float) else v)
                                                         for k, v in row.items()}})

    def _save(self, epoch: int, step: int, val_loss: float, val_acc: float, best: float, opt, sched,
              improved: bool) -> None:
        training = {"data": self.summary, "epoch": epoch, "step": step, "val_loss": val_loss, "val_acc": val_acc,
                    "best_val_loss": best, "config": to_dict(self.cfg)}
        last = save_checkpoint(self.detector, self.out / "last", self.preprocess, training)
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                 "best_val_loss": best}
        torch.save(state, last / (STATE_FILE + ".tmp"))
        (last / (STATE_FILE + ".tmp")).replace(last / STATE_FILE)
        if improved:
            save_checkpoint(self.detector, self.out / "best", self.preprocess, training)
            log.info("epoch %d: new best validation loss %.4f -> %s", epoch, val_loss, self.out / "best")

    def _load_state(self, opt, sched) -> tuple[int, int, float]:
        from safetensors.torch import load_file

        last = self.out / "last"
        self.detector.load_rows(load_file(str(last / "pseudo_word.safetensors")), source=f"'{last}'")
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        log.info("resuming from %s after epoch %d (step %d)", last, state["epoch"], state["step"])
        return int(state["epoch"]), int(state["step"]), float(state["best_val_loss"])
