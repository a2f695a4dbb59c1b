"""Small real tokenizers trained offline with the `tokenizers` library, for the tiny twins.

Each function returns the same transformers tokenizer class the real checkpoint uses (CLIP byte-level
BPE, Llama Metaspace BPE, BERT WordPiece, T5 Unigram), so `save_pretrained` / `from_pretrained`
round-trip exactly as with real weights. Nothing is downloaded.
"""
from __future__ import annotations

import json
import random
import string

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

_NOUNS = ["cat", "dog", "horse", "car", "bus", "house", "tree", "person", "woman", "man", "bird", "boat", "kite",
          "pizza", "train", "street", "flower", "table", "chair", "bicycle", "giraffe", "zebra", "plane", "circle",
          "square", "stripe", "sky", "field", "kitchen", "room"]
_ADJECTIVES = ["red", "blue", "green", "yellow", "small", "large", "old", "white", "black", "bright", "dark", "wooden"]
_PLACES = ["on a beach", "in a park", "at night", "in the snow", "near a lake", "in a kitchen", "on the road",
           "under the sky", "in a field", "inside a room", "on a table", "next to a building"]
_PHRASES = ["is this photo real?", "is this image real or fake?", "answer yes or no.", "yes", "no", "Yes", "No",
            "a photo of", "an image of", "generated", "real", "fake", "the", "a", "an", "of", "with", "and"]


def caption_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A deterministic COCO-like caption corpus for training the tiny tokenizers."""
    rng = random.Random(seed)
    lines = [f"a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.choice(_PLACES)}" for _ in range(n)]
    return lines + _PHRASES


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    raw = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]


def clip_tokenizer(vocab_size: int = 1000, pad_token: str = "<|endoftext|>"):
    """CLIPTokenizer (byte-level BPE with the `</w>` word suffix), every byte reachable so no text is <unk>."""
    from transformers import CLIPTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.train_from_iterator(caption_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False))
    ordered = ["<|startoftext|>", "<|endoftext|>"] + sorted(alphabet) + sorted(c + "</w>" for c in alphabet)
    for piece, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        ordered.append(piece)
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(ordered))}
    return CLIPTokenizer(vocab=vocab, merges=_merges(tok), model_max_length=77, pad_token=pad_token)


def llama_tokenizer(vocab_size: int = 600, extra_corpus: list[str] | None = None):
    """LlamaTokenizer (Metaspace BPE with byte fallback) set up like InstructBLIP-Vicuna's hub tokenizer.

    Like `Salesforce/instructblip-vicuna-7b` (LLaMA's tokenizer with `bos_token="</s>"`, `unk_token="</s>"`
    and `[PAD]` added): the base vocabulary starts `<unk>`=0, `<s>`=1, `</s>`=2 as in LLaMA, BOS and EOS are
    both `</s>` (id 2), a BOS is added to every encoded text, and `[PAD]` is the first id after the base
    vocabulary (32000 on the real model).
    """
    from transformers import LlamaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Trained with punctuation split off so that, like LLaMA's SentencePiece vocabulary, words and the
    # punctuation after them are separate pieces ("real?" -> "▁real", "?"; a lone "?" -> "▁?").
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[?.,!;:]"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(caption_corpus() + (extra_corpus or []), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    return vicuna_style(LlamaTokenizer(vocab=tok.get_vocab(), merges=_merges(tok), unk_token="<unk>",
                                       bos_token="<s>", eos_token="</s>", model_max_length=512))


def vicuna_style(tok):
    """Configure a LLaMA tokenizer as InstructBLIP-Vicuna ships it: BOS = UNK = EOS = `</s>`, BOS added, `[PAD]`."""
    tok.add_special_tokens({"bos_token": "</s>", "unk_token": "</s>", "eos_token": "</s>"})
    tok.add_bos_token = True
    if hasattr(tok, "update_post_processor"):  # the fast backend rebuilds its template from add_bos_token
        tok.update_post_processor()
    tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok


def llama_tokenizer_from_spm(model_dir: str):
    """The real LLaMA/Vicuna tokenizer from a folder holding its `tokenizer.model`, set up as `vicuna_style`."""
    from transformers import LlamaTokenizer

    return vicuna_style(LlamaTokenizer.from_pretrained(model_dir, model_max_length=2048))


def bert_tokenizer(extra_corpus: list[str] | None = None):
    """BertTokenizer (WordPiece, lower-casing) whose vocab is the corpus words plus every printable ASCII char.

    Like the Q-Former tokenizer of InstructBLIP (bert-base-uncased with `[DEC]` added as BOS), so a prompt
    encodes as `[CLS] ... [SEP]`.
    """
    from transformers import BertTokenizer

    words = set()
    for line in caption_corpus() + (extra_corpus or []):
        for p in ".,?!":
            line = line.replace(p, f" {p} ")
        words.update(line.lower().split())
    chars = [chr(c) for c in range(33, 127)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + sorted(words)
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tok = BertTokenizer(vocab=vocab, model_max_length=512)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    return tok


def t5_tokenizer(vocab_size: int = 400):
    """T5Tokenizer (Unigram) with the usual 100 sentinel tokens."""
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.train_from_iterator(caption_corpus(), trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        initial_alphabet=list(string.printable.strip()), show_progress=False))
    pieces = [(p, float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=pieces + sentinels, extra_ids=100, model_max_length=77)
