"""Checkpoints: save/load round trip, the LAVIS converter, unsafe pickles, rows for another base model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fakeforge.cli import main as fakeforge_main
from fakeforge.config import ConfigError


class Sneaky:
    """Unpickling this would create a marker file: the converter must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _tuned(twin, seed=0):
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig

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
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.families.antifakeprompt.model import load_checkpoint

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
    from detector.families.antifakeprompt.model import load_checkpoint

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
    from detector.families.antifakeprompt.checkpoint import PAPER_MEAN, PAPER_STD, convert_lavis, read_meta

    src = tmp_path / "official.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({"model": {"Qformer.bert.embeddings.train_word_embeddings.weight": torch.randn(1, 768, generator=g),
                          "llm_model.model.train_embed_tokens.weight": torch.randn(1, 4096, generator=g)},
                "config": {"run": {"seed": 42}}, "epoch": 9}, src)
    meta = read_meta(convert_lavis(src, tmp_path / "out"))
    assert meta["trainable_parameters"] == 4864 == 768 + 4096
    m = meta["model"]
    assert m["model_id"] == "Salesforce/instructblip-vicuna-7b" and m["llm_id"] == "lmsys/vicuna-7b-v1.3"
    assert (m["dtype"], m["lm_bos_token"], m["position"], m["real_answer"], m["fake_answer"]) == \
        ("official", "</s>", "postfix", "yes", "no")
    assert meta["preprocess"]["mean"] == PAPER_MEAN and meta["preprocess"]["std"] == PAPER_STD
    assert meta["preprocess"]["image_size"] == 224 and meta["preprocess"]["source"].startswith("paper defaults")


def _official_layout(path: Path, prompt: str = "Is this photo real [*]?", qf_width=32, lm_width=48) -> dict:
    """A checkpoint as LAVIS's runner saves it: `model` holds the trainable rows plus every buffer (state_dict
    minus frozen parameters), with `optimizer`, `config`, `scaler` and `epoch` beside it."""
    from collections import OrderedDict

    g = torch.Generator().manual_seed(11)
    qf_row = torch.nn.Parameter(torch.randn(1, qf_width, generator=g) * 0.02)
    lm_row = torch.nn.Parameter(torch.randn(1, lm_width, generator=g) * 0.02)
    opt = torch.optim.AdamW([{"params": [qf_row, lm_row], "weight_decay": 0.05, "lr_scale": 1},
                             {"params": [], "weight_decay": 0, "lr_scale": 1}], lr=1e-5, betas=(0.9, 0.999))
    (qf_row.sum() + lm_row.sum()).backward()
    opt.step()
    model = OrderedDict()
    model["Qformer.bert.embeddings.position_ids"] = torch.arange(512).expand((1, -1))
    model["Qformer.bert.embeddings.train_word_embeddings.weight"] = qf_row.detach().clone()
    for i in range(2):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2) / 8))
        model[f"llm_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq
    model["llm_model.model.train_embed_tokens.weight"] = lm_row.detach().clone()
    official_stats = {"mean": [0.4730, 0.4499, 0.4129], "std": [0.2780, 0.2713, 0.2872]}
    clip_stats = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    config = {  # key order as LAVIS merges it: the model config (with its `preprocess`) before `datasets`
        "model": {"arch": "blip2_vicuna_instruct_textinv", "model_type": "vicuna7b", "load_finetuned": False,
                  "prompt": prompt, "pseudo_word": "[*]", "vit_precision": "fp16", "num_query_token": 32},
        "preprocess": {"vis_processor": {"train": {"name": "blip2_image_train_textinv", "image_size": 224,
                                                   **clip_stats},
                                         "eval": {"name": "blip_image_eval_textinv", "image_size": 224, **clip_stats}}},
        "datasets": {"textinv": {
            "vis_processor": {"train": {"name": "blip2_image_train_textinv", "image_size": 32, **official_stats},
                              "eval": {"name": "blip_image_eval_textinv", "image_size": 32, **official_stats}},
            "text_processor": {"train": {"name": "blip_question_textinv", "prompt": prompt, "pseudo_word": "[*]"}},
            "build_info": {"images": {"storage": "/data/train_COCO_90k_SD2_SD2IP_label.csv"}}}},
        "run": {"task": "textual_inversion", "lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-5, "min_lr": 0,
                "warmup_lr": 1e-8, "warmup_steps": 0, "weight_decay": 0.05, "max_epoch": 10, "batch_size_train": 6,
                "amp": True, "seed": 42, "train_splits": ["train"]}}
    scaler = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 417}
    torch.save({"model": model, "optimizer": opt.state_dict(), "config": config, "scaler": scaler, "epoch": 9}, path)
    return {"qformer_row": model["Qformer.bert.embeddings.train_word_embeddings.weight"],
            "lm_row": model["llm_model.model.train_embed_tokens.weight"]}


