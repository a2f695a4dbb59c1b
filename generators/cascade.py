"""Cascaded diffusers generation: a chain of pipelines where each stage's output image feeds the next.

DeepFloyd IF is the worked example (stage I: 64 px from T5 text embeddings -> stage II: x4 to 256 px ->
optionally stage III: the SD x4 upscaler to 1024 px), but nothing here is IF-specific: any chain of
diffusers pipelines whose `__call__` takes the previous stage's output as `image=` is a config.

Contract between stages (diffusers' own, as in the IF model cards):
  * every stage but the last is called with `output_type="pt"` and its `.images` tensor is passed on as
    `image=`; the value range is converted on the way: the IF pipelines (class names starting "IF")
    return and take [-1, 1] tensors as they are, every other diffusers pipeline returns [0, 1] tensors
    and expects [0, 1] (the SD x4 upscaler, for instance, deprecates [-1, 1] input);
  * the last stage is called with `output_type="np"` and its images become the results.

Prompts: a stage with `prompt: embeds` receives `prompt_embeds` / `negative_prompt_embeds` computed
**once per batch** by the `prompt_encoder` stage's `encode_prompt` (IF's T5 is run once and shared by
stages I and II); those stages other than the encoder are loaded with `text_encoder=None`, so the big
encoder sits in memory once. `prompt: text` passes the caption (a stage with its own encoder, e.g. the
SD upscaler's CLIP), `prompt: none` passes no prompt.

Seeds: one CPU `torch.Generator` per sample, shared by all stages (its state runs on from stage to
stage), so a sample depends on its own seed only, never on its batch neighbours.

`model_id` (what --tiny sets) may name a folder holding one sub-folder per stage, named after the stages;
otherwise each stage's own `model_id` is used.
"""
from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fakeforge.config import ConfigError
from generators.base import Generator, GeneratorConfig, GenRequest, GenResult
from generators.diffusers_common import (
    DiffusersConfig,
    images_to_results,
    load_pipeline,
    seeded_generators,
)
from generators.diffusers_options import MemoryConfig


@dataclass
class StageConfig:
    """One pipeline of the cascade; argument names follow diffusers.

    name: stage name (sub-folder name inside a cascade folder given as the generator's model_id).
    pipeline: diffusers pipeline class name (required: the cascade must know what it chains).
    prompt: "embeds" = the shared prompt embeddings, "text" = the caption, "none" = no prompt.
    height / width: output size of the first stage (later stages' sizes follow from their input).
    call_kwargs: any further `__call__` argument (e.g. noise_level).
    """

    name: str
    pipeline: str
    model_id: str | None = None
    variant: str | None = None
    prompt: Literal["embeds", "text", "none"] = "text"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str | None = None
    scheduler_kwargs: dict = field(default_factory=dict)
    height: int | None = None
    width: int | None = None
    call_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"stage name {self.name!r} must be a plain folder name")
        if self.num_inference_steps < 1:
            raise ConfigError(f"stage '{self.name}': num_inference_steps = {self.num_inference_steps} must be >= 1")
        reserved = {"image", "prompt", "prompt_embeds", "negative_prompt_embeds", "generator", "output_type"}
        clash = sorted(reserved & set(self.call_kwargs))
        if clash:
            raise ConfigError(f"stage '{self.name}': call_kwargs {clash} are set by the cascade itself")


