"""Training AntifakePrompt on the tiny twin: learning against the untrained detector, isolation of the two
rows, best/ and resume promises, the run-folder lock, config errors before any model loads."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_helpers import write_dataset, write_set

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3


def _args(out, data, *extra):
    return ["--config", "antifakeprompt_tiny", "--out", str(out), "--set", f"data.train=[{data}]", *extra]


def _train(out, data, *extra):
    import train

    return train.main(_args(out, data, *extra))


def _subprocess_env():
    # Same thread count as the test process, so a run continued in-process computes bit-alike.
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))


@pytest.fixture(scope="module")
def run(tiny_instructblip, tmp_path_factory):
    """One tiny training run (in-process, keeping the Trainer) on a separable shard set: real = reddish,
    fake = bluish; explicit validation sets; a held-out test set never seen in training."""
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    root = tmp_path_factory.mktemp("train")
    data = write_dataset(root / "data", n_real=24, n_fake=24, shards=2)
    val = write_dataset(root / "val", n_real=8, n_fake=8, seed=21)
    test = write_dataset(root / "test", n_real=16, n_fake=16, seed=99)
    out = root / "run"
    overrides = [f"data.train=[{data}]", f"data.val=[{val}]", f"train.epochs={EPOCHS}"]
    trainer = Trainer(load_train_config("antifakeprompt_tiny", overrides, out=str(out)))
    trainer.fit()
    return {"out": out, "data": data, "val": val, "test": test, "root": root, "trainer": trainer,
            "overrides": overrides}


def _metrics(out):
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _accuracy(det, pre, spec) -> float:
    from detector.data import build_transform, parse_set_specs
    from detector.eval.evaluate import score_set

    transform = build_transform(32, pre["mean"], pre["std"], train=False)
    y, s = [], []
    for st in parse_set_specs([str(spec)]):
        res = score_set(det, st, transform, 16, progress=False)
        y += res.labels
        s += res.scores
    return float(np.mean((np.asarray(s) >= 0.5) == np.asarray(y)))


def test_trained_beats_untrained_on_held_out_data(run):
    """Accuracy on a held-out set after training against the same detector before training (same rows init)."""
    from detector.families.antifakeprompt.model import AntifakePrompt
    from detector.families.antifakeprompt.model import load_checkpoint

    trained, pre = load_checkpoint(run["out"] / "best", device="cpu")
    untrained = AntifakePrompt.from_config(run["trainer"].cfg.model, "cpu", )
    before, after = _accuracy(untrained, pre, run["test"]), _accuracy(trained, pre, run["test"])
    assert after >= before + 0.3, (before, after)
    assert after >= 0.8
    rows = _metrics(run["out"])
    train_rows = [r for r in rows if r["split"] == "train"]
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"])
    assert all(float(r["images_per_s"]) > 0 and r["lr"] != "" for r in train_rows)


def test_base_model_untouched_in_memory(run, tiny_instructblip):
    """The trained in-memory detector: every base weight equal to the twin's, only the two rows trained."""
    from transformers import InstructBlipForConditionalGeneration

    det = run["trainer"].detector
    fresh = InstructBlipForConditionalGeneration.from_pretrained(tiny_instructblip).state_dict()
    tuned = {k.replace(".base.", "."): v for k, v in det.model.state_dict().items() if not k.endswith(".row")}
    assert set(tuned) == set(fresh)
    assert [k for k in fresh if not torch.equal(fresh[k], tuned[k])] == []
    assert sorted(n for n, p in det.named_parameters() if p.requires_grad) == [
        "model.language_model.model.embed_tokens.row", "model.qformer.embeddings.word_embeddings.row"]
    init = run["trainer"].cfg.model
    from detector.families.antifakeprompt.model import AntifakePrompt

    start = AntifakePrompt.from_config(init, "cpu").rows()
    for name, row in det.rows().items():
        assert not torch.allclose(row, start[name]), f"{name} did not train"


