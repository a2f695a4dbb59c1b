"""Every detector family through the ONE generic trainer (`train.py` / `fakeforge train`) and the same
`fakeforge eval`: loss falls, held-out accuracy of best/ far above the run's own init/, only the intended tensors
change (in memory), save -> load gives identical scores, an interrupted run resumed ends where an uninterrupted one
does, and checkpoints of another detector are refused naming both."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detector_helpers import write_dataset
from family_helpers import load_tensors, one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FEATURE_FAMILIES = ("linear_probe", "nearest_neighbor", "contrastive_disentangle")
FAMILIES = ("deepfake_adapter", *FEATURE_FAMILIES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Separable shards: train (48 real + 48 fake, 2 shards), val (12 + 12), held-out test (24 + 24)."""
    root = tmp_path_factory.mktemp("families")
    return {"root": root, "train": write_dataset(root / "train", 48, 48, shards=2, seed=0),
            "val": write_dataset(root / "val", 12, 12, seed=50),
            "test": write_dataset(root / "test", 24, 24, seed=100)}


def _overrides(data, family: str) -> list[str]:
    extra = ["train.epochs=3", "train.log_every=1"] if family == "deepfake_adapter" else []
    return [f"data.train=[{data['train']}]", f"data.val=[{data['val']}]", *extra]


def _args(data, family: str, out: Path, cache: Path) -> list[str]:
    args = ["--config", family, "--tiny", "--out", str(out), "--set", f"data.feature_cache={cache}"]
    for o in _overrides(data, family):
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def runs(data, tiny_dir):
    """One in-process run per family (the Trainer kept for in-memory checks)."""
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    out = {}
    for family in FAMILIES:
        folder = data["root"] / "runs" / family
        cfg = load_train_config(family, _overrides(data, family) + [f"data.feature_cache={folder}.cache"],
                                tiny=True, out=str(folder))
        trainer = Trainer(cfg)
        trainer.fit()
        out[family] = {"out": folder, "trainer": trainer, "cache": Path(f"{folder}.cache")}
    return out


def _metrics(out: Path) -> list[dict]:
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _accuracy(results: Path) -> float:
    return json.loads((results / "results.json").read_text())["average_accuracy"]


@pytest.mark.parametrize("family", FAMILIES)
def test_best_beats_the_runs_own_init_on_held_out_data(runs, data, family, tmp_path):
    """`fakeforge eval --checkpoint RUN/init RUN/best` on a held-out set: trained far above untrained."""
    from fakeforge.cli import main as fakeforge_main

    out = runs[family]["out"]
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert files == ["best", "config.yaml", "init", "last", "metrics.csv"]
    assert fakeforge_main(["eval", "--checkpoint", str(out / "init"), str(out / "best"), "--sets",
                           str(data["test"]), "--out", str(tmp_path), "--no-plots"]) == 0
    before, after = _accuracy(tmp_path / "init"), _accuracy(tmp_path / "best")
    assert after >= 0.9 and after >= before + 0.3, (before, after)


