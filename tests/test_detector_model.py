"""AntifakePrompt model wrapper on the tiny InstructBLIP twin: pseudo-word, freezing, scoring rules."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fakeforge.config import ConfigError, from_dict


def _detector(twin, **kw):
    from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig

    return AntifakePrompt.from_config(AntifakePromptConfig(model_id=str(twin), **kw), device="cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_prompt_positions_and_config_errors():
    from detector.antifakeprompt import AntifakePromptConfig

    assert AntifakePromptConfig().prompt == "Is this photo real [*]?"
    assert AntifakePromptConfig(position="prefix").prompt == "[*] Is this photo real?"
    assert AntifakePromptConfig(position="replace").prompt == "Is this photo [*]?"
    assert AntifakePromptConfig(zero_shot=True).prompt == "Is this photo real?"
    with pytest.raises(ConfigError, match="replace_word"):
        from_dict(AntifakePromptConfig, {"position": "replace", "replace_word": "genuine"}, "model")
    with pytest.raises(ConfigError, match="must differ"):
        from_dict(AntifakePromptConfig, {"real_answer": "no"}, "model")
    with pytest.raises(ConfigError, match="model.position"):
        from_dict(AntifakePromptConfig, {"position": "middle"}, "model")


def test_registry_is_lazy_and_resolves():
    code = ("import sys, detector, detector.cli; from detector import DETECTORS; "
            "assert 'antifakeprompt' in DETECTORS.names(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    from detector import DETECTORS
    from detector.antifakeprompt import AntifakePrompt

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

    from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig

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
        assert det.model.training == checkpointing
        det(x, y).backward()
        grads.append([p.grad.clone() for p in det.trainable_parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
