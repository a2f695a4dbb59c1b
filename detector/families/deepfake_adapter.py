"""DeepFake-Adapter (Shao et al., arXiv 2306.00863) on a frozen timm ViT.

Built the way the official code (rshaojimmy/DeepFake-Adapter, `models/vit.py`, `adapter.py`,
`spatialprior.py`) builds it, around any timm `VisionTransformer` whose blocks are timm `Block`s:

* **GBA** (globally-aware bottleneck adapter), one per block, parallel to the MLP: it reads the residual
  stream right after the attention sub-layer, Linear(width->64) -> ReLU -> Linear(64->width), times a
  learnable scalar (init 1); down-projection Kaiming-uniform, up-projection and biases zero, so the
  ViT starts exactly as loaded. Its output joins the MLP branch before the residual add.
* **LSA** (locally-aware spatial adapter, ViT-Adapter style with dense attention):
  - spatial prior module: conv stem to stride 4, then stride-2 convs to strides 8/16/32 (64 -> 128 ->
    256 -> 256 channels), each projected to the ViT width by a 1x1 conv and flattened (28^2 + 14^2 + 7^2 =
    1,029 tokens at 224 px), plus a learnable per-level embedding;
  - the blocks split into three equal groups ([[0,3],[4,7],[8,11]] for 12 blocks); per group an
    injector (cross-attention: ViT tokens query the spatial tokens; LayerNorm on both; output times a
    per-channel gamma initialised to 0), the group's frozen blocks, then an extractor (spatial tokens
    query the ViT tokens; plain residual). 6 heads (`cross_attn_heads`).
* **Readout**: the ViT's final LayerNorm on the spatial tokens, first token -> BatchNorm1d (no affine) ->
  Linear(width->2) with weights trunc-normal std 0.01 (MoCo v3 style). P(fake) = softmax(logits)[1].

Only the adapters (GBA, SPM, interactions, level embedding) and the head train: 16,917,838 parameters on
ViT-B/16 (GBA 1,189,644 + SPM 1,529,408 + interactions 14,194,944 + level embedding 2,304 + head 1,538),
against 85,798,656 frozen. SyncBatchNorm in the official SPM is plain BatchNorm2d here (convert with
`nn.SyncBatchNorm.convert_sync_batchnorm` under DDP). ViT-Adapter's deformable attention and ConvFFN are
not part of DeepFake-Adapter's released model and are not built.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from detector.base import Detector, Preprocess, weights_fingerprint
from detector.families.frozen.backbones import check_timm_name, resolve_tiny
from fakeforge.config import ConfigError
from fakeforge.devices import pick_device

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_base_patch16_224.augreg_in21k"
TINY_BACKBONE = "tiny:timm_vit"


@dataclass
class DeepFakeAdapterConfig:
    """Backbone, adapter sizes and preprocessing of DeepFake-Adapter (defaults: the official config)."""

    backbone: str = DEFAULT_BACKBONE  # a timm ViT name, "local-dir:/folder", "hf-hub:org/name" or "tiny:timm_vit"
    pretrained: bool = True  # load the backbone's weights (False: random ViT, for shape checks only)
    bottleneck: int = 64  # GBA width (ffn_num)
    spm_channels: int = 64  # SPM inplanes
    cross_attn_heads: int = 6  # num_heads_spatial_adapter
    interaction_groups: list[list[int]] | None = None  # [[first, last], ...]; None: three equal groups
    num_classes: int = 2
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resize: Literal["square", "shorter_side"] = "square"  # the official loader resizes to image_size x image_size
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # torchvision Resize default, as in the official code
    autocast: bool = True  # bf16 autocast on CUDA (the official code trains with AMP)
    seed: int = 0  # adapter init

    def validate(self) -> None:
        if not self.backbone.strip():
            raise ConfigError("model.backbone must name a timm ViT")
        for key in ("bottleneck", "spm_channels", "cross_attn_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} = {getattr(self, key)} must be >= 1")
        if self.num_classes != 2:
            raise ConfigError(f"model.num_classes = {self.num_classes}: the detector is real (0) vs fake (1)")
        if self.interaction_groups is not None:
            if not self.interaction_groups or any(len(g) != 2 or g[0] > g[1] for g in self.interaction_groups):
                raise ConfigError(f"model.interaction_groups = {self.interaction_groups} must be a list of "
                                  "[first, last] block ranges")
        Preprocess(mean=self.mean, std=self.std).validate()

    def to_tiny(self) -> "DeepFakeAdapterConfig":
        return replace(self, backbone=TINY_BACKBONE, pretrained=True, interaction_groups=None)


class BottleneckAdapter(nn.Module):
    """GBA: Linear down -> ReLU -> Linear up, times a learnable scalar; starts as a no-op."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down_proj = nn.Linear(width, bottleneck)
        self.up_proj = nn.Linear(bottleneck, width)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(torch.relu(self.down_proj(x))) * self.scale


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Convolutional branch giving stride-8/16/32 token maps at the ViT width."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(*_conv_bn_relu(3, c, 2), *_conv_bn_relu(c, c, 1), *_conv_bn_relu(c, c, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(c, 2 * c, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * c, 4 * c, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * c, 4 * c, 2))
        self.fc2 = nn.Conv2d(2 * c, width, 1)
        self.fc3 = nn.Conv2d(4 * c, width, 1)
        self.fc4 = nn.Conv2d(4 * c, width, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.conv2(self.stem(x))
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]


