"""AntifakePrompt model wrapper on the tiny InstructBLIP twin: pseudo-word, freezing, scoring rules."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fakeforge.config import ConfigError, from_dict


def _detector(twin, **kw):
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig

    return AntifakePrompt.from_config(AntifakePromptConfig(model_id=str(twin), **kw), device="cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_prompt_positions_and_config_errors():
    from detector.families.antifakeprompt.model import AntifakePromptConfig

    assert AntifakePromptConfig().prompt == "Is this photo real [*]?"
    assert AntifakePromptConfig(position="prefix").prompt == "[*] Is this photo real?"
    assert AntifakePromptConfig(position="replace").prompt == "Is this photo [*]?"
    assert AntifakePromptConfig(zero_shot=True).prompt == "Is this photo real?"
    assert AntifakePromptConfig().prompt_chunks() == ["Is this photo real", "?"]
    assert AntifakePromptConfig(position="prefix").prompt_chunks() == ["", "Is this photo real?"]
    with pytest.raises(ConfigError, match="replace_word"):
        from_dict(AntifakePromptConfig, {"position": "replace", "replace_word": "genuine"}, "model")
    with pytest.raises(ConfigError, match="must differ"):
        from_dict(AntifakePromptConfig, {"real_answer": "no"}, "model")
    with pytest.raises(ConfigError, match="model.position"):
        from_dict(AntifakePromptConfig, {"position": "middle"}, "model")
    with pytest.raises(ConfigError, match="already contains the pseudo-word"):
        from_dict(AntifakePromptConfig, {"question": "Is [*] real?"}, "model")
    with pytest.raises(ConfigError, match="model.dtype"):
        from_dict(AntifakePromptConfig, {"dtype": "fp8"}, "model")


# The official token sequences (nctu-eva-lab/AntifakePrompt with LLaMA's tokenizer, transformers 4.28-4.33):
# BOS </s>, the text around [*] stripped and encoded on its own; the Q-Former's BERT tokenizer lower-cases.
OFFICIAL_PIECES = {
    "postfix": ("</s> ▁Is ▁this ▁photo ▁real [*] ▁?", "[CLS] is this photo real [*] ? [SEP]"),
    "prefix": ("</s> [*] ▁Is ▁this ▁photo ▁real ?", "[CLS] [*] is this photo real ? [SEP]"),
    "replace": ("</s> ▁Is ▁this ▁photo [*] ▁?", "[CLS] is this photo [*] ? [SEP]"),
}


@pytest.mark.parametrize("position", ["postfix", "prefix", "replace"])
def test_twin_prompt_tokens_are_the_official_pieces(tiny_instructblip, position):
    det = _detector(tiny_instructblip, position=position)
    pieces = det.prompt_pieces()
    assert " ".join(pieces["lm"]) == OFFICIAL_PIECES[position][0]
    assert " ".join(pieces["qformer"]) == OFFICIAL_PIECES[position][1]
    tok = det.lm_tokenizer
    assert det.lm_prompt_ids[0] == tok.eos_token_id == tok.bos_token_id == tok.convert_tokens_to_ids("</s>")
    assert det.lm_prompt_ids.count(det.lm_embed.token_id) == 1
    assert [tok.convert_ids_to_tokens(a) for a in det.answer_ids] == [["▁yes"], ["▁no"]]
    assert det.target_ids(torch.tensor([0, 1])) == [det.answer_ids[0] + [tok.eos_token_id],
                                                     det.answer_ids[1] + [tok.eos_token_id]]


def test_twin_tokenizers_look_like_the_hub_ones(tiny_instructblip):
    """Like Salesforce/instructblip-vicuna-7b: BOS = EOS = </s> (id 2), [PAD] then <image> after the base
    vocabulary, a BOS on every encoded text; the Q-Former's BERT tokenizer has [DEC]."""
    from transformers import InstructBlipProcessor

    proc = InstructBlipProcessor.from_pretrained(tiny_instructblip)
    lm, qf = proc.tokenizer, proc.qformer_tokenizer
    assert (lm.bos_token, lm.eos_token, lm.bos_token_id, lm.eos_token_id) == ("</s>", "</s>", 2, 2)
    assert lm.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert lm.pad_token == "[PAD]" and lm.convert_tokens_to_ids("<image>") == lm.pad_token_id + 1
    assert lm("Is this photo real?").input_ids[0] == 2
    assert qf.bos_token == "[DEC]" and qf("real").input_ids[0] == qf.cls_token_id


def test_stale_twin_is_rebuilt(tmp_path):
    """A twin whose marker records an older builder version (or none) is rebuilt by ensure_tiny."""
    import json

    from fakeforge.tiny import MARKER, builder_version, ensure_tiny

    assert builder_version("instructblip") >= 2
    stale = tmp_path / "instructblip"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"twin": "instructblip"}))  # built before versions existed
    (stale / "old_file.txt").write_text("from an old builder")
    path = ensure_tiny("instructblip", tmp_path)
    marker = json.loads((path / MARKER).read_text())
    assert marker["version"] == builder_version("instructblip")
    assert not (path / "old_file.txt").exists() and (path / "config.json").is_file()


