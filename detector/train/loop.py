"""The training loop of every detector: shard sets in; `init/`, `best/`, `last/`, `metrics.csv` and `config.yaml` out.

The config's `detector:` picks the family (`detector.DETECTORS`); the family's `fit_mode` picks the loop:

* **gradient** (AntifakePrompt, DeepFake-Adapter): one loop for all, in one process or under `accelerate launch
  train.py` (each process reads its own shards through webdataset's split_by_node). Training sets are mixed
  by `data.mix` weights, validation is `data.val` or a key-hash hold-out, the optimizer (AdamW or SGD) sees the
  detector's `trainable_parameters()` only, the learning rate follows `detector.train.config.lr_at`, and
  `best/` is the lowest validation loss (`Detector.validation_step`). `init/` holds the detector before the
  first optimizer step, so `fakeforge eval --checkpoint RUN/init RUN/best` compares untrained and trained.
  `--resume` restores the trained tensors, optimizer, gradient scaler and epoch, and every epoch reseeds from
  (seed, epoch), so an interrupted and resumed run ends exactly where an uninterrupted one does.
* **features** (linear probe, kNN, contrastive head): the backbone's features of every set are computed once
  into the feature cache, then `fit_features` fits the head in seconds; `best/` = `last/` = the fitted head,
  `init/` the unfitted one. `--resume` refits from the cache (the fit is deterministic).

The run folder is locked (`fakeforge.locking.OutputLock`) for the whole run: a second launch on the same
`--out` stops at once naming the holder. `--resume` refuses a config that changes the model, data or optimizer
unless `--resume-force`, and always refuses a run folder of another detector; `config.yaml` holds the config
that really runs.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from detector.base import FIT_GRADIENT, CheckpointError, Detector, Preprocess
from detector.data import ShardStream, compute_mean_std, count_shards, parse_set_specs
from detector.train.config import (
    TrainConfig,
    build_optimizer,
    config_differences,
    lr_at,
    set_hyperparameters,
)
from detector.checkpoint import META_FILE
from fakeforge.augment import parse_augment
from fakeforge.config import ConfigError, dump_yaml, from_dict, load_yaml, to_dict
from fakeforge.files import atomic_path
from fakeforge.locking import FolderLockedError, OutputLock
from fakeforge.shards.reader import shard_id

log = logging.getLogger(__name__)
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
METRIC_FIELDS = ["time", "epoch", "step", "split", "loss", "lr", "images_per_s", "val_loss", "val_acc"]
__all__ = ["Trainer", "TrainConfig", "lr_at", "STATE_FILE", "TrainingDivergedError"]


class TrainingDivergedError(ConfigError):
    """The loss or the trained parameters became NaN/inf (usually a learning rate far too high)."""


class Trainer:
    """Trains any registered detector from its config; keeps `init/`, `best/` and `last/` in the run folder."""

    def __init__(self, cfg: TrainConfig, tiny: bool = False, resume: bool = False, resume_force: bool = False):
        from accelerate import Accelerator

        from detector import DETECTORS

        self.cfg, self.tiny, self.resume = cfg, tiny, resume
        self.cls = DETECTORS.get(cfg.detector)
        cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
        if cpu and cfg.train.mixed_precision != "no":
            log.info("train.mixed_precision %s -> no: autocast with a gradient scaler needs CUDA (LAVIS also runs "
                     "without AMP on CPU)", cfg.train.mixed_precision)
            cfg.train.mixed_precision = "no"
        self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cfg.train.device == "cpu")
        if self.cls.fit_mode != FIT_GRADIENT and self.acc.num_processes > 1:
            raise ConfigError(f"{cfg.detector!r} fits from cached features in one process; run it without "
                              "accelerate launch / torchrun")
        self.out = Path(cfg.train.output_dir)
        self.preprocess: Preprocess | dict | None = None
        self._lock = self._take_lock()
        try:
            self._check_run_folder(resume_force)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ setup
    def _take_lock(self) -> OutputLock | None:
        """Rank 0 locks the output folder; every rank stops with the holder's name if it is taken."""
        from accelerate.utils import broadcast_object_list

        lock, box = None, [None]
        if self.acc.is_main_process:
            try:
                lock = OutputLock(self.out, "train").acquire()
            except (FolderLockedError, OSError) as exc:
                box = [str(exc) if isinstance(exc, FolderLockedError) else
                       f"cannot use train.output_dir = '{self.out}': {exc.strerror or exc}"]
        if self.acc.num_processes > 1:
            broadcast_object_list(box)
        if box[0]:
            raise FolderLockedError(box[0])
        return lock

    def close(self) -> None:
        """Release the output-folder lock (also done by the kernel when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_run_folder(self, resume_force: bool) -> None:
        state = self.out / "last" / STATE_FILE
        if not self.resume and state.is_file():
            raise ConfigError(f"train.output_dir = '{self.out}' already holds a run; pass --resume to continue "
                              "it or choose another output directory")
        if not self.resume:
            return
        # a feature fit interrupted before it saved last/ is resumed by fitting again (cached features are reused)
        refit = self.cls.fit_mode != FIT_GRADIENT and (self.out / CONFIG_FILE).is_file()
        if not state.is_file() and not refit:
            raise ConfigError(f"--resume: nothing to resume in '{self.out}' (no last/{STATE_FILE})")
        from detector.checkpoint import detector_class_of

        saved_run = next((self.out / d for d in ("last", "init") if (self.out / d / META_FILE).is_file()), None)
        found = detector_class_of(saved_run) if saved_run else self.cls
        if found.name != self.cfg.detector:
            raise CheckpointError(f"--resume: '{self.out}' holds a {found.name!r} run, but the config trains "
                                  f"{self.cfg.detector!r}; choose another output directory")
        saved = self.out / CONFIG_FILE
        try:
            old = from_dict(TrainConfig, load_yaml(saved))
            old.model = from_dict(self.cls.config_class, old.model or {}, "model")
        except ConfigError as exc:
            raise ConfigError(f"--resume: cannot read the run's {CONFIG_FILE} to compare with ({exc})") from None
        self._restore_statistics_into_config()
        diffs = config_differences(to_dict(old), to_dict(self.cfg))
        if diffs and not resume_force:
            raise ConfigError(f"--resume with a config that changes the run ({'; '.join(diffs)}); resuming would mix "
                              "two experiments. Restore these values, start a new run, or pass --resume-force "
                              "to apply them from here on")
        for d in diffs:
            log.warning("--resume-force: %s", d)

    def _restore_statistics_into_config(self) -> None:
        """On resume, a run normalised by data statistics keeps the mean/std it started with (last/detector.json)."""
        d = self.cfg.data
        if self.cls.data_statistics and d.mean is None and d.std is None:
            pre = json.loads((self.out / "last" / META_FILE).read_text())["preprocess"]
            d.mean, d.std = list(pre["mean"]), list(pre["std"])

    def _data(self) -> None:
        """Scan the sets (labels per sample, without decoding images): counts, validation, mixing, steps."""
        d = self.cfg.data
        specs = parse_set_specs(d.train)
        folders = [s.name for s in specs if s.kind != "shards"]
        if folders:
            raise ConfigError(f"data.train: {folders} are image folders; training reads shard sets only")
        self.train_sets = {s.name: s.paths for s in specs}
        val_specs = parse_set_specs(d.val) if d.val else []
        shared = sorted({shard_id(p) for s in specs for p in s.paths} &
                        {shard_id(p) for s in val_specs for p in s.paths})
        if shared:
            raise ConfigError(f"data.val shares {len(shared)} shard(s) with data.train (e.g. '{shared[0]}'); "
                              "validation samples must not be trained on")
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
            d.num_workers = self.num_workers

    def _data_statistics(self, pre: Preprocess) -> Preprocess:
        """The input size and mean/std of a detector normalised by data statistics: from the config, a stats file,
        or measured on the training shards (once, then shared by every process)."""
        d = self.cfg.data
        if self.cls.resizable_input and d.image_size:
            pre = replace(pre, image_size=d.image_size)
        if not self.cls.data_statistics:
            return pre
        if d.mean is not None:
            return replace(pre, mean=list(d.mean), std=list(d.std), source="config")
        if d.stats_file:
            try:
                stats = json.loads(Path(d.stats_file).read_text())
                mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"data.stats_file = '{d.stats_file}' is not a readable `fakeforge stats` JSON "
                                  f"({type(exc).__name__}: {exc})") from None
            return replace(pre, mean=mean, std=std, source=f"stats file {d.stats_file}")
        from accelerate.utils import broadcast_object_list

        box = [None]
        if self.acc.is_main_process:
            log.info("computing mean/std from the training shards (up to %s images)", d.stats_max_images)
            stats = compute_mean_std(parse_set_specs(d.train), pre.image_size, d.stats_max_images, geometry=pre)
            box = [(stats["mean"], stats["std"], f"training shards ({stats['images']} images)")]
        if self.acc.num_processes > 1:
            broadcast_object_list(box)
        mean, std, source = box[0]
        return replace(pre, mean=mean, std=std, source=source)

    def _transform(self, train: bool):
        pre = self.preprocess
        if isinstance(pre, dict):  # {mean, std[, image_size]}: the data's image size
            pre = Preprocess.from_dict({"image_size": self.cfg.data.image_size or 224, **pre})
        return pre.transform(train)

    def _loader(self, split: str, epoch: int):
        c = self.cfg
        sets = self.train_sets if split == "train" else self.val_sets
        ds = ShardStream(sets, self._transform(split == "train"), split=split, weights=self.weights,
                         val_fraction=self.val_fraction, seed=c.train.seed + 7919 * epoch,
                         shuffle_buffer=c.data.shuffle_buffer,
                         augment=parse_augment(c.data.augment) if split == "train" else None)
        bs = c.train.batch_size if split == "train" else c.train.eval_batch_size
        return torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=self.num_workers,
                                           persistent_workers=False)

    def _build(self) -> Detector:
        det = self.cls.from_config(self.cfg.model, device=self.acc.device, tiny=self.tiny)
        det.eval()
        return det

    def _write_config(self, **resolved_train) -> None:
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = to_dict(self.cfg)
            resolved["train"].update(resolved_train)
            dump_yaml(resolved, self.out / CONFIG_FILE)

    # ------------------------------------------------------------------------------------------ fit
    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process

    def fit(self) -> Path:
        """Train; returns the best checkpoint folder. The output-folder lock is released at the end."""
        try:
            return self._fit_gradient() if self.cls.fit_mode == FIT_GRADIENT else self._fit_features()
        finally:
            self.close()

    def _fit_gradient(self) -> Path:
        c, acc = self.cfg, self.acc
        self._data()
        self.detector = det = self._build()
        if self.resume:
            det.restore(self.out / "last")
        else:
            det.preprocess = self._data_statistics(det.preprocess)
        self.preprocess = det.preprocess
        if self.cls.data_statistics:
            c.data.mean, c.data.std = list(det.preprocess.mean), list(det.preprocess.std)
        if self.cls.resizable_input:
            c.data.image_size = det.preprocess.image_size
        acc.print(f"{det.trainable_summary()}; mixed precision {c.train.mixed_precision}")
        if c.train.gradient_checkpointing:
            det.enable_gradient_checkpointing()
        self.peak_lr = c.optim.peak_lr(c.train.batch_size * acc.num_processes)
        opt = build_optimizer(det.trainable_parameters(), c.optim, self.peak_lr)
        start_epoch, step, best = 0, 0, math.inf
        from detector.train.plateau import PlateauState

        self.plateau = PlateauState()
        model, opt = acc.prepare(det, opt)
        if self.resume:
            start_epoch, step, best = self._load_state(opt)
        self._write_config(steps_per_epoch=self.steps_per_epoch)
        if acc.is_main_process and not self.resume:  # the detector before the first optimizer step
            det.save(self.out / "init", self._training_info(0, 0, None, None, math.inf, init=True))
        p = det.preprocess
        acc.print(f"{self.n_train} training samples, {self.steps_per_epoch} steps/epoch x {c.train.epochs} epochs, "
                  f"peak lr {self.peak_lr:.3g}; {p.image_size} px, mean {p.mean} std {p.std} ({p.source})")
        for epoch in range(start_epoch, c.train.epochs):
            if self.plateau.stopped:
                break
            step = self._train_epoch(model, opt, epoch, step)
            val_loss, val_acc = self.validate()
            self._log_row({"epoch": epoch + 1, "step": step, "split": "val", "val_loss": val_loss,
                           "val_acc": val_acc})
            acc.print(f"epoch {epoch + 1}/{c.train.epochs}: val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
            improved = val_loss < best
            best = min(best, val_loss)
            if c.optim.schedule == "plateau":
                o = c.optim
                event = self.plateau.update(val_acc, self.peak_lr, o.plateau_patience, o.plateau_factor,
                                            o.plateau_threshold, o.min_lr)
                if event:
                    acc.print(f"epoch {epoch + 1}: validation accuracy on a plateau; "
                              + ("lr would fall below optim.min_lr: training ends" if event == "stop" else
                                 f"lr -> {self.peak_lr * self.plateau.scale:.3g}"))
            if acc.is_main_process:
                self._save(epoch + 1, step, val_loss, val_acc, best, opt, improved)
            acc.wait_for_everyone()
        return self.out / "best"

    def _train_epoch(self, model, opt, epoch: int, step: int) -> int:
        from accelerate.utils import set_seed
        from tqdm import tqdm

        c, acc, det = self.cfg, self.acc, self.detector
        # Each epoch's randomness (dropout, crops, flips, data order) depends on (seed, epoch) only, so a
        # resumed run replays exactly what an uninterrupted one would have done.
        set_seed(c.train.seed + 1009 * epoch, device_specific=True)
        det.train()
        it = iter(self._loader("train", epoch))
        run_loss, run_n, t0 = torch.zeros((), device=acc.device), 0, time.time()
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}", disable=not acc.is_local_main_process
                   or None)
        for i in bar:
            try:
                images, labels, _keys = next(it)
            except StopIteration:
                raise ConfigError("the training stream ran dry: no readable training samples for this process "
                                  "(are there at least as many shards per set as processes?)") from None
            if len(labels) < det.min_train_batch:  # e.g. BatchNorm cannot train on one image
                continue
            lr = lr_at(c.optim, epoch, i, step, c.train.epochs, self.steps_per_epoch, peak=self.peak_lr,
                       scale=self.plateau.scale)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = model(images.to(acc.device), labels.to(acc.device))
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDivergedError(f"the training loss became {loss.item()} at epoch {epoch + 1} step "
                                            f"{step + 1} (lr {lr:.3g}); lower optim.lr")
            acc.backward(loss)
            if c.optim.max_grad_norm:
                acc.clip_grad_norm_(det.trainable_parameters(), c.optim.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            run_loss = run_loss + loss.detach()
            run_n += 1
            if step % c.train.log_every == 0 or i + 1 == self.steps_per_epoch:
                dt = max(time.time() - t0, 1e-9)
                mean_loss = acc.reduce(run_loss / run_n, reduction="mean").item()  # over processes
                row = {"epoch": epoch + 1, "step": step, "split": "train", "loss": mean_loss, "lr": lr,
                       "images_per_s": run_n * c.train.batch_size * acc.num_processes / dt}
                self._log_row(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if acc.is_main_process:
                    log.info("epoch %d step %d loss %.4f lr %.3e %.1f img/s", epoch + 1, step, row["loss"],
                             row["lr"], row["images_per_s"])
                run_loss, run_n, t0 = torch.zeros((), device=acc.device), 0, time.time()
        det.eval()
        bad = [k for k, v in det.checkpoint_state().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TrainingDivergedError(f"the trained tensors {bad[:3]} hold NaN/inf after epoch {epoch + 1}; lower "
                                        "optim.lr")
        return step

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation loss (the detector's `validation_step` sums over all validation samples / their weights) and
        accuracy (P(fake) >= 0.5) over the validation samples of every process."""
        acc, det = self.acc, self.detector
        det.eval()
        totals = torch.zeros(4, device=acc.device)  # loss sum, loss weight, correct, samples
        for i, (images, labels, _keys) in enumerate(self._loader("val", 0)):
            if self.cfg.train.max_val_batches and i >= self.cfg.train.max_val_batches:
                break
            labels = labels.to(acc.device)
            loss_sum, weight, p_fake = det.validation_step(images.to(acc.device), labels)
            correct = ((p_fake.to(acc.device) >= 0.5).long() == labels).sum().float()
            totals += torch.stack([loss_sum.float().to(acc.device), weight.float().to(acc.device), correct,
                                   torch.tensor(float(len(labels)), device=acc.device)])
        totals = acc.reduce(totals, reduction="sum")
        return totals[0].item() / max(totals[1].item(), 1.0), totals[2].item() / max(totals[3].item(), 1.0)

    def _fit_features(self) -> Path:
        """Features of every set from the cache (computed once), then the head's `fit_features`."""
        from detector.families.frozen.feature_cache import FeatureCache, fit_from_cache

        c = self.cfg
        train_specs = parse_set_specs(c.data.train)
        val_specs = parse_set_specs(c.data.val) if c.data.val else None
        self.detector = det = self._build()
        self.preprocess = det.preprocess
        print(det.trainable_summary())
        self._write_config()
        det.save(self.out / "init", {"init": True, "config": to_dict(c)})
        start = time.time()
        history, summary = fit_from_cache(det, train_specs, val_specs, cache=FeatureCache(c.data.feature_cache),
                                          val_fraction=c.data.val_fraction, batch_size=c.data.feature_batch_size,
                                          workers=max(1, c.data.num_workers), progress=True)
        for row in history:
            self._log_row({"epoch": row.get("epoch", 1), "step": 0, "split": "fit", "loss": row.get("loss"),
                           "val_loss": row.get("val_loss"), "val_acc": row.get("val_acc")})
        last = history[-1] if history else {}
        self.summary = summary
        training = {**self._training_info(last.get("epoch", 1), 0, last.get("val_loss"), last.get("val_acc"),
                                          last.get("val_loss")), "history": history,
                    "fit_seconds": round(time.time() - start, 3)}
        folder = det.save(self.out / "last", training)
        torch.save({"epoch": int(last.get("epoch", 1)), "step": 0, "complete": True,
                    "best_val_loss": float(last.get("val_loss") or math.nan)}, folder / STATE_FILE)
        det.save(self.out / "best", training)
        print(f"fitted on {summary['train_samples']} samples ({summary['val_samples']} validation): "
              f"val_acc {last.get('val_acc')}, val_loss {last.get('val_loss')}")
        return self.out / "best"

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

    def _training_info(self, epoch: int, step: int, val_loss, val_acc, best, init: bool = False) -> dict:
        info = {"data": self.summary, "epoch": epoch, "step": step, "val_loss": val_loss, "val_acc": val_acc,
                "best_val_loss": best if best is None or math.isfinite(best) else None, "config": to_dict(self.cfg)}
        return {**info, "init": True} if init else info

    def _save(self, epoch: int, step: int, val_loss: float, val_acc: float, best: float, opt,
              improved: bool) -> None:
        training = self._training_info(epoch, step, val_loss, val_acc, best)
        last = self.detector.save(self.out / "last", training)
        state = {"optimizer": opt.state_dict(), "epoch": epoch, "step": step, "best_val_loss": best,
                 "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
                 "plateau": self.plateau.state_dict()}
        with atomic_path(last / STATE_FILE) as tmp:
            torch.save(state, tmp)
        if improved:
            self.detector.save(self.out / "best", training)
            log.info("epoch %d: new best validation loss %.4f -> %s", epoch, val_loss, self.out / "best")

    def _load_state(self, opt) -> tuple[int, int, float]:
        last = self.out / "last"
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        set_hyperparameters(opt, self.cfg.optim)  # the config's values run, not the saved ones (--resume-force)
        if self.acc.scaler is not None and state.get("scaler"):
            self.acc.scaler.load_state_dict(state["scaler"])
        from detector.train.plateau import PlateauState

        self.plateau = PlateauState.from_state(state.get("plateau"))
        log.info("resuming from %s after epoch %d (step %d)", last, state["epoch"], state["step"])
        return int(state["epoch"]), int(state["step"]), float(state["best_val_loss"])
