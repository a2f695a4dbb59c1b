"""Frozen image backbones for the feature detectors: open_clip, transformers CLIP and timm, behind one spec string.

Backbone specs:

| spec | loads with |
|---|---|
| `open_clip:ViT-L-14@openai` (model@pretrained tag or weights file) | `open_clip.create_model(name, pretrained=tag)` |
| `open_clip:local-dir:/folder` | `open_clip.create_model("local-dir:/folder")` (open_clip_config.json + weights) |
| `transformers:openai/clip-vit-large-patch14` or `transformers:/folder` | `CLIPVisionModelWithProjection.from_pretrained` |
| `timm:resnet50.a1_in1k`, `timm:local-dir:/folder`, `timm:hf-hub:org/name` | `timm.create_model(name, pretrained=True, num_classes=0)` |
| `tiny:open_clip_vit`, `tiny:hf_clip_vit`, `tiny:timm_vit`, `tiny:timm_resnet` | the tiny twins (`fakeforge tiny-models`), through the same loaders |

Features: CLIP models give the projected image embedding (`encode_image`; 768-d for ViT-L/14, 512 for
ViT-B/16); timm models the pooled pre-logits features (2048 for ResNet-50, 768 for ViT-B). The
preprocessing (size, resize rule, crop, interpolation, mean/std) is read from each library's own config
of the loaded model, so it always matches the weights.
"""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from detector.base import Preprocess, weights_fingerprint
from detector.sharing import remember, shared, sharing_loads
from fakeforge.config import ConfigError
from fakeforge.devices import pick_device, pick_dtype

log = logging.getLogger(__name__)

LIBRARIES = ("open_clip", "transformers", "timm")
# tiny twin name -> library that loads it
TINY_BACKBONES = {"open_clip_vit": "open_clip", "hf_clip_vit": "transformers", "timm_vit": "timm",
                  "timm_resnet": "timm"}
_LOCAL_PREFIXES = ("local-dir:", "hf-hub:")
# one loaded backbone per (spec, device, dtype) while several detectors load together
sharing_backbones = sharing_loads


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone spec string."""

    text: str
    library: str
    name: str  # model name / hub id / "local-dir:..." / tiny twin name
    pretrained: str | None = None  # open_clip pretrained tag or file
    tiny: bool = False


def parse_backbone(spec: str) -> BackboneSpec:
    """Split "library:name[@pretrained]" (or "tiny:twin"); ConfigError naming the value otherwise."""
    text = str(spec).strip()
    library, sep, rest = text.partition(":")
    if library == "tiny":
        if rest not in TINY_BACKBONES:
            raise ConfigError(f"backbone = {text!r}: unknown tiny backbone {rest!r}; "
                              f"valid: {', '.join('tiny:' + n for n in TINY_BACKBONES)}")
        return BackboneSpec(text, TINY_BACKBONES[rest], rest, tiny=True)
    if not sep or library not in LIBRARIES or not rest:
        raise ConfigError(f"backbone = {text!r} must look like LIBRARY:NAME with LIBRARY one of {list(LIBRARIES)} "
                          "(e.g. open_clip:ViT-L-14@openai, transformers:openai/clip-vit-large-patch14, "
                          "timm:resnet50.a1_in1k) or tiny:TWIN")
    pretrained = None
    if library == "open_clip" and not rest.startswith(_LOCAL_PREFIXES) and "@" in rest:
        rest, pretrained = rest.split("@", 1)
    return BackboneSpec(text, library, rest, pretrained)


def tiny_backbone_for(spec: str) -> str:
    """The tiny twin standing in for a real backbone spec (`--tiny`)."""
    parsed = parse_backbone(spec)
    if parsed.tiny:
        return parsed.text
    if parsed.library == "open_clip":
        return "tiny:open_clip_vit"
    if parsed.library == "transformers":
        return "tiny:hf_clip_vit"
    return "tiny:timm_resnet" if "resnet" in parsed.name.lower() else "tiny:timm_vit"


def _close(name: str, candidates: list[str], n: int = 5) -> str:
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    return f"; close matches: {', '.join(close)}" if close else ""


def check_timm_name(name: str) -> None:
    """ConfigError listing close matches unless `name` (architecture[.pretrained_tag]) exists in timm."""
    if name.startswith(_LOCAL_PREFIXES):
        return
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise ConfigError(f"unknown timm model {name!r}{_close(arch, timm.list_models())}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        raise ConfigError(f"timm model {arch!r} has no pretrained tag {tag!r}"
                          f"{_close(name, timm.list_pretrained(f'{arch}.*'))}")


def check_open_clip_name(name: str, pretrained: str | None) -> None:
    """ConfigError listing close matches unless open_clip knows the model and the pretrained tag/file."""
    if name.startswith(_LOCAL_PREFIXES):
        return
    import open_clip

    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r}{_close(name, open_clip.list_models())}")
    if pretrained and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ConfigError(f"open_clip model {name!r} has no pretrained tag {pretrained!r} (and no such file)"
                              f"{_close(pretrained, tags)}; tags: {', '.join(tags)}")


def check_backbone(spec: str) -> BackboneSpec:
    """Parse and check a spec before anything loads."""
    parsed = parse_backbone(spec)
    if parsed.tiny:
        return parsed
    if parsed.library == "timm":
        check_timm_name(parsed.name)
    elif parsed.library == "open_clip":
        check_open_clip_name(parsed.name, parsed.pretrained)
    return parsed


def resolve_tiny(twin: str) -> Path:
    """Folder of a tiny twin (built on first use)."""
    from fakeforge.twins import ensure_tiny

    return ensure_tiny(twin)


# ------------------------------------------------------------------------------------------- preprocess
def _interp(value) -> str:
    table = {2: "bilinear", 3: "bicubic", 0: "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
             "nearest": "nearest"}
    key = getattr(value, "value", value)
    return table.get(key if not isinstance(key, str) else key.lower(), "bicubic")


def _size(value) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value[-2:])) != 1:
            raise ConfigError(f"non-square input size {tuple(value)} is not supported")
        return int(value[-1])
    return int(value)


def preprocess_open_clip(model) -> Preprocess:
    from open_clip.model import get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(model)
    mode = cfg.get("resize_mode", "shortest")
    return Preprocess(image_size=_size(cfg["size"]), resize="square" if mode == "squash" else "shorter_side",
                      interpolation=_interp(cfg.get("interpolation", "bicubic")), mean=list(cfg["mean"]),
                      std=list(cfg["std"]), train_augment="none", source="open_clip preprocess_cfg")


def preprocess_hf_clip(processor) -> Preprocess:
    size, crop = processor.size, processor.crop_size
    short = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    crop_h = getattr(crop, "height", None) if not isinstance(crop, dict) else crop.get("height")
    crop_h = int(crop_h or short)
    return Preprocess(image_size=crop_h, resize="shorter_side", crop_pct=crop_h / int(short or crop_h),
                      interpolation=_interp(processor.resample), mean=list(processor.image_mean),
                      std=list(processor.image_std), train_augment="none", source="CLIPImageProcessor")


def preprocess_timm(model) -> Preprocess:
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    return Preprocess(image_size=_size(cfg["input_size"]),
                      resize="square" if cfg.get("crop_mode") == "squash" else "shorter_side",
                      crop_pct=float(cfg.get("crop_pct", 1.0)), interpolation=_interp(cfg.get("interpolation")),
                      mean=list(cfg["mean"]), std=list(cfg["std"]), train_augment="none",
                      source="timm pretrained_cfg")


# ------------------------------------------------------------------------------------------- loading
def _load_open_clip(spec: BackboneSpec) -> tuple[nn.Module, Preprocess, int]:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    name = f"local-dir:{resolve_tiny(spec.name)}" if spec.tiny else spec.name
    kwargs = {}
    if spec.pretrained and (get_pretrained_cfg(name, spec.pretrained) or {}).get("quick_gelu"):
        kwargs["force_quick_gelu"] = True  # e.g. OpenAI weights were trained with QuickGELU
    model = open_clip.create_model(name, pretrained=spec.pretrained, device="cpu", **kwargs)
    visual = model.visual
    pre = preprocess_open_clip(model)
    dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[1])
    del model  # only the image tower is kept
    return visual, pre, dim


class _HFImageEmbeds(nn.Module):
    """CLIPVisionModelWithProjection -> its projected `image_embeds`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


