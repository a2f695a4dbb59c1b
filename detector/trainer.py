"""Training loop for AntifakePrompt: shard sets in, best/last checkpoints and metrics.csv out.

Works in one process or under `accelerate launch train.py` (accelerate's Accelerator; each process
reads its own shards through webdataset's split_by_node). Only the two pseudo-word rows are handed to
AdamW, so its decoupled weight decay touches nothing else.

The defaults follow the official LAVIS recipe (`textinv_train.yaml`): AdamW (0.9, 0.999), weight decay
0.05, lr 1e-5 on LAVIS's `linear_warmup_cosine_lr` (the very first step at 1e-8, then cosine stepped once
per epoch), 10 epochs of batch 6, fp16 autocast with a gradient scaler on CUDA, the Q-Former's dropout
active, best checkpoint = lowest validation loss.

The run folder is locked (`fakeforge.locking.OutputLock`) for the whole run: a second launch on the same
`--out` stops at once naming the holder. `--resume` restores rows, optimizer, gradient scaler and epoch,
and reseeds every epoch from (seed, epoch), so an interrupted and resumed run ends with the same rows as
an uninterrupted one. It refuses a config that changes the model, prompt, data or optimizer unless
`--resume-force`; `config.yaml` always holds the config that really runs.
"""
from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

import torch

from detector.antifakeprompt import AntifakePrompt
from detector.checkpoint import META_FILE, ROWS_FILE, read_meta, read_rows, save_checkpoint
from detector.data import ShardStream, build_transform, compute_mean_std, count_shards, parse_set_specs
from detector.train_config import TrainConfig, config_differences, lr_at
from fakeforge.config import ConfigError, dump_yaml, from_dict, load_yaml, to_dict
from fakeforge.locking import FolderLockedError, OutputLock
from fakeforge.shards.reader import shard_id

log = logging.getLogger(__name__)
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
METRIC_FIELDS = ["time", "epoch", "step", "split", "loss", "lr", "images_per_s", "val_loss", "val_acc"]
__all__ = ["Trainer", "TrainConfig", "lr_at", "STATE_FILE"]


class TrainingDivergedError(ConfigError):
    """The loss or the rows became NaN/inf (usually a learning rate far too high)."""


