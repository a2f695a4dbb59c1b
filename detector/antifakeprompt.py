"""AntifakePrompt on transformers' InstructBlipForConditionalGeneration.

A frozen InstructBLIP answers "Is this photo real [*]?" with "yes" (real) or "no" (fake). The pseudo-word
`[*]` is added to both tokenizers and gets one learnable embedding row in each table: the Q-Former's
(768 wide on the real model) and the language model's (4096). Those two rows are the only trainable
parameters (4,864 on InstructBLIP-Vicuna-7B). They live as two small `nn.Parameter`s spliced into the
embedding lookups (`PseudoWordEmbedding`), so gradients and decoupled weight decay can only touch them
and the base tables stay bit-identical.

Scoring:
  * "logits" (default): ONE forward pass over the prompt; P(fake) = softmax over the next-token logits
    of the two answers' first tokens.
  * "loss": the paper's rule; the LM loss of each candidate answer appended to the prompt, lower wins.
    P(fake) = sigmoid(loss(real answer) - loss(fake answer)). For single-token answers both rules give
    the same probability.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fakeforge.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "Salesforce/instructblip-vicuna-7b"


@dataclass
class AntifakePromptConfig:
    """Everything needed to rebuild the detector around a base InstructBLIP checkpoint."""

    model_id: str = DEFAULT_MODEL_ID  # hub id, local folder, or "tiny:instructblip" for the tiny twin
    llm_id: str | None = None  # optional causal-LM weights swapped into the language model (e.g. vicuna v1.3)
    question: str = "Is this photo real?"
    pseudo_word: str = "[*]"
    position: Literal["postfix", "prefix", "replace"] = "postfix"
    replace_word: str = "real"  # the word `position: replace` swaps for the pseudo-word
    init_word: str | None = None  # initialise both rows from this word's embeddings (None: random)
    real_answer: str = "yes"
    fake_answer: str = "no"
    zero_shot: bool = False  # no pseudo-word at all: the untuned baseline
    scoring: Literal["logits", "loss"] = "logits"
    append_eos: bool = True  # training target is answer + EOS, as in the official code
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attn_implementation: str = "sdpa"
    seed: int = 0  # random init of the rows

    def validate(self) -> None:
        """Check the prompt settings before any model is loaded."""
        if not self.pseudo_word.strip():
            raise ConfigError(f"model.pseudo_word = {self.pseudo_word!r} must not be empty")
        if self.real_answer.strip() == self.fake_answer.strip():
            raise ConfigError(f"model.real_answer and model.fake_answer are both {self.real_answer!r}; "
                              "they must differ")
        if not self.question.strip():
            raise ConfigError("model.question must not be empty")
        if self.position == "replace" and not self.zero_shot and \
                not re.search(rf"\b{re.escape(self.replace_word)}\b", self.question):
            raise ConfigError(f"model.position = 'replace' but model.replace_word = {self.replace_word!r} "
                              f"does not occur in model.question = {self.question!r}")

    @property
    def prompt(self) -> str:
        """The instruction fed to both the Q-Former and the LM (with the pseudo-word unless zero-shot)."""
        q, w = self.question.strip(), self.pseudo_word
        if self.zero_shot:
            return q
        if self.position == "prefix":
            return f"{w} {q}"
        if self.position == "replace":
            return re.sub(rf"\b{re.escape(self.replace_word)}\b", w, q, count=1)
        m = re.match(r"^(.*?)([?.!]*)$", q, flags=re.S)  # postfix: before the final punctuation
        return f"{m.group(1).rstrip()} {w}{m.group(2)}"


class PseudoWordEmbedding(nn.Module):
    """An embedding lookup where one token id is served by its own trainable row.

    The wrapped table stays frozen and untouched; ids equal to `token_id` (which may lie beyond the
    table) read `row` instead, so only `row` can receive gradients or weight decay.
    """

    def __init__(self, base: nn.Embedding, token_id: int, row: torch.Tensor):
        super().__init__()
        self.base = base
        self.token_id = int(token_id)
        self.row = nn.Parameter(row.detach().clone().float().reshape(1, -1))

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base table (for code that inspects `get_input_embeddings().weight`)."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hit = input_ids == self.token_id
        out = self.base(input_ids.masked_fill(hit, 0))
        return torch.where(hit.unsqueeze(-1), self.row.to(out.dtype), out)


def resolve_model_id(model_id: str, tiny: bool = False) -> str:
    """Map "tiny:NAME" (or any id when `tiny`) to the local tiny-twin folder."""
    if tiny or model_id.startswith("tiny:"):
        from fakeforge.tiny import ensure_tiny

        name = model_id.split(":", 1)[1] if model_id.startswith("tiny:") else "instructblip"
        return str(ensure_tiny(name))
    return model_id


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """"auto"/None: CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _disable_dropout(model: nn.Module) -> None:
    """The base model is frozen: switch dropout off so train and eval mode compute the same function."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _swap_llm_weights(model: nn.Module, llm_id: str) -> None:
    """Load another causal LM's weights (same architecture) into `model.language_model`."""
    from transformers import AutoModelForCausalLM

    log.info("loading language-model weights from %s", llm_id)
    llm = AutoModelForCausalLM.from_pretrained(llm_id, dtype=model.dtype)
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
            elif value.dim() == 2 and value.shape[1] == target.shape[1]:  # vocab differs (e.g. "<image>")
                n = min(value.shape[0], target.shape[0])
                target[:n].copy_(value[:n])
                log.info("%s: copied %d of %d rows from %s", name, n, target.shape[0], llm_id)
            else:
                raise ConfigError(f"model.llm_id = {llm_id!r}: weight {name} has shape {tuple(value.shape)}, "
                                  f"the base model needs {tuple(target.shape)}")
    del llm, src


