"""ControlNet generation conditioned on the canny edges of a real image plus its caption.

The edges are computed (generators.edges, numpy Canny) on the working copy of the source image,
so the line thickness matches what the model saw in training (512-px images for
`lllyasviel/sd-controlnet-canny`); the result is resized back to the exact source size.

Loading: `model_id` is the base text-to-image model (e.g. `runwayml/stable-diffusion-v1-5`, or an
SD2.1 base for an SD2.1 ControlNet) and `controlnet_model_id` the ControlNet weights; when
`controlnet_model_id` is null, `model_id` must be a folder holding a full ControlNet pipeline
(with a `controlnet/` component), which is how the tiny twin is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fakeforge.config import ConfigError
from generators.base import torch_dtype
from generators.diffusers_common import load_pipeline
from generators.edges import canny_image
from generators.source_image import Prepared, SourceImageConfig, SourceImageGenerator


@dataclass
class ControlNetConfig(SourceImageConfig):
    """ControlNet-canny settings.

    controlnet_model_id: ControlNet weights (hub id or folder); null = the ControlNet inside `model_id`.
    canny_low / canny_high: hysteresis thresholds on the 8-bit gradient scale (ControlNet's annotator: 100/200).
    canny_sigma: optional Gaussian blur before Canny (0 = none, like OpenCV's Canny).
    controlnet_conditioning_scale: weight of the ControlNet residuals.
    """

    pipeline: str | None = "StableDiffusionControlNetPipeline"
    controlnet_model_id: str | None = None
    canny_low: float = 100.0
    canny_high: float = 200.0
    canny_sigma: float = 0.0
    controlnet_conditioning_scale: float = 1.0

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.canny_low <= self.canny_high:
            raise ConfigError(f"generator.canny_low = {self.canny_low}, canny_high = {self.canny_high}: "
                              "need 0 <= canny_low <= canny_high")
        if self.canny_sigma < 0:
            raise ConfigError(f"generator.canny_sigma = {self.canny_sigma} must be >= 0")
        if self.controlnet_conditioning_scale < 0:
            raise ConfigError(f"generator.controlnet_conditioning_scale = {self.controlnet_conditioning_scale} "
                              "must be >= 0")


class ControlNetCanny(SourceImageGenerator):
    """Caption + canny edges of the real image -> a new image with the same layout."""

    config_class = ControlNetConfig

    auto_class = "StableDiffusionControlNetPipeline"

    def load(self) -> None:
        import diffusers

        cfg = self.config
        try:
            index = diffusers.DiffusionPipeline.load_config(cfg.model_id)
        except Exception as exc:  # noqa: BLE001 - re-raised with the model id and what to do
            raise ConfigError(f"cannot read model_index.json of model_id '{cfg.model_id}': {exc}. "
                              "Use a local folder, a cached hub id, or --tiny for the offline twin.") from None
        components = {}
        if cfg.controlnet_model_id:
            dtype = torch_dtype(cfg.dtype, self.device, cfg.prefer_dtype)
            components["controlnet"] = diffusers.ControlNetModel.from_pretrained(cfg.controlnet_model_id, dtype=dtype)
        elif "controlnet" not in index:
            raise ConfigError(f"model_id '{cfg.model_id}' holds no ControlNet; set generator.controlnet_model_id "
                              "(e.g. lllyasviel/sd-controlnet-canny)")
        self.pipe = load_pipeline(cfg, self.device, self.auto_class, **components)

    def prepare(self, req) -> Prepared:
        prep = super().prepare(req)
        cfg = self.config
        prep.control = canny_image(prep.work, cfg.canny_low, cfg.canny_high, cfg.canny_sigma)
        edges = np.asarray(prep.control)[..., 0]
        prep.extra.update(canny_low=cfg.canny_low, canny_high=cfg.canny_high, canny_sigma=cfg.canny_sigma,
                          edge_ratio=round(float(np.count_nonzero(edges)) / edges.size, 6))
        return prep

    def call_group(self, group: list[Prepared]) -> np.ndarray:
        w, h = group[0].work.size
        kwargs = self.common_call_kwargs([p.req for p in group])
        kwargs.update(image=[p.control for p in group], height=h, width=w,
                      controlnet_conditioning_scale=self.config.controlnet_conditioning_scale)
        return self.pipe(**kwargs).images