def test_official_lavis_layout_converts_loads_and_scores(tiny_instructblip, tmp_path, capsys):
    """The full LAVIS save layout (buffers in `model`, AdamW state, scaler, run config) converts with the
    training statistics of datasets.*.vis_processor (not the model's `preprocess` section), and detect then
    runs the official precision, tokens and statistics, saying so in its first lines."""
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.families.antifakeprompt.model import load_checkpoint
    from detector.data import build_transform
    from detector_helpers import encode, make_image

    src = tmp_path / "COCO_150k_SD2_SD2IP.pth"
    rows = _official_layout(src)
    out = tmp_path / "afp"
    assert fakeforge_main(["convert-antifakeprompt", str(src), "--out", str(out), "--base-model", "tiny:instructblip",
                           "--llm-id", "none"]) == 0
    text = capsys.readouterr().out
    assert "80 parameters" in text and "precision official" in text
    assert "LAVIS run config datasets.textinv.vis_processor.eval" in text
    meta = json.loads((out / "detector.json").read_text())
    assert meta["preprocess"]["mean"] == [0.4730, 0.4499, 0.4129] and meta["preprocess"]["image_size"] == 32
    assert meta["training"]["epoch"] == 9 and meta["model"]["dtype"] == "official"
    img = tmp_path / "photo.png"
    img.write_bytes(encode(make_image("real", np.random.default_rng(0)), "PNG"))
    assert fakeforge_main(["detect", "--checkpoint", str(out), "--img_path", str(img), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("precision: official") and "ViT fp32, Q-Former fp32, LLM fp32 on cpu" in lines[1]
    assert "LM tokens: </s> ▁Is ▁this ▁photo ▁real [*] ▁?" in lines[2]
    assert "Q-Former tokens: [CLS] is this photo real [*] ? [SEP]" in lines[2]
    assert "mean [0.473, 0.4499, 0.4129]" in lines[3] and "datasets.textinv.vis_processor.eval" in lines[3]
    p_cli = float(lines[-1].rsplit("= ", 1)[1].rstrip(")"))
    det, pre = load_checkpoint(out, device="cpu")
    for k, v in rows.items():
        assert torch.equal(det.rows()[k], v.float())
    direct = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), "cpu")
    direct.load_rows({k: v.float() for k, v in rows.items()})
    from PIL import Image

    x = build_transform(32, pre["mean"], pre["std"], train=False)(Image.open(img).convert("RGB")).unsqueeze(0)
    assert abs(float(direct.score(x)[0]) - p_cli) < 1e-4
    assert torch.equal(det.score(x), direct.score(x))


def test_converter_takes_the_position_from_the_run_config(tmp_path):
    from detector.families.antifakeprompt.checkpoint import convert_lavis, read_meta

    src = tmp_path / "prefix.pth"
    _official_layout(src, prompt="[*] Is this photo real?")
    meta = read_meta(convert_lavis(src, tmp_path / "out"))
    assert meta["model"]["position"] == "prefix" and meta["prompt"] == "[*] Is this photo real?"


