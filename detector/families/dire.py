"""DIRE (Wang et al., ICCV 2023, ZhendongWang6/DIRE): a ResNet-50 on the diffusion reconstruction error.

An image x (scaled to [-1, 1]) is inverted to noise by deterministic DDIM with an unconditional diffusion model and
reconstructed from that noise with DDIM again (20 steps each way, `model.steps`); the DIRE image is |x - recon|,
stored as the official `compute_dire.py` stores it: |x - recon| * 255 / 2 rounded to 8 bits. A ResNet-50 with one
logit (ImageNet init, every layer trained) classifies the DIRE image (random crop 224 + flip in training, centre crop
at test, ImageNet normalisation), binary cross-entropy, Adam 1e-4, batch 64.

The diffusion model is a diffusers pipeline with an unconditional `UNet2DModel` (`model.model_id`, loaded by
`DDPMPipeline.from_pretrained`): the inversion uses `DDIMInverseScheduler`, the reconstruction `DDIMScheduler`, both
made from the pipeline's scheduler config. The default `google/ddpm-bedroom-256` is the LSUN-Bedroom 256 px DDPM,
standing in for the ADM LSUN-Bedroom checkpoint (`lsun_bedroom.pt`) the official code uses, which has no diffusers
conversion; a UNet that predicts a learned variance (6 output channels, ADM-style) is read for its first three.

DIRE images are computed once per image and cached on disk (`DireCache`): one file per image, keyed by the SHA-256 of
the preprocessed image tensor, in a folder per setting (diffusion model, UNet weights hash, steps, preprocessing);
each file's metadata repeats the settings, and a file made with other settings or cut short is recomputed. Training
epochs after the first and every eval of the same images read the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from detector.base import CheckpointError, Detector, Preprocess, weights_fingerprint
from fakeforge.devices import pick_device
from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_DIFFUSION = "google/ddpm-bedroom-256"
DIRE_CACHE_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
__all__ = ["Dire", "DireCache", "DireConfig", "ddim_reconstruct"]


@dataclass
class DireConfig:
    """The diffusion model and DDIM steps, the image geometry and the ResNet-50 classifier."""

    model_id: str = DEFAULT_DIFFUSION  # diffusers DDPMPipeline id or folder, or "tiny:ddpm_uncond"
    steps: int = 20
    image_size: int = 256  # the diffusion model's resolution: shorter side resized (bicubic), centre crop
    crop_size: int = 224  # the classifier's input: random crop in training, centre crop at test
    classifier: str = "resnet50.tv_in1k"  # timm name (torchvision's ImageNet ResNet-50, the official init)
    pretrained: bool = True
    dire_cache: str | None = None  # null: $FAKEFORGE_FEATURE_CACHE (or ~/.cache/fakeforge/features)/dire
    seed: int = 0

    def validate(self) -> None:
        if not self.model_id.strip():
            raise ConfigError("model.model_id must not be empty")
        if self.steps < 1:
            raise ConfigError(f"model.steps = {self.steps} must be >= 1")
        if not 1 <= self.crop_size <= self.image_size:
            raise ConfigError(f"model.crop_size = {self.crop_size} must be within [1, model.image_size = "
                              f"{self.image_size}]")

    def to_tiny(self) -> DireConfig:
        return replace(self, model_id="tiny:ddpm_uncond", classifier="tiny:timm_resnet", image_size=32,
                       crop_size=28)


def _resolve(name: str) -> str:
    if name.startswith("tiny:"):
        from fakeforge.twins import ensure_tiny

        return str(ensure_tiny(name.split(":", 1)[1]))
    return name


def _eps(unet: nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = unet(z, t).sample
    return out[:, :3] if out.shape[1] == 6 else out  # learned-variance UNets: the noise prediction only


@torch.no_grad()
def ddim_reconstruct(unet: nn.Module, scheduler_config, x: torch.Tensor, steps: int) -> torch.Tensor:
    """DDIM inversion of x ([-1, 1]) to noise in `steps` steps, then DDIM sampling back: the reconstruction."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(steps)
    z = x
    for t in inverse.timesteps:
        z = inverse.step(_eps(unet, z, t), t, z).prev_sample
    forward = DDIMScheduler.from_config(scheduler_config)
    forward.set_timesteps(steps)
    for t in forward.timesteps:
        z = forward.step(_eps(unet, z, t), t, z, eta=0.0).prev_sample
    return z


