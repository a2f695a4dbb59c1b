"""What CNNSpot and NPR share: a timm ResNet trained end to end with one logit, P(fake) = sigmoid(logit).

Both official codes train every parameter of a torchvision-layout ResNet (BatchNorm statistics included)
with `BCEWithLogitsLoss` on a single output. Here the network is a timm `ResNet` (its parameter names are
torchvision's: `conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`, so official weight files map key for key) held as
`self.net`; `checkpoint_state()` is its whole state dict. Nothing is frozen, so a checkpoint does not depend on
the weights training started from: `identity()` names the architecture (the ImageNet initialisation's hash is
recorded in `describe()`), and loading a checkpoint builds the network without downloading those weights.

The preprocessing is the official one: shorter side to `load_size` (bilinear), random crop `image_size` and
horizontal flip in training, center crop at test time, ImageNet mean/std.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from detector.base import Detector, Preprocess, format_params, weights_fingerprint
from fakeforge.devices import pick_device
from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TINY_BACKBONE = "tiny:timm_resnet"
TINY_SIZE, TINY_LOAD = 32, 36
_LOCAL = ("tiny:", "local-dir:", "hf-hub:")


@dataclass
class ResNetClassifierConfig:
    """Backbone, input geometry and head init of a one-logit ResNet detector."""

    backbone: str = "resnet50.tv_in1k"  # timm ResNet name, "local-dir:/folder", "hf-hub:org/name", "tiny:timm_resnet"
    pretrained: bool = True  # start from the backbone's weights (False: timm's random init, seeded)
    image_size: int = 224  # crop size
    load_size: int = 256  # shorter side before the crop
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    seed: int = 0  # initialisation of the head (and of the whole network when pretrained is false)
    init_checkpoint: str | None = None  # start from a published weight file (.pth) instead (`train.py --checkpoint`)

    def validate(self) -> None:
        if not self.backbone.strip():
            raise ConfigError("model.backbone must name a timm ResNet")
        if self.image_size < 2 or self.load_size < self.image_size:
            raise ConfigError(f"model.image_size = {self.image_size} must be >= 2 and model.load_size = "
                              f"{self.load_size} >= model.image_size")
        Preprocess(mean=self.mean, std=self.std).validate()
        if self.init_checkpoint is not None:
            from detector.official_weights import is_weight_file

            if not is_weight_file(self.init_checkpoint):
                raise ConfigError(f"model.init_checkpoint = '{self.init_checkpoint}' is not a .pth/.pt file")

    def to_tiny(self):
        return replace(self, backbone=TINY_BACKBONE, pretrained=True, image_size=TINY_SIZE, load_size=TINY_LOAD)


def create_resnet(config: ResNetClassifierConfig, pretrained: bool | None = None) -> nn.Module:
    """The timm ResNet named by `config.backbone`, without classifier; ConfigError naming close matches for an
    unknown name, one line for a folder that does not load."""
    import timm

    from detector.families.frozen.backbones import check_timm_name, resolve_tiny

    name = config.backbone
    if name.startswith("tiny:"):
        name = f"local-dir:{resolve_tiny(name.split(':', 1)[1])}"
    check_timm_name(name)
    use_weights = config.pretrained if pretrained is None else pretrained
    if name.startswith(_LOCAL):
        use_weights = True  # a folder's architecture comes with its weights (timm reads both from it)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = timm.create_model(name, pretrained=use_weights, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load model.backbone = {config.backbone!r}: {first}") from None
    from timm.models.resnet import ResNet

    if not isinstance(net, ResNet):
        raise ConfigError(f"model.backbone = {config.backbone!r} is a {type(net).__name__}, not a timm ResNet")
    return net


def _crop_pct(image_size: int, load_size: int) -> float:
    """The crop fraction for which `Preprocess` resizes the shorter side to exactly `load_size`."""
    pct = image_size / load_size
    while int(image_size / pct) < load_size:  # guard against 35.999... -> 35
        pct = pct * (1 - 1e-12)
    return pct


class ResNetClassifier(Detector):
    """A timm ResNet (`self.net`, its `fc` the one-logit head) trained end to end with BCE."""

    state_prefixes: ClassVar[tuple[str, ...]] = ("net.",)
    min_train_batch: ClassVar[int] = 2  # BatchNorm in training mode
    official_source: ClassVar[str] = ""

    def __init__(self, config: ResNetClassifierConfig, net: nn.Module):
        pre = Preprocess(image_size=config.image_size, resize="shorter_side",
                         crop_pct=_crop_pct(config.image_size, config.load_size), interpolation="bilinear",
                         mean=list(config.mean), std=list(config.std), train_augment="crop_flip",
                         source=f"{self.official_source} recipe")
        super().__init__(config, pre)
        self.net = net
        self.init_fingerprint = weights_fingerprint(net)
        self.eval()

    @classmethod
    def build_net(cls, config: ResNetClassifierConfig, pretrained: bool | None = None) -> nn.Module:
        """The family's network: the ResNet with its one-logit head (families change stem/stages here)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: ResNetClassifierConfig, device=None, tiny: bool = False,
                    pretrained: bool | None = None, init: bool = True) -> ResNetClassifier:
        """Build from the config, then load `init_checkpoint` if one is named (`pretrained=False`, `init=False`:
        skip weights that a checkpoint about to be loaded overwrites)."""
        if tiny:
            config = config.to_tiny()
        config.validate()
        start_file = config.init_checkpoint if init else None
        detector = cls(config, cls.build_net(config, False if start_file else pretrained))
        if start_file:
            from detector.official_weights import load_official_into

            load_official_into(detector, start_file)
            detector.init_fingerprint = weights_fingerprint(detector.net)
        log.info("%s", detector.trainable_summary())
        return detector.to(pick_device(device))

    @classmethod
    def check_train_config(cls, cfg) -> None:
        """The generic checks, then the backbone name (close matches listed) before any data or model loads."""
        from detector.families.frozen.backbones import check_timm_name

        super().check_train_config(cfg)
        cfg.model.validate()
        if cfg.model.init_checkpoint:  # its keys, before any data is read (shapes are checked when it loads)
            from detector.official_weights import family_of, read_weight_file

            found = family_of(read_weight_file(cfg.model.init_checkpoint))
            if found != cls.name:
                raise ConfigError(f"model.init_checkpoint = '{cfg.model.init_checkpoint}' has the key layout of "
                                  f"{found or 'no known detector'!r}, not {cls.name!r}")
        if not cfg.model.backbone.startswith(_LOCAL):
            check_timm_name(cfg.model.backbone)

    # ----------------------------------------------------------------------------------------- use
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.to(self.device)).squeeze(-1).float()

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE with logits; label 1 = fake."""
        logits = self.logits(pixels)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.device).float())

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.check_method(method)
        return torch.sigmoid(self.logits(pixels)).cpu()

    # ----------------------------------------------------------------------------------------- facts
    def trainable_summary(self) -> str:
        n = self.num_trainable()
        return f"trainable parameters: {n:,} ({format_params(n)}; the whole network, nothing frozen)"

    def identity(self) -> dict:
        net = self.net
        stages = [name for name in ("layer1", "layer2", "layer3", "layer4") if len(list(getattr(net, name).children()))]
        return {"detector": self.name, "backbone": self.config.backbone,
                "architecture": {"class": type(net).__name__, "stem": list(net.conv1.weight.shape),
                                 "stages": {s: len(getattr(net, s)) for s in stages},
                                 "width": [getattr(net, s)[-1].conv3.out_channels for s in stages],
                                 "head": list(net.fc.weight.shape)}}

    def describe(self) -> dict:
        return {**super().describe(), "trainable_parameters_paper": format_params(self.num_trainable()),
                "init_weights_sha256": self.init_fingerprint}

    def report_info(self, method: str | None = None) -> dict:
        return {**super().report_info(method), "trainable_parameters_paper": format_params(self.num_trainable())}

    # ----------------------------------------------------------------------------------------- I/O
    @classmethod
    def load(cls, path: str | Path, device=None, tiny: bool = False, model_overrides: dict | None = None):
        """A checkpoint folder, or an official weight file (`.pth`, see `detector.official_weights`).
        Every tensor comes from the checkpoint, so the backbone's own weights are not downloaded."""
        from detector.official_weights import is_weight_file, load_official
        from detector.checkpoint import load_generic

        if is_weight_file(path):
            return load_official(cls, path, device=device, tiny=tiny)
        return load_generic(_WithoutWeights(cls), path, device, tiny, model_overrides)


class _WithoutWeights:
    """`cls` as `load_generic` sees it, with `from_config` building the network without downloading weights."""

    def __init__(self, cls: type[ResNetClassifier]):
        self._cls = cls

    def __getattr__(self, name):
        return getattr(self._cls, name)

    def from_config(self, config, device=None, tiny: bool = False):
        return self._cls.from_config(config, device=device, tiny=tiny, pretrained=False, init=False)
