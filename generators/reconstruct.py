"""Reconstructions: each real image turned into its fake twin, aligned pixel for pixel, same size, same id.

Modes (recipes and their sources):

* `vae`: the checkpoint's VAE encodes and decodes the image (`AutoencoderKL` from the model's `vae`
  sub-folder; the latent's mode, or a seeded sample with `sample_latent: true`). FakeCOCO's sd-vae sets
  and B-Free's autoencoder-reconstructed fakes are made this way (papers.md: FakeCOCO, B-Free).
* `inpaint_empty`: DRCT's "DR" sets (Chen et al., ICML 2024; `data/diffusion_rec.py` of
  github.com/beibuwandeluori/DRCT): an inpainting pipeline with an all-zero mask (nothing to repaint),
  an empty prompt, 50 steps, guidance 7.5, at the image's own size padded with zeros to a multiple of 8
  and cropped back (DRCT caps the side at 1024 by center-cropping; we downscale instead, so the output
  keeps the whole source, and resize back).
* `img2img`: SDEdit with a `strength` (the caption as prompt unless `prompt: empty`).

The working copy is the source at its own scale (longer side capped at `max_size`), padded on the right
and bottom to a multiple of 8; the output is cropped to the unpadded area and resized back to the exact
source size when it was capped. Every result records the mode, the padding and the working size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError
from generators.base import GenResult, array_to_pil, torch_dtype
from generators.diffusers_common import load_pipeline, quiet_hub_progress, seeded_generators
from generators.source_image import Prepared, SourceImageConfig, SourceImageGenerator, fit_size

AUTO_CLASS = {"inpaint_empty": "AutoPipelineForInpainting", "img2img": "AutoPipelineForImage2Image"}


@dataclass
class ReconstructConfig(SourceImageConfig):
    """mode: vae | inpaint_empty | img2img (see the module docstring).

    prompt: "empty" or "caption"; default: empty for inpaint_empty (DRCT), caption for img2img.
    strength: img2img's fraction of the noise schedule; inpaint_empty uses the pipeline's 1.0 as DRCT does.
    sample_latent: vae mode draws the latent from the posterior (seeded) instead of taking its mode.
    vae_subfolder: where the VAE sits inside model_id (None: model_id is the VAE folder itself).
    """

    mode: Literal["vae", "inpaint_empty", "img2img"] = "inpaint_empty"
    prompt: Literal["empty", "caption"] | None = None
    strength: float = 1.0
    sample_latent: bool = False
    vae_subfolder: str | None = "vae"
    working_size: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"generator.strength = {self.strength} must be within (0, 1]")
        if self.mode == "vae" and (self.lora or self.prompt):
            raise ConfigError("generator.mode = vae runs only the VAE: lora and prompt do not apply")

    @property
    def prompt_kind(self) -> str:
        return self.prompt or ("empty" if self.mode == "inpaint_empty" else "caption")


def pad_to_multiple(img: Image.Image, multiple: int = 8) -> tuple[Image.Image, tuple[int, int]]:
    """Zero-pad on the right and bottom to a multiple of `multiple` (DRCT's layout); returns (image, (dw, dh))."""
    w, h = img.size
    W, H = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if (W, H) == (w, h):
        return img, (0, 0)
    canvas = Image.new("RGB", (W, H))
    canvas.paste(img, (0, 0))
    return canvas, (W - w, H - h)


class Reconstruct(SourceImageGenerator):
    """The real image through a VAE, an empty-mask inpainting pipeline or SDEdit; same size, same id."""

    config_class = ReconstructConfig

    def load(self) -> None:
        cfg = self.config
        if cfg.mode != "vae":
            self.pipe = load_pipeline(cfg, self.device, AUTO_CLASS[cfg.mode])
            self.vae = None
            return
        from diffusers import AutoencoderKL
        from diffusers.image_processor import VaeImageProcessor

        quiet_hub_progress()
        kwargs = {"subfolder": cfg.vae_subfolder} if cfg.vae_subfolder else {}
        dtype = torch_dtype(cfg.dtype, self.device, cfg.prefer_dtype)
        self.vae = AutoencoderKL.from_pretrained(cfg.model_id, torch_dtype=dtype, **kwargs).eval().to(self.device)
        self.memory_applied = [f for f in ("vae_tiling", "vae_slicing") if getattr(cfg.memory, f)]
        if cfg.memory.vae_tiling:
            self.vae.enable_tiling()
        if cfg.memory.vae_slicing:
            self.vae.enable_slicing()
        self.memory_unused = ([f"offload={cfg.memory.offload}"] if cfg.memory.offload != "none" else []) + (
            ["attention_slicing"] if cfg.memory.attention_slicing else [])  # a lone VAE: nothing to offload
        self.processor = VaeImageProcessor(vae_scale_factor=8)
        self.pipe = None

    def prepare(self, req) -> Prepared:
        cfg = self.config
        prep = super().prepare(req)
        w, h = fit_size(prep.source.width, prep.source.height, None, cfg.max_size, 1)
        work = prep.source if (w, h) == prep.source.size else prep.source.resize((w, h), Image.BICUBIC)
        padded, pad = pad_to_multiple(work)
        prep.work = padded
        prep.extra.update(working_size=[w, h], padding=list(pad), mode=cfg.mode)
        return prep

    def call_group(self, group: list[Prepared]) -> np.ndarray:
        cfg = self.config
        if cfg.mode == "vae":
            return self._vae_roundtrip(group)
        reqs = [p.req for p in group]
        kwargs = self.common_call_kwargs(reqs)
        if cfg.prompt_kind == "empty":
            kwargs["prompt"] = [""] * len(group)
        kwargs["image"] = [p.work for p in group]
        kwargs["strength"] = cfg.strength
        if cfg.mode == "inpaint_empty":
            w, h = group[0].work.size
            kwargs.update(mask_image=[Image.new("L", (w, h), 0) for _ in group], height=h, width=w)
        return self.pipe(**kwargs).images

    def _vae_roundtrip(self, group: list[Prepared]) -> np.ndarray:
        import torch

        vae = self.vae
        x = self.processor.preprocess([p.work for p in group]).to(vae.device, vae.dtype)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            if self.config.sample_latent:
                gens = seeded_generators([p.req.seed for p in group])
                noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens])
                latents = dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)
            else:
                latents = dist.mode()
            out = vae.decode(latents).sample
        return self.processor.postprocess(out.float(), output_type="np")

    def finish(self, prep: Prepared, arr: np.ndarray) -> GenResult:
        w, h = prep.extra["working_size"]
        img = array_to_pil(arr).crop((0, 0, w, h))
        if img.size != prep.source.size:
            img = img.resize(prep.source.size, Image.BICUBIC)
        extra = dict(prep.extra)
        if self.config.mode != "vae":
            extra["prompt_kind"] = self.config.prompt_kind
        return GenResult(image=img, extra=extra)

    def settings(self) -> dict:
        data = super().settings()
        if self.config.mode == "vae":
            data["memory_applied"] = getattr(self, "memory_applied", [])
            data["memory_unused"] = getattr(self, "memory_unused", [])
        return data
