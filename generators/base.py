"""The generator interface: a config dataclass, a request/result pair, and one batched `generate` call.

A generator turns a batch of `GenRequest`s (caption, per-sample seed, optionally the real source
image) into `GenResult`s. A failure of one sample is data: the result carries `error` and the build
goes on. `generate_safe` retries a failed batch one sample at a time so a single bad input cannot
sink its neighbours; an error that is not one sample's (a bug, a rejected argument) raises
`GeneratorFailure` and stops the build.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class SampleError(RuntimeError):
    """A per-sample failure (NaN output, unusable input): recorded in the shard stats, never fatal."""


@dataclass
class GeneratorConfig:
    """Settings every generator shares. Subclasses add their own fields (diffusers argument names).

    type: registry name of the generator class (e.g. "text2image").
    model_id: hub id or local folder; `--tiny` replaces it with the tiny twin named by `tiny_twin`.
    tiny: overrides applied together with `--tiny` (e.g. a small resolution and 2 steps).
    dtype: "auto" = float16 on CUDA (bfloat16 for models that prefer it), float32 on CPU.
    """

    type: str
    model_id: str | None = None
    tiny_twin: str | None = None
    tiny: dict = field(default_factory=dict)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = 4
    description: str = ""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"generator.batch_size = {self.batch_size} must be >= 1")

    def check(self) -> None:
        """Deeper checks that may import libraries (never load weights). Subclasses extend."""


@dataclass
class GenRequest:
    """One sample to make. `image` is the real source image (RGB) for editing/SR generators."""

    key: str
    prompt: str
    seed: int
    source_image_id: str = ""
    image: Image.Image | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class GenResult:
    """What came out: an RGB image, or an error string. `mask` (uint8 HxW, 255 = edited) is stored
    beside the image; `extra` goes into the sample's metadata."""

    image: Image.Image | None = None
    error: str | None = None
    mask: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def torch_dtype(name: str, device: str, prefer: str = "float16"):
    """Resolve a config dtype name; "auto" = `prefer` on CUDA, float32 elsewhere."""
    import torch

    if name == "auto":
        name = prefer if str(device).startswith("cuda") else "float32"
    return getattr(torch, name)


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """One HxWx3 float image in [0,1] to PIL; NaN/inf raise SampleError."""
    if not np.isfinite(arr).all():
        raise SampleError("generated image contains NaN/inf values")
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))


class Generator:
    """Base class. Subclasses set `config_class`, implement `load` and `generate`."""

    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    #: True when each request must carry the real source image.
    needs_source_image: ClassVar[bool] = False
    #: label written into every sample's metadata.
    label: ClassVar[str] = "fake"
    #: the set's image policy (set by the builder before `load`; see `storage_policy`)
    image_policy: Any = None

    @classmethod
    def storage_policy(cls, config: GeneratorConfig, policy):
        """The image policy this generator's set is stored with (default: the build's policy).
        Attack sets override it to force lossless storage."""
        return policy

    def __init__(self, config: GeneratorConfig, device: str = "cpu"):
        self.config = config
        self.device = str(device)

    def load(self) -> None:
        """Load weights (called once per process, after every config check passed)."""

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Make one batch. May raise; `generate_safe` turns exceptions into per-sample errors."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Generation settings recorded in every sample's metadata."""
        from fakeforge.config import to_dict

        data = to_dict(self.config)
        data.pop("tiny", None)
        data.pop("description", None)
        if not data.get("sample"):
            data.pop("sample", None)
        return data

    def batch_order(self, keys: list[str]) -> list[int]:
        """The order a shard's samples are batched and written in: samples with equal per-sample settings
        next to each other (see generators/sampling.py); the shard's own order without any."""
        from generators.sampling import grouped_order

        return grouped_order(getattr(self.config, "sample", None) or {}, keys)

    def use_settings(self, drawn: dict) -> None:
        """Called before a group of samples with the per-sample settings `drawn` is made (after
        `self.config` holds them). Subclasses swap what `config` alone does not reach (a scheduler)."""

    def generate_varied(self, requests: list[GenRequest], safe: bool = True) -> list[GenResult]:
        """`generate_safe` (or with `safe=False` plain `generate`), once per group of requests with equal
        per-sample settings, each group with its drawn values in `self.config`; every result records its
        drawn values under `extra["sampled"]`. Without a `sample` space this is `generate_safe`."""
        from generators import sampling

        space = getattr(self.config, "sample", None) or {}
        call = self.generate_safe if safe else self.generate
        if not space:
            return call(requests)
        groups: dict[str, list[int]] = {}
        drawn_of: dict[str, dict] = {}
        for i, req in enumerate(requests):
            drawn = sampling.draw(space, req.key)
            sig = sampling.signature(drawn)
            groups.setdefault(sig, []).append(i)
            drawn_of[sig] = drawn
        results: list[GenResult | None] = [None] * len(requests)
        base = self.config
        for sig, idx in groups.items():
            self.config = sampling.apply(base, drawn_of[sig])
            try:
                self.use_settings(drawn_of[sig])
                out = _checked(call([requests[i] for i in idx]), len(idx))
            finally:
                self.config = base
            for i, res in zip(idx, out):
                res.extra = {**res.extra, "sampled": drawn_of[sig]}
                results[i] = res
        return results

    def generate_safe(self, requests: list[GenRequest]) -> list[GenResult]:
        """`generate`, but a failing batch is retried one sample at a time, and errors that belong to
        one sample (see `is_sample_error`) become that sample's result. Anything else (a TypeError,
        an argument the pipeline rejects, a wrong number of results) raises `GeneratorFailure`: it
        would fail every sample the same way, so it is a configuration or code problem, not data."""
        try:
            return _checked(self.generate(requests), len(requests))
        except GeneratorFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into per-sample data or a failure below
            if not is_sample_error(exc):
                raise GeneratorFailure(_describe(exc)) from exc
            if len(requests) == 1:
                return [GenResult(error=_describe(exc))]
            log.warning("batch of %d failed (%s); retrying one by one", len(requests), _describe(exc))
        out = []
        for req in requests:
            try:
                out.extend(_checked(self.generate([req]), 1))
            except GeneratorFailure:
                raise
            except Exception as exc:  # noqa: BLE001
                if not is_sample_error(exc):
                    raise GeneratorFailure(_describe(exc)) from exc
                out.append(GenResult(error=_describe(exc)))
        return out


class ModelFault(RuntimeError):
    """A model that cannot run as configured (e.g. a LoRA that does not fit its base): a failure of the whole
    set or model, reported with its `fault_class`, never per-sample data."""

    fault_class = "model"


class GeneratorFailure(RuntimeError):
    """The generator raised an error that does not belong to one sample (a bug, a bad argument, a broken
    pipeline). The build stops with it instead of recording the same error for every sample."""


def is_sample_error(exc: BaseException) -> bool:
    """True for errors that belong to one sample or one batch and are recorded as data: SampleError
    (NaN output, unusable input) and running out of memory (the batch is then retried one by one)."""
    if isinstance(exc, (SampleError, MemoryError)):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _checked(results: list[GenResult], n: int) -> list[GenResult]:
    if not isinstance(results, list) or len(results) != n:
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise GeneratorFailure(f"generator returned {got} results for {n} requests")
    return results


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
