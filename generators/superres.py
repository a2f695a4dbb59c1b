"""Super-resolution fakes: the shared degrade-and-restore plumbing, the diffusers upscalers (SD x4 upscaler,
SD latent x2 upscaler) and the base of the implicit-function networks (LIIF, LTE).

A super-resolution fake is made by degrading the real image and restoring it: the source is
downscaled by the model's factor (bicubic) and upscaled back with the caption as prompt.

Output size (decided here, shared with LIIF): the upscaler returns exactly `scale` x the low-res
size, and the low-res size must be a multiple of the pipeline's VAE factor (4 for the x4
upscaler), for the latent upscaler also of its UNet's downsampling (8 x 8 = 64 px: its K-blocks
cannot pad odd latents). So the source is first centre-cropped to a multiple of
`scale * that multiple` (x4 upscaler: 16 px, at most 15 px cut per side; latent x2 upscaler:
128 px, up to 127 px cut), recorded as `sr_crop_box`, and the output has exactly that cropped
size = `scale` x the low-res size. A source longer than `max_size` is first downscaled to fit
(recorded as `sr_resized_from`): the output is then the exact SR size of that working copy, not
the source size (resizing an SR output would blur away the artefacts the set is about).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError
from generators.base import GenRequest, GenResult, SampleError, array_to_pil
from generators.checkpoint_file import CheckpointFileConfig, CheckpointFileGenerator
from generators.diffusers_common import DiffusersConfig, DiffusersGenerator
from generators.source_image import (
    PREPARE_ERRORS,
    check_min_size,
    check_size_limits,
    describe,
    fit_size,
    group_by_size,
    source_rgb,
)

#: diffusers upscaler pipelines and their native factors.
NATIVE_SCALES = {"StableDiffusionUpscalePipeline": 4, "StableDiffusionLatentUpscalePipeline": 2}


@dataclass
class SRPlan:
    """Geometry of one SR sample: the HR working copy, the centre crop, the low-res input and the output size."""

    hr: Image.Image
    crop_box: tuple[int, int, int, int]
    lr: Image.Image
    out_size: tuple[int, int]
    extra: dict


def plan_sr(src: Image.Image, scale: float, lr_multiple: int, max_size: int | None) -> SRPlan:
    """Cap the source at `max_size`, crop it so the low-res size is a multiple of `lr_multiple` and the
    output exactly `scale` x low-res, and make the low-res input (bicubic). SampleError if too small."""
    extra: dict = {"source_size": [src.width, src.height], "sr_scale": scale}
    hr = src
    if max_size and max(src.size) > max_size:
        hr = src.resize(fit_size(src.width, src.height, None, max_size), Image.BICUBIC)
        extra["sr_resized_from"] = [src.width, src.height]
    lw = int(hr.width / scale) // lr_multiple * lr_multiple
    lh = int(hr.height / scale) // lr_multiple * lr_multiple
    if lw < lr_multiple or lh < lr_multiple:
        raise SampleError(f"source {hr.width}x{hr.height} is too small for x{scale} super-resolution "
                          f"(low-res side must be >= {lr_multiple})")
    ow, oh = round(lw * scale), round(lh * scale)
    left, top = (hr.width - ow) // 2, (hr.height - oh) // 2
    box = (left, top, left + ow, top + oh)
    target = hr.crop(box) if box != (0, 0, hr.width, hr.height) else hr
    lr = target.resize((lw, lh), Image.BICUBIC)
    extra.update(sr_crop_box=list(box), lr_size=[lw, lh], output_size=[ow, oh])
    return SRPlan(target, box, lr, (ow, oh), extra)


def output_to_result(arr: np.ndarray, plan: SRPlan) -> GenResult:
    """Model output -> result; an output of the wrong size is a per-sample error, never resized silently."""
    img = array_to_pil(arr)
    if img.size != plan.out_size:
        raise SampleError(f"upscaler returned {img.width}x{img.height}, expected exactly "
                          f"{plan.out_size[0]}x{plan.out_size[1]}")
    return GenResult(image=img, extra=plan.extra)


@dataclass
class UpscaleConfig(DiffusersConfig):
    """Diffusers upscaler settings.

    scale: None = the pipeline's native factor (x4 upscaler: 4, latent upscaler: 2); if set it must match.
    noise_level: noise added to the low-res input (x4 upscaler only; diffusers default 20).
    min_size: sources whose shorter side is smaller are skipped with a recorded reason.
    max_size: cap on the longer side of the high-res working copy (= the output).
    """

    scale: int | None = None
    noise_level: int = 20
    min_size: int = 64
    max_size: int = 2048

    def validate(self) -> None:
        super().validate()
        if self.height is not None or self.width is not None:
            raise ConfigError(f"generator.height/width = {self.height}/{self.width}: the upscaler's output size "
                              "follows from the source; leave them unset")
        if self.scale is not None and self.scale not in (2, 4):
            raise ConfigError(f"generator.scale = {self.scale} must be 4 (x4 upscaler), 2 (latent upscaler) or null")
        if self.noise_level < 0:
            raise ConfigError(f"generator.noise_level = {self.noise_level} must be >= 0")
        check_size_limits(self.min_size, self.max_size, max_floor=16)

    def check(self) -> None:
        super().check()
        if self.pipeline:
            _native_scale(self.pipeline, self.scale)


def _native_scale(pipeline: str, wanted: int | None) -> int:
    if pipeline not in NATIVE_SCALES:
        raise ConfigError(f"generator.pipeline = '{pipeline}' is not a supported upscaler; "
                          f"choose from {', '.join(NATIVE_SCALES)}")
    native = NATIVE_SCALES[pipeline]
    if wanted is not None and wanted != native:
        raise ConfigError(f"generator.scale = {wanted} does not match {pipeline} (x{native})")
    return native


def lr_multiple(pipe) -> int:
    """What the low-res side must be a multiple of: the VAE factor; for the latent upscaler also its
    K-block UNet's downsampling (it cannot pad odd latents), i.e. 8 x 8 = 64 px."""
    m = int(getattr(pipe, "vae_scale_factor", 8))
    if type(pipe).__name__ == "StableDiffusionLatentUpscalePipeline":
        m *= 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return m


