"""Frozen-feature detectors (UnivFD, COCOFake's probes): a linear probe and a k-nearest-neighbour classifier.

Both sit on a frozen backbone (`detector.families.frozen.backbones`: CLIP ViT-L/14 or ViT-B/16 from open_clip or
transformers, or an ImageNet ResNet-50 / ViT from timm) and are fitted from cached features
(`detector.families.frozen.feature_cache`) in seconds:

* `linear_probe`: logistic regression (scikit-learn's `LogisticRegression`, L-BFGS, L2 strength `1/C`) on
  standardised features. Scoring runs in torch: P(fake) = sigmoid(w . (f - mean) / std + b), the same
  numbers as `predict_proba`.
* `nearest_neighbor`: the training features themselves (L2-normalised) are the model; P(fake) is the
  (distance-weighted) share of fakes among the `k` most cosine-similar training images, as scikit-learn's
  `KNeighborsClassifier(metric="cosine")` computes it, but batched on the GPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from detector.base import CheckpointError
from detector.families.frozen.backbones import FeatureBackbone, parse_backbone, tiny_backbone_for
from detector.families.frozen.base import FeatureDetector
from detector.families.frozen.feature_cache import FeatureSet
from fakeforge.config import ConfigError

DEFAULT_BACKBONE = "open_clip:ViT-L-14@openai"  # UnivFD's CLIP ViT-L/14


@dataclass
class FrozenFeatureConfig:
    """The backbone every frozen-feature detector sits on."""

    backbone: str = DEFAULT_BACKBONE
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # backbone dtype (auto: bf16 on CUDA)
    seed: int = 0

    def validate(self) -> None:
        parse_backbone(self.backbone)

    def to_tiny(self):
        """The same config on the backbone's tiny twin (`--tiny`)."""
        return replace(self, backbone=tiny_backbone_for(self.backbone), dtype="float32")


class _FrozenFeatureDetector(FeatureDetector):
    """Shared building: load the backbone named by the config, then the head."""

    @classmethod
    def from_config(cls, config: FrozenFeatureConfig, device=None, tiny: bool = False) -> "_FrozenFeatureDetector":
        if tiny:
            config = config.to_tiny()
        config.validate()
        backbone = FeatureBackbone.load(config.backbone, device=device, dtype=config.dtype)
        return cls(config, backbone).to(backbone.device).eval()

    def _standardise(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats.to(self.feature_mean.device).float() - self.feature_mean) / self.feature_std

    def _fit_standardisation(self, feats: torch.Tensor) -> None:
        with torch.no_grad():
            self.feature_mean.copy_(feats.float().mean(0))
            self.feature_std.copy_(feats.float().std(0).clamp(min=1e-6))


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((scores >= 0.5).long() == labels.long()).float().mean()) if len(labels) else math.nan


def log_loss(scores: torch.Tensor, labels: torch.Tensor) -> float:
    p = scores.double().clamp(1e-7, 1 - 1e-7)
    y = labels.double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean()) if len(labels) else math.nan


# ------------------------------------------------------------------------------------------- linear probe
@dataclass
class LinearProbeConfig(FrozenFeatureConfig):
    """Logistic regression on frozen features."""

    C: float = 1.0  # inverse L2 regularisation strength (scikit-learn's C)
    max_iter: int = 1000
    class_weight: Literal["none", "balanced"] = "none"

    def validate(self) -> None:
        super().validate()
        if self.C <= 0:
            raise ConfigError(f"model.C = {self.C} must be positive")
        if self.max_iter < 1:
            raise ConfigError(f"model.max_iter = {self.max_iter} must be >= 1")


class LinearProbe(_FrozenFeatureDetector):
    """UnivFD / COCOFake linear probe: logistic regression over a frozen backbone's features."""

    name: ClassVar[str] = "linear_probe"
    config_class: ClassVar[type] = LinearProbeConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("head.", "feature_mean", "feature_std")

    def __init__(self, config: LinearProbeConfig, backbone: FeatureBackbone):
        super().__init__(config, backbone)
        dim = backbone.feature_dim
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.head = nn.Linear(dim, 1)
        nn.init.zeros_(self.head.weight)  # untrained: P(fake) = 0.5 for every image
        nn.init.zeros_(self.head.bias)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self._standardise(feats)).squeeze(-1)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.logits(feats)).float().cpu()

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the probe (lets the probe also train by gradient steps)."""
        logits = self.logits(self.features(pixels))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.device).float())

    def fit_features(self, train: FeatureSet, val: FeatureSet | None = None) -> list[dict]:
        """Standardise, fit scikit-learn's LogisticRegression, copy its coefficients into the head."""
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError:
            raise ImportError("the linear probe needs scikit-learn: pip install 'fakeforge[backbones]'") from None
        cfg = self.config
        start = time.time()
        loss_before = log_loss(self.score_features(train.features), train.labels)
        self._fit_standardisation(train.features)
        x = self._standardise(train.features).cpu().double().numpy()
        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed,
                                 class_weight=None if cfg.class_weight == "none" else "balanced")
        clf.fit(x, train.labels.numpy())
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(clf.coef_).float())
            self.head.bias.copy_(torch.from_numpy(clf.intercept_).float())
        row = {"epoch": 1, "loss_before": loss_before, "loss": log_loss(self.score_features(train.features),
                                                                        train.labels),
               "train_acc": accuracy(self.score_features(train.features), train.labels),
               "iterations": int(max(clf.n_iter_)), "fit_seconds": round(time.time() - start, 3)}
        if val is not None and len(val):
            scores = self.score_features(val.features)
            row.update(val_loss=log_loss(scores, val.labels), val_acc=accuracy(scores, val.labels))
        return [row]