def test_converter_refuses_ambiguous_statistics(tmp_path):
    from detector.families.antifakeprompt.checkpoint import CheckpointError, convert_lavis

    src = tmp_path / "two.pth"
    _official_layout(src)
    ckpt = torch.load(src, weights_only=True)
    ckpt["config"]["datasets"]["lama"] = {"vis_processor": {"eval": {"mean": [0.4722, 0.4490, 0.4117],
                                                                     "std": [0.2772, 0.2708, 0.2867]}}}
    torch.save(ckpt, src)
    with pytest.raises(CheckpointError, match="--mean and --std"):
        convert_lavis(src, tmp_path / "out")
    out = convert_lavis(src, tmp_path / "out", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    assert json.loads((out / "detector.json").read_text())["preprocess"]["source"] == "given on the command line"


def test_pickle_with_custom_class_is_refused(tmp_path, capsys):
    from detector.families.antifakeprompt.checkpoint import CheckpointError, convert_lavis

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
    from detector.families.antifakeprompt.checkpoint import CheckpointError, convert_lavis
    from detector.families.antifakeprompt.model import load_checkpoint

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


def _odd_pth_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Real broken inputs for the converter: each file and the words its one-line error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    (folder / "empty.pth").write_bytes(b"")
    cases["empty"] = (folder / "empty.pth", "empty (0 bytes)")
    (folder / "notes.pth").write_text("these are my training notes\n")
    cases["text"] = (folder / "notes.pth", "not a PyTorch checkpoint")
    good = folder / "good.pth"
    _lavis(good)
    (folder / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (folder / "truncated.pth", "truncated/damaged")
    torch.save([1, 2, 3], folder / "list.pth")
    cases["list"] = (folder / "list.pth", "found list")
    torch.save(torch.zeros(3), folder / "tensor.pth")
    cases["tensor"] = (folder / "tensor.pth", "found Tensor")
    torch.save({"model": {LAVIS_QF: torch.zeros(2, 32), LAVIS_LM: torch.zeros(1, 48)}}, folder / "two_rows.pth")
    cases["two rows"] = (folder / "two_rows.pth", "one float row [1, width], got (2, 32)")
    torch.save({"model": {LAVIS_QF: torch.full((1, 32), float("nan")), LAVIS_LM: torch.zeros(1, 48)}},
               folder / "nan.pth")
    cases["nan"] = (folder / "nan.pth", "NaN/inf")
    (folder / "dir.pth").mkdir()
    cases["folder"] = (folder / "dir.pth", "is not a file")
    return cases


LAVIS_QF = "Qformer.bert.embeddings.train_word_embeddings.weight"
LAVIS_LM = "llm_model.model.train_embed_tokens.weight"


def test_converter_gives_one_line_errors_for_odd_pth_files(tmp_path, capsys):
    for name, (path, words) in _odd_pth_files(tmp_path / "in").items():
        code = fakeforge_main(["convert-antifakeprompt", str(path), "--out", str(tmp_path / "out" / name)])
        err = capsys.readouterr().err
        assert code == 2, name
        assert words in err and str(path) in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert not (tmp_path / "out" / name / "detector.json").exists()


def test_damaged_checkpoint_folders_are_refused_in_one_line(tiny_instructblip, tmp_path, capsys):
    """A broken detector.json or .safetensors, or rows holding NaN/inf, stop `detect` with one line (exit 2)
    before any image is scored."""
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector_helpers import encode, make_image

    good = tmp_path / "good"
    save_checkpoint(_tuned(tiny_instructblip), good, {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    img = tmp_path / "a.png"
    img.write_bytes(encode(make_image("real", np.random.default_rng(0)), "PNG"))

    def damaged(name, edit):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    cases = {
        "json": (damaged("json", lambda f: (f / "detector.json").write_text('{"format": "fakeforge.antif')),
                 "not valid JSON"),
        "json-keys": (damaged("keys", lambda f: (f / "detector.json").write_text(
            json.dumps({"format": "fakeforge.antifakeprompt"}))), "lacks a valid 'model' entry"),
        "json-model": (damaged("model", lambda f: (f / "detector.json").write_text(json.dumps(
            {**json.loads((good / "detector.json").read_text()), "model": {"position": "middle"}}))), "model.position"),
        "safetensors": (damaged("st", lambda f: (f / "pseudo_word.safetensors").write_bytes(b"\x00" * 40)),
                        "not a readable safetensors file"),
        "truncated": (damaged("st2", lambda f: (f / "pseudo_word.safetensors").write_bytes(
            (good / "pseudo_word.safetensors").read_bytes()[:100])), "not a readable safetensors file"),
        "nan": (damaged("nan", lambda f: save_file({"qformer_row": torch.zeros(1, 32),
                                                    "lm_row": torch.tensor([[float("inf")] * 48])},
                                                   str(f / "pseudo_word.safetensors"))), "NaN/inf"),
    }
    capsys.readouterr()
    for name, (folder, words) in cases.items():
        code = fakeforge_main(["detect", "--checkpoint", str(folder), "--img_path", str(img)])
        out, err = capsys.readouterr()
        assert code == 2 and words in err and "P(fake)" not in out, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)  # one line, and no model was loaded first


def test_nan_rows_are_refused_by_load_rows(tiny_instructblip):
    det = _tuned(tiny_instructblip)
    rows = det.rows()
    rows["qformer_row"][0, 3] = float("nan")
    with pytest.raises(ConfigError, match="NaN/inf"):
        det.load_rows(rows)


def test_rows_for_another_base_model_name_both_widths(tiny_instructblip, tmp_path, capsys):
    from detector.families.antifakeprompt.checkpoint import CheckpointError, convert_lavis
    from detector.families.antifakeprompt.model import load_checkpoint

    src = tmp_path / "vicuna.pth"
    _lavis(src, qf_width=768, lm_width=4096)
    out = convert_lavis(src, tmp_path / "vicuna")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out, device="cpu", tiny=True)
    msg = str(info.value)
    assert "another base model" in msg and all(w in msg for w in ("768", "4096", "32", "48"))
    img = tmp_path / "a.png"
    from detector_helpers import encode, make_image

    img.write_bytes(encode(make_image("real", np.random.default_rng(0)), "PNG"))
    assert fakeforge_main(["detect", "--checkpoint", str(out), "--tiny", "--img_path", str(img)]) == 2
    assert "4096" in capsys.readouterr().err
