"""Options every diffusers generator takes: LoRA adapters, memory and speed settings, per-component dtypes.

Each is a thin call into diffusers itself:

* `lora: [{id, weight_name, scale}]`: `load_lora_weights` (one named adapter each), `set_adapters` with
  the scales, then `fuse_lora` + `unload_lora_weights` (`fuse_lora: true`, the default), so sampling
  runs at the base model's speed. A LoRA that does not fit its base (other architecture, no matching
  module) raises `LoraMismatchError` naming both ids: a model-level failure, not per-sample data.
* `memory: {offload: none|model|sequential, vae_tiling, vae_slicing, attention_slicing}`:
  `enable_model_cpu_offload` / `enable_sequential_cpu_offload` (CUDA only: on a CPU they are accepted,
  logged once and recorded as unused), `vae.enable_tiling()` / `vae.enable_slicing()`,
  `enable_attention_slicing()`.
* `compile: true`: `torch.compile` of the denoiser (the pipeline's `transformer`, `unet`, `prior` or
  `decoder`) in place (`nn.Module.compile`), so the pipeline keeps its component classes.
* `dtypes: {component: dtype}`: casts named components after loading (e.g. `vae: float32` under a
  bfloat16 pipeline, as the Sana and SDXL cards do for the VAE).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fakeforge.config import ConfigError
from generators.base import ModelFault

log = logging.getLogger(__name__)

DENOISERS = ("transformer", "unet", "prior", "decoder")
_DTYPES = ("float32", "float16", "bfloat16")
_noted: set[str] = set()


class LoraMismatchError(ModelFault):
    """A LoRA adapter that cannot be applied to its base model (the message names both ids)."""

    fault_class = "lora_mismatch"


@dataclass
class LoraSpec:
    """One LoRA adapter: hub id or local folder, the weight file inside it, and its scale.

    tiny_twin: the twin that `--tiny` puts in place of `id` (built on first use).
    """

    id: str
    weight_name: str | None = None
    scale: float = 1.0
    adapter_name: str | None = None
    tiny_twin: str | None = None

    def validate(self) -> None:
        if not self.id:
            raise ValueError("lora.id must name a hub id or a local folder")
        if not -10.0 <= self.scale <= 10.0:
            raise ValueError(f"lora.scale = {self.scale} must be within [-10, 10]")


@dataclass
class MemoryConfig:
    """Memory options (see the module docstring); none of them changes what an image is."""

    offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False


def validate_options(lora: list[LoraSpec], dtypes: dict) -> None:
    """Value checks of the options (names and values only; no import)."""
    names = [s.adapter_name or f"lora_{i}" for i, s in enumerate(lora)]
    if len(set(names)) != len(names):
        raise ValueError(f"generator.lora: adapter names must be unique, got {names}")
    for comp, name in dtypes.items():
        if name not in _DTYPES:
            raise ValueError(f"generator.dtypes.{comp} = {name!r} must be one of {list(_DTYPES)}")


def swap_tiny_loras(lora: list[LoraSpec], root: str | Path | None = None) -> None:
    """`--tiny`: every adapter with a `tiny_twin` points at that twin's folder under `root`
    (default: the twin folder, `fakeforge.tiny.tiny_root()`)."""
    from fakeforge.twins import TWINS, tiny_root

    root = root or tiny_root()
    for spec in lora:
        if spec.tiny_twin:
            TWINS.check(spec.tiny_twin)
            spec.id = str(Path(root) / spec.tiny_twin)


def apply_lora(pipe, specs: list[LoraSpec], base_id: str, fuse: bool = True) -> list[dict]:
    """Load, weight and (optionally) fuse the adapters; returns what each sample records about them."""
    if not specs:
        return []
    if not callable(getattr(pipe, "load_lora_weights", None)):
        raise LoraMismatchError(f"LoRA '{specs[0].id}' cannot be applied to base model '{base_id}': "
                                f"{type(pipe).__name__} takes no LoRA adapters")
    names = []
    for i, spec in enumerate(specs):
        if spec.tiny_twin and Path(spec.id).name == spec.tiny_twin:
            from fakeforge.twins import ensure_tiny

            ensure_tiny(spec.tiny_twin, Path(spec.id).parent)
        name = spec.adapter_name or f"lora_{i}"
        kwargs = {"weight_name": spec.weight_name} if spec.weight_name else {}
        try:
            pipe.load_lora_weights(spec.id, adapter_name=name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every cause (shapes, modules, file) is this model's failure
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LoraMismatchError(f"LoRA '{spec.id}' does not fit base model '{base_id}': "
                                    f"{type(exc).__name__}: {first}") from exc
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[s.scale for s in specs])
    if fuse:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers (and their per-step cost) go
    return [{"id": s.id if not s.tiny_twin else f"tiny-twin:{s.tiny_twin}", "weight_name": s.weight_name,
             "scale": s.scale, "adapter": n, "fused": fuse} for s, n in zip(specs, names)]


def cast_components(pipe, dtypes: dict) -> None:
    """Cast named pipeline components (`{"vae": "float32"}`); an unknown component is a ConfigError."""
    import torch

    for comp, name in dtypes.items():
        module = getattr(pipe, comp, None)
        if not isinstance(module, torch.nn.Module):
            known = sorted(k for k, v in pipe.components.items() if isinstance(v, torch.nn.Module))
            raise ConfigError(f"generator.dtypes: {type(pipe).__name__} has no model component '{comp}'; "
                              f"components: {', '.join(known)}")
        module.to(getattr(torch, name))


def _note_once(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        log.info(message)


def place(pipe, memory: MemoryConfig, device: str) -> tuple:
    """Move the pipeline to `device` honouring `memory`; returns (pipe, applied, unused) lists of option names."""
    applied, unused = [], []
    on_cuda = str(device).startswith("cuda")
    if memory.offload != "none" and not on_cuda:
        unused.append(f"offload={memory.offload}")
        _note_once(f"memory.offload = {memory.offload} is unused on device '{device}' (CUDA only); "
                   "the pipeline runs on the device as a whole")
    if memory.offload == "model" and on_cuda:
        pipe.enable_model_cpu_offload(device=device)
        applied.append("offload=model")
    elif memory.offload == "sequential" and on_cuda:
        pipe.enable_sequential_cpu_offload(device=device)
        applied.append("offload=sequential")
    else:
        pipe = pipe.to(device)
    vae = getattr(pipe, "vae", None)
    for flag, method in (("vae_tiling", "enable_tiling"), ("vae_slicing", "enable_slicing")):
        if getattr(memory, flag):
            if callable(getattr(vae, method, None)):
                getattr(vae, method)()
                applied.append(flag)
            else:
                unused.append(flag)
                _note_once(f"memory.{flag} is unused: {type(pipe).__name__} has no VAE with {method}()")
    if memory.attention_slicing:
        if callable(getattr(pipe, "enable_attention_slicing", None)):
            pipe.enable_attention_slicing()
            applied.append("attention_slicing")
        else:
            unused.append("attention_slicing")
    return pipe, applied, unused


def compile_denoiser(pipe) -> str:
    """`torch.compile` the pipeline's denoiser in place; returns its component name."""
    import torch

    for name in DENOISERS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile()
            return name
    raise ConfigError(f"generator.compile = true: {type(pipe).__name__} has no denoiser among {list(DENOISERS)}")


def options_record(lora_rec: list[dict], applied: list[str], unused: list[str], compiled: str | None,
                   device: str) -> dict:
    """What the resolved settings record about the options (per sample and in the set's settings)."""
    return {"lora": lora_rec, "memory_applied": applied, "memory_unused": unused,
            "memory_unused_reason": f"CUDA-only option on device '{device}'" if unused else None,
            "compiled": compiled}