# ------------------------------------------------------------------------------------------- kNN
@dataclass
class NearestNeighborConfig(FrozenFeatureConfig):
    """k-nearest-neighbour vote in cosine similarity over the training features."""

    k: int = 9
    weights: Literal["uniform", "distance"] = "distance"  # distance: each vote weighs 1 / (1 - cosine)
    max_bank: int | None = None  # keep at most this many training features (random, seeded); None: all
    chunk: int = 65536  # bank rows compared per step (memory bound)

    def validate(self) -> None:
        super().validate()
        if self.k < 1:
            raise ConfigError(f"model.k = {self.k} must be >= 1")
        if self.max_bank is not None and self.max_bank < self.k:
            raise ConfigError(f"model.max_bank = {self.max_bank} must be >= model.k = {self.k}")


class NearestNeighbor(_FrozenFeatureDetector):
    """UnivFD's nearest-neighbour detector: the memory bank of training features is the whole model."""

    name: ClassVar[str] = "nearest_neighbor"
    config_class: ClassVar[type] = NearestNeighborConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("bank_features", "bank_labels")

    def __init__(self, config: NearestNeighborConfig, backbone: FeatureBackbone):
        super().__init__(config, backbone)
        self.register_buffer("bank_features", torch.zeros(0, backbone.feature_dim))
        self.register_buffer("bank_labels", torch.zeros(0))

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """The bank's length comes from the checkpoint; its width must match the backbone."""
        feats = tensors.get("bank_features")
        if feats is not None and (feats.ndim != 2 or feats.shape[1] != self.backbone.feature_dim):
            raise CheckpointError(f"{source}: bank_features has shape {tuple(feats.shape)}, the backbone gives "
                                  f"{self.backbone.feature_dim}-d features")
        if feats is not None:
            self.bank_features = torch.empty_like(feats, device=self.bank_features.device)
            self.bank_labels = torch.empty(feats.shape[0], device=self.bank_labels.device)
        super().load_checkpoint_state(tensors, source)

    def fit_features(self, train: FeatureSet, val: FeatureSet | None = None) -> list[dict]:
        cfg = self.config
        start = time.time()
        feats, labels = train.features.float(), train.labels.float()
        if cfg.max_bank is not None and len(labels) > cfg.max_bank:
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_bank]
            feats, labels = feats[keep.sort().values], labels[keep.sort().values]
        dev = self.bank_features.device
        self.bank_features = nn.functional.normalize(feats, dim=1).to(dev)
        self.bank_labels = labels.to(dev)
        row = {"epoch": 1, "bank": int(len(labels)), "fit_seconds": round(time.time() - start, 3)}
        if val is not None and len(val):
            scores = self.score_features(val.features)
            row.update(val_loss=log_loss(scores, val.labels), val_acc=accuracy(scores, val.labels))
        return [row]

    @torch.no_grad()
    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        n = len(self.bank_labels)
        if n == 0:  # nothing fitted yet
            return torch.full((feats.shape[0],), 0.5)
        cfg = self.config
        k = min(cfg.k, n)
        q = nn.functional.normalize(feats.to(self.bank_features.device).float(), dim=1)
        best_sim = torch.full((q.shape[0], 0), -2.0, device=q.device)
        best_idx = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        for start in range(0, n, cfg.chunk):  # running top-k over bank chunks
            sim = q @ self.bank_features[start:start + cfg.chunk].T
            top = sim.topk(min(k, sim.shape[1]), dim=1)
            cand_sim = torch.cat([best_sim, top.values], 1)
            cand_idx = torch.cat([best_idx, top.indices + start], 1)
            keep = cand_sim.topk(min(k, cand_sim.shape[1]), dim=1).indices
            best_sim, best_idx = cand_sim.gather(1, keep), cand_idx.gather(1, keep)
        votes = self.bank_labels[best_idx]
        if cfg.weights == "uniform":
            weights = torch.ones_like(votes)
        else:
            dist = (1 - best_sim).clamp(min=0)
            exact = dist <= 1e-12
            weights = torch.where(exact.any(1, keepdim=True), exact.float(), 1 / dist.clamp(min=1e-12))
        return ((weights * votes).sum(1) / weights.sum(1)).float().cpu()
