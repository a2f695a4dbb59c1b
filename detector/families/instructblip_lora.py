"""InstructBLIP + LoRA: the AntifakePrompt paper's ablation row (LoRA instead of the pseudo-word).

The same frozen InstructBLIP, the same question ("Is this photo real?", no pseudo-word: the official LoRA model
keeps the plain prompt), the same answers ("yes" = real, "no" = fake), the same losses and scoring rules as
`detector.families.antifakeprompt.model.AntifakePrompt` (this class reuses them unchanged). What trains instead of the two
`[*]` rows is a LoRA adapter from `peft` on the language model only, configured as the official code
(nctu-eva-lab/AntifakePrompt, `lavis/models/blip2_models/blip2_vicuna_instruct_lora.py` with
`lora_on_LLM: True`, `lora_on_Qformer: False`): `LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1)` with peft's
default LLaMA targets `q_proj` and `v_proj`. On Vicuna-7B that is 32 layers x 2 projections x (4096 x 8 + 8 x 4096)
= 4,194,304 trainable parameters (`num_trainable()` gives this number; the paper's table prints 419.43K).

The adapter is injected in place (`peft.inject_adapter_in_model`), so the model keeps transformers' class and
AntifakePrompt's forward code runs on it as it is; the adapter tensors are kept in float32 whatever the LLM's
dtype (fp16 parameters cannot be trained under a gradient scaler). Checkpoints are the generic `detector.checkpoint`
folders: `weights.safetensors` holds only the `lora_A`/`lora_B` tensors, `detector.json` the base identity.
The vision encoder is untouched by LoRA, so it is the shared stage of a side-by-side eval with the same key as
AntifakePrompt's: LoRA and AntifakePrompt checkpoints on one base compute it once per batch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from detector.families.antifakeprompt.loading import PRECISIONS
from detector.families.antifakeprompt.model import DEFAULT_MODEL_ID, AntifakePrompt
from detector.base import CheckpointError, Detector, Preprocess
from fakeforge.config import ConfigError, from_dict, to_dict

if TYPE_CHECKING:
    from detector.train.config import TrainConfig

__all__ = ["InstructBlipLora", "InstructBlipLoraConfig", "SharedLoraCheckpoint", "lora_parameter_count",
           "peft_lora_config"]

OFFICIAL_TARGETS = ["q_proj", "v_proj"]  # peft's default targets for LLaMA (the official code names none)
# config fields that do not change the loaded base model or the adapter's shape
ADAPTER_ONLY_FIELDS = ("seed", "scoring", "train_dropout")


@dataclass
class InstructBlipLoraConfig:
    """The base InstructBLIP, the prompt and answers (as AntifakePrompt's zero-shot prompt) and the LoRA recipe."""

    model_id: str = DEFAULT_MODEL_ID  # hub id, local folder, or "tiny:instructblip"
    llm_id: str | None = None  # causal-LM weights swapped into the language model (official: vicuna v1.3)
    question: str = "Is this photo real?"
    real_answer: str = "yes"
    fake_answer: str = "no"
    scoring: Literal["logits", "loss"] = "logits"
    append_eos: bool = True
    lm_bos_token: str = "</s>"
    dtype: Literal["official", "fp16-mixed", "auto", "float32", "bfloat16", "float16"] = "official"
    train_dropout: bool = True  # the Q-Former's dropout (0.1) in training, as in LAVIS
    attn_implementation: str = "sdpa"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(OFFICIAL_TARGETS))
    seed: int = 0  # the random init of lora_A (lora_B starts at zero: the untrained model is the base model)

    # AntifakePrompt's prompt code reads these: no pseudo-word, the question as it is
    zero_shot: ClassVar[bool] = True

    def validate(self) -> None:
        """Check the prompt and LoRA settings before any model is loaded."""
        if not self.question.strip():
            raise ConfigError("model.question must not be empty")
        if self.real_answer.strip() == self.fake_answer.strip():
            raise ConfigError(f"model.real_answer and model.fake_answer are both {self.real_answer!r}; they must differ")
        if not self.lm_bos_token:
            raise ConfigError("model.lm_bos_token must not be empty (the official prompt starts with </s>)")
        if self.dtype not in PRECISIONS:
            raise ConfigError(f"model.dtype = {self.dtype!r} is not one of {list(PRECISIONS)}")
        if self.lora_r < 1:
            raise ConfigError(f"model.lora_r = {self.lora_r} must be a positive rank")
        if not self.lora_alpha > 0:
            raise ConfigError(f"model.lora_alpha = {self.lora_alpha} must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"model.lora_dropout = {self.lora_dropout} must be within [0, 1)")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError(f"model.target_modules = {self.target_modules} must name at least one module")

    def to_tiny(self) -> InstructBlipLoraConfig:
        """The same detector on the tiny InstructBLIP twin (`--tiny`): no separate LLM weights, float32."""
        return replace(self, model_id="tiny:instructblip", llm_id=None, dtype="float32")

    @property
    def prompt(self) -> str:
        return self.question.strip()

    def prompt_chunks(self) -> list[str]:
        return [self.prompt]


def lora_parameter_count(hidden: int, layers: int, r: int, targets: int = 2, out: int | None = None) -> int:
    """LoRA parameters on `targets` square projections per layer: layers x targets x r x (in + out)."""
    return layers * targets * r * (hidden + (out or hidden))


def peft_lora_config(config: InstructBlipLoraConfig):
    """The `peft.LoraConfig` of `config` (the official one by default: r 8, alpha 32, dropout 0.1, no bias)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), bias="none")


class InstructBlipLora(AntifakePrompt):
    """AntifakePrompt's InstructBLIP, prompt and rules with a peft LoRA adapter on the LLM as the trained state."""

    name: ClassVar[str] = "instructblip_lora"
    config_class: ClassVar[type] = InstructBlipLoraConfig
    weights_file: ClassVar[str] = "weights.safetensors"
    accepted_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, processor, config: InstructBlipLoraConfig, precision=None):
        super().__init__(model, processor, config, precision)  # freezes everything, no pseudo-word
        from peft import inject_adapter_in_model

        lora = peft_lora_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            try:
                inject_adapter_in_model(lora, model.language_model)
            except ValueError as exc:  # peft: "Target modules ... not found in the base model"
                raise ConfigError(f"model.target_modules = {config.target_modules}: {exc}") from None
        for tensor in self.adapter_parameters().values():  # float32 adapters on any LLM dtype
            tensor.data = tensor.data.float()
        self.eval()

    # ----------------------------------------------------------------------------------------- parameters
    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The LoRA tensors by their state-dict names (`model.language_model.layers.N.self_attn.q_proj.lora_A...`)."""
        return {n: p for n, p in self.named_parameters() if ".lora_" in n}

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.adapter_parameters().items() if p.requires_grad}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    def num_trainable(self) -> int:
        """LoRA parameters: layers x targets x r x (in + out); 4,194,304 on Vicuna-7B with r 8 on q_proj, v_proj."""
        return sum(p.numel() for p in self.trainable_parameters())

    def trainable_summary(self) -> str:
        c, lm = self.config, self.lm_shape()
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return (f"trainable parameters: {self.num_trainable():,} (LoRA r {c.lora_r}, alpha {c.lora_alpha} on "
                f"{'/'.join(c.target_modules)} of {lm['layers']} LLM layers; frozen: {frozen:,}); "
                f"precision {self.precision.describe()}")

    def lm_shape(self) -> dict[str, int]:
        """Width, depth and vocabulary of the language model (what an adapter must fit)."""
        cfg = self.model.language_model.config
        return {"hidden": int(cfg.hidden_size), "layers": int(cfg.num_hidden_layers), "vocab": int(cfg.vocab_size)}

    # ----------------------------------------------------------------------------------------- state
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Only the adapter tensors (float32, CPU)."""
        return {k: v.detach().float().cpu().clone().contiguous() for k, v in self.adapter_parameters().items()}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy adapter tensors in: the same names and shapes, finite values, nothing else."""
        expected = self.adapter_parameters()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{source} does not fit {self.name!r}: missing tensors {missing[:3]}, "
                                  f"unexpected tensors {unexpected[:3]}")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(f"{source}: tensor {key} has shape {tuple(value.shape)}, this "
                                      f"{self.name!r} needs {tuple(expected[key].shape)}")
            if not torch.isfinite(value.float()).all():
                raise CheckpointError(f"{source}: tensor {key} holds NaN/inf values; retrain or use another checkpoint")
        with torch.no_grad():
            for key, value in tensors.items():
                expected[key].copy_(value)

    def identity(self) -> dict:
        """The base model (shown) and what the adapter must fit (compared): LLM shape and the LoRA layout."""
        c = self.config
        return {"detector": self.name, "base_model": c.model_id, "llm_id": c.llm_id, "lm": self.lm_shape(),
                "lora": {"r": c.lora_r, "alpha": c.lora_alpha, "targets": sorted(c.target_modules)}}

    def describe(self) -> dict:
        return {"trainable_summary": self.trainable_summary(), "prompt": self.prompt,
                "official_count_vicuna_7b": lora_parameter_count(4096, 32, 8)}

    # ----------------------------------------------------------------------------------------- training
    @classmethod
    def check_train_config(cls, cfg: TrainConfig) -> None:
        Detector.check_train_config.__func__(cls, cfg)  # AntifakePrompt's refuses zero-shot prompts; this one trains

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations; the LLM's inputs need gradients so the adapters inside checkpointed layers get them."""
        super().enable_gradient_checkpointing()
        self.model.language_model.enable_input_require_grads()

    # ----------------------------------------------------------------------------------------- I/O: generic format
    def save(self, out_dir: str | Path, training: dict | None = None) -> Path:
        return Detector.save(self, out_dir, training)

    @classmethod
    def load(cls, path: str | Path, device=None, tiny: bool = False,
             model_overrides: dict | None = None) -> InstructBlipLora:
        from detector.checkpoint import load_generic

        return load_generic(cls, path, device, tiny, model_overrides)

    def restore(self, path: str | Path) -> dict:
        return Detector.restore(self, path)

    @classmethod
    def load_many(cls, paths: list, device=None, tiny: bool = False) -> list:
        """Checkpoints whose configs differ only in `ADAPTER_ONLY_FIELDS` share ONE loaded base model; each one's
        adapter tensors are copied in before it scores (`SharedLoraCheckpoint`). Every file is checked first."""
        from detector.checkpoint import _read_tensors, read_detector_meta

        entries = []
        for path in paths:
            meta = read_detector_meta(path)
            if meta["detector"] != cls.name:
                raise CheckpointError(f"checkpoint '{path}' is a {meta['detector']!r} detector, not {cls.name!r}")
            try:
                cfg = from_dict(cls.config_class, dict(meta["model"]), "model")
            except ConfigError as exc:
                raise CheckpointError(f"checkpoint '{path}': {exc}") from None
            entries.append((Path(path), meta, cfg, _read_tensors(Path(path), cls.weights_file)))
        groups: dict[str, list[int]] = {}
        for i, (_p, _m, cfg, _t) in enumerate(entries):
            key = json.dumps({k: v for k, v in to_dict(cfg).items() if k not in ADAPTER_ONLY_FIELDS}, sort_keys=True)
            groups.setdefault(key, []).append(i)
        out: list = [None] * len(entries)
        for index in groups.values():
            base = cls.load(entries[index[0]][0], device=device, tiny=tiny)
            for i in index:
                path, meta, cfg, tensors = entries[i]
                source = f"checkpoint '{path}'"
                base.check_identity(meta.get("identity") or {}, source=source)
                base.load_checkpoint_state(tensors, source=source)
                out[i] = SharedLoraCheckpoint(base, tensors, cfg, Preprocess.from_dict(meta["preprocess"]), meta,
                                              source)
        return out

    # ----------------------------------------------------------------------------------------- reporting
    def report_info(self, method: str | None = None, preprocess: Preprocess | None = None) -> dict:
        info = super().report_info(method, preprocess)
        info.update({"detector": self.name, "identity": self.identity(), "trainable_parameters": self.num_trainable(),
                     "preprocess": (preprocess or self.preprocess).to_dict()})
        return info