def test_registry_is_lazy_and_resolves():
    code = ("import sys, detector, detector.cli; from detector import DETECTORS; "
            "assert 'antifakeprompt' in DETECTORS.names(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    from detector import DETECTORS
    from detector.families.antifakeprompt.model import AntifakePrompt

    assert DETECTORS.get("antifakeprompt") is AntifakePrompt


def test_trainable_rows_only_and_gradient_isolation(tiny_instructblip):
    from transformers import InstructBlipForConditionalGeneration

    det = _detector(tiny_instructblip)
    widths = det.row_widths()
    assert widths == {"qformer": 32, "lm": 48}
    assert det.num_trainable() == widths["qformer"] + widths["lm"] == 80
    trainable = [n for n, p in det.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["model.language_model.model.embed_tokens.row",
                                 "model.qformer.embeddings.word_embeddings.row"]
    before = {k: v.clone() for k, v in det.rows().items()}
    opt = torch.optim.AdamW(det.trainable_parameters(), lr=0.1, weight_decay=0.05)
    det.train()
    for step in range(3):
        loss = det(_images(4, step), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in det.named_parameters() if not p.requires_grad)
        opt.step()
    det.eval()
    after = det.rows()
    assert not torch.equal(before["lm_row"], after["lm_row"])
    assert not torch.equal(before["qformer_row"], after["qformer_row"])
    fresh = InstructBlipForConditionalGeneration.from_pretrained(tiny_instructblip).state_dict()
    tuned = {k.replace(".base.", "."): v for k, v in det.model.state_dict().items() if not k.endswith(".row")}
    assert set(tuned) == set(fresh)
    changed = [k for k in fresh if not torch.equal(fresh[k], tuned[k])]
    assert changed == [], f"base parameters changed: {changed}"


def test_loss_rule_sums_answer_tokens_and_one_pass_refuses_long_answers(tiny_instructblip):
    """The paper's rule scores each candidate by the SUM of its token losses (one batched pass); the one-pass
    rule is refused for multi-token answers instead of silently reading their first token."""
    with pytest.raises(ConfigError, match="scoring 'loss'"):
        _detector(tiny_instructblip, fake_answer="no way")
    det = _detector(tiny_instructblip, fake_answer="no way", scoring="loss")
    assert len(det.answer_ids[1]) > 1
    with pytest.raises(ConfigError, match="scoring 'loss'"):
        det.score(_images(2), "logits")
    x = _images(4, seed=2)
    both = det.candidate_losses(x)
    per_token = []
    for cand in det.answer_ids:  # each candidate alone, token by token
        nll, valid, _ = det._answer_nll(det.image_features(x), [cand] * 4)
        assert valid.all()
        per_token.append(nll)
    assert torch.allclose(both[:, 0], per_token[0].sum(1), atol=1e-5)
    assert torch.allclose(both[:, 1], per_token[1].sum(1), atol=1e-5)
    assert not torch.allclose(both[:, 1], per_token[1].mean(1), atol=1e-3)  # a sum, not a per-token mean
    assert torch.allclose(det.score(x), torch.sigmoid(both[:, 0] - both[:, 1]), atol=1e-6)


def test_both_scoring_rules_agree(tiny_instructblip):
    det = _detector(tiny_instructblip)
    with torch.no_grad():  # move the rows off their init so the scores spread on both sides of 0.5
        for i, p in enumerate(det.trainable_parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    x = _images(12, seed=5)
    p_logits, p_loss = det.score(x, "logits"), det.score(x, "loss")
    assert torch.equal(p_logits >= 0.5, p_loss >= 0.5)
    assert torch.allclose(p_logits, p_loss, atol=1e-5)
    _losses, p_same_pass = det.answer_losses(x, det.target_ids(torch.zeros(12, dtype=torch.long)), return_scores=True)
    assert torch.allclose(p_same_pass, p_logits, atol=1e-5)
    with pytest.raises(ConfigError, match="scoring"):
        det.score(x, "vote")


def test_scores_depend_on_image_and_batching(tiny_instructblip):
    det = _detector(tiny_instructblip)
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 2.0
    blue = torch.zeros(1, 3, 32, 32)
    blue[:, 2] = 2.0
    p = det.score(torch.cat([red, blue]))
    assert abs(float(p[0] - p[1])) > 1e-3, "the tiny twin's score must depend on the image"
    x = _images(5, seed=9)
    batched = det.score(x)
    single = torch.cat([det.score(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_zero_shot_and_init_word(tiny_instructblip):
    zs = _detector(tiny_instructblip, zero_shot=True)
    assert zs.num_trainable() == 0 and zs.prompt == "Is this photo real?"
    assert "[*]" not in zs.lm_tokenizer.get_vocab()
    with pytest.raises(ConfigError, match="zero-shot"):
        zs.rows()
    assert zs.score(_images(2)).shape == (2,)
    det = _detector(tiny_instructblip, init_word="photo")
    word = det.lm_tokenizer("photo", add_special_tokens=False).input_ids
    expected = det.model.get_input_embeddings().weight[word].mean(0)
    assert torch.allclose(det.rows()["lm_row"][0], expected)
    assert det.lm_tokenizer.tokenize(det.prompt)[-2:] == ["[*]", "?"]
    assert "[*]" in det.qformer_tokenizer.tokenize(det.prompt)


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_detector.py"
    spec = importlib.util.spec_from_file_location("bench_detector", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_size_architecture_trains_4864_parameters(tiny_instructblip):
    """On the InstructBLIP-Vicuna-7B shapes (built on the meta device: no memory, no download)."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig

    bench = _bench_module()
    processor = InstructBlipProcessor.from_pretrained(tiny_instructblip)
    config = bench.full_size_config(processor.tokenizer.convert_tokens_to_ids("<image>"))
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config)
    det = AntifakePrompt(model, processor, AntifakePromptConfig())
    assert det.row_widths() == {"qformer": 768, "lm": 4096}
    assert det.num_trainable() == 4864


def test_benchmark_smoke(tiny_instructblip, capsys):
    assert _bench_module().main(["--iters", "2", "--warmup", "1", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "speed-up:" in out and "decisions agree: True" in out


def test_gradient_checkpointing_gives_the_same_gradients(tiny_instructblip):
    x, y = _images(4, seed=3), torch.tensor([1, 0, 1, 0])
    grads = []
    for checkpointing in (False, True):
        det = _detector(tiny_instructblip)
        if checkpointing:
            det.enable_gradient_checkpointing()
        det.train()
        torch.manual_seed(7)  # the same Q-Former dropout masks in both runs (checkpointing replays them)
        det(x, y).backward()
        grads.append([p.grad.clone() for p in det.trainable_parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_qformer_dropout_is_active_in_training_only(tiny_instructblip):
    """Official recipe: model.train() keeps the Q-Former's dropout on; ViT and LLM have none; eval is exact."""
    x, y = _images(2, seed=4), torch.tensor([0, 1])
    det = _detector(tiny_instructblip)
    det.train()
    with torch.no_grad():
        a, b = det(x, y), det(x, y)
    assert not torch.equal(a, b), "Q-Former dropout should make two training passes differ"
    det.eval()
    with torch.no_grad():
        assert torch.equal(det(x, y), det(x, y))
    off = _detector(tiny_instructblip, train_dropout=False)
    off.train()
    with torch.no_grad():
        assert torch.equal(off(x, y), off(x, y))


def test_rows_start_from_normal_0_02(tiny_instructblip):
    det = _detector(tiny_instructblip, seed=3)
    rows = det.rows()
    both = torch.cat([rows["qformer_row"].flatten(), rows["lm_row"].flatten()])
    assert 0.012 < float(both.std()) < 0.03 and abs(float(both.mean())) < 0.01
    table = _detector(tiny_instructblip, seed=3, row_init="table")  # the named alternative: the table's scale
    assert float(table.rows()["lm_row"].std()) > 0.1


def test_precision_policies(tiny_instructblip):
    from detector.families.antifakeprompt.loading import resolve_precision

    official_cuda = resolve_precision("official", torch.device("cuda"))
    assert (official_cuda.vision, official_cuda.qformer, official_cuda.lm, official_cuda.autocast) == \
        (torch.float16, torch.float32, torch.float16, torch.float16)
    assert official_cuda.describe() == "official: ViT fp16, Q-Former fp32, LLM fp16, fp16 autocast"
    assert resolve_precision("official", torch.device("cpu")).lm == torch.float32  # LAVIS casts to fp32 on CPU
    ref = _detector(tiny_instructblip, dtype="float32")
    mixed = _detector(tiny_instructblip, dtype="fp16-mixed")
    m = mixed.model
    assert m.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    assert m.vision_model.post_layernorm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m.qformer.parameters())
    assert m.query_tokens.dtype == m.language_projection.weight.dtype == torch.float32
    assert m.language_model.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert mixed.rows()["lm_row"].dtype == torch.float32
    x = _images(4, seed=6)
    with torch.no_grad():
        for p, q in zip(ref.trainable_parameters(), mixed.trainable_parameters()):
            q.copy_(p + torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
            p.copy_(q)
    assert torch.allclose(ref.score(x), mixed.score(x), atol=2e-2)
    assert torch.equal(ref.score(x) >= 0.5, mixed.score(x) >= 0.5)