def test_checkpoint_files_metadata_and_recorded_config(run):
    from detector.train.config import lr_at

    out = run["out"]
    best = out / "best"
    assert sorted(p.name for p in best.iterdir()) == ["README.md", "detector.json", "pseudo_word.safetensors"]
    meta = json.loads((best / "detector.json").read_text())
    assert meta["trainable_parameters"] == 80 and meta["row_widths"] == {"qformer": 32, "lm": 48}
    assert meta["prompt_pieces"]["lm"] == ["</s>", "▁Is", "▁this", "▁photo", "▁real", "[*]", "▁?"]
    assert meta["precision"]["text"] == "float32: ViT fp32, Q-Former fp32, LLM fp32"
    pre = meta["preprocess"]
    assert pre["image_size"] == 32 and pre["mean"][0] > pre["mean"][1]  # reddish reals
    assert set(meta["training"]["data"]["sets"]) == {"coco", "sd2"}
    assert torch.__version__.startswith(meta["versions"]["torch"])
    assert (out / "last" / "training_state.pt").is_file()
    # config.yaml holds what ran: resolved values filled in, and the lr of every logged step follows it
    from detector.train.config import TrainConfig
    from fakeforge.config import from_dict, load_yaml

    cfg = from_dict(TrainConfig, load_yaml(out / "config.yaml"))
    assert cfg.data.mean == pre["mean"] and cfg.train.steps_per_epoch == 6 and cfg.train.mixed_precision == "no"
    for r in (r for r in _metrics(out) if r["split"] == "train"):
        epoch, step = int(r["epoch"]) - 1, int(r["step"])
        expected = lr_at(cfg.optim, epoch, step - 1 - epoch * 6, step - 1, cfg.train.epochs, 6)
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-5)
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_at(cfg.optim, EPOCHS - 1, 5, 17, EPOCHS, 6))


def test_official_schedule_first_step_and_cosine_per_epoch():
    from detector.train.config import OptimConfig, lr_at

    cfg = OptimConfig()  # lr 1e-5, warmup_lr 1e-8, warmup_steps 0: LAVIS linear_warmup_cosine_lr
    assert lr_at(cfg, 0, 0, 0, 10, 100) == 1e-8
    assert lr_at(cfg, 0, 1, 1, 10, 100) == lr_at(cfg, 0, 99, 99, 10, 100) == 1e-5
    for epoch in range(1, 10):
        expected = 1e-5 * 0.5 * (1 + np.cos(np.pi * epoch / 10))
        assert lr_at(cfg, epoch, 0, 100 * epoch, 10, 100) == pytest.approx(expected)
        assert lr_at(cfg, epoch, 57, 100 * epoch + 57, 10, 100) == pytest.approx(expected)


def test_best_is_the_lowest_validation_loss_when_it_rises_later(run, tmp_path, capsys):
    """Continue the run (--resume-force) on training data with the labels flipped: the validation loss rises
    from the first epoch after the resume on, so best/ must stay the checkpoint saved before the resume (the
    best loss is carried across it), and config.yaml and the optimizer hold the new values."""
    from detector.families.antifakeprompt.model import load_checkpoint
    from detector.data import build_transform, parse_set_specs
    from detector.train.config import lr_at
    from fakeforge.config import load_yaml

    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    flipped = tmp_path / "flipped"
    write_set(flipped / "coco", "real", 24, seed=0, labels=["fake"] * 24)
    write_set(flipped / "sd2", "fake", 24, seed=1, labels=["real"] * 24)
    args = _args(out, flipped, "--set", f"data.val=[{run['val']}]", "--set", "train.epochs=5", "--set", "optim.lr=0.3",
                 "--resume")
    import train

    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "--resume-force" in err and "optim.lr: 0.05 -> 0.3" in err and "data.train" in err
    assert train.main(args + ["--resume-force"]) == 0
    val = [(int(r["epoch"]), float(r["val_loss"])) for r in _metrics(out) if r["split"] == "val"]
    assert [e for e, _ in val] == [1, 2, 3, 4, 5]
    losses = [v for _, v in val]
    best_epoch = 1 + int(np.argmin(losses))
    assert losses[-1] > min(losses) + 0.05 and best_epoch < 5, f"validation loss did not rise: {losses}"
    assert losses[3] > min(losses[:3]) + 0.05, f"the first epoch after the resume should be worse: {losses}"
    meta = json.loads((out / "best" / "detector.json").read_text())
    assert meta["training"]["epoch"] == best_epoch
    assert meta["training"]["val_loss"] == pytest.approx(min(losses), rel=1e-4)
    # recompute the validation loss of best/ and last/ independently of the trainer
    for folder, expected in (("best", min(losses)), ("last", losses[-1])):
        det, pre = load_checkpoint(out / folder, device="cpu")
        transform = build_transform(32, pre["mean"], pre["std"], train=False)
        from detector.data import iter_set_images

        total, tokens = 0.0, 0
        for spec in parse_set_specs([str(run["val"])]):
            for _key, img, label, _err in iter_set_images(spec):
                target = det.target_ids(torch.tensor([label]))
                with torch.no_grad():
                    total += float(det.answer_losses(transform(img).unsqueeze(0), target)[0])
                tokens += len(target[0])
        assert total / tokens == pytest.approx(expected, rel=1e-4), folder
    cfg = load_yaml(out / "config.yaml")
    assert cfg["optim"]["lr"] == 0.3 and cfg["data"]["train"] == [str(flipped)]
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    from detector.train.config import OptimConfig

    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_at(OptimConfig(lr=0.3), 4, 5, 29, 5, 6))