class SharedLoraCheckpoint:
    """One LoRA checkpoint on a base model loaded once for several (a side-by-side eval); it scores exactly like
    the checkpoint loaded alone: its adapter tensors are copied in before each use, its scoring rule and
    preprocessing apply, and the vision encoder (no adapter in it) is the shared stage."""

    name = InstructBlipLora.name
    fit_mode = InstructBlipLora.fit_mode
    scoring_methods = InstructBlipLora.scoring_methods

    def __init__(self, base: InstructBlipLora, tensors: dict[str, torch.Tensor], config: InstructBlipLoraConfig,
                 preprocess: Preprocess, meta: dict, source: str):
        self.base, self.tensors, self.config, self.preprocess = base, tensors, config, preprocess
        self.checkpoint_meta, self.source = meta, source

    @property
    def device(self) -> torch.device:
        return self.base.device

    def check_method(self, method: str | None) -> str:
        method = method or self.config.scoring
        if method not in self.scoring_methods:
            raise ConfigError(f"scoring = {method!r} must be one of {list(self.scoring_methods)}")
        return method

    def score(self, pixels: torch.Tensor, method: str | None = None) -> torch.Tensor:
        return self.score_from_shared(self.shared_stage(pixels), method)

    def shared_stage_key(self) -> str:
        return self.base.shared_stage_key(self.preprocess)

    def shared_stage(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.shared_stage(pixels)

    def score_from_shared(self, stage: torch.Tensor, method: str | None = None) -> torch.Tensor:
        self.base.load_checkpoint_state(self.tensors, source=self.source)
        return self.base.score_from_shared(stage, self.check_method(method))

    def num_trainable(self) -> int:
        return self.base.num_trainable()

    def identity(self) -> dict:
        return self.base.identity()

    def banner(self, checkpoint: str, image_loading: str = "fakeforge", method: str | None = None) -> list[str]:
        return self.base.banner(checkpoint, image_loading, self.check_method(method), self.preprocess)

    def report_info(self, method: str | None = None) -> dict:
        return self.base.report_info(self.check_method(method), self.preprocess)