class DiffusersUpscale(DiffusersGenerator):
    """Degrade-and-restore super-resolution with the SD x4 upscaler or the SD latent x2 upscaler."""

    config_class = UpscaleConfig
    auto_class = "DiffusionPipeline"  # upscalers have no Auto class: model_index.json names the pipeline
    needs_source_image = True

    def load(self) -> None:
        super().load()
        self.scale = _native_scale(type(self.pipe).__name__, self.config.scale)
        self.lr_multiple = lr_multiple(self.pipe)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        plans: list[tuple[int, SRPlan]] = []
        for i, req in enumerate(requests):
            try:
                src = source_rgb(req)
                check_min_size(src, self.config.min_size)
                plan = plan_sr(src, self.scale, self.lr_multiple, self.config.max_size)
                plan.extra["source_image_id"] = req.source_image_id or str(req.meta.get("image_id", ""))
                plans.append((i, plan))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        for idx in group_by_size(plans, lambda item: item[1].lr.size):
            group = [plans[j] for j in idx]
            kwargs = self.common_call_kwargs([requests[i] for i, _ in group])
            kwargs["image"] = [p.lr for _, p in group]
            if self.scale == 4:
                kwargs["noise_level"] = self.config.noise_level
            images = self.pipe(**kwargs).images
            if len(images) != len(group):
                raise RuntimeError(f"pipeline returned {len(images)} images for {len(group)} inputs")
            for (i, plan), arr in zip(group, images):
                try:
                    results[i] = output_to_result(arr, plan)
                except SampleError as exc:
                    results[i] = GenResult(error=str(exc))
        return results  # type: ignore[return-value]


def exact_sr_size(w: int, h: int, scale: float, lr_multiple: int = 1) -> tuple[int, int]:
    """The output size `plan_sr` gives for a w x h source (no max_size cap)."""
    lw = int(w / scale) // lr_multiple * lr_multiple
    lh = int(h / scale) // lr_multiple * lr_multiple
    return round(lw * scale), round(lh * scale)


# ------------------------------------------------------------------ implicit-function SR networks (LIIF, LTE)