def test_resume_after_a_kill_equals_an_uninterrupted_run(run, tmp_path):
    """The same run, SIGKILLed after epoch 1 and resumed, ends with the rows, step count and learning-rate
    schedule of the uninterrupted run."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", "antifakeprompt_tiny", "--out", str(out)]
    for o in run["overrides"]:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "last" / "training_state.pt"
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file(), proc.stderr.read().decode()[-2000:]
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    import train

    args = ["--config", "antifakeprompt_tiny", "--out", str(out), "--resume"]
    for o in run["overrides"]:
        args += ["--set", o]
    assert train.main(args) == 0
    from detector.families.antifakeprompt.checkpoint import read_rows

    resumed, straight = read_rows(out / "last" / "pseudo_word.safetensors"), \
        read_rows(run["out"] / "last" / "pseudo_word.safetensors")
    for name in ("qformer_row", "lm_row"):
        assert torch.allclose(resumed[name], straight[name], atol=1e-6), name
    assert [r["epoch"] for r in _metrics(out) if r["split"] == "val"] == ["1", "2", "3"]
    # the step counter and the schedule continue where they stopped (the killed run may have logged some
    # epoch-2 rows before it died, so compare the rows the resumed part wrote: the last ones)
    def schedule(folder):
        return [(r["epoch"], r["step"], r["lr"]) for r in _metrics(folder) if r["split"] == "train"]

    straight_rows = [r for r in schedule(run["out"]) if r[0] != "1"]
    assert schedule(out)[-len(straight_rows):] == straight_rows
    steps = [torch.load(f / "last" / "training_state.pt", weights_only=True)["step"] for f in (out, run["out"])]
    assert steps == [EPOCHS * 6, EPOCHS * 6]


def test_training_and_validation_samples_are_disjoint(tiny_instructblip, tmp_path, capsys):
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    data = write_dataset(tmp_path / "data", n_real=24, n_fake=24, shards=2)
    trainer = Trainer(load_train_config("antifakeprompt_tiny", [f"data.train=[{data}]", "data.val_fraction=0.25"],
                                        out=str(tmp_path / "run")))
    try:
        trainer._data()
        trainer.preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3}
        val_keys = {k for _x, _y, keys in trainer._loader("val", 0) for k in keys}
        train_keys = set()
        it = iter(trainer._loader("train", 0))
        for _ in range(40):  # the endless training stream, several passes over the data
            train_keys.update(next(it)[2])
    finally:
        trainer.close()
    assert val_keys and train_keys and not (val_keys & train_keys)
    assert len(val_keys | train_keys) == 48
    val = tmp_path / "data" / "sd2"
    assert _train(tmp_path / "run2", data, "--set", f"data.val=[{val}]") == 2
    assert "shares 2 shard(s) with data.train" in capsys.readouterr().err


def test_two_launches_on_one_folder_one_trains(tiny_instructblip, tmp_path):
    """Two `train.py` launched together on one --out: one trains, the other exits 2 with the lock message.

    Whichever takes the lock first is stopped (SIGSTOP keeps its `flock`) until the other has exited, so
    a fast machine cannot let the winner finish before the loser has even tried the lock."""
    from fakeforge.locking import OutputLock

    data = write_dataset(tmp_path / "data", n_real=16, n_fake=16)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *_args(out, data, "--set", "train.epochs=1",
                                                          "--set", "train.steps_per_epoch=12")]
    procs = [subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    by_pid = {p.pid: p for p in procs}
    lock, deadline = OutputLock(out, "probe"), time.time() + 300
    while lock.holder().get("pid") not in by_pid and all(p.poll() is None for p in procs) \
            and time.time() < deadline:
        time.sleep(0.05)
    winner = by_pid.get(lock.holder().get("pid"))
    assert winner is not None and winner.poll() is None, [p.stderr.read()[-1500:] for p in procs if p.poll()]
    loser = next(p for p in procs if p is not winner)
    os.kill(winner.pid, signal.SIGSTOP)
    try:
        loser.wait(timeout=300)
    finally:
        os.kill(winner.pid, signal.SIGCONT)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err in results]
    for code, err in results:
        if code == 2:
            assert "is in use by train (pid" in err and str(out) in err, err[-1500:]
    rows = _metrics(out)
    assert [r["split"] for r in rows].count("val") == 1
    assert [r["step"] for r in rows if r["split"] == "train"][-1] == "12"
    assert (out / "best" / "pseudo_word.safetensors").is_file()


def test_resume_refuses_to_overwrite_or_invent_a_run(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    extra = ["--set", f"data.val=[{run['val']}]"]
    assert _train(out, run["data"], *extra) == 2
    assert "--resume" in capsys.readouterr().err
    assert _train(out, run["data"], *extra, "--set", "model.position=prefix", "--resume") == 2
    assert "model.position: 'postfix' -> 'prefix'" in capsys.readouterr().err
    assert _train(tmp_path / "fresh", run["data"], "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_one_class_training_set_is_refused(tiny_instructblip, tmp_path, capsys):
    write_set(tmp_path / "only_real" / "coco", "real", 8)
    assert _train(tmp_path / "run", tmp_path / "only_real") == 2
    err = capsys.readouterr().err
    assert "only one class" in err and "8 real, 0 fake" in err


def test_config_errors_name_the_key_before_any_model_loads(run, tmp_path, capsys):
    """Bad values stop with one line naming the key; with a base model that does not exist, the config error
    still comes first (it is checked before anything loads)."""
    missing_model = ["--set", f"model.model_id={tmp_path / 'no_such_model'}"]
    cases = [(["--set", "optim.betas=[0.9]"], "optim.betas = [0.9]"),
             (["--set", "optim.lr=0"], "optim.lr = 0"),
             (["--set", "data.mix={coco: 1.0, laion: 2.0}"], "laion"),
             (["--set", "train.batch_size=zero"], "train.batch_size"),
             (["--set", "optim.schedule=cosine"], "optim.schedule"),
             (["--set", "train.output_dir="], "is empty"),
             (["--set", "data.mean=[0.5, 0.5]", "--set", "data.std=[0.2, 0.2, 0.2]"], "data.mean")]
    for extra, words in cases:
        out = tmp_path / "a" if "train.output_dir=" not in extra[-1] else ""
        assert _train(out, run["data"], *missing_model, *extra) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "no_such_model" not in err and len(err.strip().splitlines()) == 1, (extra, err)
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
    """torchrun with 2 CPU processes (gloo): rank 0 holds the folder lock, shards split across ranks, one best/."""
    data = write_dataset(tmp_path / "data", n_real=16, n_fake=16, shards=2)
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(ROOT / "train.py"), *_args(out, data, "--set", "train.epochs=1")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best" / "pseudo_word.safetensors").is_file()
    assert [r["split"] for r in _metrics(out)].count("val") == 1
    assert json.loads((out / ".fakeforge.lock").read_text())["purpose"] == "train"
