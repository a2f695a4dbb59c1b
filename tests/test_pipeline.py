"""`fakeforge run`: one command from build to report; resumable after SIGKILL; never mixes inputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from fakeforge.cli import main


def _write_configs(root: Path, epochs: int = 2) -> Path:
    build = root / "build.yaml"
    build.write_text(yaml.safe_dump({
        "output": "unused", "seed": 0, "source": {"kind": "demo", "limit": 12},
        "image": {"format": "jpeg", "quality": 95, "size": 32, "resize": "center_crop"},
        "shards": {"max_count": 6, "max_size_mb": 16},
        "sets": [{"name": "coco_demo", "generator": "real"}, {"name": "sd2", "generator": "sd2"}]}))
    pipe = root / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump({
        "description": "tiny test pipeline", "output": "unused",
        "datasets": [{"name": "d", "build": str(build)}],
        "detectors": [{"name": "afp", "config": "antifakeprompt_tiny", "train_on": ["d"],
                       "overrides": [f"train.epochs={epochs}", "data.val_fraction=0.25", "train.log_every=2"]},
                      {"name": "untrained", "init_of": "afp"}],
        "evaluate": {"datasets": ["d"]}, "audit": False}))
    return pipe


def _cmd(pipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fakeforge.cli", "run", "--config", str(pipe), "--tiny", "--out", str(out)]


def _keys(folder: Path) -> list[str]:
    keys = []
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            keys += sorted({Path(m.name).name.split(".")[0] for m in tf})
    return keys


def _rows(ckpt: Path):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "pseudo_word.safetensors"))


def _table(out: Path) -> dict:
    data = json.loads((out / "eval" / "afp" / "results.json").read_text())
    return {k: (v["n"], v["accuracy"]) for k, v in data["sets"].items()}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_dir, tiny_instructblip):
    root = tmp_path_factory.mktemp("pipe")
    pipe = _write_configs(root)
    out = root / "clean"
    env = {**os.environ, "FAKEFORGE_TINY_DIR": tiny_dir}
    subprocess.run(_cmd(pipe, out), check=True, env=env, capture_output=True)
    return pipe, out, env


def test_run_builds_trains_evaluates_and_reports(clean_run):
    _pipe, out, _env = clean_run
    manifest = json.loads((out / "data" / "d" / "manifest.json").read_text())
    assert {k: v["count"] for k, v in manifest["sets"].items()} == {"coco_demo": 12, "sd2": 12}
    assert (out / "train" / "afp" / "best" / "pseudo_word.safetensors").is_file()
    assert (out / "stats" / "afp.json").is_file()  # the stats stage ran and fed training
    cfg = yaml.safe_load((out / "train" / "afp" / "config.yaml").read_text())
    assert cfg["data"]["stats_file"] == str(out / "stats" / "afp.json")
    assert set(_table(out)) == {"coco_demo", "sd2"}
    # init_of: the same detector before training, scored from the run's init/ (the demo's "untrained" row)
    untrained = json.loads((out / "eval" / "untrained" / "results.json").read_text())
    assert untrained["checkpoint"] == str(out / "train" / "afp" / "init")
    init = _rows(out / "train" / "afp" / "init")
    assert any(not (init[k] == _rows(out / "train" / "afp" / "best")[k]).all() for k in init)
    page = (out / "report" / "report.html").read_text()
    assert "tiny test pipeline" in page and "<td>afp</td>" in page
    stages = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert {"data__d", "train__afp", "eval__afp"} <= set(stages) and all(s["done"] for s in stages.values())


def test_rerun_reuses_finished_stages(clean_run):
    pipe, out, env = clean_run
    before = (out / "train" / "afp" / "best" / "pseudo_word.safetensors").stat().st_mtime_ns
    res = subprocess.run(_cmd(pipe, out), env=env, capture_output=True, text=True, check=True)
    assert "train 'afp': finished earlier with the same config and data, reused" in res.stdout
    assert "eval 'afp': same checkpoint and data as before, reused" in res.stdout
    # the run ends with the report's paper-layout table: a row per detector with its #params
    table = [line.strip("| ").split(" | ") for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0][:3] == ["Method", "Train set", "#params"], table
    rows = {cells[0]: cells for cells in table[1:]}  # the |---| rule does not start with "| "
    assert set(rows) == {"afp", "untrained"} and rows["afp"][2] == rows["untrained"][2] == "80", rows
    assert (out / "train" / "afp" / "best" / "pseudo_word.safetensors").stat().st_mtime_ns == before


def test_sigkill_mid_run_then_rerun_equals_a_clean_run(clean_run, tmp_path):
    pipe, clean, env = clean_run
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(pipe, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    record = out / "stages" / "train__afp.json"
    state = out / "train" / "afp" / "last" / "training_state.pt"
    deadline = time.time() + 600
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # kill right after epoch 1's checkpoint: the rerun must resume from last/, not restart
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a scheduler does
    proc.wait()
    assert not json.loads(record.read_text())["done"]
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    subprocess.run(_cmd(pipe, out), check=True, env=env, capture_output=True)
    assert _keys(out / "data" / "d") == _keys(clean / "data" / "d")
    a, b = _rows(out / "train" / "afp" / "best"), _rows(clean / "train" / "afp" / "best")
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name
    assert _table(out) == _table(clean)


def test_changed_inputs_are_refused_unless_rebuilt(clean_run, tmp_path, capsys):
    pipe, out, _env = clean_run
    changed = tmp_path / "changed.yaml"
    raw = yaml.safe_load(pipe.read_text())
    raw["detectors"][0]["overrides"].append("optim.lr=0.01")
    changed.write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(changed), "--tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stage train/afp" in err and "--rebuild train/afp" in err


def test_bad_pipeline_configs_fail_before_any_work(tmp_path, capsys):
    pipe = _write_configs(tmp_path)
    raw = yaml.safe_load(pipe.read_text())
    raw["evaluate"]["datasets"] = ["d", "flickr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "evaluate.datasets names ['flickr'], which no dataset stage produces" in capsys.readouterr().err
    raw = yaml.safe_load(pipe.read_text())
    raw["detectors"][0]["train_on"] = ["d", "flickr/real"]
    bad.write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "detector 'afp': train_on names ['flickr/real'], which no dataset stage produces" in capsys.readouterr().err
    assert main(["run", "--config", str(pipe), "--out", str(tmp_path / "o"), "--rebuild", "train/nope"]) == 2
    assert "--rebuild ['train/nope']: no such stage" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists()


@pytest.mark.slow
def test_demo_trained_beats_untrained_on_held_out_data(tmp_path, tiny_dir, capsys):
    """`fakeforge demo` (the README's first command): the trained detector clearly beats the same detector before
    training (the run's init/) on the held-out test data, and the demo prints both and says what they mean."""
    from fakeforge.pipeline import held_out_summary

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = {n: json.loads((out / "eval" / n / "results.json").read_text()) for n in ("antifakeprompt", "untrained")}
    trained, untrained = held_out_summary(results["antifakeprompt"]), held_out_summary(results["untrained"])
    assert trained["balanced"] >= untrained["balanced"] + 0.1, (trained, untrained)
    assert trained["auc"] >= untrained["auc"] + 0.1, (trained, untrained)
    assert results["untrained"]["checkpoint"] == str(out / "train" / "antifakeprompt" / "init")
    assert "training adds +" in printed and "say nothing about real detectors" in printed
    assert (out / "report" / "report.html").is_file() and (out / "data" / "test" / "README.md").is_file()
    assert "<h2>Robustness: genimage</h2>" in (out / "report" / "report.html").read_text()  # evaluate.robustness
