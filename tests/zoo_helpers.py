"""Helpers for zoo tests: a real text-to-image generator with injected out-of-memory faults, and configs."""
from __future__ import annotations

import torch

from generators import GENERATORS
from generators.text2image import Text2Image


class OomText2Image(Text2Image):
    """Text2Image (the real diffusers pipeline) that raises torch.OutOfMemoryError for any batch larger
    than `MAX_BATCH` (fault injection, as a GPU too small for that batch would). `calls` logs batch sizes."""

    MAX_BATCH = 1
    calls: list[int] = []

    def generate(self, requests):
        type(self).calls.append(len(requests))
        if len(requests) > self.MAX_BATCH:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected above batch {self.MAX_BATCH})")
        return super().generate(requests)


GENERATORS.register("oom_text2image", "zoo_helpers:OomText2Image", "test only: Text2Image raising OOM above a batch")


class NanText2Image(Text2Image):
    """Text2Image whose pipeline output is NaN everywhere (fault injection, as fp16 overflow can make)."""

    def generate(self, requests):
        import numpy as np

        from generators.diffusers_common import images_to_results

        made = self.pipe(**self.common_call_kwargs(requests)).images
        return images_to_results(np.full_like(made, np.nan))


GENERATORS.register("nan_text2image", "zoo_helpers:NanText2Image", "test only: Text2Image whose outputs are NaN")
