"""Parity with the official AntifakePrompt code (nctu-eva-lab/AntifakePrompt and its LAVIS fork).

Uses the real LLaMA/Vicuna `tokenizer.model` (Meta's; not redistributed in this repository: the tests read it
from $FAKEFORGE_LLAMA_TOKENIZER or the reference folder `../shared/reference/tokenizers/llama/` beside the
checkout, and skip without it) to pin the official prompt
tokens, and a tiny InstructBLIP twin built around it for a golden test: the detector's LM inputs, labels and
candidate losses equal those of a small re-implementation of the official `_predict_class`, written here
from the official code's behaviour (SentencePiece ids, right padding, targets, ids >= vocab read the
trained row, per-sequence mean of the token losses over all positions).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn

def _llama_tokenizer_dir() -> Path:
    env = os.environ.get("FAKEFORGE_LLAMA_TOKENIZER")
    if env:
        return Path(env).parent if Path(env).is_file() else Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "reference" / "tokenizers" / "llama"


FIXTURE = _llama_tokenizer_dir()
needs_llama = pytest.mark.skipif(not (FIXTURE / "tokenizer.model").is_file(),
                                 reason=f"the real LLaMA tokenizer.model is not at {FIXTURE} (set "
                                        "FAKEFORGE_LLAMA_TOKENIZER)")
LLAMA_MD5 = "eeec4125e9c7560836b4873b6f8e3025"
# Official LLaMA ids: </s> Is this photo real ? (the "?" after [*] is "▁?"), "?" glued to a word, yes, no.
BOS, IS, THIS, PHOTO, REAL, SPACE_Q, Q, YES, NO = 2, 1317, 445, 15373, 1855, 1577, 29973, 4874, 694


@needs_llama
def test_fixture_is_the_llama_tokenizer():
    data = (FIXTURE / "tokenizer.model").read_bytes()
    assert len(data) == 499_723 and hashlib.md5(data).hexdigest() == LLAMA_MD5


@pytest.fixture(scope="module")
def real_vocab_twin(tmp_path_factory):
    """The tiny InstructBLIP twin built around the real LLaMA tokenizer (LM vocabulary 32,000 + [PAD] + <image>)."""
    from fakeforge.tiny.instructblip import build_instructblip
    from fakeforge.tiny.tokenizers import llama_tokenizer_from_spm

    if not (FIXTURE / "tokenizer.model").is_file():
        pytest.skip(f"the real LLaMA tokenizer.model is not at {FIXTURE} (set FAKEFORGE_LLAMA_TOKENIZER)")
    out = tmp_path_factory.mktemp("twin_llama_vocab")
    build_instructblip(out, llm_tokenizer=llama_tokenizer_from_spm(str(FIXTURE)))
    return out


def _detector(folder, **kw):
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig

    return AntifakePrompt.from_config(AntifakePromptConfig(model_id=str(folder), dtype="float32", **kw), "cpu")


@pytest.mark.parametrize("position, lm_ids, lm_pieces", [
    ("postfix", [BOS, IS, THIS, PHOTO, REAL, "PW", SPACE_Q], "</s> ▁Is ▁this ▁photo ▁real [*] ▁?"),
    ("prefix", [BOS, "PW", IS, THIS, PHOTO, REAL, Q], "</s> [*] ▁Is ▁this ▁photo ▁real ?"),
    ("replace", [BOS, IS, THIS, PHOTO, "PW", SPACE_Q], "</s> ▁Is ▁this ▁photo [*] ▁?"),
])
def test_real_llama_tokenizer_gives_the_official_prompt(real_vocab_twin, position, lm_ids, lm_pieces):
    det = _detector(real_vocab_twin, position=position)
    pw = det.lm_embed.token_id
    assert det.lm_prompt_ids == [pw if i == "PW" else i for i in lm_ids]
    assert " ".join(det.prompt_pieces()["lm"]) == lm_pieces
    assert det.answer_ids == [[YES], [NO]]
    assert det.target_ids(torch.tensor([0, 1])) == [[YES, 2], [NO, 2]]
    tok = det.lm_tokenizer
    assert (tok.bos_token, tok.bos_token_id, tok.pad_token, tok.pad_token_id) == ("</s>", 2, "[PAD]", 32000)


# ------------------------------------------------------------------------------------- golden test
def official_candidate_losses(folder, qformer_row, lm_row, pixels, candidates, prompt=("Is this photo real", "?")):
    """The official `_predict_class` for one prompt, written from its behaviour (not from fakeforge code):
    returns (losses [B, C], text ids [B*C, T], text attention mask, targets incl. the query positions)."""
    import sentencepiece as spm
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    ref = InstructBlipForConditionalGeneration.from_pretrained(folder).eval()
    qf_vocab = InstructBlipProcessor.from_pretrained(folder).qformer_tokenizer.get_vocab()
    sp = spm.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))
    lm_table = ref.language_model.get_input_embeddings().weight
    qf_table = ref.qformer.embeddings.word_embeddings.weight
    lm_pw, qf_pw, pad = lm_table.shape[0], qf_table.shape[0], 32000  # ids >= the table read the trained row
    nq = ref.config.num_query_tokens

    # LLaMA slow tokenizer around a special token: BOS </s>, each side stripped and encoded on its own.
    prompt_ids = [2] + sp.encode(prompt[0]) + [lm_pw] + sp.encode(prompt[1])
    cand_ids = [sp.encode(c) for c in candidates]  # tokenizer(c) = [BOS] + pieces; the official drops the BOS
    width = len(prompt_ids) + max(map(len, cand_ids))
    b, c = pixels.shape[0], len(candidates)
    ids, att, tgt = [], [], []
    for _i in range(b):  # image-major, as repeat_interleave(seg_len)
        for cand in cand_ids:
            seq = prompt_ids + cand
            n_pad = width - len(seq)
            ids.append(seq + [pad] * n_pad)  # right padding
            att.append([1] * len(seq) + [0] * n_pad)
            tgt.append([-100] * len(prompt_ids) + cand + [-100] * n_pad)
    ids, att, tgt = torch.tensor(ids), torch.tensor(att), torch.tensor(tgt)

    # Q-Former: "[CLS] is this photo real [*] ? [SEP]" (BERT lower-cases; [*] is an added special token)
    words = prompt[0].lower().split()
    qf_row_ids = [qf_vocab["[CLS]"]] + [qf_vocab[w] for w in words] + [qf_pw, qf_vocab["?"], qf_vocab["[SEP]"]]
    qf_ids = torch.tensor([qf_row_ids] * b)
    with torch.no_grad():
        ref.qformer.embeddings.word_embeddings = nn.Embedding.from_pretrained(torch.cat([qf_table, qformer_row]))
        image_embeds = ref.vision_model(pixel_values=pixels).last_hidden_state
        out = ref.qformer(input_ids=qf_ids, attention_mask=torch.ones(b, nq + qf_ids.shape[1], dtype=torch.long),
                          query_embeds=ref.query_tokens.expand(b, -1, -1), encoder_hidden_states=image_embeds,
                          encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long))
        inputs_llm = ref.language_projection(out.last_hidden_state[:, :nq]).repeat_interleave(c, dim=0)
        embeds = torch.cat([lm_table, lm_row])[ids]
        inputs = torch.cat([inputs_llm, embeds], dim=1)
        mask = torch.cat([torch.ones(b * c, nq, dtype=torch.long), att], dim=1)
        targets = torch.cat([torch.full((b * c, nq), -100), tgt], dim=1)
        logits = ref.language_model(inputs_embeds=inputs, attention_mask=mask).logits  # positions 0..T-1
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                                           reduction="none")
        loss = loss.view(b * c, -1).mean(1)  # the official reduction="none": a mean over all T-1 positions
    return loss.view(b, c), ids, att, targets


@pytest.mark.parametrize("candidates", [("yes", "no"), ("yes", "not really")])
def test_golden_candidate_losses_equal_the_official_predict_class(real_vocab_twin, candidates):
    det = _detector(real_vocab_twin, real_answer=candidates[0], fake_answer=candidates[1], scoring="loss")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        det.qformer_embed.row.copy_(torch.randn(det.qformer_embed.row.shape, generator=g))
        det.lm_embed.row.copy_(torch.randn(det.lm_embed.row.shape, generator=g))
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    rows = det.rows()
    official, ids, att, targets = official_candidate_losses(real_vocab_twin, rows["qformer_row"], rows["lm_row"],
                                                            pixels, candidates)
    nq = det.num_query_tokens
    ours = det.candidate_losses(pixels).detach()
    divisor = targets.shape[1] - 1  # the official mean runs over all T-1 positions: one divisor for all
    assert torch.allclose(ours, official * divisor, rtol=1e-5, atol=1e-4)
    assert torch.equal(ours.argmin(1), official.argmin(1))
    # the inputs, position by position (the pseudo-word's id is the only one that may differ)
    batch = det._lm_batch([list(a) for _ in range(3) for a in det.answer_ids])
    pw_ours, pw_official = det.lm_embed.token_id, int(ids.max())
    if all(len(a) == 1 for a in det.answer_ids):  # equal lengths: no padding on either side
        ours_ids = batch["input_ids"][:, nq:].clone()
        ours_ids[ours_ids == pw_ours] = pw_official
        assert torch.equal(ours_ids, ids)
        assert torch.equal(batch["attention_mask"], torch.cat([torch.ones(len(ids), nq, dtype=torch.long), att], 1))
        assert torch.equal(batch["labels"], targets)
    else:  # ours pads on the left with position ids from the mask; the official pads on the right
        for row in range(len(ids)):
            real = batch["attention_mask"][row].bool()
            assert torch.equal(batch["labels"][row][real], targets[row][torch.cat([torch.ones(nq), att[row]]).bool()])
    qf = torch.tensor(det.qformer_prompt_ids)
    assert int((qf == det.qformer_embed.token_id).sum()) == 1
    p_loss = det.score(pixels, "loss")
    assert torch.equal(p_loss >= 0.5, official[:, 1] < official[:, 0])


# ------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size, image_size", [((44, 36), 32), ((36, 44), 32), ((44, 36), 224), ((45, 45), 32)])
def test_eval_transform_pins_torchvision_rounding(size, image_size):
    """Bicubic resize of the shorter side (the longer one truncated: int(s * long / short)) + centre crop
    at int(round((len - s) / 2)) (Python's round: half to even), as torchvision does and the official code uses."""
    import numpy as np
    from PIL import Image

    from detector.data import build_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    w, h = size
    s = image_size
    new = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    left, top = int(round((new[0] - s) / 2.0)), int(round((new[1] - s) / 2.0))
    expected = np.asarray(img.resize(new, Image.BICUBIC).crop((left, top, left + s, top + s)), dtype=np.float32) / 255
    mean, std = [0.4730, 0.4499, 0.4129], [0.2780, 0.2713, 0.2872]
    expected = (torch.from_numpy(expected).permute(2, 0, 1) - torch.tensor(mean)[:, None, None]) / \
        torch.tensor(std)[:, None, None]
    got = build_transform(s, mean, std, train=False)(img)
    assert got.shape == (3, s, s)
    assert torch.allclose(got, expected, atol=1e-6)
    if size == (44, 36) and s == 224:
        assert new == (273, 224) and left == 24  # 273.8 truncated; round(24.5) == 24
    train = build_transform(s, mean, std, train=True)(img)
    assert train.shape == (3, s, s)