class Trainer:
    """Prompt-tunes the two pseudo-word rows; keeps `best/` (lowest validation loss) and `last/`."""

    def __init__(self, cfg: TrainConfig, tiny: bool = False, resume: bool = False, resume_force: bool = False):
        from accelerate import Accelerator

        self.cfg, self.tiny, self.resume = cfg, tiny, resume
        cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
        if cpu and cfg.train.mixed_precision != "no":
            log.info("train.mixed_precision %s -> no: autocast with a gradient scaler needs CUDA (LAVIS also runs "
                     "without AMP on CPU)", cfg.train.mixed_precision)
            cfg.train.mixed_precision = "no"
        self.acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cfg.train.device == "cpu")
        self.out = Path(cfg.train.output_dir)
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
        if not state.is_file():
            raise ConfigError(f"--resume: nothing to resume in '{self.out}' (no last/{STATE_FILE})")
        saved = self.out / CONFIG_FILE
        try:
            old = from_dict(TrainConfig, load_yaml(saved))
        except ConfigError as exc:
            raise ConfigError(f"--resume: cannot read the run's {CONFIG_FILE} to compare with ({exc})") from None
        self._restore_preprocess_into_config()
        diffs = config_differences(to_dict(old), to_dict(self.cfg))
        if diffs and not resume_force:
            raise ConfigError(f"--resume with a config that changes the run ({'; '.join(diffs)}); resuming would mix "
                              "two experiments. Restore these values, start a new run, or pass --resume-force "
                              "to apply them from here on")
        for d in diffs:
            log.warning("--resume-force: %s", d)

    def _restore_preprocess_into_config(self) -> None:
        """On resume, the run keeps the mean/std it started with (from last/detector.json)."""
        pre = read_meta(self.out / "last" / META_FILE)["preprocess"]
        d = self.cfg.data
        if d.mean is None and d.std is None:
            d.mean, d.std = list(pre["mean"]), list(pre["std"])

    def _data(self) -> None:
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

    def _stats(self) -> dict:
        d = self.cfg.data
        if d.mean is not None:
            return {"image_size": d.image_size, "mean": d.mean, "std": d.std, "source": "config"}
        if d.stats_file:
            import json

            try:
                stats = json.loads(Path(d.stats_file).read_text())
                mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"data.stats_file = '{d.stats_file}' is not a readable `fakeforge stats` JSON "
                                  f"({type(exc).__name__}: {exc})") from None
            return {"image_size": d.image_size, "mean": mean, "std": std, "source": f"stats file {d.stats_file}"}
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
        """Train; returns the best checkpoint folder. The output-folder lock is released at the end."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> Path:
        c, acc = self.cfg, self.acc
        self._data()
        self.preprocess = read_meta(self.out / "last" / META_FILE)["preprocess"] if self.resume else self._stats()
        c.data.mean, c.data.std = list(self.preprocess["mean"]), list(self.preprocess["std"])
        self.detector = AntifakePrompt.from_config(c.model, device=acc.device, tiny=self.tiny)
        widths = self.detector.row_widths()
        acc.print(f"trainable parameters: {self.detector.num_trainable():,} = {widths['qformer']} (Q-Former row) "
                  f"+ {widths['lm']} (LM row); precision {self.detector.precision.describe()}; "
                  f"mixed precision {c.train.mixed_precision}")
        if c.train.gradient_checkpointing:
            self.detector.enable_gradient_checkpointing()
        o = c.optim
        opt = torch.optim.AdamW(self.detector.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
        start_epoch, step, best = 0, 0, math.inf
        model, opt = acc.prepare(self.detector, opt)
        if self.resume:
            start_epoch, step, best = self._load_state(opt)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = to_dict(c)
            resolved["train"]["steps_per_epoch"] = self.steps_per_epoch
            dump_yaml(resolved, self.out / CONFIG_FILE)
        acc.print(f"{self.n_train} training samples, {self.steps_per_epoch} steps/epoch x {c.train.epochs} epochs; "
                  f"mean {self.preprocess['mean']} std {self.preprocess['std']} ({self.preprocess['source']})")
        for epoch in range(start_epoch, c.train.epochs):
            step = self._train_epoch(model, opt, epoch, step)
            val_loss, val_acc = self.validate()
            self._log_row({"epoch": epoch + 1, "step": step, "split": "val", "val_loss": val_loss,
                           "val_acc": val_acc})
            acc.print(f"epoch {epoch + 1}/{c.train.epochs}: val_loss {val_loss:.4f} val_acc {val_acc:.4f}")
            improved = val_loss < best
            best = min(best, val_loss)
            if acc.is_main_process:
                self._save(epoch + 1, step, val_loss, val_acc, best, opt, improved)
            acc.wait_for_everyone()
        return self.out / "best"

    def _train_epoch(self, model, opt, epoch: int, step: int) -> int:
        from accelerate.utils import set_seed
        from tqdm import tqdm

        c, acc = self.cfg, self.acc
        # Each epoch's randomness (dropout, crops, flips) depends on (seed, epoch) only, so a resumed run
        # replays exactly what an uninterrupted one would have done.
        set_seed(c.train.seed + 1009 * epoch, device_specific=True)
        self.detector.train()
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
            lr = lr_at(c.optim, epoch, i, step, c.train.epochs, self.steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = model(images.to(acc.device), labels.to(acc.device))
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDivergedError(f"the training loss became {loss.item()} at epoch {epoch + 1} step "
                                            f"{step + 1} (lr {lr:.3g}); lower optim.lr")
            acc.backward(loss)
            if c.optim.max_grad_norm:
                acc.clip_grad_norm_(self.detector.trainable_parameters(), c.optim.max_grad_norm)
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
        self.detector.eval()
        rows = self.detector.rows()
        if not all(torch.isfinite(v).all() for v in rows.values()):
            raise TrainingDivergedError(f"the pseudo-word rows hold NaN/inf after epoch {epoch + 1}; lower optim.lr")
        return step

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation loss (the training loss: answer-token cross-entropy summed over all validation samples /
        the number of answer tokens) and accuracy (P(fake) >= 0.5) over the validation samples."""
        acc, det = self.acc, self.detector
        det.eval()
        one_pass = all(len(a) == 1 for a in det.answer_ids)
        totals = torch.zeros(4, device=acc.device)  # loss sum, answer tokens, correct, samples
        for i, (images, labels, _keys) in enumerate(self._loader("val", 0)):
            if self.cfg.train.max_val_batches and i >= self.cfg.train.max_val_batches:
                break
            targets = det.target_ids(labels)
            losses, p_fake = det.answer_losses(images, targets, return_scores=True)
            if not one_pass:
                p_fake = det.score_loss(images)
            correct = ((p_fake.to(acc.device) >= 0.5).long() == labels.to(acc.device)).sum().float()
            totals += torch.stack([losses.sum(), torch.tensor(float(sum(map(len, targets))), device=acc.device),
                                   correct, torch.tensor(float(len(labels)), device=acc.device)])
        totals = acc.reduce(totals, reduction="sum")
        return totals[0].item() / max(totals[1].item(), 1.0), totals[2].item() / max(totals[3].item(), 1.0)

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

    def _save(self, epoch: int, step: int, val_loss: float, val_acc: float, best: float, opt,
              improved: bool) -> None:
        training = {"data": self.summary, "epoch": epoch, "step": step, "val_loss": val_loss, "val_acc": val_acc,
                    "best_val_loss": best, "config": to_dict(self.cfg)}
        last = save_checkpoint(self.detector, self.out / "last", self.preprocess, training)
        state = {"optimizer": opt.state_dict(), "epoch": epoch, "step": step, "best_val_loss": best,
                 "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None}
        torch.save(state, last / (STATE_FILE + ".tmp"))
        (last / (STATE_FILE + ".tmp")).replace(last / STATE_FILE)
        if improved:
            save_checkpoint(self.detector, self.out / "best", self.preprocess, training)
            log.info("epoch %d: new best validation loss %.4f -> %s", epoch, val_loss, self.out / "best")

    def _load_state(self, opt) -> tuple[int, int, float]:
        last = self.out / "last"
        self.detector.load_rows(read_rows(last / ROWS_FILE), source=f"'{last}'")
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        o = self.cfg.optim
        for group in opt.param_groups:  # the config's hyper-parameters run, not the saved ones (--resume-force)
            group.update(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        if self.acc.scaler is not None and state.get("scaler"):
            self.acc.scaler.load_state_dict(state["scaler"])
        log.info("resuming from %s after epoch %d (step %d)", last, state["epoch"], state["step"])
        return int(state["epoch"]), int(state["step"]), float(state["best_val_loss"])
