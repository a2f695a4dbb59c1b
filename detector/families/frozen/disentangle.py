"""COCOFake's contrastive disentangling head over frozen features ("Parents and Children", arXiv 2304.00500).

Two projection heads map a frozen backbone feature into a *style* space and a *semantic* space, each
trained with a supervised contrastive loss (Khosla et al. 2020):

* style space — positives are images with the same real/fake label, so the space gathers the low-level
  cues that tell fakes from reals;
* semantic space — positives are images made from the same source (the real COCO image and the fakes
  generated from its captions share the shard json's `source_image_id`), so the space gathers content.
  Samples without a source id have no positives there and only serve as negatives.

A linear classifier on the (L2-normalised) style embedding gives P(fake). The total loss is
`style_supcon + semantic_weight * semantic_supcon + classifier_weight * BCE`. The paper's exact head sizes,
temperature and schedule could not be read (papers.md §3.2 [UNCONFIRMED]); the defaults below are ours.
Everything is fitted over cached features (`fit_features`), a few seconds per epoch on a GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from detector.families.frozen.backbones import FeatureBackbone
from detector.families.frozen.feature_cache import FeatureSet
from detector.families.frozen.heads import FrozenFeatureConfig, _FrozenFeatureDetector, accuracy, log_loss
from fakeforge.config import ConfigError


@dataclass
class ContrastiveDisentangleConfig(FrozenFeatureConfig):
    """Head sizes, loss weights and the feature-space training schedule."""

    hidden_dim: int = 512
    proj_dim: int = 128
    temperature: float = 0.07
    semantic_weight: float = 1.0
    classifier_weight: float = 1.0
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        for key in ("hidden_dim", "proj_dim", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} = {getattr(self, key)} must be >= 1")
        if self.batch_size < 2:
            raise ConfigError(f"model.batch_size = {self.batch_size} must be >= 2 (contrastive pairs)")
        for key in ("temperature", "lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} = {getattr(self, key)} must be positive")


def supcon_loss(z: torch.Tensor, classes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (the "L_out" form) of embeddings `z` [B, d] with class ids [B].

    Anchors without a positive in the batch (and samples with class < 0) are skipped as anchors; every
    other sample still counts in the denominators."""
    z = nn.functional.normalize(z.float(), dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    known = classes >= 0
    pos = (classes[:, None] == classes[None, :]) & ~eye & known[:, None] & known[None, :]
    has_pos = pos.any(1)
    if not has_pos.any():
        return z.sum() * 0.0
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1)[has_pos] / pos.sum(1)[has_pos]
    return per_anchor.mean()


def _projector(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


class ContrastiveDisentangle(_FrozenFeatureDetector):
    """Style / semantic projections with supervised contrastive losses; P(fake) from the style space."""

    name: ClassVar[str] = "contrastive_disentangle"
    config_class: ClassVar[type] = ContrastiveDisentangleConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("style_proj.", "semantic_proj.", "classifier.",
                                                 "feature_mean", "feature_std")

    def __init__(self, config: ContrastiveDisentangleConfig, backbone: FeatureBackbone):
        super().__init__(config, backbone)
        dim = backbone.feature_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.style_proj = _projector(dim, config.hidden_dim, config.proj_dim)
            self.semantic_proj = _projector(dim, config.hidden_dim, config.proj_dim)
            self.classifier = nn.Linear(config.proj_dim, 1)
        nn.init.zeros_(self.classifier.weight)  # untrained: P(fake) = 0.5
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))

    def embed(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised style and semantic embeddings of backbone features."""
        x = self._standardise(feats)
        return {"style": nn.functional.normalize(self.style_proj(x), dim=1),
                "semantic": nn.functional.normalize(self.semantic_proj(x), dim=1)}

    def losses(self, feats: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
        cfg = self.config
        dev = self.feature_mean.device
        labels = labels.to(dev)
        groups = torch.full_like(labels, -1) if groups is None else groups.to(dev)
        emb = self.embed(feats)
        logits = self.classifier(emb["style"]).squeeze(-1)
        parts = {"style": supcon_loss(emb["style"], labels, cfg.temperature),
                 "semantic": supcon_loss(emb["semantic"], groups, cfg.temperature),
                 "classifier": nn.functional.binary_cross_entropy_with_logits(logits, labels.float())}
        parts["total"] = parts["style"] + cfg.semantic_weight * parts["semantic"] + \
            cfg.classifier_weight * parts["classifier"]
        return parts

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Total loss on a batch of images (no source ids: the semantic term is 0)."""
        return self.losses(self.features(pixels), labels)["total"]

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.classifier(self.embed(feats)["style"]).squeeze(-1)).float().cpu()

    def fit_features(self, train: FeatureSet, val: FeatureSet | None = None) -> list[dict]:
        """AdamW over the heads for `epochs` passes of shuffled mini-batches of cached features."""
        cfg = self.config
        dev = self.feature_mean.device
        self._fit_standardisation(train.features)
        params = self.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        feats, labels, groups = train.features.to(dev), train.labels.to(dev), train.groups.to(dev)
        history = []
        for epoch in range(cfg.epochs):
            start = time.time()
            self.train()
            order = torch.randperm(len(labels), generator=gen).to(dev)
            sums, batches = {"total": 0.0, "style": 0.0, "semantic": 0.0, "classifier": 0.0}, 0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                if len(idx) < 2:
                    continue
                parts = self.losses(feats[idx], labels[idx], groups[idx])
                opt.zero_grad(set_to_none=True)
                parts["total"].backward()
                opt.step()
                for key in sums:
                    sums[key] += float(parts[key].detach())
                batches += 1
            self.eval()
            row = {"epoch": epoch + 1, "loss": sums["total"] / max(batches, 1),
                   **{f"{k}_loss": v / max(batches, 1) for k, v in sums.items() if k != "total"},
                   "epoch_seconds": round(time.time() - start, 3)}
            if val is not None and len(val):
                scores = self.score_features(val.features)
                row.update(val_loss=log_loss(scores, val.labels), val_acc=accuracy(scores, val.labels))
            history.append(row)
        return history
