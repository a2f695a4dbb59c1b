"""AntifakePrompt on transformers' InstructBlipForConditionalGeneration, token-for-token like the official code.

A frozen InstructBLIP answers "Is this photo real [*]?" with "yes" (real) or "no" (fake). The pseudo-word
`[*]` is added to both tokenizers and gets one learnable embedding row in each table: the Q-Former's
(768 wide on the real model) and the language model's (4096). Those two rows are the only trainable
parameters (4,864 on InstructBLIP-Vicuna-7B). They live as two small `nn.Parameter`s spliced into the
embedding lookups (`PseudoWordEmbedding`), so gradients and decoupled weight decay can only touch them
and the base tables stay bit-identical.

Inputs are built as the official code (nctu-eva-lab/AntifakePrompt, LAVIS fork) builds them:
  * LM prompt: BOS `</s>` (id 2 on LLaMA), then the text before and after the pseudo-word, each stripped and
    encoded on its own (what LLaMA's slow tokenizer did around a special token in transformers 4.28-4.33):
    `</s> ▁Is ▁this ▁photo ▁real [*] ▁?`. The 32 query embeddings come first.
  * Q-Former prompt: `[CLS] is this photo real [*] ? [SEP]`.
  * Answers: "yes"/"no" encoded bare (`▁yes`, `▁no`); training targets add EOS `</s>`.

Rules:
  * training loss: cross-entropy summed over all answer tokens of the batch / their count (LAVIS's loss).
  * "loss" scoring, the paper's rule: per candidate, the SUM of its answer-token losses (the official
    mean over all positions has one divisor for both candidates, so the decision is the sum's); one batched
    pass over images x candidates with the image encoded once. P(fake) = sigmoid(loss(yes) - loss(no)).
  * "logits" scoring: ONE forward pass over the prompt; P(fake) = softmax over the next-token logits of the
    answers' tokens. Only defined for one-token answers (then it equals the loss rule); longer answers are
    refused with a pointer to "loss".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from detector.base import FIT_GRADIENT, CheckpointError, Detector, Preprocess
from detector.checkpoint import ZERO_SHOT
from detector.checkpoint_files import not_a_detector_checkpoint
from detector.families.antifakeprompt.checkpoint import (
    META_FILE,
    ROW_ONLY_FIELDS,
    ROWS_FILE,
    preprocess_dict,
    read_meta,
    read_rows,
    save_checkpoint,
)
from detector.families.antifakeprompt.checkpoint import default_preprocess as preprocess_of
from detector.families.antifakeprompt.config import (  # noqa: F401  (the config's names, importable from here)
    DEFAULT_MODEL_ID,
    OFFICIAL_LLM_ID,
    AntifakePromptConfig,
    default_preprocess,
    encode_prompt,
)
from detector.families.antifakeprompt.loading import (
    Precision,
    disable_dropout,
    load_base,
    precision_of,
    resolve_model_id,
    resolve_precision,
    swap_llm_weights,
)
from fakeforge.config import ConfigError, from_dict, to_dict
from fakeforge.devices import pick_device

if TYPE_CHECKING:
    from detector.train.config import TrainConfig

log = logging.getLogger(__name__)

class PseudoWordEmbedding(nn.Module):
    """An embedding lookup where one token id is served by its own trainable row.

    The wrapped table stays frozen and untouched; ids equal to `token_id` (which may lie beyond the
    table) read `row` instead, so only `row` can receive gradients or weight decay. `out_dtype` (None: the
    table's) is the dtype of the returned embeddings.
    """

    def __init__(self, base: nn.Embedding, token_id: int, row: torch.Tensor):
        super().__init__()
        self.base = base
        self.token_id = int(token_id)
        self.row = nn.Parameter(row.detach().clone().float().reshape(1, -1))
        self.out_dtype: torch.dtype | None = None

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
        if self.out_dtype is not None:
            out = out.to(self.out_dtype)
        return torch.where(hit.unsqueeze(-1), self.row.to(out.dtype), out)


class AntifakePrompt(Detector):
    """InstructBLIP + the `[*]` pseudo-word: training loss and P(fake) scores for batches of images.

    Behind `detector.base.Detector`: the trained state is the two rows (`rows()` / `load_rows()`), checkpoints
    keep AntifakePrompt's own format (`detector/families/antifakeprompt/checkpoint.py`), the input size and mean/std come from the
    training data (`data.image_size`, `data.mean/std` or measured), and the vision encoder is the shared stage
    of a side-by-side eval."""

    name: ClassVar[str] = "antifakeprompt"
    config_class: ClassVar[type] = AntifakePromptConfig
    fit_mode: ClassVar[str] = FIT_GRADIENT
    scoring_methods: ClassVar[tuple[str, ...]] = ("logits", "loss")
    weights_file: ClassVar[str] = "pseudo_word.safetensors"
    accepted_formats: ClassVar[tuple[str, ...]] = ("fakeforge.antifakeprompt",)
    data_statistics: ClassVar[bool] = True
    resizable_input: ClassVar[bool] = True

    def __init__(self, model: nn.Module, processor, config: AntifakePromptConfig,
                 precision: Precision | None = None):
        super().__init__(config, Preprocess())
        self.model = model
        self.precision = precision or precision_of(model)
        self.lm_tokenizer = processor.tokenizer
        self.qformer_tokenizer = processor.qformer_tokenizer
        self.image_processor = processor.image_processor
        model.requires_grad_(False)
        disable_dropout(model.vision_model)  # no dropout in the official ViT and LLM: train == eval there
        disable_dropout(model.language_model)
        if not config.train_dropout:
            disable_dropout(model.qformer)
        self.lm_embed: PseudoWordEmbedding | None = None
        self.qformer_embed: PseudoWordEmbedding | None = None
        if getattr(model.config, "image_token_index", None) is None:
            raise ConfigError(f"base model {config.model_id!r} has no image_token_index in its config (a "
                              "checkpoint saved before transformers 4.45?); re-save it with a current processor")
        self.num_query_tokens = int(model.config.num_query_tokens)
        self.image_token_id = int(model.config.image_token_index)
        pseudo = [None, None] if config.zero_shot else self._add_pseudo_word()
        if self.lm_embed is not None:  # fp16-mixed: the float32 row reaches the LLM unrounded, as in LAVIS
            self.lm_embed.out_dtype = self.precision.embeds
        self.prompt = config.prompt
        if config.lm_bos_token not in self.lm_tokenizer.get_vocab():
            raise ConfigError(f"model.lm_bos_token = {config.lm_bos_token!r} is not a token of the LM tokenizer")
        bos = self.lm_tokenizer.convert_tokens_to_ids(config.lm_bos_token)
        chunks = config.prompt_chunks()
        self.lm_prompt_ids = encode_prompt(self.lm_tokenizer, chunks, pseudo[0], [bos], [])
        qt = self.qformer_tokenizer
        if qt.cls_token_id is None or qt.sep_token_id is None:
            raise ConfigError("the Q-Former tokenizer has no [CLS]/[SEP] tokens (is it a BERT tokenizer?)")
        self.qformer_prompt_ids = encode_prompt(qt, chunks, pseudo[1], [qt.cls_token_id], [qt.sep_token_id])
        self.answer_ids = [self._answer_ids(config.real_answer), self._answer_ids(config.fake_answer)]
        if config.scoring == "logits":
            self._check_one_pass()
        self.preprocess = Preprocess.from_dict(default_preprocess(self.image_processor))
        self.eval()

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: AntifakePromptConfig, device: str | torch.device | None = None,
                    tiny: bool = False) -> "AntifakePrompt":
        """Load the base InstructBLIP named by `config.model_id` (in `config.dtype`'s precision) and add the
        pseudo-word rows."""
        device = pick_device(device)
        model_id = resolve_model_id(config.model_id, tiny)
        precision = resolve_precision(config.dtype, device)
        log.info("loading %s (%s; precision %s; attention=%s)", model_id, device, precision.describe(),
                 config.attn_implementation)
        model, processor = load_base(model_id, precision, config.attn_implementation)
        if config.llm_id and not (tiny or config.model_id.startswith("tiny:")):
            swap_llm_weights(model, config.llm_id)
        detector = cls(model, processor, config, precision)
        return detector.to(device)

    def _add_pseudo_word(self) -> list[int]:
        from tokenizers import AddedToken

        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        ids = []
        for name, tok in (("LM", self.lm_tokenizer), ("Q-Former", self.qformer_tokenizer)):
            if cfg.pseudo_word in tok.get_vocab():
                raise ConfigError(f"model.pseudo_word = {cfg.pseudo_word!r} is already a token of the {name} "
                                  "tokenizer; choose a new word")
            tok.add_tokens([AddedToken(cfg.pseudo_word, special=True, normalized=False)])
            ids.append(tok.convert_tokens_to_ids(cfg.pseudo_word))
        lm_base, qf_base = self.model.get_input_embeddings(), self.model.qformer.get_input_embeddings()
        self.qformer_embed = PseudoWordEmbedding(qf_base, ids[1], self._init_row(qf_base, self.qformer_tokenizer, gen))
        self.lm_embed = PseudoWordEmbedding(lm_base, ids[0], self._init_row(lm_base, self.lm_tokenizer, gen))
        self.model.set_input_embeddings(self.lm_embed)
        self.model.qformer.set_input_embeddings(self.qformer_embed)
        return ids

    def _init_row(self, table: nn.Embedding, tokenizer, gen: torch.Generator) -> torch.Tensor:
        cfg = self.config
        width = table.weight.shape[1]
        if cfg.init_word and not table.weight.is_meta:
            weight = table.weight.detach().float().cpu()
            word_ids = [i for i in tokenizer(cfg.init_word, add_special_tokens=False).input_ids if i < weight.shape[0]]
            if not word_ids:
                raise ConfigError(f"model.init_word = {cfg.init_word!r} has no token in the vocabulary")
            return weight[word_ids].mean(0, keepdim=True)
        if cfg.row_init == "normal" or table.weight.is_meta:  # official: nn.Embedding rows drawn from N(0, 0.02)
            return cfg.row_init_std * torch.randn((1, width), generator=gen)
        weight = table.weight.detach().float().cpu()
        mean, std = weight.mean(0, keepdim=True), weight.std()
        return mean + std * torch.randn(mean.shape, generator=gen)

    def _answer_ids(self, answer: str) -> list[int]:
        ids = self.lm_tokenizer(answer.strip(), add_special_tokens=False).input_ids
        if not ids:
            raise ConfigError(f"answer {answer!r} tokenizes to nothing")
        return list(ids)

    def _check_one_pass(self) -> None:
        """One-pass scoring reads one next-token distribution: it needs one-token answers that differ."""
        real, fake = self.answer_ids
        if len(real) > 1 or len(fake) > 1:
            raise ConfigError(
                f"scoring 'logits' reads only the next-token distribution after the prompt, but the answers "
                f"{self.config.real_answer!r} / {self.config.fake_answer!r} are {len(real)} / {len(fake)} tokens; "
                "use scoring 'loss', which scores the full answers in one batched pass")
        if real[0] == fake[0]:
            raise ConfigError(f"answers {self.config.real_answer!r} and {self.config.fake_answer!r} are the same "
                              "token")

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
        """Copy saved rows in, refusing rows made for a base model of another width or holding NaN/inf."""
        if self.lm_embed is None or self.qformer_embed is None:
            raise ConfigError("cannot load pseudo-word rows into a zero-shot detector")
        missing = sorted({"qformer_row", "lm_row"} - set(rows))
        if missing:
            raise ConfigError(f"{source} lacks the row(s) {missing}")
        widths = self.row_widths()
        got = {k: int(rows[f"{k}_row"].reshape(1, -1).shape[1]) for k in ("qformer", "lm")}
        if got != widths:
            raise ConfigError(
                f"{source} was made for another base model: its rows are {got['qformer']} (Q-Former) + "
                f"{got['lm']} (LM) wide, but base model {self.config.model_id!r} has {widths['qformer']} "
                f"(Q-Former) + {widths['lm']} (LM)")
        bad = [k for k in ("qformer_row", "lm_row") if not torch.isfinite(rows[k].float()).all()]
        if bad:
            raise ConfigError(f"{source}: {', '.join(bad)} hold NaN/inf values; such rows call every image "
                              "'real' (or 'fake'); retrain or use another checkpoint")
        with torch.no_grad():
            self.qformer_embed.row.copy_(rows["qformer_row"].reshape(1, -1))
            self.lm_embed.row.copy_(rows["lm_row"].reshape(1, -1))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return self.rows()

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        self.load_rows(tensors, source)

    def identity(self) -> dict:
        """The base model (shown) and the row widths (compared): rows only fit tables of their width."""
        return {"detector": self.name, "base_model": self.config.model_id, "row_widths": self.row_widths()}

    def trainable_summary(self) -> str:
        widths = self.row_widths()
        return (f"trainable parameters: {self.num_trainable():,} = {widths['qformer']} (Q-Former row) + "
                f"{widths['lm']} (LM row); precision {self.precision.describe()}")

    def prompt_pieces(self) -> dict[str, list[str]]:
        """The LM and Q-Former prompt as token pieces (what the model reads after the query embeddings)."""
        return {"lm": self.lm_tokenizer.convert_ids_to_tokens(self.lm_prompt_ids),
                "qformer": self.qformer_tokenizer.convert_ids_to_tokens(self.qformer_prompt_ids)}

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (dropout masks are replayed from the saved RNG state)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ----------------------------------------------------------------------------------------- encoding
    def _lm_batch(self, answers: list[list[int]]) -> dict[str, torch.Tensor]:
        """LM ids, mask, position ids and labels for `len(answers)` copies of the prompt + answer, left padded
        (positions count from the first real token, as in the official right-padded batch)."""
        head = [self.image_token_id] * self.num_query_tokens + self.lm_prompt_ids
        seqs = [head + list(a) for a in answers]
        width = max(len(s) for s in seqs)
        pad = self.lm_tokenizer.pad_token_id if self.lm_tokenizer.pad_token_id is not None else 0
        n = len(seqs)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for i, seq in enumerate(seqs):
            input_ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
            if answers[i]:
                labels[i, width - len(answers[i]):] = torch.tensor(answers[i])
        dev = self.device
        return {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev), "labels": labels.to(dev),
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(dev)}

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected query outputs [B, num_query_tokens, LM width] for a batch of normalised images."""
        return self.query_features(self.vision_embeds(pixel_values))

    def vision_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision encoder's last hidden state for a batch of normalised images (no pseudo-word in it:
        the stage several checkpoints on one base share)."""
        m, p = self.model, self.precision
        with self._autocast(p.autocast):
            return m.vision_model(pixel_values=pixel_values.to(self.device, p.vision)).last_hidden_state

    def query_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Q-Former (with the prompt, so the Q-Former row) + projection of vision-encoder outputs."""
        m, p = self.model, self.precision
        b = image_embeds.shape[0]
        # Official inference runs the Q-Former and the projection outside autocast (float32); the official
        # training step runs everything under autocast (which the trainer's accelerator then provides).
        qf_context = contextlib.nullcontext() if self.training else torch.autocast(self.device.type, enabled=False)
        with qf_context:
            image_embeds = image_embeds.to(p.qformer)
            query = m.query_tokens.expand(b, -1, -1).to(p.qformer)
            qf_ids = torch.tensor(self.qformer_prompt_ids, device=self.device).expand(b, -1)
            qf_mask = torch.ones((b, self.num_query_tokens + qf_ids.shape[1]), dtype=torch.long, device=self.device)
            img_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
            out = m.qformer(input_ids=qf_ids, attention_mask=qf_mask, query_embeds=query,
                            encoder_hidden_states=image_embeds, encoder_attention_mask=img_mask)
            hidden = out[0][:, :self.num_query_tokens]
            return m.language_projection(hidden.to(m.language_projection.weight.dtype))

    def _lm_logits(self, features: torch.Tensor, batch: dict, keep: int) -> torch.Tensor:
        """Float32 logits of the last `keep` positions; `features` fill the image-token slots row by row."""
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        if self.precision.embeds is not None:
            embeds = embeds.to(self.precision.embeds)
        slots = (batch["input_ids"] == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        with self._autocast(self.precision.autocast):
            out = self.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                            position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False)
        return out.logits.float()

    def _answer_nll(self, features: torch.Tensor, answers: list[list[int]]):
        """(token NLL [N, k], answer-token mask [N, k], logits [N, k+1, V]) of `answers[i]` after the prompt."""
        batch = self._lm_batch(answers)
        k = max(len(a) for a in answers)
        logits = self._lm_logits(features, batch, keep=k + 1)  # the last k+1 positions
        labels = batch["labels"][:, -k:]
        nll = nn.functional.cross_entropy(logits[:, :k].transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return nll, (labels != -100), logits

    # ------------------------------------------------------------------------------------------ losses
    def answer_losses(self, pixel_values: torch.Tensor, answers: list[list[int]],
                      return_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-sample SUM of the cross-entropy of `answers[i]`'s tokens after image i's prompt, shape [B].

        With `return_scores`, also the one-pass P(fake) read from the same forward pass (the logits at the
        position that predicts the first answer token; meaningful for one-token answers)."""
        nll, valid, logits = self._answer_nll(self.image_features(pixel_values), answers)
        sums = (nll * valid).sum(1)
        if not return_scores:
            return sums
        k = nll.shape[1]
        first = torch.tensor([k - len(a) for a in answers], device=logits.device)
        nxt = logits[torch.arange(len(answers), device=logits.device), first]
        pair = nxt[:, [self.answer_ids[0][0], self.answer_ids[1][0]]]
        return sums, pair.softmax(-1)[:, 1].detach().cpu()

    def candidate_losses(self, pixel_values: torch.Tensor, candidates: list[list[int]] | None = None) -> torch.Tensor:
        """[B, C] summed answer-token losses of every candidate (default: real, fake answers) for every image,
        in ONE batched LM pass with each image encoded once (the official `predict_class`)."""
        candidates = candidates or self.answer_ids
        b, c = pixel_values.shape[0], len(candidates)
        features = self.image_features(pixel_values).repeat_interleave(c, dim=0)
        nll, valid, _ = self._answer_nll(features, [list(candidates[j]) for _ in range(b) for j in range(c)])
        return (nll * valid).sum(1).view(b, c)

    def target_ids(self, labels: torch.Tensor) -> list[list[int]]:
        """Training targets: the real/fake answer ids (label 0 = real, 1 = fake), EOS appended if configured."""
        eos = [self.lm_tokenizer.eos_token_id] if self.config.append_eos else []
        return [self.answer_ids[int(y)] + eos for y in labels.tolist()]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss as in LAVIS: cross-entropy summed over every answer token of the batch / their count."""
        nll, valid, _ = self._answer_nll(self.image_features(pixel_values), self.target_ids(labels))
        return (nll * valid).sum() / valid.sum().clamp(min=1)

    # ------------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """P(fake) from one forward pass: softmax over the two one-token answers' next-token logits."""
        return self._logits_rule(self.vision_embeds(pixel_values))

    @torch.no_grad()
    def score_loss(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """P(fake) by the paper's rule: sigmoid(loss(real answer) - loss(fake answer)); > 0.5 iff fake wins."""
        return self._loss_rule(self.vision_embeds(pixel_values))

    def _logits_rule(self, image_embeds: torch.Tensor) -> torch.Tensor:
        self._check_one_pass()
        batch = self._lm_batch([[] for _ in range(image_embeds.shape[0])])
        last = self._lm_logits(self.query_features(image_embeds), batch, keep=1)[:, -1]
        pair = last[:, [self.answer_ids[0][0], self.answer_ids[1][0]]]
        return pair.softmax(-1)[:, 1].cpu()

    def _loss_rule(self, image_embeds: torch.Tensor) -> torch.Tensor:
        b, c = image_embeds.shape[0], len(self.answer_ids)
        features = self.query_features(image_embeds).repeat_interleave(c, dim=0)
        nll, valid, _ = self._answer_nll(features, [list(self.answer_ids[j]) for _ in range(b) for j in range(c)])
        losses = (nll * valid).sum(1).view(b, c)
        return torch.sigmoid(losses[:, 0] - losses[:, 1]).cpu()

    def score(self, pixel_values: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """P(fake) per image with `method` ("logits" or "loss"; default from the config)."""
        return self.score_from_shared(self.shared_stage(pixel_values), method)

    @torch.no_grad()
    def score_from_shared(self, stage: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """P(fake) from vision-encoder outputs (`vision_embeds`) with `method`."""
        method = method or self.config.scoring
        if method == "logits":
            return self._logits_rule(stage)
        if method == "loss":
            return self._loss_rule(stage)
        raise ConfigError(f"scoring = {method!r} must be 'logits' or 'loss'")

    @torch.no_grad()
    def shared_stage(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_embeds(pixel_values)

    def shared_stage_key(self, preprocess: Preprocess | None = None) -> str:
        """Same base weights (model and LLM ids), precision and preprocessing: the same vision-encoder outputs."""
        c = self.config
        blob = json.dumps([c.model_id, c.llm_id, self.precision.describe(), c.attn_implementation,
                           str(self.device), (preprocess or self.preprocess).key()], sort_keys=True, default=str)
        return "afp-vision:" + hashlib.sha256(blob.encode()).hexdigest()[:20]

    # ------------------------------------------------------------------------------------------ training
    @classmethod
    def check_train_config(cls, cfg: "TrainConfig") -> None:
        super().check_train_config(cfg)
        if cfg.model.zero_shot:
            raise ConfigError("model.zero_shot = true has nothing to train")

    @torch.no_grad()
    def validation_step(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        """The training loss summed over the batch's answer tokens, their count, and the one-pass P(fake) read from
        the same forward pass (the loss rule's for answers longer than one token)."""
        targets = self.target_ids(labels)
        losses, p_fake = self.answer_losses(pixel_values, targets, return_scores=True)
        if not all(len(a) == 1 for a in self.answer_ids):
            p_fake = self.score_loss(pixel_values)
        tokens = torch.tensor(float(sum(map(len, targets))), device=losses.device)
        return losses.sum(), tokens, p_fake

    # ------------------------------------------------------------------------------------------ I/O hooks
    def save(self, out_dir: str | Path, training: dict | None = None) -> Path:
        """An AntifakePrompt checkpoint folder (`detector/families/antifakeprompt/checkpoint.py`'s format, unchanged)."""
        return save_checkpoint(self, out_dir, preprocess_dict(self.preprocess), training)

    @classmethod
    def load(cls, path: str | Path, device=None, tiny: bool = False,
             model_overrides: dict | None = None) -> "AntifakePrompt":
        extra = dict(model_overrides or {})
        scoring, model_id = extra.pop("scoring", None), extra.pop("model_id", None)
        if extra:
            raise ConfigError(f"model overrides {sorted(extra)} are not supported for AntifakePrompt checkpoints")
        return load_checkpoint(path, device=device, tiny=tiny, scoring=scoring, model_id=model_id)[0]

    @classmethod
    def load_many(cls, paths: list, device=None, tiny: bool = False) -> list:
        """Checkpoints on the same base model and prompt share ONE loaded model (their rows are swapped in per
        batch); see `detector.families.antifakeprompt.model.load_checkpoints`."""
        return load_checkpoints(paths, device=device, tiny=tiny)

    def restore(self, path: str | Path) -> dict:
        """The rows and preprocessing of a checkpoint folder into this detector (resume)."""
        path = Path(path)
        meta = read_meta(path / META_FILE)
        self.load_rows(read_rows(path / ROWS_FILE), source=f"'{path}'")
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        return meta

    # ------------------------------------------------------------------------------------------ reporting
    def banner(self, checkpoint: str, image_loading: str = "fakeforge", method: str | None = None,
               preprocess: Preprocess | None = None) -> list[str]:
        """What runs: base model, precision, prompt tokens, preprocessing, scoring rule."""
        pieces = self.prompt_pieces()
        scoring = method or self.config.scoring
        pre = preprocess or self.preprocess
        rule = ("one forward pass; the same decisions as the paper's loss rule for one-token answers"
                if scoring == "logits" else "the paper's rule: summed answer-token losses of both candidates")
        return [f"checkpoint: {checkpoint}  base model: {self.config.model_id}"
                + (f" + LLM {self.config.llm_id}" if self.config.llm_id else ""),
                f"precision: {self.precision.describe()} on {self.device}",
                f"prompt: {self.prompt!r}  LM tokens: {' '.join(pieces['lm'])}  "
                f"Q-Former tokens: {' '.join(pieces['qformer'])}",
                f"preprocess: {pre.image_size} px, bicubic resize of the shorter side + centre crop; mean {pre.mean} "
                f"std {pre.std} ({pre.source or 'checkpoint'})",
                f"scoring: {scoring} ({rule}); image loading: {image_loading}"]

    def report_info(self, method: str | None = None, preprocess: Preprocess | None = None) -> dict:
        return {"scoring": method or self.config.scoring, "prompt": self.prompt,
                "trainable_parameters": self.num_trainable(),  # the table's #params (0 for zero-shot)
                "prompt_pieces": self.prompt_pieces(), "precision": self.precision.as_dict(),
                "preprocess": preprocess_dict(preprocess or self.preprocess)}


# ------------------------------------------------------------------------------------------ loading checkpoints
def load_checkpoint(path: str | Path, device: str | torch.device | None = None, tiny: bool = False,
                    scoring: str | None = None, model_id: str | None = None) -> tuple[AntifakePrompt, dict]:
    """Rebuild the detector from a checkpoint folder (or "zero-shot"); returns (detector, preprocess).

    `tiny` swaps the base model for the tiny twin; a width mismatch raises CheckpointError naming both.
    `model_id` picks the base model of the zero-shot baseline. Damaged files and rows holding NaN/inf are
    refused with one line naming the file, before the base model loads where that can be checked first.
    """
    if str(path).lower() in ZERO_SHOT:
        cfg = AntifakePromptConfig(zero_shot=True, model_id=model_id or DEFAULT_MODEL_ID)
        if scoring:
            cfg.scoring = scoring
        detector = AntifakePrompt.from_config(cfg, device=device, tiny=tiny)
        detector.checkpoint_meta = {"detector": "antifakeprompt", "training": {"source": "zero-shot"},
                                    "trainable_parameters": 0}
        return detector, preprocess_of(detector)
    path = Path(path)
    if path.is_file() and path.name != META_FILE:
        raise CheckpointError(not_a_detector_checkpoint(path))
    meta = read_meta(path)
    if int(meta.get("format_version", 1)) < 2 and "LAVIS" not in str((meta.get("training") or {}).get("source")):
        log.warning("checkpoint '%s' was trained with fakeforge's earlier prompt encoding (format version 1); its "
                    "rows now meet the official prompt tokens and may score differently: retrain to be exact", path)
    model_cfg = dict(meta["model"])
    if scoring:
        model_cfg["scoring"] = scoring
    try:
        cfg = from_dict(AntifakePromptConfig, model_cfg, "model")
    except ConfigError as exc:
        raise CheckpointError(f"'{path / META_FILE}': {exc}") from None
    rows = read_rows(path / ROWS_FILE)
    bad = [k for k in ("qformer_row", "lm_row") if not torch.isfinite(rows[k].float()).all()]
    if bad:
        raise CheckpointError(f"checkpoint '{path}': {', '.join(bad)} hold NaN/inf values; such rows call every "
                              "image 'real' (or 'fake'); retrain or use another checkpoint")
    detector = AntifakePrompt.from_config(cfg, device=device, tiny=tiny)
    try:
        detector.load_rows(rows, source=f"checkpoint '{path}'")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        detector.preprocess = Preprocess.from_dict(meta["preprocess"])
    except ConfigError as exc:
        raise CheckpointError(f"'{path / META_FILE}': {exc}") from None
    detector.checkpoint_meta = meta
    return detector, dict(meta["preprocess"])


class SharedBaseCheckpoint:
    """One AntifakePrompt checkpoint on a base model loaded once for several (a side-by-side eval).

    It scores like the checkpoint loaded alone: its rows are copied into the shared detector before each use, and
    its own scoring rule and preprocessing apply. The vision encoder (no pseudo-word in it) is the shared stage:
    checkpoints with the same preprocessing get it computed once per image."""

    name = AntifakePrompt.name
    fit_mode = FIT_GRADIENT
    scoring_methods = AntifakePrompt.scoring_methods

    def __init__(self, base: AntifakePrompt, rows: dict[str, torch.Tensor], config: AntifakePromptConfig,
                 preprocess: Preprocess, meta: dict, source: str):
        self.base, self.rows, self.config, self.preprocess = base, rows, config, preprocess
        self.checkpoint_meta, self.source = meta, source

    @property
    def device(self) -> torch.device:
        return self.base.device

    def _use(self) -> None:
        self.base.load_rows(self.rows, source=self.source)

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
        self._use()
        return self.base.score_from_shared(stage, self.check_method(method))

    def num_trainable(self) -> int:
        return self.base.num_trainable()

    def identity(self) -> dict:
        return self.base.identity()

    def banner(self, checkpoint: str, image_loading: str = "fakeforge", method: str | None = None) -> list[str]:
        return self.base.banner(checkpoint, image_loading, self.check_method(method), self.preprocess)

    def report_info(self, method: str | None = None) -> dict:
        return self.base.report_info(self.check_method(method), self.preprocess)


def load_checkpoints(paths: list[str | Path], device: str | torch.device | None = None,
                     tiny: bool = False) -> list:
    """Several checkpoint folders (or "zero-shot"), in order. Checkpoints whose configs differ only in
    `ROW_ONLY_FIELDS` share one loaded base model (`SharedBaseCheckpoint`); every file is checked before any
    model loads."""
    entries = []
    for path in paths:
        if str(path).lower() in ZERO_SHOT:
            entries.append((path, None, None, None))
            continue
        meta = read_meta(path)
        try:
            cfg = from_dict(AntifakePromptConfig, dict(meta["model"]), "model")
        except ConfigError as exc:
            raise CheckpointError(f"'{Path(path) / META_FILE}': {exc}") from None
        entries.append((path, meta, cfg, read_rows(Path(path) / ROWS_FILE)))
    groups: dict[str, list[int]] = {}
    for i, (_path, _meta, cfg, _rows) in enumerate(entries):
        if cfg is not None:
            key = json.dumps({k: v for k, v in to_dict(cfg).items() if k not in ROW_ONLY_FIELDS}, sort_keys=True)
            groups.setdefault(key, []).append(i)
    out: list = [None] * len(entries)
    for i, (path, meta, _cfg, _rows) in enumerate(entries):
        if meta is None:  # zero-shot: no rows to swap
            out[i] = load_checkpoint(path, device=device, tiny=tiny)[0]
    for index in groups.values():
        base, _pre = load_checkpoint(entries[index[0]][0], device=device, tiny=tiny)
        for i in index:
            path, meta, cfg, rows = entries[i]
            source = f"checkpoint '{path}'"
            try:
                base.load_rows(rows, source=source)
                if cfg.scoring == "logits":
                    base._check_one_pass()
            except ConfigError as exc:
                raise CheckpointError(str(exc)) from None
            out[i] = SharedBaseCheckpoint(base, rows, cfg, Preprocess.from_dict(meta["preprocess"]), meta, source)
    return out