def _load_transformers(spec: BackboneSpec) -> tuple[nn.Module, Preprocess, int]:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    path = str(resolve_tiny(spec.name)) if spec.tiny else spec.name
    model = CLIPVisionModelWithProjection.from_pretrained(path, dtype=torch.float32)
    processor = CLIPImageProcessor.from_pretrained(path)
    return _HFImageEmbeds(model), preprocess_hf_clip(processor), int(model.config.projection_dim)


def _load_timm(spec: BackboneSpec) -> tuple[nn.Module, Preprocess, int]:
    import timm

    name = f"local-dir:{resolve_tiny(spec.name)}" if spec.tiny else spec.name
    model = timm.create_model(name, pretrained=True, num_classes=0)
    return model, preprocess_timm(model), int(model.num_features)


_LOADERS = {"open_clip": _load_open_clip, "transformers": _load_transformers, "timm": _load_timm}


class FeatureBackbone(nn.Module):
    """A frozen image model returning one feature vector per image, with its preprocessing and identity."""

    def __init__(self, spec: str, library: str, model: nn.Module, preprocess: Preprocess, feature_dim: int):
        super().__init__()
        self.spec, self.library, self.model = spec, library, model
        self.preprocess, self.feature_dim = preprocess, feature_dim
        self.fingerprint = weights_fingerprint(model)  # on the CPU, before any dtype cast
        self.architecture = {"library": library, "class": type(model).__name__ if library != "transformers"
                             else type(model.model).__name__, "feature_dim": feature_dim,
                             "parameters": sum(p.numel() for p in model.parameters())}
        model.requires_grad_(False)
        model.eval()

    @classmethod
    def load(cls, spec: str, device: str | torch.device | None = None, dtype: str = "auto") -> "FeatureBackbone":
        """Load the backbone named by `spec` (checked first; unknown names list close matches)."""
        parsed = check_backbone(spec)
        device = pick_device(device)
        share_key = (parsed.text, str(device), str(pick_dtype(dtype, device)))
        if shared(share_key) is not None:
            return shared(share_key)
        try:
            model, pre, dim = _LOADERS[parsed.library](parsed)
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load backbone {spec!r}: {first}") from None
        backbone = cls(parsed.text, parsed.library, model, pre, dim)
        backbone.to(device=device, dtype=pick_dtype(dtype, device))
        remember(share_key, backbone)
        log.info("backbone %s: %s, %d-d features, weights %s", spec, backbone.architecture["class"], dim,
                 backbone.fingerprint[:12])
        return backbone

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> "FeatureBackbone":
        return super().train(False)  # frozen: always inference mode

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.to(self.device, self.dtype))

    def identity(self) -> dict:
        """Name (informational), architecture and weights hash: what a cache or checkpoint must match."""
        return {"backbone": self.spec, "architecture": self.architecture, "weights_sha256": self.fingerprint,
                "feature_dim": self.feature_dim}