@dataclass
class CascadeConfig(GeneratorConfig):
    """A chain of diffusers pipelines (see the module docstring).

    stages: the pipelines in order; the first makes the image from the prompt, each later one refines it.
    prompt_encoder: the stage whose `encode_prompt` computes the shared embeddings (default: the first
        stage with prompt: embeds).
    negative_prompt: passed to the encoder (shared) and to text stages.
    clean_caption: IF's caption cleaning (needs beautifulsoup4 + ftfy; diffusers' default for IF).
    num_inference_steps: when set, overrides every stage's steps (quick dry runs, the tiny twin).
    cpu_offload: `enable_model_cpu_offload()` on every stage (one GPU with little memory).
    memory / compile: the diffusers options (`generators/diffusers_options.py`), applied to every stage.
    """

    stages: list[StageConfig] = field(default_factory=list)
    prompt_encoder: str | None = None
    negative_prompt: str | None = None
    clean_caption: bool = True
    num_inference_steps: int | None = None
    cpu_offload: bool = False
    prefer_dtype: str = "float16"
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    compile: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.stages:
            raise ConfigError("generator.stages must list at least one pipeline stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"generator.stages: stage names must be unique, got {names}")
        embeds = [s.name for s in self.stages if s.prompt == "embeds"]
        if self.prompt_encoder is not None and self.prompt_encoder not in embeds:
            raise ConfigError(f"generator.prompt_encoder = '{self.prompt_encoder}' must name a stage with "
                              f"prompt: embeds (those are: {embeds or 'none'})")
        for s in self.stages[1:]:
            if s.height is not None or s.width is not None:
                raise ConfigError(f"stage '{s.name}': height/width apply to the first stage only "
                                  "(later sizes follow from their input)")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ConfigError(f"generator.num_inference_steps = {self.num_inference_steps} must be >= 1")

    @property
    def encoder_stage(self) -> str | None:
        """Name of the stage computing the shared prompt embeddings (None when no stage uses them)."""
        return self.prompt_encoder or next((s.name for s in self.stages if s.prompt == "embeds"), None)

    def stage_model_id(self, stage: StageConfig) -> str | None:
        """Where a stage's weights are: `<model_id>/<stage name>` for a cascade folder, else its own id."""
        if self.model_id:
            return str(Path(self.model_id) / stage.name)
        return stage.model_id

    def check(self) -> None:
        import diffusers

        for s in self.stages:
            if not self.stage_model_id(s):
                raise ConfigError(f"stage '{s.name}' needs a model_id (or give the generator a model_id folder "
                                  "holding one sub-folder per stage)")
            cls = getattr(diffusers, s.pipeline, None)
            if not (inspect.isclass(cls) and issubclass(cls, diffusers.DiffusionPipeline)):
                raise ConfigError(f"stage '{s.name}': pipeline = '{s.pipeline}' is not a diffusers pipeline class")
            if s.prompt == "embeds" and "prompt_embeds" not in inspect.signature(cls.__call__).parameters:
                raise ConfigError(f"stage '{s.name}': {s.pipeline} takes no prompt_embeds; use prompt: text")
            if s.scheduler:
                sched = getattr(diffusers, s.scheduler, None)
                if not (inspect.isclass(sched) and issubclass(sched, diffusers.SchedulerMixin)):
                    raise ConfigError(f"stage '{s.name}': unknown scheduler '{s.scheduler}'")
        enc = self.encoder_stage
        if enc is not None:
            cls = getattr(diffusers, next(s.pipeline for s in self.stages if s.name == enc))
            if not callable(getattr(cls, "encode_prompt", None)):
                raise ConfigError(f"stage '{enc}': {cls.__name__} has no encode_prompt; it cannot be the prompt_encoder")
        if self.clean_caption and self._uses_clean_caption():
            missing = [m for m in ("bs4", "ftfy") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(f"generator.clean_caption = true needs {' and '.join(missing)} "
                                  "(pip install beautifulsoup4 ftfy, both fakeforge dependencies); without them "
                                  "diffusers silently skips the cleaning. Install them or set clean_caption: false")

    def _uses_clean_caption(self) -> bool:
        import diffusers

        return any("clean_caption" in inspect.signature(getattr(diffusers, s.pipeline).__call__).parameters
                   for s in self.stages)


def _stage_diffusers_config(cfg: CascadeConfig, stage: StageConfig) -> DiffusersConfig:
    return DiffusersConfig(type=f"cascade stage {stage.name}", model_id=cfg.stage_model_id(stage), dtype=cfg.dtype,
                           pipeline=stage.pipeline, scheduler=stage.scheduler,
                           scheduler_kwargs=dict(stage.scheduler_kwargs), variant=stage.variant,
                           prefer_dtype=cfg.prefer_dtype, memory=cfg.memory, compile=cfg.compile)


class Cascade(Generator):
    """Captions in, images out through a chain of diffusers pipelines."""

    config_class = CascadeConfig

    def load(self) -> None:
        cfg = self.config
        enc = cfg.encoder_stage
        self.pipes = {}
        for stage in cfg.stages:
            params = inspect.signature(_pipeline_class(stage.pipeline).__init__).parameters
            components = {}
            if stage.prompt == "embeds" and stage.name != enc and "text_encoder" in params:
                components["text_encoder"] = None  # the shared embeddings replace this stage's own encoder
            if "watermarker" in params:
                components["watermarker"] = None
            pipe = load_pipeline(_stage_diffusers_config(cfg, stage), self.device, "DiffusionPipeline", **components)
            if cfg.cpu_offload and str(self.device).startswith("cuda"):
                pipe.enable_model_cpu_offload()
            self.pipes[stage.name] = pipe

    def encode(self, prompts: list[str]) -> dict:
        """The shared prompt embeddings of a batch, computed once by the encoder stage."""
        cfg = self.config
        stage = next(s for s in cfg.stages if s.name == cfg.encoder_stage)
        pipe = self.pipes[stage.name]
        params = inspect.signature(pipe.encode_prompt).parameters
        offered = {"prompt": prompts, "device": pipe._execution_device, "num_images_per_prompt": 1,
                   "do_classifier_free_guidance": any(s.guidance_scale > 1 for s in cfg.stages if s.prompt == "embeds"),
                   "negative_prompt": [cfg.negative_prompt] * len(prompts) if cfg.negative_prompt is not None else None,
                   "clean_caption": cfg.clean_caption}
        out = pipe.encode_prompt(**{k: v for k, v in offered.items() if k in params})
        names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        return {k: v for k, v in zip(names, out) if v is not None}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        cfg = self.config
        prompts = [r.prompt for r in requests]
        generators = seeded_generators([r.seed for r in requests])
        embeds = self.encode(prompts) if cfg.encoder_stage else {}
        image = None
        for i, stage in enumerate(cfg.stages):
            last = i == len(cfg.stages) - 1
            kwargs = {"num_inference_steps": cfg.num_inference_steps or stage.num_inference_steps,
                      "guidance_scale": stage.guidance_scale, "generator": generators,
                      "output_type": "np" if last else "pt"}
            pipe = self.pipes[stage.name]
            call_params = inspect.signature(pipe.__call__).parameters
            if stage.prompt == "embeds":
                kwargs.update(embeds)
            elif stage.prompt == "text":
                kwargs["prompt"] = prompts
                if cfg.negative_prompt is not None:
                    kwargs["negative_prompt"] = [cfg.negative_prompt] * len(prompts)
            if "clean_caption" in call_params:
                kwargs["clean_caption"] = cfg.clean_caption
            if image is not None:
                kwargs["image"] = convert_range(image, cfg.stages[i - 1].pipeline, stage.pipeline)
            if stage.height:
                kwargs["height"] = stage.height
            if stage.width:
                kwargs["width"] = stage.width
            kwargs.update(stage.call_kwargs)
            image = pipe(**kwargs).images
            if len(image) != len(requests):
                raise RuntimeError(f"stage '{stage.name}' returned {len(image)} images for {len(requests)} prompts")
        results = images_to_results(image)
        for res in results:
            res.extra["cascade_stages"] = [s.name for s in cfg.stages]
        return results

    def settings(self) -> dict:
        data = super().settings()
        data["safety_checker"] = "disabled"
        data["rng"] = "cpu torch.Generator per sample, shared by the stages"
        data["model_id"] = self.config.model_id
        data["stage_model_ids"] = {s.name: self.config.stage_model_id(s) for s in self.config.stages}
        if getattr(self, "pipes", None):
            data["dtype_resolved"] = str(next(iter(self.pipes.values())).dtype).replace("torch.", "")
            data["stage_options"] = {n: getattr(p, "fakeforge_options", {}) for n, p in self.pipes.items()}
        return data


def signed_range(pipeline: str) -> bool:
    """True when a pipeline's "pt" images live in [-1, 1] (DeepFloyd IF's pipelines), else [0, 1]."""
    return pipeline.startswith("IF")


def convert_range(images, from_pipeline: str, to_pipeline: str):
    """A "pt" image batch of one stage in the value range the next stage expects."""
    src, dst = signed_range(from_pipeline), signed_range(to_pipeline)
    if src == dst:
        return images
    return (images / 2 + 0.5).clamp(0, 1) if src else images * 2 - 1


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)
