"""Checkpoints: save/load round trip, the LAVIS converter, unsafe pickles, rows for another base model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fakeforge.cli import main as fakeforge_main


class Sneaky:
    """Unpickling this would create a marker file: the converter must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _tuned(twin, seed=0):
    from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig

    det = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in det.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return det


def _lavis(path: Path, qf_width=32, lm_width=48, extra=None, seed=3) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = {"Qformer.bert.embeddings.train_word_embeddings.weight": torch.randn(1, qf_width, generator=g),
            "llm_model.model.train_embed_tokens.weight": torch.randn(1, lm_width, generator=g)}
    ckpt = {"model": dict(rows), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
            "config": {"model": {"arch": "blip2_vicuna_instruct_textinv"},
                       "datasets": {"textinv": {"vis_processor": {
                           "train": {"name": "blip_image_train", "image_size": 32, "mean": [0.1, 0.2, 0.3],
                                     "std": [0.4, 0.5, 0.6]},
                           "eval": {"name": "blip_image_eval", "image_size": 32, "mean": [0.1, 0.2, 0.3],
                                    "std": [0.4, 0.5, 0.6]}}}}},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "epoch": 9, **(extra or {})}
    torch.save(ckpt, path)
    return rows


def test_save_load_gives_identical_scores(tiny_instructblip, tmp_path):
    from detector.checkpoint import load_checkpoint, save_checkpoint

    det = _tuned(tiny_instructblip)
    pre = {"image_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "source": "test"}
    save_checkpoint(det, tmp_path / "ckpt", pre, {"note": "unit test"})
    loaded, pre2 = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert pre2 == pre
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(det.score(x), loaded.score(x))
    assert torch.equal(det.score(x, "loss"), loaded.score(x, "loss"))
    for k, v in det.rows().items():
        assert torch.equal(v, loaded.rows()[k])
    _, pre3 = load_checkpoint(tmp_path / "ckpt", device="cpu", scoring="loss")
    assert pre3 == pre


def test_convert_lavis_round_trip(tiny_instructblip, tmp_path, capsys):
    from detector.checkpoint import load_checkpoint

    src = tmp_path / "COCO_150k_SD2_SD2IP.pth"
    rows = _lavis(src)
    out = tmp_path / "converted"
    assert fakeforge_main(["convert-antifakeprompt", str(src), "--out", str(out),
                           "--base-model", "tiny:instructblip", "--llm-id", "none"]) == 0
    assert "80 parameters" in capsys.readouterr().out
    meta = json.loads((out / "detector.json").read_text())
    assert meta["preprocess"]["mean"] == [0.1, 0.2, 0.3] and meta["preprocess"]["image_size"] == 32
    assert meta["training"]["epoch"] == 9 and meta["prompt"] == "Is this photo real [*]?"
    det, _ = load_checkpoint(out, device="cpu")
    assert torch.equal(det.rows()["qformer_row"], rows["Qformer.bert.embeddings.train_word_embeddings.weight"])
    assert torch.equal(det.rows()["lm_row"], rows["llm_model.model.train_embed_tokens.weight"])
    direct = _tuned(tiny_instructblip)
    direct.load_rows({"qformer_row": rows["Qformer.bert.embeddings.train_word_embeddings.weight"],
                      "lm_row": rows["llm_model.model.train_embed_tokens.weight"]})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(det.score(x), direct.score(x))


def test_convert_defaults_to_the_paper_setup(tmp_path):
    from detector.checkpoint import PAPER_MEAN, convert_lavis, read_meta

    src = tmp_path / "official.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({"model": {"Qformer.bert.embeddings.train_word_embeddings.weight": torch.randn(1, 768, generator=g),
                          "llm_model.model.train_embed_tokens.weight": torch.randn(1, 4096, generator=g)},
                "config": {"run": {"seed": 42}}, "epoch": 9}, src)
    meta = read_meta(convert_lavis(src, tmp_path / "out"))
    assert meta["trainable_parameters"] == 4864 == 768 + 4096
    assert meta["model"]["model_id"] == "Salesforce/instructblip-vicuna-7b"
    assert meta["model"]["llm_id"] == "lmsys/vicuna-7b-v1.3"
    assert meta["preprocess"] == {"image_size": 224, "mean": PAPER_MEAN, "std": meta["preprocess"]["std"],
                                  "source": "paper defaults (COCO+SD2+SD2IP)"}


def test_pickle_with_custom_class_is_refused(tmp_path, capsys):
    from detector.checkpoint import CheckpointError, convert_lavis

    marker = tmp_path / "executed"
    src = tmp_path / "evil.pth"
    _lavis(src, extra={"payload": Sneaky(str(marker))})
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_lavis(src, tmp_path / "out")
    assert not marker.exists(), "the pickle's payload ran"
    assert fakeforge_main(["convert-antifakeprompt", str(src), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and not marker.exists()
    assert not (tmp_path / "out2" / "detector.json").exists()


def test_wrong_checkpoints_give_clear_errors(tiny_instructblip, tmp_path):
    from detector.checkpoint import CheckpointError, convert_lavis, load_checkpoint

    src = tmp_path / "other.pth"
    torch.save({"model": {"visual_encoder.weight": torch.zeros(2, 2)}}, src)
    with pytest.raises(CheckpointError, match="train_embed_tokens"):
        convert_lavis(src, tmp_path / "x")
    with pytest.raises(CheckpointError, match="convert-antifakeprompt"):
        load_checkpoint(src, device="cpu")
    with pytest.raises(CheckpointError, match="no detector.json"):
        load_checkpoint(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError):
        convert_lavis(tmp_path / "missing.pth", tmp_path / "y")


def test_rows_for_another_base_model_name_both_widths(tiny_instructblip, tmp_path, capsys):
    from detector.checkpoint import CheckpointError, convert_lavis, load_checkpoint

    src = tmp_path / "vicuna.pth"
    _lavis(src, qf_width=768, lm_width=4096)
    out = convert_lavis(src, tmp_path / "vicuna")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out, device="cpu", tiny=True)
    msg = str(info.value)
    assert "another base model" in msg and all(w in msg for w in ("768", "4096", "32", "48"))
    img = tmp_path / "a.png"
    import numpy as np
    from detector_helpers import encode, make_image

    img.write_bytes(encode(make_image("real", np.random.default_rng(0)), "PNG"))
    assert fakeforge_main(["detect", "--checkpoint", str(out), "--tiny", "--img_path", str(img)]) == 2
    assert "4096" in capsys.readouterr().err
