"""The detector interface: what every detector family provides to the trainer, `detect`, `eval` and the I/O.

A detector is an `nn.Module` subclass of `Detector`, registered in `detector.DETECTORS` under `name`:

* **Build** — `Cls.from_config(config, device=None, tiny=False)`. `config` is an instance of
  `Cls.config_class` (a dataclass: the YAML's `model:` section, parsed with `fakeforge.config.from_dict`).
  `tiny=True` swaps the real model ids for their tiny twins before anything loads.
* **Score** — `score(pixels, method=None) -> P(fake)`: float32 CPU tensor of shape [B] in [0, 1], no
  gradients. `pixels` is a batch made by `detector.preprocess.transform(train=False)`. `method` picks
  one of `scoring_methods` (None: the config's default).
* **Train** — `fit_mode` says how:
    - `"gradient"`: `forward(pixels, labels) -> scalar loss` (labels: 0 real, 1 fake). The trainer
      optimises `trainable_parameters()` only (`named_trainable_parameters()` gives stable names for
      optimizer state and resume). `train()/eval()` are honoured (BatchNorm, dropout); training batches
      smaller than `min_train_batch` are skipped by the trainer.
    - `"features"` (`FeatureDetector`): a frozen backbone maps images to features once
      (`features(pixels)`), the features are cached on disk (`detector.families.frozen.feature_cache`), and
      `fit_features(train, val)` fits the head from the cache in seconds (closed-form/short loops).
* **Preprocessing travels with the model** — `detector.preprocess` (`Preprocess`: size, resize rule,
  interpolation, crop, mean/std, train augmentation) is set by `from_config` from the backbone or the
  recipe, may be replaced by the trainer (e.g. mean/std measured on the data), is saved in the
  checkpoint JSON and restored on load.

AntifakePrompt (`detector/families/antifakeprompt/model.py`), DeepFake-Adapter (`detector/families/deepfake_adapter.py`) and the
frozen-feature heads (`detector/families/frozen/heads.py`, `detector/families/frozen/disentangle.py`) implement it; the trainer
(`detector/train/loop.py`), `detect`/`eval`/`stats` (`detector/cli.py`) and the side-by-side eval
(`detector/eval/side_by_side.py`) use nothing else.
* **State** — `checkpoint_state()` -> the tensors that make this detector differ from its base model
  (trainable parameters plus the buffers that training changes, such as BatchNorm statistics or a
  kNN feature bank); `load_checkpoint_state(tensors, source)` is strict. The frozen base model is never
  saved: `identity()` describes it (architecture + a content hash of its weights) and a checkpoint whose
  identity differs is refused, naming both (`check_identity`). `detector.checkpoint.save_detector` /
  `load_detector` write/read `weights.safetensors` + `detector.json` (detector name, format version,
  config, identity, preprocessing, training summary).
* **Training policy** — `check_train_config(cfg)` runs the family's checks on a `TrainConfig` before any
  model loads; `data_statistics` (normalise by mean/std measured on the training data: AntifakePrompt) and
  `resizable_input` (`data.image_size` sets the input size) say which `data.*` keys a family reads;
  `validation_step(pixels, labels)` gives the summed validation loss, its weight and P(fake) in one pass.
* **I/O hooks** — `save(out_dir, training)`, `Cls.load(path, ...)` and `restore(path)` (tensors and
  preprocessing into an existing detector, for `--resume`) default to `detector.checkpoint`'s format; AntifakePrompt
  keeps its own (`detector/families/antifakeprompt/checkpoint.py`, `fakeforge.antifakeprompt`), listed in `accepted_formats`.
  `Cls.load_many(paths, ...)` loads several checkpoints of one family for a side-by-side eval (families
  override it to share what they can: one base model, one backbone).
* **Shared stage** — `shared_stage_key()` names an expensive first stage that detectors with the same key
  compute identically (a frozen backbone's features; AntifakePrompt's vision encoder); the side-by-side
  eval then runs `shared_stage(pixels)` once and `score_from_shared(out, method)` per detector.
  `score(pixels)` equals `score_from_shared(shared_stage(pixels))` wherever a key is given.
* **Reporting** — `banner(checkpoint, image_loading)` (the first lines of detect/eval) and `report_info()`
  (what eval's results.json records about the detector).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from detector.checkpoint import load_detector_state, load_generic, save_detector
from detector.errors import CheckpointError
from detector.preprocess import Preprocess
from fakeforge.config import ConfigError

if TYPE_CHECKING:
    from detector.train.config import TrainConfig

log = logging.getLogger(__name__)

FIT_GRADIENT = "gradient"
FIT_FEATURES = "features"
# identity keys that are shown in messages but not compared (a folder may move, weights stay the same)
IDENTITY_INFO_KEYS = ("backbone", "base_model")


# ------------------------------------------------------------------------------------------- helpers
def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state dict (sorted by name).

    Two backbones share a fingerprint only if every weight is bit-identical. Meta tensors (shape-only
    models) give "meta"."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.is_meta:
            return "meta"
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def format_params(n: int | None) -> str:
    """4864 -> "4.86K", 16917838 -> "16.92M" (the paper's #params column)."""
    if n is None:
        return "?"
    if n < 1000:
        return str(n)
    return f"{n / 1e3:.2f}K" if n < 1_000_000 else f"{n / 1e6:.2f}M"


def describe_identity(identity: dict) -> str:
    """One readable phrase: "deepfake_adapter on backbone 'vit_...' (weights 1a2b3c4d5e6f)"."""
    parts = [str(identity.get("detector", "?"))]
    for key in IDENTITY_INFO_KEYS:
        if identity.get(key):
            parts.append(f"on {key.replace('_', ' ')} '{identity[key]}'")
    sha = identity.get("weights_sha256")
    if sha:
        parts.append(f"(weights {str(sha)[:12]})")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------- detector
class Detector(nn.Module):
    """Base class of every detector family (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None
    fit_mode: ClassVar[str] = FIT_GRADIENT
    scoring_methods: ClassVar[tuple[str, ...]] = ("default",)
    weights_file: ClassVar[str] = "weights.safetensors"
    state_version: ClassVar[int] = 1  # bump when the meaning of checkpoint_state() changes
    accepted_formats: ClassVar[tuple[str, ...]] = ()  # legacy detector.json "format" values also read
    # state_dict prefixes whose entries (parameters and buffers) make up checkpoint_state()
    state_prefixes: ClassVar[tuple[str, ...]] = ()
    min_train_batch: ClassVar[int] = 1  # a trainer skips smaller training batches (BatchNorm needs 2)
    data_statistics: ClassVar[bool] = False  # data.mean/std (or measured training-set statistics) normalise inputs
    resizable_input: ClassVar[bool] = False  # data.image_size sets the input size
    needs_caption: ClassVar[bool] = False  # features()/score() take `captions` (the shard json's caption per sample)

    def __init__(self, config: Any, preprocess: Preprocess):
        super().__init__()
        self.config = config
        self.preprocess = preprocess

    # ----------------------------------------------------------------------------------------- build
    @classmethod
    def from_config(cls, config: Any, device: str | torch.device | None = None, tiny: bool = False) -> "Detector":
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- use
    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """P(fake) per image, float32 on the CPU, shape [B]."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss (gradient detectors)."""
        raise NotImplementedError(f"detector {self.name!r} does not train by gradient steps on images "
                                  f"(fit_mode = {self.fit_mode!r})")

    def check_method(self, method: str | None) -> str:
        """The scoring method to use; ConfigError naming the valid ones otherwise."""
        method = method or self.scoring_methods[0]
        if method not in self.scoring_methods:
            raise ConfigError(f"scoring = {method!r} is not a scoring method of {self.name!r}; "
                              f"valid: {list(self.scoring_methods)}")
        return method

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass where the family supports it (default: no-op)."""

    # ----------------------------------------------------------------------------------------- parameters
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the trainer optimises, by their stable state-dict names."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def trainable_summary(self) -> str:
        """One line for logs and model cards (families override it with a breakdown)."""
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return f"trainable parameters: {self.num_trainable():,} (frozen: {frozen:,})"

    # ----------------------------------------------------------------------------------------- state
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything training changed: the state-dict entries under `state_prefixes`, as CPU tensors."""
        if not self.state_prefixes:
            raise NotImplementedError(f"{type(self).__name__} must set state_prefixes or override checkpoint_state")
        state = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.state_dict().items()
                 if k.startswith(self.state_prefixes)}
        missing = sorted(set(self.named_trainable_parameters()) - set(state))
        if missing:  # a trainable parameter outside state_prefixes would be lost on save
            raise RuntimeError(f"{type(self).__name__}.state_prefixes misses trainable parameters {missing[:5]}")
        return state

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy saved tensors in; every expected key must be there with its shape, and nothing else."""
        expected = {k: v for k, v in self.state_dict().items() if k.startswith(self.state_prefixes)}
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{source} does not fit {self.name!r}: missing tensors {missing[:5]}, "
                                  f"unexpected tensors {unexpected[:5]}")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(f"{source}: tensor {key} has shape {tuple(value.shape)}, this "
                                      f"{self.name!r} needs {tuple(expected[key].shape)}")
        self.load_state_dict(tensors, strict=False)

    def identity(self) -> dict:
        """What a checkpoint must match to be loaded into this detector (JSON-able)."""
        return {"detector": self.name}

    def check_identity(self, saved: dict, source: str = "checkpoint") -> None:
        """Refuse a checkpoint made for another detector, architecture or backbone weights, naming both."""
        mine = self.identity()
        keys = sorted((set(mine) | set(saved)) - set(IDENTITY_INFO_KEYS))
        differ = [k for k in keys if _canonical(mine.get(k)) != _canonical(saved.get(k))]
        if differ:
            raise CheckpointError(f"{source} was made for {describe_identity(saved)}, but this is "
                                  f"{describe_identity(mine)} (they differ in {', '.join(differ)})")

    def describe(self) -> dict:
        """Extra facts for detector.json and the model card."""
        return {"trainable_summary": self.trainable_summary()}

    # ----------------------------------------------------------------------------------------- training
    @classmethod
    def check_train_config(cls, cfg: "TrainConfig") -> None:
        """Family checks of a training config (ConfigError naming the key), before any model loads."""
        d = cfg.data
        if d.image_size is not None and not cls.resizable_input:
            raise ConfigError(f"data.image_size = {d.image_size}: {cls.name!r} takes its input size from its "
                              "model (backbone); leave data.image_size null")
        if (d.mean is not None or d.stats_file) and not cls.data_statistics:
            key = "data.mean/std" if d.mean is not None else "data.stats_file"
            raise ConfigError(f"{key}: {cls.name!r} normalises with its model's own statistics "
                              "(model.mean/std or the backbone's); leave data.mean, data.std and data.stats_file "
                              "null")
        if cls.fit_mode == FIT_GRADIENT and cfg.train.batch_size < cls.min_train_batch:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: {cls.name!r} needs training batches of "
                              f"at least {cls.min_train_batch}")
        if cls.fit_mode == FIT_FEATURES and d.mix:
            raise ConfigError(f"data.mix = {d.mix}: {cls.name!r} fits on every cached training sample; "
                              "sampling weights apply to gradient training only")
        if cls.fit_mode == FIT_FEATURES and d.augment:
            raise ConfigError(f"data.augment: {cls.name!r} fits on cached features of the clean images; "
                              "augmentation applies to gradient training only")

    def validation_step(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """(summed validation loss, its weight, P(fake) [B]) of a batch; the validation loss of a run is the sum
        over all batches / the summed weights. Default: the training loss times the batch size."""
        loss = self(pixels, labels).detach().float()
        n = torch.tensor(float(len(labels)), device=loss.device)
        return loss * n, n, self.score(pixels)

    # ----------------------------------------------------------------------------------------- I/O hooks
    def save(self, out_dir: str | Path, training: dict | None = None) -> Path:
        """Write this detector as a checkpoint folder (`detector.checkpoint` format); returns the folder."""
        return save_detector(self, out_dir, training)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, tiny: bool = False,
             model_overrides: dict | None = None) -> "Detector":
        """Rebuild a detector of this family from its checkpoint folder (see `detector.checkpoint.load_detector`), or from
        an official weight file (`.pth`, `detector.official_weights`)."""
        from detector.official_weights import is_weight_file, load_official

        if is_weight_file(path):
            return load_official(cls, path, device=device, tiny=tiny)
        return load_generic(cls, path, device, tiny, model_overrides)

    @classmethod
    def load_many(cls, paths: list[str | Path], device: str | torch.device | None = None,
                  tiny: bool = False) -> list["Detector"]:
        """Several checkpoints of this family (a side-by-side eval); families share what they can."""
        return [cls.load(p, device=device, tiny=tiny) for p in paths]

    def restore(self, path: str | Path) -> dict:
        """Load a checkpoint's tensors and preprocessing into this detector (resume); returns its meta."""
        return load_detector_state(self, path)

    # ----------------------------------------------------------------------------------------- shared stage
    def shared_stage_key(self) -> str | None:
        """Key of an expensive first stage other detectors with the same key compute identically (None: none)."""
        return None

    def shared_stage(self, pixels: torch.Tensor) -> Any:
        raise NotImplementedError

    def score_from_shared(self, stage: Any, method: str | None = None) -> torch.Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- reporting
    def banner(self, checkpoint: str, image_loading: str = "fakeforge", method: str | None = None) -> list[str]:
        """The first lines `detect` and `eval` print: what runs."""
        p = self.preprocess
        return [f"checkpoint: {checkpoint}  detector: {describe_identity(self.identity())}",
                f"{self.trainable_summary()} on {self.device}",
                f"preprocess: {p.image_size} px, {p.resize.replace('_', ' ')} resize ({p.interpolation}, crop "
                f"{p.crop_pct}); mean {p.mean} std {p.std} ({p.source or 'checkpoint'})",
                f"scoring: {self.check_method(method)}; image loading: {image_loading}"]

    def report_info(self, method: str | None = None) -> dict:
        """What an eval's results.json records about this detector."""
        return {"detector": self.name, "scoring": self.check_method(method), "identity": self.identity(),
                "trainable_parameters": self.num_trainable(), "preprocess": self.preprocess.to_dict()}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
