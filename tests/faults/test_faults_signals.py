"""SIGTERM, SIGINT and SIGKILL at several moments of a build and a training run (start-up, mid-shard,
mid-epoch): one line, exit 143 / 130, and the rerun gives the bytes of an uninterrupted run."""
from __future__ import annotations

import signal
import time

import pytest
import torch
from builder_helpers import write_build_config
from fault_helpers import ROOT, hurt, one_line_stop, past_interpreter_start, run, snapshot, start, tar_bytes

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SETS = [{"name": "real", "generator": "real"}, {"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1}}]


def _build_args(cfg, tiny_dir):
    return [str(ROOT / "build_dataset.py"), "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]


def test_build_signals_at_any_moment_then_rerun_gives_the_same_bytes(tmp_path, tiny_dir):
    source = {"kind": "demo", "limit": 6}
    clean = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", SETS, source, shards={"max_count": 1})
    code, out = run(_build_args(clean, tiny_dir))
    assert code == 0, out[-3000:]
    cfg = write_build_config(tmp_path / "hurt.yaml", tmp_path / "hurt", SETS, source, shards={"max_count": 1})
    hurt_out = tmp_path / "hurt"
    before = snapshot(tmp_path, hurt_out)

    def done():
        return len(list(hurt_out.glob("*/*.done.json")))

    def markers(more):  # `more` shards finished by this run (the runs before it left some already)
        have = done()
        return lambda: done() >= have + more

    # start-up: imports, argument parsing and config resolution, before the first shard
    for sig, after in ((signal.SIGTERM, 0.0), (signal.SIGINT, 0.3), (signal.SIGTERM, 1.0)):
        proc = start(_build_args(cfg, tiny_dir))
        code, out = hurt(proc, sig, when=past_interpreter_start(proc), after=after)
        one_line_stop(code, out, sig)
        assert not list(hurt_out.glob("*/*.tar")), "stopped before the first shard"
    # mid-build, then a kill without warning
    for sig, more in ((signal.SIGTERM, 2), (signal.SIGINT, 1), (signal.SIGKILL, 1)):
        code, out = hurt(start(_build_args(cfg, tiny_dir)), sig, when=markers(more))
        if sig == signal.SIGKILL:
            assert code == -9
        else:
            one_line_stop(code, out, sig)
            assert not list(hurt_out.rglob("*.tmp")), "a clean stop leaves no temp file"
        assert not (hurt_out / "manifest.json").exists(), f"the {sig!r} came too late: {out[-2000:]}"
    code, out = run(_build_args(cfg, tiny_dir))
    assert code == 0, out[-3000:]
    assert tar_bytes(hurt_out) == tar_bytes(tmp_path / "clean") and len(tar_bytes(hurt_out)) == 12
    assert snapshot(tmp_path, hurt_out) == before, "nothing outside the output changed"


def test_train_signals_at_start_up_and_mid_epoch_then_resume_equals_straight_run(tmp_path, tiny_instructblip):
    from detector_helpers import write_dataset

    from detector.families.antifakeprompt.checkpoint import read_rows

    data = write_dataset(tmp_path / "data", n_real=40, n_fake=40, shards=2)
    val = write_dataset(tmp_path / "val", n_real=4, n_fake=4, seed=21)
    sets = ["--set", f"data.train=[{data}]", "--set", f"data.val=[{val}]", "--set", "train.epochs=4"]

    def train(out, *extra):
        return [str(ROOT / "train.py"), "--config", "antifakeprompt_tiny", "--out", str(out), *sets, *extra]

    code, out = run(train(tmp_path / "straight"))
    assert code == 0, out[-3000:]
    hurt_run = tmp_path / "hurt"
    proc = start(train(hurt_run))
    code, out = hurt(proc, signal.SIGTERM, when=past_interpreter_start(proc), after=0.2)   # start-up
    one_line_stop(code, out, signal.SIGTERM)
    state = hurt_run / "last" / "training_state.pt"
    code, out = hurt(start(train(hurt_run)), signal.SIGTERM, when=state.is_file)   # epoch 2
    one_line_stop(code, out, signal.SIGTERM)
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the signal came too late to cut epoch 2"
    proc = start(train(hurt_run, "--resume"))
    code, out = hurt(proc, signal.SIGINT, when=past_interpreter_start(proc))   # start-up of the resume
    one_line_stop(code, out, signal.SIGINT)
    time.sleep(0.1)
    code, out = run(train(hurt_run, "--resume"))
    assert code == 0, out[-3000:]
    resumed = read_rows(hurt_run / "last" / "pseudo_word.safetensors")
    straight = read_rows(tmp_path / "straight" / "last" / "pseudo_word.safetensors")
    for name in ("qformer_row", "lm_row"):
        assert torch.equal(resumed[name], straight[name]), name
