"""NPR (Tan et al., CVPR 2024, "Rethinking the up-sampling operations in CNN-based generative network for
generalizable deepfake detection").

Built as the official code (chuangchuangtan/NPR-DeepfakeDetection, `networks/resnet.py`) builds it: the
neighbouring-pixel-relationship residual NPR = x - up(down(x, 1/2)) (both nearest, as
`F.interpolate(..., mode='nearest', recompute_scale_factor=True)`), times 2/3, into a truncated ResNet-50: a 3x3
stride-2 stem conv (64 channels), BatchNorm, ReLU, max-pool, the first two Bottleneck stages (3 + 4 blocks), global
average pool and Linear(512 -> 1); `BCEWithLogitsLoss`, P(fake) = sigmoid(logit). Trained from scratch
(`resnet50(pretrained=False)`): 1,437,761 trainable parameters (1.44M). The network is timm's ResNet with its
stem conv replaced and stages 3-4 removed (`nn.Identity`); parameter names are torchvision's, so the published
`NPR.pth` (a plain state dict) loads key for key, `fc1` becoming `net.fc` (`detector.official_weights`).

Recipe (configs/detector/npr.yaml, the README's command): Adam 2e-4 (betas 0.9/0.999), batch 32, lr x 0.9 every
10 epochs (`optim.schedule: step_epoch`), 50 epochs; 256 px load, random crop 224 + flip, ImageNet mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from detector.families.resnet_classifier import ResNetClassifier, ResNetClassifierConfig, create_resnet
from fakeforge.config import ConfigError


@dataclass
class NPRConfig(ResNetClassifierConfig):
    """Truncated ResNet-50 on the NPR residual (defaults: the official model, trained from scratch)."""

    backbone: str = "resnet50"
    pretrained: bool = False
    residual_scale: float = 2.0 / 3.0  # the official `NPR * 2.0 / 3.0`

    def validate(self) -> None:
        super().validate()
        if self.image_size % 2:
            raise ConfigError(f"model.image_size = {self.image_size} must be even (NPR pairs neighbouring pixels)")


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x - nearest-up(nearest-down(x, 1/2)): zero on one pixel of every 2x2 block, the neighbour differences
    elsewhere."""
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)


class NPR(ResNetClassifier):
    """NPR residual -> ResNet stem + layer1-2 -> one logit, trained end to end."""

    name: ClassVar[str] = "npr"
    config_class: ClassVar[type] = NPRConfig
    official_source: ClassVar[str] = "NPR"

    @classmethod
    def build_net(cls, config: NPRConfig, pretrained: bool | None = None) -> nn.Module:
        net = create_resnet(config, pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            stem_out = net.bn1.num_features
            if stem_out != net.layer1[0].conv1.in_channels:
                raise ConfigError(f"model.backbone = {config.backbone!r}: its stem does not feed layer1")
            net.conv1 = nn.Conv2d(3, stem_out, kernel_size=3, stride=2, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.layer3, net.layer4 = nn.Identity(), nn.Identity()
            width = net.layer2[-1].conv3.out_channels
            net.num_features = width
            net.fc = nn.Linear(width, 1)
        return net

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.device)
        return self.net(npr_residual(x) * self.config.residual_scale).squeeze(-1).float()

    @staticmethod
    def official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official keys (conv1.weight, layer2.3.bn3.bias, fc1.weight, ...) -> this detector's (net.*, net.fc.*)."""
        return {f"net.{'fc.' + k[4:] if k.startswith('fc1.') else k}": v for k, v in state.items()}
