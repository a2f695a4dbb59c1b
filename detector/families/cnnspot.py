"""CNNSpot (Wang et al., CVPR 2020, "CNN-generated images are surprisingly easy to spot... for now").

Built as the official code (PeterWang512/CNNDetection, `networks/trainer.py`) builds it: an ImageNet ResNet-50
whose `fc` is replaced by Linear(2048 -> 1) with weights drawn from N(0, 0.02), every parameter trained with
`BCEWithLogitsLoss`, P(fake) = sigmoid(logit). 23,510,081 trainable parameters (23.51M, the count of the
AntifakePrompt table). The network is timm's `resnet50` with torchvision's ImageNet weights
(`resnet50.tv_in1k`, what `torchvision.models.resnet50(pretrained=True)` loaded for the paper); timm's ResNet
keeps torchvision's parameter names, so the published `blur_jpg_prob0.5.pth` / `blur_jpg_prob0.1.pth`
(`{'model': state_dict}`) load key for key (`detector.official_weights`).

Recipe (configs/detector/cnnspot.yaml, cnnspot_p01.yaml): shorter side 256 bilinear, random crop 224 + flip,
ImageNet mean/std, Adam 1e-4 (betas 0.9/0.999, no weight decay), batch 64, blur + JPEG augmentation with
probability 0.5 or 0.1 (`data.augment`), lr / 10 after 5 epochs without a 0.001 rise of validation accuracy,
stop below 1e-6 (`optim.schedule: plateau`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from detector.families.resnet_classifier import ResNetClassifier, ResNetClassifierConfig, create_resnet


@dataclass
class CNNSpotConfig(ResNetClassifierConfig):
    """ImageNet ResNet-50 + one logit (defaults: the official model)."""

    head_init_std: float = 0.02  # the official init_gain: fc.weight ~ N(0, 0.02)


class CNNSpot(ResNetClassifier):
    """ImageNet ResNet-50 fine-tuned end to end with a one-logit head."""

    name: ClassVar[str] = "cnnspot"
    config_class: ClassVar[type] = CNNSpotConfig
    official_source: ClassVar[str] = "CNNSpot"

    @classmethod
    def build_net(cls, config: CNNSpotConfig, pretrained: bool | None = None) -> nn.Module:
        net = create_resnet(config, pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net.reset_classifier(1)
            nn.init.normal_(net.fc.weight, 0.0, config.head_init_std)
        return net

    @staticmethod
    def official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official torchvision-layout keys (conv1.weight, ..., fc.bias) -> this detector's (net.conv1.weight, ...)."""
        return {f"net.{k}": v for k, v in state.items()}