def test_losses_fall(runs):
    dfa = [float(r["loss"]) for r in _metrics(runs["deepfake_adapter"]["out"]) if r["split"] == "train"]
    assert len(dfa) == 18 and sum(dfa[-3:]) / 3 < sum(dfa[:3]) / 3 - 0.2, dfa
    history = {f: json.loads((runs[f]["out"] / "best" / "detector.json").read_text())["training"]["history"]
               for f in FEATURE_FAMILIES}
    assert history["linear_probe"][0]["loss"] < history["linear_probe"][0]["loss_before"] - 0.3
    contrastive = [row["loss"] for row in history["contrastive_disentangle"]]
    assert contrastive[-1] < contrastive[0] - 0.5, contrastive
    assert [r["split"] for r in _metrics(runs["linear_probe"]["out"])] == ["fit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_intended_tensors_change_in_memory(runs, family, tiny_dir):
    """The frozen backbone of the trained in-memory detector equals a fresh load bit for bit; the trained tensors
    differ from init/, which equals a freshly built (untrained) detector's."""
    det = runs[family]["trainer"].detector
    cfg = runs[family]["trainer"].cfg
    fresh = type(det).from_config(cfg.model, "cpu")
    frozen = det.vit if family == "deepfake_adapter" else det.backbone
    fresh_frozen = fresh.vit if family == "deepfake_adapter" else fresh.backbone
    assert not any(p.requires_grad for p in frozen.parameters())
    fresh_state = fresh_frozen.state_dict()
    assert [k for k, v in frozen.state_dict().items() if not torch.equal(v, fresh_state[k])] == []
    init = load_file(str(runs[family]["out"] / "init" / "weights.safetensors"))
    untrained = fresh.checkpoint_state()
    assert init.keys() == untrained.keys() and all(torch.equal(init[k], untrained[k]) for k in init)
    trained = det.checkpoint_state()
    changed = [k for k in trained if trained[k].shape != init[k].shape or not torch.equal(trained[k], init[k])]
    assert changed, "training changed nothing"
    if family == "deepfake_adapter":  # every part of the adapter trained, BatchNorm statistics included
        assert {k.split(".")[0] for k in changed} == {"gba", "spm", "level_embed", "interactions", "head"}


@pytest.mark.parametrize("family", FAMILIES)
def test_last_checkpoint_loads_with_identical_scores(runs, data, family):
    from detector.checkpoint import load_detector

    det = runs[family]["trainer"].detector
    back = load_detector(runs[family]["out"] / "last", device="cpu")
    x, _ = load_tensors(data["test"], det.preprocess)
    assert torch.equal(det.score(x), back.score(x))
    assert back.preprocess == det.preprocess


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _kill_when(cmd: list[str], ready, limit: float = 240) -> None:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + limit
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ready(), proc.stderr.read().decode()[-2000:]


def test_deepfake_adapter_resume_after_a_kill_equals_an_uninterrupted_run(runs, data, tmp_path):
    """SIGKILL after epoch 1, then --resume: the adapters, BatchNorm statistics and head equal those of the
    uninterrupted run (SGD momentum, per-epoch reseeding and the data order all restored)."""
    import train

    out = tmp_path / "run"
    state = out / "last" / "training_state.pt"
    args = _args(data, "deepfake_adapter", out, tmp_path / "cache")
    _kill_when([sys.executable, str(ROOT / "train.py"), *args], state.is_file)
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    assert train.main([*args, "--resume"]) == 0
    resumed = load_file(str(out / "last" / "weights.safetensors"))
    straight = load_file(str(runs["deepfake_adapter"]["out"] / "last" / "weights.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.allclose(resumed[key], straight[key], atol=1e-6), key
    assert [r["epoch"] for r in _metrics(out) if r["split"] == "val"] == ["1", "2", "3"]


@pytest.mark.parametrize("family", ["linear_probe", "contrastive_disentangle"])
def test_feature_fit_resumed_after_a_kill_equals_an_uninterrupted_run(runs, data, family, tmp_path):
    """SIGKILL while the features are being cached, then --resume: the cache files written before the kill are
    reused, the rest computed, and the fitted head equals the uninterrupted run's."""
    import train

    out, cache = tmp_path / "run", tmp_path / "cache"
    args = _args(data, family, out, cache)
    _kill_when([sys.executable, str(ROOT / "train.py"), *args],
               lambda: any(cache.rglob("*.safetensors")))
    assert not (out / "last" / "training_state.pt").exists(), "the kill came too late to interrupt the run"
    assert train.main([*args, "--resume"]) == 0
    resumed = load_file(str(out / "best" / "weights.safetensors"))
    straight = load_file(str(runs[family]["out"] / "best" / "weights.safetensors"))
    for key in straight:
        assert torch.allclose(resumed[key], straight[key], atol=1e-6), key
    meta = json.loads((out / "best" / "detector.json").read_text())["training"]["data"]
    assert meta["cache_reused"] and meta["cache_built"]  # some sets came from before the kill, some after


def test_another_detectors_checkpoint_or_run_is_refused_naming_both(runs, data, tmp_path, capsys):
    import train
    from detector.base import CheckpointError
    from detector.checkpoint import load_detector, load_detector_state

    dfa = runs["deepfake_adapter"]["out"]
    with pytest.raises(CheckpointError, match="'deepfake_adapter' detector, but 'linear_probe' was asked for"):
        load_detector(dfa / "best", expect="linear_probe")
    with pytest.raises(CheckpointError, match="is a 'linear_probe' detector, not 'nearest_neighbor'"):
        load_detector_state(runs["nearest_neighbor"]["trainer"].detector, runs["linear_probe"]["out"] / "best")
    args = _args(data, "linear_probe", dfa, tmp_path / "cache") + ["--resume"]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "holds a 'deepfake_adapter' run, but the config trains 'linear_probe'" in err
    assert len(err.strip().splitlines()) == 1


def _config_names() -> list[str]:
    from fakeforge.config import CONFIG_ROOT

    return sorted(p.stem for p in (CONFIG_ROOT / "detector").glob("*.yaml"))


@pytest.mark.parametrize("config", _config_names())
def test_every_config_trains_with_tiny(config, data, tiny_dir, tmp_path):
    """`--tiny` on every shipped config: its `tiny:` block, then the twins; a short run ends with best/ and init/."""
    import train

    out = tmp_path / "run"
    args = ["--config", config, "--tiny", "--out", str(out), "--set", f"data.train=[{data['train']}]",
            "--set", f"data.val=[{data['val']}]", "--set", f"data.feature_cache={tmp_path / 'cache'}",
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=4",
            "--set", "data.num_workers=0", "--set", "train.device=cpu"]
    if config == "contrastive_disentangle":
        args += ["--set", "model.epochs=2"]
    assert train.main(args) == 0
    assert (out / "best" / "detector.json").is_file() and (out / "init" / "detector.json").is_file()
    meta = json.loads((out / "best" / "detector.json").read_text())
    model = meta["model"]
    assert (model.get("model_id") or model.get("backbone")).startswith("tiny:")


def test_config_errors_are_one_line_before_any_model_loads(data, tmp_path, capsys):
    """Bad values for any family stop `train.py` with one line naming the key; the backbone named is never
    loaded (it does not exist, and the error is still the config's)."""
    import train

    missing = f"local-dir:{tmp_path / 'no_such_vit'}"
    cases = [("deepfake_adapter", ["--set", "train.batch_size=1"], "train.batch_size = 1"),
             ("deepfake_adapter", ["--set", "data.image_size=64"], "data.image_size = 64"),
             ("deepfake_adapter", ["--set", "optim.schedule=cosine"], "optim.schedule"),
             ("linear_probe", ["--set", "data.mix={coco: 1}"], "data.mix"),
             ("nearest_neighbor", ["--set", "model.k=0"], "model.k = 0")]
    for config, extra, words in cases:
        args = ["--config", config, "--out", str(tmp_path / "run"), "--set", f"data.train=[{data['train']}]"]
        backbone = missing if config == "deepfake_adapter" else f"timm:{missing}"
        assert train.main([*args, "--set", f"model.backbone={backbone}", *extra]) == 2, (config, extra)
        err = capsys.readouterr().err
        assert words in err and "no_such_vit" not in err and len(err.strip().splitlines()) == 1, (config, err)
    assert not (tmp_path / "run").exists()