class DireCache:
    """DIRE images (uint8 [3, S, S]) by image hash under `root/<settings key>/`; each file's metadata holds the
    settings. A file that does not read (cut short) or names other settings is recomputed and overwritten."""

    def __init__(self, root: str | Path, identity: dict):
        self.identity = json.dumps({"cache_version": DIRE_CACHE_VERSION, **identity}, sort_keys=True, default=str)
        self.folder = Path(root) / hashlib.sha256(self.identity.encode()).hexdigest()[:20]
        self.computed = 0  # images run through the diffusion model
        self.rebuilt: list[tuple[str, str]] = []  # (image hash, reason)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def read(self, key: str) -> torch.Tensor | None:
        from safetensors import SafetensorError, safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                same = (fh.metadata() or {}).get("identity") == self.identity
                tensor = fh.get_tensor("dire") if same else None
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            reason = f"unreadable ({type(exc).__name__}: cut short?)"
        else:
            if tensor is not None:
                return tensor
            reason = "made with other settings"
        log.warning("DIRE cache %s is %s: recomputing", path, reason)
        self.rebuilt.append((key, reason))
        return None

    def write(self, key: str, dire: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"dire": dire.contiguous()}, str(tmp), metadata={"identity": self.identity})
        tmp.replace(path)


def image_key(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class Dire(Detector):
    """|x - DDIM reconstruction| -> ResNet-50 (1 logit); the UNet frozen, the classifier fully trained."""

    name: ClassVar[str] = "dire"
    config_class: ClassVar[type] = DireConfig
    state_prefixes: ClassVar[tuple[str, ...]] = ("classifier.",)
    official_layout: ClassVar[str] = "cnnspot"  # released files: CNNSpot's ResNet keys (`dire_from_official`)
    min_train_batch: ClassVar[int] = 2  # BatchNorm

    def __init__(self, config: DireConfig, unet: nn.Module, scheduler_config, classifier: nn.Module):
        pre = Preprocess(image_size=config.image_size, resize="shorter_side", interpolation="bicubic",
                         mean=[0.5] * 3, std=[0.5] * 3, train_augment="none",
                         source="DIRE: [-1, 1] at the diffusion model's resolution")
        super().__init__(config, pre)
        self.unet, self.scheduler_config, self.classifier = unet, scheduler_config, classifier
        unet.requires_grad_(False)
        self.unet_fingerprint = weights_fingerprint(unet)
        root = Path(config.dire_cache) if config.dire_cache else _default_root()
        self.cache = DireCache(root, self.dire_identity())
        self.register_buffer("norm_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("norm_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def from_config(cls, config: DireConfig, device=None, tiny: bool = False) -> Dire:
        import timm
        from diffusers import DDPMPipeline

        from detector.families.frozen.backbones import check_timm_name

        if tiny:
            config = config.to_tiny()
        config.validate()
        name = config.classifier
        name = f"local-dir:{_resolve(name)}" if name.startswith("tiny:") else name
        check_timm_name(name)
        try:
            pipe = DDPMPipeline.from_pretrained(_resolve(config.model_id))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load model.model_id = {config.model_id!r}: {first}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the new 1-logit fc
            classifier = timm.create_model(name, pretrained=config.pretrained, num_classes=1)
        return cls(config, pipe.unet, pipe.scheduler.config, classifier).to(pick_device(device))

    @staticmethod
    def official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A released file's plain ResNet keys (conv1.weight, ..., fc.bias) -> this detector's (classifier.*)."""
        return {f"classifier.{k}": v for k, v in state.items()}

    def train(self, mode: bool = True) -> Dire:
        super().train(mode)
        self.unet.eval()
        return self

    # ----------------------------------------------------------------------------------------- DIRE images
    def dire_identity(self) -> dict:
        """What a DIRE image depends on: the diffusion model (name shown, weights hash), the steps, the pixels."""
        return {"model_id": self.config.model_id, "unet_weights_sha256": self.unet_fingerprint,
                "steps": self.config.steps, "preprocess": self.preprocess.key()}

    @torch.no_grad()
    def dire_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """DIRE images [B, 3, S, S] in [0, 1] (8-bit steps) of preprocessed images, from the cache where present."""
        keys = [image_key(p) for p in pixels]
        have = {k: self.cache.read(k) for k in dict.fromkeys(keys)}
        missing = [k for k, t in have.items() if t is None]  # each distinct image once, even if repeated in the batch
        if missing:
            first = {k: keys.index(k) for k in missing}
            x = pixels[[first[k] for k in missing]].to(self.device).float()
            recon = ddim_reconstruct(self.unet, self.scheduler_config, x, self.config.steps)
            dire = ((x - recon).abs() * 255.0 / 2.0).clamp(0, 255).round().to(torch.uint8).cpu()
            for k, d in zip(missing, dire):
                self.cache.write(k, d)
                have[k] = d
            self.cache.computed += len(missing)
        return torch.stack([have[k] for k in keys]).to(self.device).float() / 255.0

    def _crop(self, dire: torch.Tensor) -> torch.Tensor:
        c, s = self.config.crop_size, dire.shape[-1]
        if self.training:  # random crop + horizontal flip per image (torch's global RNG, seeded by the trainer)
            out = []
            for img in dire:
                top, left = (int(v) for v in torch.randint(0, s - c + 1, (2,)))
                img = img[:, top:top + c, left:left + c]
                out.append(img.flip(-1) if torch.rand(()) < 0.5 else img)
            return torch.stack(out)
        top = (s - c) // 2
        return dire[:, :, top:top + c, top:top + c]

    def logits(self, dire: torch.Tensor) -> torch.Tensor:
        x = (self._crop(dire) - self.norm_mean) / self.norm_std
        return self.classifier(x).squeeze(-1).float()

    # ----------------------------------------------------------------------------------------- use
    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self.logits(self.dire_images(pixels)),
                                                              labels.to(self.device).float())

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        return self.score_from_shared(self.shared_stage(pixels), method)

    def shared_stage_key(self) -> str:
        """DIRE detectors on the same diffusion model, steps and preprocessing share the DIRE images."""
        return "dire:" + self.cache.folder.name

    def shared_stage(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.dire_images(pixels)

    @torch.no_grad()
    def score_from_shared(self, stage: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.check_method(method)
        return torch.sigmoid(self.logits(stage)).cpu()

    # ----------------------------------------------------------------------------------------- identity
    def identity(self) -> dict:
        c = self.config
        return {"detector": self.name, "base_model": c.model_id, "unet_weights_sha256": self.unet_fingerprint,
                "steps": c.steps, "classifier": {"class": type(self.classifier).__name__,
                                                 "parameters": sum(p.numel() for p in self.classifier.parameters())}}

    def trainable_summary(self) -> str:
        frozen = sum(p.numel() for p in self.unet.parameters())
        return (f"trainable parameters: {self.num_trainable():,} (ResNet classifier on DIRE images; frozen UNet: "
                f"{frozen:,}, {self.config.steps} DDIM steps each way)")

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{source}: tensor {bad[0]} holds NaN/inf values")
        super().load_checkpoint_state(tensors, source)


def _default_root() -> Path:
    from detector.families.frozen.feature_cache import default_root

    return default_root() / "dire"


def dire_from_official(path: str | Path, config: DireConfig | None = None, device=None, tiny: bool = False) -> Dire:
    """A DIRE detector whose classifier holds a released DIRE weight file (`lsun_adm.pth`, ...).

    DIRE's trainer saves `{'model': ResNet-50 state dict with a 1-logit fc}`, the CNNSpot layout, so the file
    cannot say by its keys that it is DIRE's: this is called explicitly (`fakeforge convert-dire`). The file is
    read tensors-only (`detector.official_weights`); missing, unexpected or wrongly shaped tensors are refused.
    `config` names the diffusion model and steps the classifier was trained with (default: DireConfig's)."""
    from detector.official_weights import family_of, load_official_into, read_weight_file

    state = read_weight_file(path)
    found = family_of(state)
    if found != Dire.official_layout:
        raise CheckpointError(f"official DIRE weight file '{path}' is not a ResNet classifier with one logit (DIRE's "
                              f"released layout); its keys are those of {found or 'no known detector'!r}")
    detector = Dire.from_config(replace(config or DireConfig(), pretrained=False), device=device, tiny=tiny)
    load_official_into(detector, path, state)  # strict: missing, unexpected, wrongly shaped tensors refused
    return detector.eval()