class CrossAttention(nn.Module):
    """LayerNorm(query), LayerNorm(feat) -> multi-head attention -> residual (optionally gated by gamma)."""

    def __init__(self, width: int, heads: int, gated: bool):
        super().__init__()
        self.query_norm = nn.LayerNorm(width, eps=1e-6)
        self.feat_norm = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.gamma = nn.Parameter(torch.zeros(width)) if gated else None

    def forward(self, query: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        kv = self.feat_norm(feat)
        out = self.attn(self.query_norm(query), kv, kv, need_weights=False)[0]
        return query + (self.gamma * out if self.gamma is not None else out)


class Interaction(nn.Module):
    """Injector (spatial -> ViT, gamma 0 at init) and extractor (ViT -> spatial) around a block group."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.injector = CrossAttention(width, heads, gated=True)
        self.extractor = CrossAttention(width, heads, gated=False)


def _official_init(module: nn.Module) -> None:
    """The official `_init_weights` for SPM and interactions: xavier Linear, He-normal (fan-out) convs."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def equal_groups(depth: int, n: int = 3) -> list[list[int]]:
    """[[0,3],[4,7],[8,11]] for 12 blocks: `n` contiguous groups, the remainder spread over the first ones."""
    if depth < n:
        raise ConfigError(f"the backbone has {depth} blocks; DeepFake-Adapter needs at least {n}")
    sizes = [depth // n + (1 if i < depth % n else 0) for i in range(n)]
    out, start = [], 0
    for size in sizes:
        out.append([start, start + size - 1])
        start += size
    return out


class DeepFakeAdapter(Detector):
    """Frozen timm ViT + GBA + LSA + BN/linear head; `forward` is the 2-class cross-entropy."""

    name: ClassVar[str] = "deepfake_adapter"
    config_class: ClassVar[type] = DeepFakeAdapterConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("gba.", "spm.", "level_embed", "interactions.", "head.")
    min_train_batch: ClassVar[int] = 2  # BatchNorm1d head; the official loop skips batches of 1

    def __init__(self, vit: nn.Module, config: DeepFakeAdapterConfig, backbone_name: str | None = None):
        from timm.models.vision_transformer import Block, VisionTransformer

        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"model.backbone = {config.backbone!r} is a {type(vit).__name__}, not a timm "
                              "VisionTransformer")
        odd = sorted({type(b).__name__ for b in vit.blocks if not isinstance(b, Block)})
        if odd:
            raise ConfigError(f"model.backbone = {config.backbone!r} uses {odd} blocks; the GBA needs timm's "
                              "pre-norm Block (attention then MLP)")
        width, depth = vit.embed_dim, len(vit.blocks)
        if width % config.cross_attn_heads:
            raise ConfigError(f"model.cross_attn_heads = {config.cross_attn_heads} does not divide the ViT "
                              f"width {width}")
        groups = config.interaction_groups or equal_groups(depth)
        covered = [i for a, b in groups for i in range(a, b + 1)]
        if covered != list(range(depth)):
            raise ConfigError(f"model.interaction_groups = {groups} must cover blocks 0..{depth - 1} in order")
        size = vit.patch_embed.img_size
        super().__init__(config, Preprocess(image_size=int(size[0]), resize=config.resize,
                                            interpolation=config.interpolation, mean=list(config.mean),
                                            std=list(config.std), train_augment="flip",
                                            source="DeepFake-Adapter config"))
        self.backbone_name = backbone_name or config.backbone
        self.groups = groups
        self.vit = vit
        vit.requires_grad_(False)
        self.fingerprint = weights_fingerprint(vit)  # frozen weights: computed once
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.gba = nn.ModuleList(BottleneckAdapter(width, config.bottleneck) for _ in range(depth))
            self.spm = SpatialPriorModule(config.spm_channels, width)
            self.level_embed = nn.Parameter(torch.randn(3, width))
            self.interactions = nn.ModuleList(Interaction(width, config.cross_attn_heads) for _ in groups)
            _official_init(self.spm)
            _official_init(self.interactions)
            for inter in self.interactions:  # the injector's gate starts closed (init_values = 0)
                nn.init.zeros_(inter.injector.gamma)
            linear = nn.Linear(width, config.num_classes)
            nn.init.trunc_normal_(linear.weight, std=0.01)
            self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), linear)
        self._checkpointing = False
        self.eval()  # built for scoring; the trainer switches to train()

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: DeepFakeAdapterConfig, device=None, tiny: bool = False) -> "DeepFakeAdapter":
        """Create the timm ViT named by `config.backbone` (weights loaded unless `pretrained` is false)."""
        import timm

        if tiny:
            config = config.to_tiny()
        config.validate()
        name = config.backbone
        if name.startswith("tiny:"):
            name = f"local-dir:{resolve_tiny(name.split(':', 1)[1])}"
        check_timm_name(name)
        try:
            vit = timm.create_model(name, pretrained=config.pretrained, num_classes=0)
        except (OSError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load model.backbone = {config.backbone!r}: {first}") from None
        detector = cls(vit, config)
        log.info("%s", detector.trainable_summary())
        return detector.to(pick_device(device))

    def enable_gradient_checkpointing(self) -> None:
        self._checkpointing = True

    # ----------------------------------------------------------------------------------------- parameters
    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable parameters per part."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"gba": count(self.gba), "spm": count(self.spm), "interactions": count(self.interactions),
                "level_embed": self.level_embed.numel(), "head": count(self.head)}

    def trainable_summary(self) -> str:
        parts = self.parameter_breakdown()
        frozen = sum(p.numel() for p in self.vit.parameters())
        return (f"trainable parameters: {self.num_trainable():,} = GBA {parts['gba']:,} + SPM {parts['spm']:,} + "
                f"interactions {parts['interactions']:,} + level embedding {parts['level_embed']:,} + head "
                f"{parts['head']:,} (frozen ViT: {frozen:,})")

    def identity(self) -> dict:
        v = self.vit
        return {"detector": self.name, "backbone": self.backbone_name,
                "architecture": {"class": type(v).__name__, "width": v.embed_dim, "depth": len(v.blocks),
                                 "patch_size": list(v.patch_embed.patch_size), "image_size": list(v.patch_embed.img_size),
                                 "prefix_tokens": v.num_prefix_tokens},
                "weights_sha256": self.fingerprint}

    def describe(self) -> dict:
        return {**super().describe(), "parameters": self.parameter_breakdown(), "interaction_groups": self.groups}

    # ----------------------------------------------------------------------------------------- forward
    def train(self, mode: bool = True) -> "DeepFakeAdapter":
        super().train(mode)
        self.vit.eval()  # frozen backbone: no dropout / drop-path
        return self

    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        blk, gba = self.vit.blocks[index], self.gba[index]
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))) + gba(x)

    def _run_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._block, index, x, use_reentrant=False)
        return self._block(index, x)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image feature: final LayerNorm of the spatial tokens, first token [B, width]."""
        v = self.vit
        levels = self.spm(pixels)
        c = torch.cat([lvl + self.level_embed[i] for i, lvl in enumerate(levels)], dim=1)
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(pixels))))
        for inter, (first, last) in zip(self.interactions, self.groups):
            x = inter.injector(x, c)
            for i in range(first, last + 1):
                x = self._run_block(i, x)
            c = inter.extractor(c, x)
        return v.norm(c)[:, 0]

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device)
        use_amp = self.config.autocast and pixels.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return self.head(self.forward_features(pixels)).float()

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over (real, fake); label 1 = fake."""
        logits = self.logits(pixels)
        return nn.functional.cross_entropy(logits, labels.to(logits.device).long())

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.check_method(method)
        return self.logits(pixels).softmax(-1)[:, 1].float().cpu()
