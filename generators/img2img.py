"""Image-to-image (SDEdit) generation with any diffusers image-to-image pipeline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fakeforge.config import ConfigError
from generators.base import GenResult
from generators.source_image import Prepared, SourceImageConfig, SourceImageGenerator


@dataclass
class Img2ImgConfig(SourceImageConfig):
    """SDEdit: `strength` in (0, 1] is the fraction of the noise schedule the source is pushed through."""

    strength: float = 0.5

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError(f"generator.strength = {self.strength} must be within (0, 1]")


class Img2Img(SourceImageGenerator):
    """SDEdit with any diffusers image-to-image pipeline; the caption is the prompt."""

    config_class = Img2ImgConfig
    auto_class = "AutoPipelineForImage2Image"

    def call_group(self, group: list[Prepared]) -> np.ndarray:
        kwargs = self.common_call_kwargs([p.req for p in group])
        kwargs.update(image=[p.work for p in group], strength=self.config.strength)
        return self.pipe(**kwargs).images

    def finish(self, prep: Prepared, arr: np.ndarray) -> GenResult:
        res = super().finish(prep, arr)
        res.extra = {**res.extra, "strength": self.config.strength}
        return res
