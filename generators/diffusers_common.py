"""Shared plumbing for generators that wrap a diffusers pipeline.

Loads a pipeline by class name (or an Auto class) with the safety checker off, swaps the scheduler
by class name, makes one CPU `torch.Generator` per sample (so a sample's image depends on its own
seed, not on its batch neighbours or the GPU model), and converts `output_type="np"` results into
PIL images, turning NaN outputs into per-sample errors.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

from fakeforge.config import ConfigError
from generators.base import Generator, GeneratorConfig, GenRequest, GenResult, SampleError, array_to_pil, torch_dtype
from generators.diffusers_options import (
    LoraSpec,
    MemoryConfig,
    apply_lora,
    cast_components,
    compile_denoiser,
    options_record,
    place,
    validate_options,
)

log = logging.getLogger(__name__)


@dataclass
class DiffusersConfig(GeneratorConfig):
    """Settings of a diffusers-backed generator; names follow the diffusers `__call__` arguments.

    pipeline: diffusers pipeline class name; empty = the Auto class for the generator's task.
    scheduler: scheduler class name (e.g. "DPMSolverMultistepScheduler"), built from the pipeline's
        scheduler config plus `scheduler_kwargs`; empty keeps the checkpoint's scheduler.
    call_kwargs: any further `__call__` arguments (e.g. max_sequence_length for SD3).
    lora / fuse_lora / memory / compile / dtypes: see `generators/diffusers_options.py`.
    """

    pipeline: str | None = None
    scheduler: str | None = None
    scheduler_kwargs: dict = field(default_factory=dict)
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    variant: str | None = None
    prefer_dtype: str = "float16"
    call_kwargs: dict = field(default_factory=dict)
    lora: list[LoraSpec] = field(default_factory=list)
    fuse_lora: bool = True
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    compile: bool = False
    dtypes: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)  # per-sample distributions (generators/sampling.py), filled for you

    def validate(self) -> None:
        super().validate()
        validate_options(self.lora, self.dtypes)
        if self.num_inference_steps < 1:
            raise ValueError(f"generator.num_inference_steps = {self.num_inference_steps} must be >= 1")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise ValueError(f"generator.{name} = {v} must be a positive multiple of 8")
            if v is not None and v > 8192:
                raise ValueError(f"generator.{name} = {v} is above 8192 px, more than any diffusers model makes")

    def check(self) -> None:
        """Check class names against the installed diffusers (imports diffusers; loads no weights)."""
        if not self.model_id:
            raise ConfigError(f"generator type '{self.type}' needs a model_id")
        import diffusers

        if self.pipeline:
            cls = getattr(diffusers, self.pipeline, None)
            if not (inspect.isclass(cls) and issubclass(cls, diffusers.DiffusionPipeline)):
                raise ConfigError(f"generator.pipeline = '{self.pipeline}' is not a diffusers pipeline class")
            check_call_kwargs(self, cls)
        if self.scheduler:
            cls = getattr(diffusers, self.scheduler, None)
            if not (inspect.isclass(cls) and issubclass(cls, diffusers.SchedulerMixin)):
                known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
                raise ConfigError(f"unknown scheduler '{self.scheduler}'; valid schedulers: {', '.join(known)}")


def check_call_kwargs(cfg: DiffusersConfig, pipeline_cls) -> None:
    """Refuse `call_kwargs` the pipeline's `__call__` does not name: diffusers pipelines accept and
    silently drop unknown keyword arguments, so a typo would otherwise change nothing without a word."""
    params = inspect.signature(pipeline_cls.__call__).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(cfg.call_kwargs) - named)
    if unknown:
        raise ConfigError(f"generator.call_kwargs: {pipeline_cls.__name__} takes no argument(s) {unknown}; "
                          f"valid: {', '.join(sorted(named - {'self'}))}")


def load_pipeline(cfg: DiffusersConfig, device: str, auto_class: str, **components):
    """from_pretrained(cfg.model_id) with the right class, dtype, safety checker off and no progress bar.

    `components` are passed on to from_pretrained (e.g. controlnet=ControlNetModel...)."""
    import diffusers

    dtype = torch_dtype(cfg.dtype, device, cfg.prefer_dtype)
    cls = getattr(diffusers, cfg.pipeline) if cfg.pipeline else None
    try:
        index = diffusers.DiffusionPipeline.load_config(cfg.model_id)
    except Exception as exc:  # noqa: BLE001 - re-raised with the model id and what to do
        raise ConfigError(f"cannot read model_index.json of model_id '{cfg.model_id}': {exc}. "
                          "Use a local folder, a cached hub id, or --tiny for the offline twin.") from None
    if cls is None and index.get("_class_name"):
        cls = getattr(diffusers, index["_class_name"], None)
    params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.variant:
        kwargs["variant"] = cfg.variant
    if "safety_checker" in index or "safety_checker" in params:
        kwargs["safety_checker"] = None
        if "requires_safety_checker" in params or not params:
            kwargs["requires_safety_checker"] = False
    if "add_watermarker" in params:
        kwargs["add_watermarker"] = False
    if cfg.pipeline is None:
        cls = getattr(diffusers, auto_class)
    kwargs.update(components)
    quiet_hub_progress()
    pipe = cls.from_pretrained(cfg.model_id, **kwargs)
    check_call_kwargs(cfg, type(pipe))  # an Auto class resolves to its pipeline only here
    if cfg.scheduler:
        sched_cls = getattr(diffusers, cfg.scheduler)
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config, **cfg.scheduler_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return apply_options(pipe, cfg, device)


def apply_options(pipe, cfg: DiffusersConfig, device: str):
    """LoRA adapters, per-component dtypes, placement with the memory options, compile; the record of what
    was applied is kept on the pipeline as `fakeforge_options` (see `DiffusersGenerator.settings`)."""
    lora_rec = apply_lora(pipe, cfg.lora, cfg.model_id, cfg.fuse_lora)
    cast_components(pipe, cfg.dtypes)
    pipe, applied, unused = place(pipe, cfg.memory, device)
    compiled = compile_denoiser(pipe) if cfg.compile else None
    pipe.fakeforge_options = options_record(lora_rec, applied, unused, compiled, device)
    return pipe


def quiet_hub_progress() -> None:
    """No per-component loading bars from diffusers/transformers (the build has its own bar)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def seeded_generators(seeds: list[int]):
    """One CPU torch.Generator per sample: reproducible across GPUs and independent of batching."""
    import torch

    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def images_to_results(images) -> list[GenResult]:
    """`output_type="np"` batch -> results; a NaN image becomes that sample's error."""
    out = []
    for arr in images:
        try:
            out.append(GenResult(image=array_to_pil(arr)))
        except SampleError as exc:
            out.append(GenResult(error=str(exc)))
    return out


