"""AntifakePrompt's configuration: the model section of its YAML, the official ids, how the prompt is encoded
and the base model's default preprocessing. Plain data and tokenizer calls only (no model code), so the
checkpoint format and the model both build on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from detector.families.antifakeprompt.loading import PRECISIONS
from fakeforge.config import ConfigError

DEFAULT_MODEL_ID = "Salesforce/instructblip-vicuna-7b"
OFFICIAL_LLM_ID = "lmsys/vicuna-7b-v1.3"


@dataclass
class AntifakePromptConfig:
    """Everything needed to rebuild the detector around a base InstructBLIP checkpoint."""

    model_id: str = DEFAULT_MODEL_ID  # hub id, local folder, or "tiny:instructblip" for the tiny twin
    llm_id: str | None = None  # causal-LM weights swapped into the language model (official: vicuna v1.3)
    question: str = "Is this photo real?"
    pseudo_word: str = "[*]"
    position: Literal["postfix", "prefix", "replace"] = "postfix"
    replace_word: str = "real"  # the word `position: replace` swaps for the pseudo-word
    init_word: str | None = None  # initialise both rows from this word's embeddings (None: row_init)
    # normal: N(0, row_init_std), the official init; table: the embedding table's own mean/std
    row_init: Literal["normal", "table"] = "normal"
    row_init_std: float = 0.02
    real_answer: str = "yes"
    fake_answer: str = "no"
    zero_shot: bool = False  # no pseudo-word at all: the untuned baseline
    scoring: Literal["logits", "loss"] = "logits"
    append_eos: bool = True  # training target is answer + EOS, as in the official code
    lm_bos_token: str = "</s>"  # first token of the LM prompt; the official tokenizer's BOS is </s> (id 2)
    dtype: Literal["official", "fp16-mixed", "auto", "float32", "bfloat16", "float16"] = "official"
    train_dropout: bool = True  # the Q-Former's dropout (p = 0.1) is active in training, as in LAVIS
    attn_implementation: str = "sdpa"
    seed: int = 0  # random init of the rows

    def validate(self) -> None:
        """Check the prompt settings before any model is loaded."""
        if not self.pseudo_word.strip() or self.pseudo_word != self.pseudo_word.strip():
            raise ConfigError(f"model.pseudo_word = {self.pseudo_word!r} must be non-empty without outer spaces")
        if self.real_answer.strip() == self.fake_answer.strip():
            raise ConfigError(f"model.real_answer and model.fake_answer are both {self.real_answer!r}; "
                              "they must differ")
        if not self.question.strip():
            raise ConfigError("model.question must not be empty")
        if not self.zero_shot and self.pseudo_word in self.question:
            raise ConfigError(f"model.question = {self.question!r} already contains the pseudo-word "
                              f"{self.pseudo_word!r}; model.position places it")
        if self.position == "replace" and not self.zero_shot and \
                not re.search(rf"\b{re.escape(self.replace_word)}\b", self.question):
            raise ConfigError(f"model.position = 'replace' but model.replace_word = {self.replace_word!r} "
                              f"does not occur in model.question = {self.question!r}")
        if not self.row_init_std > 0:
            raise ConfigError(f"model.row_init_std = {self.row_init_std} must be > 0")
        if not self.lm_bos_token:
            raise ConfigError("model.lm_bos_token must not be empty (the official prompt starts with </s>)")
        if self.dtype not in PRECISIONS:
            raise ConfigError(f"model.dtype = {self.dtype!r} is not one of {list(PRECISIONS)}")

    def to_tiny(self) -> "AntifakePromptConfig":
        """The same detector on the tiny InstructBLIP twin (`--tiny`): no separate LLM weights, float32."""
        return replace(self, model_id="tiny:instructblip", llm_id=None, dtype="float32")

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

    def prompt_chunks(self) -> list[str]:
        """The prompt's text around the pseudo-word, each stripped (the official tokenizer's behaviour); the
        pseudo-word sits between consecutive chunks. Zero-shot: the whole prompt."""
        if self.zero_shot:
            return [self.prompt]
        return [c.strip() for c in self.prompt.split(self.pseudo_word)]



def encode_prompt(tokenizer, chunks: list[str], pseudo_id: int | None, head: list[int],
                  tail: list[int]) -> list[int]:
    """head + chunk ids, with `pseudo_id` between consecutive chunks, + tail. Each chunk is encoded on its
    own without special tokens, so SentencePiece gives it its leading "▁" (`?` -> `▁?`)."""
    ids = list(head)
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(pseudo_id)
        if chunk:
            ids += tokenizer(chunk, add_special_tokens=False).input_ids
    return ids + list(tail)



def default_preprocess(image_processor: Any) -> dict:
    """Image size and normalisation of the base model's own image processor (used when none is given)."""
    size = image_processor.size
    if not isinstance(size, int):  # a dict in some versions, a SizeDict in others
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        size = get("height") or get("shortest_edge")
    return {"image_size": int(size), "mean": [float(v) for v in image_processor.image_mean],
            "std": [float(v) for v in image_processor.image_std], "source": "base model image processor"}
