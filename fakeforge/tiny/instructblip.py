"""Tiny random-weight twin of InstructBLIP (vision tower, Q-Former and Llama all tiny), built offline.

`build_instructblip(out_dir)` writes a folder that loads with the same code as the real checkpoint:

    InstructBlipForConditionalGeneration.from_pretrained(out_dir)
    InstructBlipProcessor.from_pretrained(out_dir)

The Q-Former (32) and the language model (48) get different widths on purpose, so code that mixes up
the two embedding tables fails loudly on the twin too. Every part uses a large initializer range
(see INIT_RANGE; the vision default 1e-10 makes every image look the same to the model) and the query
tokens are random rather than zero, so the twin's answers depend on the image and can be prompt-tuned.

The LM tokenizer is set up like the hub's InstructBLIP-Vicuna tokenizer (BOS = EOS = `</s>`, `[PAD]` after
the base vocabulary, then `<image>`), and its vocabulary splits the detector's prompt into the same
pieces as LLaMA's (`▁Is ▁this ▁photo ▁real`, `▁?`, `▁yes`, `▁no`).
`build_instructblip(out, llm_tokenizer=...)` builds the same twin around another LM tokenizer, e.g. the
real LLaMA one (the parity tests do this).
"""
from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_QUERY_TOKENS = 4
QFORMER_HIDDEN = 32
LM_HIDDEN = 48
VISION_HIDDEN = 32
# Weight init std of every part. Far above the real models' 0.02: at 32-48 wide, 0.02 shrinks the image
# signal at every layer until the answer logits no longer depend on the image (and 1e-10, the vision
# default, removes it entirely). At 0.2 the two pseudo-word rows can learn a colour-separable task.
INIT_RANGE = 0.2

# Text the tiny tokenizers must cover well: the detector's prompts (also split at the pseudo-word, as the
# detector encodes them) and answers.
_EXTRA_CORPUS = ["Is this photo real?", "Is this photo real or fake?", "Is this image real?", "Is this photo",
                 "Is this photo real", "?", "Is it real ?", "yes", "no", "Yes", "No", "real photo",
                 "fake photo"] * 10


def build_instructblip(out_dir: Path, seed: int = 0, llm_tokenizer=None) -> None:
    """Write a tiny InstructBlipForConditionalGeneration + InstructBlipProcessor into `out_dir`.

    `llm_tokenizer` replaces the tiny LM tokenizer (the LM's vocabulary then has its size)."""
    import torch
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        LlamaConfig,
    )

    from fakeforge.tiny.tokenizers import bert_tokenizer, llama_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm_tok = llm_tokenizer if llm_tokenizer is not None else llama_tokenizer(extra_corpus=_EXTRA_CORPUS)
    lm_tok.padding_side = "left"  # decoder-only LM: left padding keeps the last position the answer slot
    qf_tok = bert_tokenizer(extra_corpus=_EXTRA_CORPUS)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # The processor adds the "<image>" token to the LM tokenizer; the model config must know its id.
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=lm_tok, qformer_tokenizer=qf_tok,
                                      num_query_tokens=NUM_QUERY_TOKENS)
    image_token_id = lm_tok.convert_tokens_to_ids("<image>")

    text_config = LlamaConfig(
        vocab_size=len(lm_tok), hidden_size=LM_HIDDEN, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=lm_tok.pad_token_id, bos_token_id=lm_tok.bos_token_id, eos_token_id=lm_tok.eos_token_id,
        tie_word_embeddings=False, initializer_range=INIT_RANGE)
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=VISION_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                           initializer_range=INIT_RANGE),
        qformer_config=dict(vocab_size=len(qf_tok), hidden_size=QFORMER_HIDDEN, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, encoder_hidden_size=VISION_HIDDEN,
                            cross_attention_frequency=1, max_position_embeddings=128,
                            pad_token_id=qf_tok.pad_token_id, initializer_range=INIT_RANGE),
        text_config=text_config.to_dict(), num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_id,
        initializer_range=INIT_RANGE)

    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config)
    with torch.no_grad():
        # Every matrix (linear, embedding, LM head) drawn at INIT_RANGE: the per-module init rules
        # leave some at other scales, and then the answer barely depends on the image.
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, INIT_RANGE)
        model.query_tokens.normal_(0.0, 0.5)  # zero query tokens (the default) make all queries identical
    model.generation_config.pad_token_id = lm_tok.pad_token_id
    model.generation_config.bos_token_id = lm_tok.bos_token_id
    model.generation_config.eos_token_id = lm_tok.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# Bump when the twin's files change in a way code may depend on: `ensure_tiny` rebuilds cached twins whose
# marker records an older version. 2: Vicuna-style LM tokenizer (BOS </s>, [PAD]), prompt-shaped pieces,
# Q-Former tokenizer with [DEC].
build_instructblip.twin_version = 2
