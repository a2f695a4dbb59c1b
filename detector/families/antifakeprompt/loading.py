"""Loading the base InstructBLIP for AntifakePrompt: precision policies, the tiny twin, LLM weight swaps.

Precision policies (`model.dtype`):

  official     What the official AntifakePrompt/LAVIS code runs. On CUDA that is `fp16-mixed`; on CPU
               LAVIS casts the whole model to float32 (`load_model(..., device="cpu")` calls `.float()`),
               and so does this policy.
  fp16-mixed   ViT fp16 and LLM fp16 under fp16 autocast, Q-Former, query tokens, the ViT's last LayerNorm
               (LAVIS's `ln_vision`) and the Q-Former->LLM projection in float32 (loaded in float32 from the
               checkpoint, never rounded through fp16), the LLM's input embeddings in float32. At inference
               the Q-Former and the projection run outside autocast, as in the official `predict_class`;
               in training the whole forward runs under autocast, as in the official train step.
  auto         bf16 everywhere on CUDA (fp16 where bf16 is unsupported), float32 on CPU.
  float32 / bfloat16 / float16   everything in that dtype, no autocast.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("official", "fp16-mixed", "auto", "float32", "bfloat16", "float16")
# Parts kept in float32 by the fp16-mixed policy (matched against parameter names while loading).
FP32_PARTS = ["query_tokens", "qformer", "language_projection", "vision_model.post_layernorm"]
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Precision:
    """Resolved dtypes of the three parts, the autocast dtype (None: off) and the LLM input-embedding dtype."""

    policy: str
    vision: torch.dtype
    qformer: torch.dtype
    lm: torch.dtype
    autocast: torch.dtype | None = None
    embeds: torch.dtype | None = None  # None: the LLM's own dtype

    @property
    def mixed(self) -> bool:
        return len({self.vision, self.qformer, self.lm}) > 1

    def describe(self) -> str:
        """One line for logs and start-up banners, e.g. "official: ViT fp16, Q-Former fp32, LLM fp16, ..."."""
        parts = f"ViT {_SHORT[self.vision]}, Q-Former {_SHORT[self.qformer]}, LLM {_SHORT[self.lm]}"
        if self.autocast is not None:
            parts += f", {_SHORT[self.autocast]} autocast"
        return f"{self.policy}: {parts}"

    def as_dict(self) -> dict:
        """JSON-able form for detector.json."""
        return {"policy": self.policy, "vision": _SHORT[self.vision], "qformer": _SHORT[self.qformer],
                "lm": _SHORT[self.lm], "autocast": _SHORT.get(self.autocast), "text": self.describe()}


def resolve_precision(policy: str, device: torch.device) -> Precision:
    """The dtypes `policy` (see the module docstring) gives on `device`."""
    if policy not in PRECISIONS:
        raise ConfigError(f"model.dtype = {policy!r} is not one of {list(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if policy == "official":
        if cuda:
            return _fp16_mixed("official")
        return Precision("official (CPU: float32, as LAVIS on CPU)", torch.float32, torch.float32, torch.float32)
    if policy == "fp16-mixed":
        return _fp16_mixed("fp16-mixed")
    if policy == "auto":
        if cuda:
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return Precision("auto", dt, dt, dt)
        return Precision("auto", torch.float32, torch.float32, torch.float32)
    dt = getattr(torch, policy)
    return Precision(policy, dt, dt, dt)


def _fp16_mixed(name: str) -> Precision:
    return Precision(name, torch.float16, torch.float32, torch.float16, autocast=torch.float16,
                     embeds=torch.float32)


def precision_of(model: nn.Module) -> Precision:
    """The precision an already loaded model runs in (no autocast)."""
    return Precision("as loaded", model.vision_model.embeddings.patch_embedding.weight.dtype,
                     model.qformer.embeddings.layernorm.weight.dtype,
                     model.language_model.get_input_embeddings().weight.dtype)


def resolve_model_id(model_id: str, tiny: bool = False) -> str:
    """Map "tiny:NAME" (or any id when `tiny`) to the local tiny-twin folder."""
    if tiny or model_id.startswith("tiny:"):
        from fakeforge.twins import ensure_tiny

        name = model_id.split(":", 1)[1] if model_id.startswith("tiny:") else "instructblip"
        return str(ensure_tiny(name))
    return model_id


def load_base(model_id: str, precision: Precision, attn_implementation: str = "sdpa"):
    """(model, processor) of an InstructBLIP folder or hub id, in `precision`'s dtypes."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    cls = InstructBlipForConditionalGeneration
    if precision.mixed:
        # The real class, told which parts transformers must keep in float32 while loading in fp16: the
        # float32 checkpoint values of the Q-Former are used as they are, never rounded through fp16.
        cls = type("InstructBlipForConditionalGenerationFp16Mixed", (InstructBlipForConditionalGeneration,),
                   {"_keep_in_fp32_modules": FP32_PARTS})
    try:
        processor = InstructBlipProcessor.from_pretrained(model_id)
        model = cls.from_pretrained(model_id, dtype=precision.lm if precision.mixed else precision.vision,
                                    attn_implementation=attn_implementation)
    except OSError as exc:
        raise ConfigError(f"cannot load base model model.model_id = {model_id!r}: {exc}") from None
    if precision.mixed:  # enforce the policy whatever the transformers version did while loading
        model.vision_model.to(precision.vision)
        model.language_model.to(precision.lm)
        for name in ("qformer", "language_projection"):
            getattr(model, name).to(precision.qformer)
        model.vision_model.post_layernorm.to(torch.float32)
        model.query_tokens.data = model.query_tokens.data.float()
    return model, processor


def swap_llm_weights(model: nn.Module, llm_id: str) -> None:
    """Load another causal LM's weights (same architecture) into `model.language_model`, keeping its dtypes.

    Rows beyond the other LM's vocabulary (InstructBLIP's `[PAD]`, `<image>`) keep the base model's values."""
    from transformers import AutoModelForCausalLM

    log.info("loading language-model weights from %s", llm_id)
    try:
        llm = AutoModelForCausalLM.from_pretrained(llm_id, dtype=model.language_model.dtype)
    except OSError as exc:
        raise ConfigError(f"cannot load model.llm_id = {llm_id!r}: {exc}") from None
    src = llm.state_dict()
    dst = model.language_model.state_dict()
    missing = sorted(set(dst) - set(src))
    if missing:
        raise ConfigError(f"model.llm_id = {llm_id!r} does not fit the base language model; "
                          f"missing weights: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, target in dst.items():
            value = src[name].to(target.dtype)
            if value.shape == target.shape:
                target.copy_(value)
            elif value.dim() == 2 and value.shape[1] == target.shape[1]:  # vocab differs ([PAD], <image>)
                n = min(value.shape[0], target.shape[0])
                target[:n].copy_(value[:n])
                log.info("%s: copied %d of %d rows from %s", name, n, target.shape[0], llm_id)
            else:
                raise ConfigError(f"model.llm_id = {llm_id!r}: weight {name} has shape {tuple(value.shape)}, "
                                  f"the base model needs {tuple(target.shape)}")
    del llm, src


def disable_dropout(module: nn.Module) -> None:
    """Switch every dropout in `module` off, so its train and eval modes compute the same function."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        if isinstance(getattr(sub, "attention_dropout", None), float):
            sub.attention_dropout = 0.0