class AntifakePrompt(nn.Module):
    """InstructBLIP + the `[*]` pseudo-word: training loss and P(fake) scores for batches of images."""

    def __init__(self, model: nn.Module, processor, config: AntifakePromptConfig):
        super().__init__()
        self.config = config
        self.model = model
        self.lm_tokenizer = processor.tokenizer
        self.qformer_tokenizer = processor.qformer_tokenizer
        self.image_processor = processor.image_processor
        model.requires_grad_(False)
        _disable_dropout(model)
        self.lm_embed: PseudoWordEmbedding | None = None
        self.qformer_embed: PseudoWordEmbedding | None = None
        if not config.zero_shot:
            self._add_pseudo_word()
        self.prompt = config.prompt
        if getattr(model.config, "image_token_index", None) is None:
            raise ConfigError(f"base model {config.model_id!r} has no image_token_index in its config (a "
                              "checkpoint saved before transformers 4.45?); re-save it with a current processor")
        self.num_query_tokens = int(model.config.num_query_tokens)
        self.image_token_id = int(model.config.image_token_index)
        self.answer_ids = [self._answer_ids(config.real_answer), self._answer_ids(config.fake_answer)]
        if self.answer_ids[0][0] == self.answer_ids[1][0]:
            raise ConfigError(f"answers {config.real_answer!r} and {config.fake_answer!r} start with the same "
                              "token; one-pass scoring needs different first tokens")
        self.eval()

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: AntifakePromptConfig, device: str | torch.device | None = None,
                    tiny: bool = False) -> "AntifakePrompt":
        """Load the base InstructBLIP named by `config.model_id` and add the pseudo-word rows."""
        from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

        device = pick_device(device)
        model_id = resolve_model_id(config.model_id, tiny)
        dtype = _pick_dtype(config.dtype, device)
        log.info("loading %s (%s, %s, attention=%s)", model_id, device, dtype, config.attn_implementation)
        try:
            processor = InstructBlipProcessor.from_pretrained(model_id)
            model = InstructBlipForConditionalGeneration.from_pretrained(
                model_id, dtype=dtype, attn_implementation=config.attn_implementation)
        except OSError as exc:
            raise ConfigError(f"cannot load base model model.model_id = {model_id!r}: {exc}") from None
        if config.llm_id and not (tiny or config.model_id.startswith("tiny:")):
            try:
                _swap_llm_weights(model, config.llm_id)
            except OSError as exc:
                raise ConfigError(f"cannot load model.llm_id = {config.llm_id!r}: {exc}") from None
        detector = cls(model, processor, config)
        return detector.to(device)

    def _add_pseudo_word(self) -> None:
        from tokenizers import AddedToken

        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        ids = []
        for tok in (self.lm_tokenizer, self.qformer_tokenizer):
            tok.add_tokens([AddedToken(cfg.pseudo_word, special=True, normalized=False)])
            ids.append(tok.convert_tokens_to_ids(cfg.pseudo_word))
        lm_base, qf_base = self.model.get_input_embeddings(), self.model.qformer.get_input_embeddings()
        self.lm_embed = PseudoWordEmbedding(lm_base, ids[0], self._init_row(lm_base, self.lm_tokenizer, gen))
        self.qformer_embed = PseudoWordEmbedding(qf_base, ids[1], self._init_row(qf_base, self.qformer_tokenizer, gen))
        self.model.set_input_embeddings(self.lm_embed)
        self.model.qformer.set_input_embeddings(self.qformer_embed)

    def _init_row(self, table: nn.Embedding, tokenizer, gen: torch.Generator) -> torch.Tensor:
        if table.weight.is_meta:  # shape-only model (e.g. counting parameters of the full-size config)
            return 0.02 * torch.randn((1, table.weight.shape[1]), generator=gen)
        weight = table.weight.detach().float().cpu()
        if self.config.init_word:
            word_ids = tokenizer(self.config.init_word, add_special_tokens=False).input_ids
            word_ids = [i for i in word_ids if i < weight.shape[0]]
            if not word_ids:
                raise ConfigError(f"model.init_word = {self.config.init_word!r} has no token in the vocabulary")
            return weight[word_ids].mean(0, keepdim=True)
        mean, std = weight.mean(0, keepdim=True), weight.std()
        return mean + std * torch.randn(mean.shape, generator=gen)

    def _answer_ids(self, answer: str) -> list[int]:
        ids = self.lm_tokenizer(answer, add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(f"answer {answer!r} tokenizes to nothing")
        return list(ids)

    # -------------------------------------------------------------------------------------- parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The two pseudo-word rows (empty for the zero-shot baseline)."""
        return [e.row for e in (self.qformer_embed, self.lm_embed) if e is not None]

    def num_trainable(self) -> int:
        """Trainable parameter count: Q-Former width + LM width (4,864 on InstructBLIP-Vicuna-7B)."""
        return sum(p.numel() for p in self.trainable_parameters())

    def row_widths(self) -> dict[str, int]:
        """Widths of the two embedding tables of the base model."""
        return {"qformer": int(self.model.qformer.get_input_embeddings().weight.shape[1]),
                "lm": int(self.model.get_input_embeddings().weight.shape[1])}

    def rows(self) -> dict[str, torch.Tensor]:
        """The two learned rows as float32 CPU tensors ([1, width] each)."""
        if self.lm_embed is None or self.qformer_embed is None:
            raise ConfigError("the zero-shot detector has no pseudo-word rows to save")
        return {"qformer_row": self.qformer_embed.row.detach().float().cpu().clone(),
                "lm_row": self.lm_embed.row.detach().float().cpu().clone()}

    def load_rows(self, rows: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy saved rows in, refusing rows made for a base model of another width."""
        if self.lm_embed is None or self.qformer_embed is None:
            raise ConfigError("cannot load pseudo-word rows into a zero-shot detector")
        widths = self.row_widths()
        got = {k: int(rows[f"{k}_row"].reshape(1, -1).shape[1]) for k in ("qformer", "lm")}
        if got != widths:
            raise ConfigError(
                f"{source} was made for another base model: its rows are {got['qformer']} (Q-Former) + "
                f"{got['lm']} (LM) wide, but base model {self.config.model_id!r} has {widths['qformer']} "
                f"(Q-Former) + {widths['lm']} (LM)")
        with torch.no_grad():
            self.qformer_embed.row.copy_(rows["qformer_row"].reshape(1, -1))
            self.lm_embed.row.copy_(rows["lm_row"].reshape(1, -1))

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (the base model has dropout off, so train() is safe)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._checkpointing = True

    def train(self, mode: bool = True) -> "AntifakePrompt":
        # Train mode matters only for gradient checkpointing; dropout is off in the frozen base model.
        super().train(mode)
        self.model.train(mode and getattr(self, "_checkpointing", False))
        return self

    # ----------------------------------------------------------------------------------------- encoding
    def _encode(self, batch_size: int, answers: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """LM + Q-Former inputs for `batch_size` copies of the prompt, answer ids appended, left padded."""
        prompt_ids = self.lm_tokenizer(self.prompt, add_special_tokens=True).input_ids
        head = [self.image_token_id] * self.num_query_tokens + list(prompt_ids)
        seqs = [head + (answers[i] if answers else []) for i in range(batch_size)]
        width = max(len(s) for s in seqs)
        pad = self.lm_tokenizer.pad_token_id if self.lm_tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, seq in enumerate(seqs):
            input_ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
            if answers:
                n = len(answers[i])
                labels[i, width - n:] = torch.tensor(answers[i])
        qf = self.qformer_tokenizer([self.prompt] * batch_size, return_tensors="pt", padding=True)
        dev = self.device
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev), "labels": labels.to(dev),
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(dev),
                "qformer_input_ids": qf.input_ids.to(dev), "qformer_attention_mask": qf.attention_mask.to(dev)}

    def _forward(self, pixel_values: torch.Tensor, enc: dict, keep: int) -> torch.Tensor:
        vision_dtype = self.model.vision_model.embeddings.patch_embedding.weight.dtype
        pixel_values = pixel_values.to(self.device, vision_dtype)
        out = self.model(pixel_values=pixel_values, qformer_input_ids=enc["qformer_input_ids"],
                         qformer_attention_mask=enc["qformer_attention_mask"], input_ids=enc["input_ids"],
                         attention_mask=enc["attention_mask"], position_ids=enc["position_ids"],
                         logits_to_keep=keep, use_cache=False)
        return out.logits.float()

    def answer_losses(self, pixel_values: torch.Tensor, answers: list[list[int]],
                      return_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-sample mean cross-entropy of `answers[i]` after the prompt, shape [B].

        With `return_scores`, also the one-pass P(fake) read from the same forward pass (the logits at
        the position that predicts the first answer token)."""
        enc = self._encode(pixel_values.shape[0], answers)
        k = max(len(a) for a in answers)
        logits = self._forward(pixel_values, enc, keep=k + 1)  # the last k+1 positions
        labels = enc["labels"][:, -k:]
        nll = nn.functional.cross_entropy(logits[:, :k].transpose(1, 2), labels, ignore_index=-100,
                                          reduction="none")
        valid = (labels != -100).float()
        losses = (nll * valid).sum(1) / valid.sum(1).clamp(min=1)
        if not return_scores:
            return losses
        first = torch.tensor([k - len(a) for a in answers], device=logits.device)
        nxt = logits[torch.arange(len(answers), device=logits.device), first]
        pair = nxt[:, [self.answer_ids[0][0], self.answer_ids[1][0]]]
        return losses, pair.softmax(-1)[:, 1].detach().cpu()

    def target_ids(self, labels: torch.Tensor) -> list[list[int]]:
        """Training targets: the real/fake answer ids (label 0 = real, 1 = fake), EOS appended if configured."""
        eos = [self.lm_tokenizer.eos_token_id] if self.config.append_eos else []
        return [self.answer_ids[int(y)] + eos for y in labels.tolist()]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss: mean over the batch of the answer tokens' cross-entropy."""
        return self.answer_losses(pixel_values, self.target_ids(labels)).mean()

    # ------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """P(fake) from one forward pass: softmax over the two answers' first-token next-token logits."""
        enc = self._encode(pixel_values.shape[0])
        last = self._forward(pixel_values, enc, keep=1)[:, -1]
        pair = last[:, [self.answer_ids[0][0], self.answer_ids[1][0]]]
        return pair.softmax(-1)[:, 1].cpu()

    @torch.no_grad()
    def score_loss(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """P(fake) by the paper's rule: sigmoid(loss(real answer) - loss(fake answer)); >0.5 iff fake wins."""
        b = pixel_values.shape[0]
        loss_real = self.answer_losses(pixel_values, [self.answer_ids[0]] * b)
        loss_fake = self.answer_losses(pixel_values, [self.answer_ids[1]] * b)
        return torch.sigmoid(loss_real - loss_fake).cpu()

    def score(self, pixel_values: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """P(fake) per image with `method` ("logits" or "loss"; default from the config)."""
        method = method or self.config.scoring
        if method == "logits":
            return self.score_logits(pixel_values)
        if method == "loss":
            return self.score_loss(pixel_values)
        raise ConfigError(f"scoring = {method!r} must be 'logits' or 'loss'")