def read_official_checkpoint(path: Path, model_name: str, help: str, meta_key: str) -> tuple[dict, dict]:
    """(state dict, official `args`) of a LIIF-family checkpoint: the official `torch.save`d
    `{'model': {'name', 'args', 'sd'}, ...}`, a bare state dict, or `.safetensors` (the official `args`
    as JSON in its metadata under `meta_key`). Loads with `weights_only=True`: a pickle that needs code,
    a text file or another model's file raises ConfigError naming the file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            args = json.loads(meta[meta_key]) if meta_key in meta else {}
        except Exception as exc:  # noqa: BLE001 - wrong kind of file
            raise ConfigError(f"'{path}' is not a readable {model_name.upper()} safetensors file: {exc}") from None
        return sd, args
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickles with code, text files, truncated files
        raise ConfigError(f"'{path}' is not a {model_name.upper()} checkpoint: torch.load(weights_only=True) failed "
                          f"({type(exc).__name__}: {str(exc)[:200]}). {help}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "sd" in obj["model"]:
        spec = obj["model"]
        if spec.get("name", model_name) != model_name:
            raise ConfigError(f"'{path}' holds a '{spec.get('name')}' model, not '{model_name}'")
        return dict(spec["sd"]), dict(spec.get("args") or {})
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    raise ConfigError(f"'{path}' is not a {model_name.upper()} checkpoint: expected {{'model': {{'name': "
                      f"'{model_name}', 'args': ..., 'sd': state_dict}}}} or a state dict, got {type(obj).__name__}. "
                      f"{help}")


def key_mismatch_message(path, model_name: str, expected: list[str], found: list[str]) -> str:
    """A one-line message naming the keys a network expects but a file lacks, and the unexpected ones."""
    missing = [k for k in expected if k not in set(found)]
    extra = [k for k in found if k not in set(expected)]

    def show(keys):
        return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "") if keys else "none"

    return (f"'{path}': the keys do not fit the {model_name} network: expected but missing: {show(missing)}; "
            f"found but unexpected: {show(extra)}")


@dataclass
class ImplicitSRConfig(CheckpointFileConfig):
    """Settings shared by the implicit-function SR networks (LIIF, LTE).

    model_path: the .pth/.safetensors checkpoint (or a folder holding `checkpoint_name`); else model_id
        (set by --tiny), else the environment variable `checkpoint_env`.
    scale: super-resolution factor (any value > 1; x4 as in the AntifakePrompt "SR" sets).
    eval_bsize: pixels queried per MLP call (bounds memory; the official demos use 30000).
    min_size / max_size: skip sources whose shorter side is below min_size; downscale sources whose
        longer side exceeds max_size before degrading.
    """

    scale: float = 4.0
    eval_bsize: int = 30000
    min_size: int = 16
    max_size: int = 2048

    def validate(self) -> None:
        super().validate()
        if not self.scale > 1.0:
            raise ConfigError(f"generator.scale = {self.scale} must be > 1")
        if self.eval_bsize < 1:
            raise ConfigError(f"generator.eval_bsize = {self.eval_bsize} must be >= 1")
        check_size_limits(self.min_size, self.max_size)


class ImplicitSuperRes(CheckpointFileGenerator):
    """Degrade-and-restore SR with a network queried at continuous coordinates (`gen_feat` / `query_rgb`).

    Subclasses load `self.model` in `load()` and may override `render` (e.g. LTE's cell clipping)."""

    config_class = ImplicitSRConfig
    needs_source_image = True

    def render(self, lr, out_h: int, out_w: int):
        """Low-res batch (B,3,h,w in [0,1]) -> (B,3,out_h,out_w) in [0,1]."""
        from generators.liif_net import upsample

        return upsample(self.model, lr, out_h, out_w, self.config.eval_bsize)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch

        cfg = self.config
        results: list[GenResult | None] = [None] * len(requests)
        plans = []
        for i, req in enumerate(requests):
            try:
                src = source_rgb(req)
                check_min_size(src, cfg.min_size)
                plan = plan_sr(src, cfg.scale, 1, cfg.max_size)
                plan.extra["source_image_id"] = req.source_image_id or str(req.meta.get("image_id", ""))
                plans.append((i, plan))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        for idx in group_by_size(plans, lambda item: (item[1].lr.size, item[1].out_size)):
            group = [plans[j] for j in idx]
            lr = torch.stack([torch.from_numpy(np.array(p.lr)).permute(2, 0, 1) for _, p in group])
            lr = lr.to(self.device, torch.float32) / 255.0
            ow, oh = group[0][1].out_size
            out = self.render(lr, oh, ow).permute(0, 2, 3, 1).cpu().numpy()
            for (i, plan), arr in zip(group, out):
                try:
                    results[i] = output_to_result(arr, plan)
                except SampleError as exc:
                    results[i] = GenResult(error=str(exc))
        return results  # type: ignore[return-value]
