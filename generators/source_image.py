"""Shared plumbing of every generator that starts from a real image (img2img, inpainting, ControlNet,
LaMa, super-resolution):
  - any PIL input is made upright 8-bit RGB (`fakeforge.images.to_rgb`: grayscale, CMYK, 16-bit,
    palette+transparency, EXIF rotation);
  - a source whose shorter side is below `min_size` is skipped with a recorded reason;
  - the model works on a copy resized so the shorter side is `working_size` (or left as is when
    None), the longer side capped at `max_size`, both rounded to a multiple of 8 (diffusers needs it);
  - requests are grouped by working size (a diffusers call needs one size per batch);
  - the result is resized back to the exact source size (bicubic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.images import to_rgb
from generators.base import GenRequest, GenResult, SampleError, array_to_pil
from generators.diffusers_common import DiffusersConfig, DiffusersGenerator


def source_rgb(req: GenRequest) -> Image.Image:
    """The request's source image as upright 8-bit RGB; SampleError when there is none."""
    if req.image is None:
        raise SampleError(f"request '{req.key}' has no source image")
    return to_rgb(req.image)


def check_min_size(img: Image.Image, min_size: int) -> None:
    """SampleError (recorded, not fatal) when the shorter side is below `min_size`."""
    if min(img.size) < min_size:
        raise SampleError(f"source image {img.width}x{img.height} is smaller than min_size={min_size} "
                          "(shorter side); skipped")


def fit_size(w: int, h: int, shorter: int | None, max_size: int | None, multiple: int = 1,
             keep_aspect: bool = True) -> tuple[int, int]:
    """Working size: shorter side -> `shorter` (None keeps the scale), longer side <= `max_size`,
    each side a multiple of `multiple` (at least `multiple`). keep_aspect=False gives a square."""
    if not keep_aspect and shorter:
        w = h = shorter
    scale = shorter / min(w, h) if shorter else 1.0
    if max_size and max(w, h) * scale > max_size:
        scale = max_size / max(w, h)
    capped = bool(max_size) and max(w, h) * scale >= max_size

    def side(v: float) -> int:
        n = int(v // multiple) if capped else round(v / multiple)
        return max(multiple, n * multiple)

    return side(w * scale), side(h * scale)


#: per-sample failures while preparing inputs (unusable image, no mask in bounds): recorded, never fatal
PREPARE_ERRORS = (SampleError, OSError, ValueError)


def check_size_limits(min_size: int, max_size: int, max_floor: int = 8) -> None:
    """Config check shared by every generator with `min_size` / `max_size` settings."""
    if min_size < 1:
        raise ConfigError(f"generator.min_size = {min_size} must be >= 1")
    if max_size < max_floor:
        raise ConfigError(f"generator.max_size = {max_size} must be >= {max_floor}")


def describe(exc: BaseException) -> str:
    """A per-sample error string: SampleError messages as is, other exceptions with their type."""
    return str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"[:500]


def group_by_size(items: list, size_of) -> list[list[int]]:
    """Indices of `items` grouped by `size_of(item)`, in first-seen order."""
    groups: dict = {}
    for i, it in enumerate(items):
        groups.setdefault(size_of(it), []).append(i)
    return list(groups.values())


@dataclass
class SourceImageConfig(DiffusersConfig):
    """Diffusers settings plus the working-size policy of generators that start from a real image.

    working_size: target shorter side of the working copy (multiple of 8 after rounding); None = source size.
    keep_aspect: False resizes the working copy to a working_size x working_size square (all requests
        then batch together; the result is still resized back to the source size).
    min_size: sources whose shorter side is smaller are skipped with a recorded reason.
    max_size: cap on the working copy's longer side (huge sources are downscaled; output keeps source size).
    """

    working_size: int | None = 512
    keep_aspect: bool = True
    min_size: int = 64
    max_size: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.height is not None or self.width is not None:
            raise ConfigError(f"generator.height/width = {self.height}/{self.width}: generators that start from a "
                              "real image set their size from the source; use working_size instead")
        if self.working_size is not None and self.working_size < 8:
            raise ConfigError(f"generator.working_size = {self.working_size} must be >= 8 (or null)")
        check_size_limits(self.min_size, self.max_size)


@dataclass
class Prepared:
    """One request made ready for the model: source (RGB, source size), working copy and its extras."""

    req: GenRequest
    source: Image.Image
    work: Image.Image
    extra: dict = field(default_factory=dict)
    mask: np.ndarray | None = None
    work_mask: np.ndarray | None = None
    control: Image.Image | None = None


class SourceImageGenerator(DiffusersGenerator):
    """Base of diffusers generators that edit a real image: prepare -> run per size group -> finish."""

    config_class = SourceImageConfig
    needs_source_image = True

    def prepare(self, req: GenRequest) -> Prepared:
        """Source to RGB, size checks, working copy. Subclasses add masks or control images."""
        cfg = self.config
        src = source_rgb(req)
        check_min_size(src, cfg.min_size)
        size = fit_size(src.width, src.height, cfg.working_size, cfg.max_size, 8, cfg.keep_aspect)
        work = src if size == src.size else src.resize(size, Image.BICUBIC)
        extra = {"source_image_id": req.source_image_id or str(req.meta.get("image_id", "")),
                 "source_size": [src.width, src.height], "working_size": list(size)}
        return Prepared(req, src, work, extra)

    def call_group(self, group: list[Prepared]) -> np.ndarray:
        """Run the pipeline on one same-size group; returns `output_type="np"` images."""
        raise NotImplementedError

    def finish(self, prep: Prepared, arr: np.ndarray) -> GenResult:
        """Working-size output -> source-size RGB result."""
        img = array_to_pil(arr)
        if img.size != prep.source.size:
            img = img.resize(prep.source.size, Image.BICUBIC)
        return GenResult(image=img, mask=prep.mask, extra=prep.extra)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        ready: list[tuple[int, Prepared]] = []
        for i, req in enumerate(requests):
            try:
                ready.append((i, self.prepare(req)))
            except PREPARE_ERRORS as exc:
                results[i] = GenResult(error=describe(exc))
        for idx in group_by_size(ready, lambda item: item[1].work.size):
            group = [ready[j] for j in idx]
            images = self.call_group([p for _, p in group])
            if len(images) != len(group):
                raise RuntimeError(f"pipeline returned {len(images)} images for {len(group)} inputs")
            for (i, prep), arr in zip(group, images):
                try:
                    results[i] = self.finish(prep, arr)
                except SampleError as exc:
                    results[i] = GenResult(error=str(exc))
        return results  # type: ignore[return-value]
