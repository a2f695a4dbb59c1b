"""Training AntifakePrompt on the tiny twin: learning, isolation of the two rows, checkpoints, resume, bad data."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from detector_helpers import write_dataset, write_set


def _train(out, data, *extra):
    import train

    return train.main(["--config", "antifakeprompt_tiny", "--out", str(out), "--set", f"data.train=[{data}]",
                       *extra])


@pytest.fixture(scope="module")
def run(tiny_instructblip, tmp_path_factory):
    """One tiny training run on a separable shard set (real = reddish, fake = bluish)."""
    root = tmp_path_factory.mktemp("train")
    data = write_dataset(root / "data", n_real=48, n_fake=48, shards=2)
    out = root / "run"
    assert _train(out, data, "--set", "train.epochs=3") == 0
    return {"out": out, "data": data, "root": root}


def _metrics(out):
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_and_validation_beats_chance(run):
    rows = _metrics(run["out"])
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert len(val_rows) == 3 and len(train_rows) >= 3
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"]) - 0.3
    assert float(val_rows[-1]["val_loss"]) < float(val_rows[0]["val_loss"])
    assert float(val_rows[-1]["val_acc"]) >= 0.75  # chance is 0.5
    assert all(float(r["images_per_s"]) > 0 and r["lr"] != "" for r in train_rows)


def test_checkpoint_files_and_metadata(run):
    best = run["out"] / "best"
    assert sorted(p.name for p in best.iterdir()) == ["README.md", "detector.json", "pseudo_word.safetensors"]
    assert (best.stat().st_size < 10_000) and (best / "pseudo_word.safetensors").stat().st_size < 2_000
    meta = json.loads((best / "detector.json").read_text())
    assert meta["trainable_parameters"] == 80 and meta["row_widths"] == {"qformer": 32, "lm": 48}
    assert meta["model"]["model_id"] == "tiny:instructblip" and meta["prompt"] == "Is this photo real [*]?"
    pre = meta["preprocess"]
    assert pre["image_size"] == 32 and len(pre["mean"]) == 3 and pre["mean"][0] > pre["mean"][1]  # reddish reals
    data = meta["training"]["data"]
    assert set(data["sets"]) == {"coco", "sd2"} and data["sets"]["coco"].get("real", 0) > 0
    assert data["val_samples"] > 0
    assert torch.__version__.startswith(meta["versions"]["torch"]) and "transformers" in meta["versions"]
    assert "AntifakePrompt" in (best / "README.md").read_text()
    assert (run["out"] / "last" / "training_state.pt").is_file()
    assert (run["out"] / "config.yaml").is_file()


def test_only_the_two_rows_differ_from_the_base_model(run, tiny_instructblip):
    from transformers import InstructBlipForConditionalGeneration

    from detector.antifakeprompt import AntifakePrompt, AntifakePromptConfig
    from detector.checkpoint import load_checkpoint

    det, _pre = load_checkpoint(run["out"] / "best", device="cpu")
    fresh = InstructBlipForConditionalGeneration.from_pretrained(tiny_instructblip).state_dict()
    tuned = {k.replace(".base.", "."): v for k, v in det.model.state_dict().items() if not k.endswith(".row")}
    assert set(tuned) == set(fresh)
    assert [k for k in fresh if not torch.equal(fresh[k], tuned[k])] == []
    init = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip", dtype="float32"), "cpu")
    for name in ("lm_row", "qformer_row"):
        assert not torch.allclose(det.rows()[name], init.rows()[name]), f"{name} did not train"


def test_resume_continues_and_refuses_to_overwrite(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    assert _train(out, run["data"], "--set", "train.epochs=4") == 2
    assert "--resume" in capsys.readouterr().err
    assert _train(out, run["data"], "--set", "train.epochs=4", "--resume") == 0
    epochs = [int(r["epoch"]) for r in _metrics(out) if r["split"] == "val"]
    assert epochs == [1, 2, 3, 4]
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 4
    assert _train(tmp_path / "fresh", run["data"], "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_one_class_training_set_is_refused(tiny_instructblip, tmp_path, capsys):
    write_set(tmp_path / "only_real" / "coco", "real", 8)
    assert _train(tmp_path / "run", tmp_path / "only_real") == 2
    err = capsys.readouterr().err
    assert "only one class" in err and "8 real, 0 fake" in err


def test_config_errors_name_the_key(run, tmp_path, capsys):
    assert _train(tmp_path / "a", run["data"], "--set", "data.mix={coco: 1.0, laion: 2.0}") == 2
    assert "laion" in capsys.readouterr().err
    assert _train(tmp_path / "b", run["data"], "--set", "train.batch_size=zero") == 2
    assert "train.batch_size" in capsys.readouterr().err
    import train

    assert train.main(["--config", "antifakeprompt_tiny", "--out", str(tmp_path / "c")]) == 2
    assert "data.train is empty" in capsys.readouterr().err


def test_mixing_weights_and_explicit_validation_set(run, tmp_path):
    val = write_dataset(tmp_path / "val", n_real=6, n_fake=6, seed=11)
    out = tmp_path / "run"
    assert _train(out, run["data"], "--set", "data.mix={coco: 1.0, sd2: 3.0}", "--set", f"data.val=[{val}]",
                  "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3") == 0
    meta = json.loads((out / "best" / "detector.json").read_text())
    assert meta["training"]["data"]["weights"] == {"coco": 1.0, "sd2": 3.0}
    assert sum(sum(c.values()) for c in meta["training"]["data"]["val"].values()) == 12
    assert [r["step"] for r in _metrics(out) if r["split"] == "val"] == ["3"]


def test_two_process_training_with_torchrun(tiny_instructblip, tmp_path):
    """torchrun with 2 CPU processes (gloo): shards split across ranks, one best/ and metrics.csv written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    data = write_dataset(tmp_path / "data", n_real=16, n_fake=16, shards=2)
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(root / "train.py"), "--config", "antifakeprompt_tiny", "--out", str(out),
                           "--set", f"data.train=[{data}]", "--set", "train.epochs=1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best" / "pseudo_word.safetensors").is_file()
    assert [r["split"] for r in _metrics(out)].count("val") == 1
