"""Text-to-image generation with any diffusers pipeline (SD2, SD3, SDXL, SD1.x, PixArt, FLUX, ...)."""
from __future__ import annotations

from generators.base import GenRequest, GenResult
from generators.diffusers_common import DiffusersConfig, DiffusersGenerator, images_to_results


class Text2Image(DiffusersGenerator):
    """Captions in, images out: one batched pipeline call per batch, one seed per sample."""

    config_class = DiffusersConfig
    auto_class = "AutoPipelineForText2Image"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        kwargs = self.common_call_kwargs(requests)
        if self.config.height:
            kwargs["height"] = self.config.height
        if self.config.width:
            kwargs["width"] = self.config.width
        images = self.pipe(**kwargs).images
        return images_to_results(images)
