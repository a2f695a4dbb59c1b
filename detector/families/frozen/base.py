"""The interface of frozen-feature detectors: a frozen backbone's features + a head fitted over cached features."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from detector.base import FIT_FEATURES, Detector
from detector.sharing import sharing_loads

if TYPE_CHECKING:
    from detector.families.frozen.feature_cache import FeatureSet


class FeatureDetector(Detector):
    """A frozen backbone's features + a head fitted over cached features (linear probe, kNN, ...).

    Subclasses set `self.backbone` (a `detector.families.frozen.backbones.FeatureBackbone`) and implement
    `fit_features` and `score_features`. `forward` (a loss on images) exists only for heads that
    have one; the trainer uses `fit_features`.
    """

    fit_mode: ClassVar[str] = FIT_FEATURES

    def __init__(self, config: Any, backbone: nn.Module):
        super().__init__(config, backbone.preprocess)
        self.backbone = backbone
        backbone.requires_grad_(False)
        self.eval()  # built for scoring; a trainer switches heads to train()

    def train(self, mode: bool = True) -> "FeatureDetector":
        super().train(mode)
        self.backbone.eval()  # frozen: always in inference mode
        return self

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone features [B, D], float32 on the detector's device."""
        return self.backbone(pixels.to(self.backbone.device)).float()

    def feature_identity(self) -> dict:
        """What cached features depend on: the backbone (name, architecture, weights hash), the dtype it
        runs in and the preprocessing."""
        return {"backbone": self.backbone.identity(), "dtype": str(self.backbone.dtype),
                "preprocess": self.preprocess.key()}

    def feature_key(self) -> str:
        """Short hash of `feature_identity()`: the cache folder name, and the key under which detectors
        sharing one backbone can share one `features()` pass in a side-by-side eval."""
        blob = json.dumps(self.feature_identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def identity(self) -> dict:
        bb = self.backbone.identity()
        return {"detector": self.name, "backbone": bb["backbone"], "architecture": bb["architecture"],
                "weights_sha256": bb["weights_sha256"], "feature_dim": bb["feature_dim"]}

    def fit_features(self, train: "FeatureSet", val: "FeatureSet | None" = None) -> list[dict]:
        """Fit the head on cached features; returns metric rows (epoch, loss, val_acc, ...)."""
        raise NotImplementedError

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        """P(fake) [B] (float32, CPU) from backbone features."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.check_method(method)
        return self.score_features(self.features(pixels))

    def shared_stage_key(self) -> str:
        """Detectors on the same backbone weights, dtype and preprocessing share one `features()` pass."""
        return f"features:{self.feature_key()}"

    def shared_stage(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels)

    def score_from_shared(self, stage: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.check_method(method)
        return self.score_features(stage)

    @classmethod
    def load_many(cls, paths: list[str | Path], device: str | torch.device | None = None,
                  tiny: bool = False) -> list["Detector"]:
        """Checkpoints on the same backbone load it once."""
        with sharing_loads():
            return [cls.load(p, device=device, tiny=tiny) for p in paths]
