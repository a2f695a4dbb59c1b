"""Surrogate classifiers: a timm model by name (or a local timm folder) with its own preprocessing.

`Surrogate` is an `nn.Module` that takes (B, 3, H, W) images in [0, 1] of any size, resizes them
to the model's input size with the model's interpolation (only when the size differs; antialiased,
differentiable), normalises them with the model's mean/std, and returns logits. Attacks therefore
work in pixel space and never see normalisation.

Names: a timm registry name (`resnet50`, `vit_base_patch16_224`, `inception_v3.tv_in1k`, ...), whose
pretrained weights come from the Hugging Face hub on first use; `hf-hub:org/repo`; `local-dir:/path`
or a plain folder path holding timm's `config.json` + `model.safetensors` (what `timm.models.save_for_hf`
writes, and what the tiny twin is).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fakeforge.config import ConfigError


def surrogate_spec(name: str) -> str:
    """Normalise a surrogate name for `timm.create_model`; ConfigError (with close matches) if timm does
    not know it. Imports timm but loads no weights."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"surrogate = {name!r} must be a timm model name or a folder")
    if name.startswith("hf-hub:"):
        return name
    path = name[len("local-dir:"):] if name.startswith("local-dir:") else name
    if name.startswith("local-dir:") or "/" in name or Path(name).is_dir():
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"surrogate folder '{folder}' has no timm config.json (save one with "
                              "timm.models.save_for_hf(model, folder, safe_serialization=True))")
        return f"local-dir:{folder.resolve()}"
    import timm

    if timm.is_model(name.split(".", 1)[0]):
        return name
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"unknown surrogate '{name}': timm does not know this model{hint} "
                      "(`timm.list_models('*pattern*')` lists them)")


def label_space(model: nn.Module) -> str | None:
    """'imagenet-1k' for a 1000-class model (timm's ImageNet label order), else None."""
    return "imagenet-1k" if getattr(model, "num_classes", None) == 1000 else None


class Surrogate(nn.Module):
    """A classifier in [0, 1] pixel space: resize (if needed) -> normalise -> timm model -> logits."""

    def __init__(self, model: nn.Module, mean, std, input_size: tuple[int, int], interpolation: str = "bilinear",
                 name: str = ""):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(input_size)
        self.interpolation = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        self.name = name

    @classmethod
    def load(cls, name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Surrogate:
        """Create the timm model with its pretrained weights and its data config; eval mode, no grads."""
        import timm

        spec = surrogate_spec(name)
        try:
            model = timm.create_model(spec, pretrained=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"surrogate '{name}': cannot load its pretrained weights ({type(exc).__name__}: "
                              f"{str(exc)[:300]}). Registry names download from the Hugging Face hub on first "
                              "use (run once online, or set HF_HOME to a cache that has them); or point it at "
                              "a local timm folder (local-dir:/path with config.json + model.safetensors)") from None
        cfg = timm.data.resolve_model_data_config(model)
        model.eval().requires_grad_(False)
        sur = cls(model, cfg["mean"], cfg["std"], cfg["input_size"][1:], cfg.get("interpolation", "bilinear"), name)
        return sur.to(device=device).to_dtype(dtype).eval()

    def to_dtype(self, dtype: torch.dtype) -> Surrogate:
        self.model.to(dtype=dtype)
        self.dtype = dtype
        return self

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images of any size -> the model's input size and normalisation (differentiable)."""
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=False, antialias=True)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.to(getattr(self, "dtype", torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x)).float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pre-logits) features, flattened: what feature-collision poisons are steered in."""
        feats = self.model.forward_features(self.preprocess(x))
        return self.model.forward_head(feats, pre_logits=True).flatten(1).float()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Arg-max classes of a batch (chunked)."""
        return torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