class DiffusersGenerator(Generator):
    """Base for diffusers-backed generators: loads `self.pipe`, calls it with the common arguments."""

    config_class = DiffusersConfig
    auto_class = "AutoPipelineForText2Image"

    def load(self) -> None:
        self.pipe = load_pipeline(self.config, self.device, self.auto_class)

    def common_call_kwargs(self, requests: list[GenRequest]) -> dict:
        """Arguments shared by every diffusers task, in diffusers' own names."""
        cfg = self.config
        kwargs = dict(prompt=[r.prompt for r in requests], num_inference_steps=cfg.num_inference_steps,
                      guidance_scale=cfg.guidance_scale, generator=seeded_generators([r.seed for r in requests]),
                      output_type="np")
        if cfg.negative_prompt is not None:
            kwargs["negative_prompt"] = [cfg.negative_prompt] * len(requests)
        kwargs.update(cfg.call_kwargs)
        return kwargs

    def use_settings(self, drawn: dict) -> None:
        """A drawn `scheduler` is built (once per class) from the loaded pipeline's scheduler config."""
        if "scheduler" not in drawn:
            return
        import diffusers

        cache = self.__dict__.setdefault("_schedulers", {})
        if not cache:
            cache["__config__"] = self.pipe.scheduler.config
        name = drawn["scheduler"]
        if name not in cache:
            cache[name] = getattr(diffusers, name).from_config(cache["__config__"], **self.config.scheduler_kwargs)
        self.pipe.scheduler = cache[name]

    def settings(self) -> dict:
        data = super().settings()
        data["safety_checker"] = "disabled"
        data["rng"] = "cpu torch.Generator per sample"
        if getattr(self, "pipe", None) is not None:
            data["dtype_resolved"] = str(self.pipe.dtype).replace("torch.", "")
            data.update(getattr(self.pipe, "fakeforge_options", {}))
        return data
