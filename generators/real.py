"""The identity generator: exports the real source images as a real set through the same writer."""
from __future__ import annotations

from typing import ClassVar

from generators.base import Generator, GeneratorConfig, GenRequest, GenResult


class RealImage(Generator):
    """Returns each request's source image unchanged; samples are labelled "real"."""

    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    needs_source_image = True
    label = "real"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [GenResult(image=r.image) if r.image is not None else GenResult(error="no source image")
                for r in requests]

    def settings(self) -> dict:
        return {"type": "real"}
