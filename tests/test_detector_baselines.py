"""CNNSpot and NPR through the generic trainer and `fakeforge eval`, as every family: held-out accuracy of best/
far above the run's own init/, every tensor trained (nothing is frozen) and nothing else, save -> load identical
scores, exact resume after SIGKILL, refusal of another detector's checkpoint; plus the official `.pth` loaders, the
plateau and step schedules and the paper-style parameter counts.

The data: real images are full-resolution noise in a reddish cast, fakes are half-resolution noise upsampled x2
(nearest) in a bluish cast, so each detector has the cue it is built for: colour and texture for CNNSpot's ImageNet
ResNet, the up-sampling trace for NPR's residual (which removes colour)."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from family_helpers import load_tensors, one_thread  # noqa: F401  (autouse fixture)
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("cnnspot", "npr")
# the plateau rule on a hair trigger, so the 3-epoch CNNSpot run drops its lr at epoch 2 (and resume must replay it)
PLATEAU = ["optim.plateau_patience=1", "optim.plateau_threshold=0.5"]


def write_upsampled_dataset(root: Path, n: int, seed: int, shards: int = 1) -> Path:
    """Sets `coco` (real: 36x36 noise) and `sd2` (fake: 18x18 noise upsampled x2, nearest, plus faint
    36x36 noise, so no fake's NPR residual is exactly zero), PNG."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    for kind, name, rgb in (("real", "coco", (200, 60, 50)), ("fake", "sd2", (50, 60, 200))):
        (root / name).mkdir(parents=True, exist_ok=True)
        writers = [wds.TarWriter(str(root / name / f"{i:06d}.tar")) for i in range(shards)]
        for i in range(n):
            base = np.array(rgb, dtype=np.float64) + rng.uniform(-20, 20, size=3)
            if kind == "real":
                arr = base + rng.normal(0, 30, size=(36, 36, 3))
            else:
                arr = np.kron(base + rng.normal(0, 30, size=(18, 18, 3)), np.ones((2, 2, 1)))
                arr = arr + rng.normal(0, 6, size=arr.shape)  # a faint full-resolution noise on top
            buf = io.BytesIO()
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "PNG")
            key = f"{name}_{seed}_{i:05d}"
            meta = {"key": key, "label": kind, "set": name, "generator": kind}
            writers[i % shards].write({"__key__": key, "png": buf.getvalue(), "json": json.dumps(meta).encode()})
        for w in writers:
            w.close()
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    return {"root": root, "train": write_upsampled_dataset(root / "train", 48, 0, shards=2),
            "val": write_upsampled_dataset(root / "val", 12, 50),
            "test": write_upsampled_dataset(root / "test", 24, 100)}


def _overrides(data, family: str) -> list[str]:
    return [f"data.train=[{data['train']}]", f"data.val=[{data['val']}]", *(PLATEAU if family == "cnnspot" else [])]


def _args(data, family: str, out: Path) -> list[str]:
    args = ["--config", family, "--tiny", "--out", str(out)]
    for o in _overrides(data, family):
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def runs(data, tiny_dir):
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    out = {}
    for family in FAMILIES:
        folder = data["root"] / "runs" / family
        trainer = Trainer(load_train_config(family, _overrides(data, family), tiny=True, out=str(folder)))
        trainer.fit()
        out[family] = {"out": folder, "trainer": trainer}
    return out


def _log_loss(scores_csv: Path) -> float:
    with scores_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    p = torch.tensor([float(r["p_fake"]) for r in rows]).double().clamp(1e-7, 1 - 1e-7)
    y = torch.tensor([r["label"] == "fake" for r in rows]).double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def _metrics(out: Path) -> list[dict]:
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("family", FAMILIES)
def test_best_beats_the_runs_own_init_on_held_out_data(runs, data, family, tmp_path):
    from fakeforge.cli import main as fakeforge_main

    out = runs[family]["out"]
    assert fakeforge_main(["eval", "--checkpoint", str(out / "init"), str(out / "best"), "--sets",
                           str(data["test"]), "--out", str(tmp_path), "--no-plots"]) == 0
    before, after = (json.loads((tmp_path / d / "results.json").read_text())["average_accuracy"]
                     for d in ("init", "best"))
    # an untrained NPR already ranks by residual energy (and may even sit on the right side of 0.5), so learning is
    # judged threshold-free too: the held-out log-loss of best/ far below init/'s (which scores about 0.5 everywhere)
    loss_before, loss_after = (_log_loss(tmp_path / d / "scores.csv") for d in ("init", "best"))
    assert after >= 0.9 and after >= before and loss_after < loss_before - 0.3, (before, after, loss_before, loss_after)
    info = json.loads((tmp_path / "best" / "results.json").read_text())
    assert info["trainable_parameters_paper"] == {"cnnspot": "139.23K", "npr": "11.68K"}[family]


def test_losses_fall_and_the_plateau_drops_the_lr_once(runs):
    for family in FAMILIES:
        rows = [r for r in _metrics(runs[family]["out"]) if r["split"] == "train"]
        losses = [float(r["loss"]) for r in rows]
        assert sum(losses[-2:]) < 0.5 * sum(losses[:2]), (family, losses)
    lrs = [float(r["lr"]) for r in _metrics(runs["cnnspot"]["out"]) if r["split"] == "train"]
    epochs = [int(r["epoch"]) for r in _metrics(runs["cnnspot"]["out"]) if r["split"] == "train"]
    by_epoch = {e: lr for e, lr in zip(epochs, lrs)}
    assert by_epoch == pytest.approx({1: 3e-3, 2: 3e-3, 3: 3e-4})  # epoch 2 brought no 0.5 rise: / 10


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_trains_and_there_is_nothing_else(runs, family, tiny_dir):
    """Nothing is frozen: the checkpoint is the whole network (BatchNorm statistics included); every stage changed
    from init/, which equals a freshly built detector; NPR has its 3x3 stem and no stages 3-4."""
    det = runs[family]["trainer"].detector
    fresh = type(det).from_config(runs[family]["trainer"].cfg.model, "cpu")
    assert all(p.requires_grad for p in det.parameters())
    assert set(det.checkpoint_state()) == set(det.state_dict())
    init = load_file(str(runs[family]["out"] / "init" / "weights.safetensors"))
    untrained = fresh.checkpoint_state()
    assert init.keys() == untrained.keys() and all(torch.equal(init[k], untrained[k]) for k in init)
    trained = det.checkpoint_state()
    changed = {k.split(".")[1] for k in trained if not torch.equal(trained[k], init[k])}
    stages = {"cnnspot": {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"},
              "npr": {"conv1", "bn1", "layer1", "layer2", "fc"}}[family]
    assert changed == stages
    assert {k.split(".")[1] for k in trained} == stages
    if family == "npr":
        assert tuple(det.net.conv1.weight.shape[-2:]) == (3, 3) and det.net.fc.in_features == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_last_checkpoint_loads_with_identical_scores(runs, data, family):
    from detector.checkpoint import load_detector

    det = runs[family]["trainer"].detector
    back = load_detector(runs[family]["out"] / "last", device="cpu")
    x, _ = load_tensors(data["test"], det.preprocess)
    assert torch.equal(det.score(x), back.score(x))
    assert back.preprocess == det.preprocess


def _kill_when(cmd: list[str], ready, limit: float = 240) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + limit
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ready(), proc.stderr.read().decode()[-2000:]


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_after_a_kill_equals_an_uninterrupted_run(runs, data, family, tmp_path):
    """SIGKILL after epoch 1, then --resume: every tensor equals the uninterrupted run's (Adam state, the plateau
    state and the per-epoch reseeding restored)."""
    import train

    out = tmp_path / "run"
    state = out / "last" / "training_state.pt"
    args = _args(data, family, out)
    _kill_when([sys.executable, str(ROOT / "train.py"), *args], state.is_file)
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    assert train.main([*args, "--resume"]) == 0
    resumed = load_file(str(out / "last" / "weights.safetensors"))
    straight = load_file(str(runs[family]["out"] / "last" / "weights.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.allclose(resumed[key].float(), straight[key].float(), atol=1e-6), key


def test_another_detectors_checkpoint_is_refused_naming_both(runs, tmp_path):
    from detector.base import CheckpointError
    from detector.checkpoint import load_detector, load_detector_state

    cnn, npr = runs["cnnspot"]["out"], runs["npr"]["out"]
    with pytest.raises(CheckpointError, match="'cnnspot' detector, but 'npr' was asked for"):
        load_detector(cnn / "best", expect="npr")
    with pytest.raises(CheckpointError, match="is a 'cnnspot' detector, not 'npr'"):
        load_detector_state(runs["npr"]["trainer"].detector, cnn / "best")
    # the same family on another architecture: refused naming both, before any tensor is copied
    meta = json.loads((npr / "best" / "detector.json").read_text())
    meta["identity"]["architecture"]["stages"] = {"layer1": 3, "layer2": 4}
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "detector.json").write_text(json.dumps(meta))
    (forged / "weights.safetensors").write_bytes((npr / "best" / "weights.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"was made for npr on backbone .*\(they differ in architecture\)"):
        load_detector_state(runs["npr"]["trainer"].detector, forged)


# ------------------------------------------------------------------------------------------- official files
def _official_cnnspot(det) -> dict:
    """CNNDetection's save_networks layout: {'model': torchvision keys, 'optimizer': ..., 'total_steps': n}."""
    state = {k[len("net."):]: v for k, v in det.state_dict().items()}
    opt = torch.optim.Adam(det.net.fc.parameters(), lr=1e-4)
    return {"model": state, "optimizer": opt.state_dict(), "total_steps": 1234}


def _official_npr(det, module_prefix: bool = False) -> dict:
    """NPR's save_networks layout: the plain state dict, `fc1` for the head (optionally DataParallel's module.)."""
    state = {}
    for k, v in det.state_dict().items():
        k = k[len("net."):]
        state[("module." if module_prefix else "") + ("fc1." + k[3:] if k.startswith("fc.") else k)] = v
    return state


@pytest.mark.parametrize("family", FAMILIES)
def test_official_weight_files_load_with_identical_scores(runs, data, family, tmp_path):
    from detector.checkpoint import load_detector, load_detectors
    from detector.eval.side_by_side import train_set_label

    det = runs[family]["trainer"].detector
    x, _ = load_tensors(data["test"], det.preprocess)
    files = {"cnnspot": [_official_cnnspot(det)], "npr": [_official_npr(det), _official_npr(det, True)]}[family]
    for i, content in enumerate(files):
        path = tmp_path / f"official_{i}.pth"
        torch.save(content, path)
        loaded = load_detector(path, device="cpu", tiny=True)
        assert loaded.name == family and torch.equal(loaded.score(x), det.score(x))
        assert train_set_label(loaded.checkpoint_meta) == f"official (official_{i}.pth)"  # the table's train-set cell
    # a side-by-side eval mixes an official file with a checkpoint folder
    both = load_detectors([str(path), str(runs[family]["out"] / "best")], device="cpu", tiny=True)
    assert [d.name for d in both] == [family, family]


def test_official_univfd_head_loads_on_the_linear_probe(tmp_path, tiny_dir):
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig
    from detector.checkpoint import load_detector

    probe = LinearProbe.from_config(LinearProbeConfig(), "cpu", tiny=True)
    dim = probe.backbone.feature_dim
    gen = torch.Generator().manual_seed(0)
    head = {"weight": torch.randn(1, dim, generator=gen), "bias": torch.randn(1, generator=gen)}
    torch.save(head, tmp_path / "fc_weights.pth")
    loaded = load_detector(tmp_path / "fc_weights.pth", device="cpu", tiny=True)
    assert loaded.name == "linear_probe"
    x = torch.rand(4, 3, 32, 32, generator=gen)
    feats = loaded.features(x)
    expected = torch.sigmoid(feats @ head["weight"][0] + head["bias"][0])
    assert torch.allclose(loaded.score(x), expected, atol=1e-5)


class _Payload:
    """Unpickling this would create a folder (the 'code' in a hostile pickle)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_official_files_with_other_keys_shapes_or_code_are_refused(runs, tmp_path):
    from detector.base import CheckpointError
    from detector.checkpoint import load_detector

    det = runs["npr"]["trainer"].detector
    good = _official_npr(det)
    cases = {
        "unexpected": ({**good, "layer3.0.conv1.weight": torch.zeros(1)},
                       r"unexpected \['net.layer3.0.conv1.weight'\]"),
        "shape": ({**good, "fc1.weight": torch.zeros(2, 64)},
                  r"wrong shapes \['net.fc.weight \(2, 64\) \(needs \(1, 64\)\)'\]"),
        "missing": ({k: v for k, v in good.items() if k != "layer1.0.conv2.weight"},
                    r"missing \['net.layer1.0.conv2.weight'\]"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(content, path)
        with pytest.raises(CheckpointError, match=words) as err:
            load_detector(path, device="cpu", tiny=True)
        assert "\n" not in str(err.value)
    marker = tmp_path / "code_ran"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "extra": _Payload(str(marker))}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="whose pickle would import .* it is not run") as err:
        load_detector(tmp_path / "code.pth", device="cpu", tiny=True)
    assert "\n" not in str(err.value) and not marker.exists()
    # no known layout: the old advice for LAVIS checkpoints stays
    torch.save({"model": {"llm_proj.weight": torch.zeros(2, 2)}}, tmp_path / "lavis.pth")
    with pytest.raises(CheckpointError, match="convert-antifakeprompt"):
        load_detector(tmp_path / "lavis.pth", device="cpu")


# ------------------------------------------------------------------------------------------- schedules, counts, configs
def test_plateau_rule_follows_the_official_early_stopping():
    """lr 1e-4: / 10 after `patience` epochs without a `threshold` rise (count and best restart after a drop),
    1e-6 is still used, the next drop (1e-7) ends training."""
    from detector.train.plateau import PlateauState

    s, events = PlateauState(), []
    accs = [0.80, 0.85, 0.8505, 0.84, 0.80, 0.70, 0.71, 0.70, 0.69, 0.70, 0.70, 0.70]
    for acc in accs:
        events.append(s.update(acc, 1e-4, patience=3, factor=0.1, threshold=0.001, min_lr=1e-6))
    assert events == [None, None, None, None, "drop", None, None, None, None, "drop", None, None]
    assert 1e-4 * s.scale == pytest.approx(1e-6) and s.drops == 2
    for acc in (0.5, 0.5):
        events.append(s.update(acc, 1e-4, patience=3, factor=0.1, threshold=0.001, min_lr=1e-6))
    assert events[-1] == "stop" and s.stopped and 1e-4 * s.scale == pytest.approx(1e-6)
    assert PlateauState.from_state(s.state_dict()) == s


def test_step_schedule_is_npr_decay_and_schedule_keys_are_checked():
    from detector.train.config import OptimConfig, lr_at
    from fakeforge.config import ConfigError

    cfg = OptimConfig(lr=2e-4, schedule="step_epoch", step_epochs=10, step_gamma=0.9, warmup_lr=0.0)
    lrs = [lr_at(cfg, e, 0, e * 5, 50, 5) for e in (0, 9, 10, 19, 20, 49)]
    assert lrs == pytest.approx([2e-4, 2e-4, 1.8e-4, 1.8e-4, 1.62e-4, 2e-4 * 0.9 ** 4])
    plateau = OptimConfig(lr=1e-4, schedule="plateau", warmup_lr=0.0)
    assert lr_at(plateau, 3, 2, 17, 10, 5, scale=0.01) == pytest.approx(1e-6)
    for bad, words in ((OptimConfig(step_gamma=1.5), "optim.step_gamma = 1.5"),
                       (OptimConfig(plateau_factor=1.0), "optim.plateau_factor = 1.0")):
        with pytest.raises(ConfigError, match=words):
            bad.validate()


def test_paper_counts_of_the_real_size_models():
    from detector.families.cnnspot import CNNSpot, CNNSpotConfig
    from detector.families.npr import NPR, NPRConfig
    from detector.eval.side_by_side import format_params

    assert [format_params(n) for n in (4864, 419_430, 4_194_304, 23_510_081, 308_020_000, 512)] == \
        ["4.86K", "419.43K", "4.19M", "23.51M", "308.02M", "512"]
    cnn = CNNSpot.from_config(CNNSpotConfig(), "cpu", pretrained=False)
    npr = NPR.from_config(NPRConfig(), "cpu")
    assert cnn.num_trainable() == 23_510_081 and "(23.51M;" in cnn.trainable_summary()
    assert npr.num_trainable() == 1_437_761 and "(1.44M;" in npr.trainable_summary()
    assert cnn.report_info()["trainable_parameters_paper"] == "23.51M"


def test_configs_carry_the_published_recipes():
    from detector.cli import load_train_config

    blur = {"op": "blur", "sigma": [0.0, 3.0]}
    jpeg = {"op": "jpeg", "quality": [30, 100]}
    for name, p in (("cnnspot", 0.5), ("cnnspot_p01", 0.1)):
        cfg = load_train_config(name, ["data.train=[x]"])
        assert cfg.data.augment == [{**blur, "p": p}, {**jpeg, "p": p}]
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule, cfg.optim.min_lr, cfg.train.batch_size) \
            == (1e-4, 0.0, "plateau", 1e-6, 64)
        assert (cfg.model.image_size, cfg.model.load_size, cfg.model.backbone) == (224, 256, "resnet50.tv_in1k")
    npr = load_train_config("npr", ["data.train=[x]"])
    assert (npr.optim.lr, npr.optim.schedule, npr.optim.step_epochs, npr.optim.step_gamma, npr.train.batch_size,
            npr.train.epochs, npr.model.pretrained) == (2e-4, "step_epoch", 10, 0.9, 32, 50, False)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_backbone_is_one_line_with_close_matches_before_training(family, tmp_path, capsys):
    import train

    args = ["--config", family, "--out", str(tmp_path / "run"), "--set", "data.train=[nowhere]",
            "--set", "model.backbone=resnet5O"]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown timm model 'resnet5O'" in err and "resnet50" in err and len(err.splitlines()) == 1, err


def test_the_plateau_rule_ends_a_run_when_the_next_drop_would_pass_min_lr(data, tmp_path, tiny_dir):
    import train

    out = tmp_path / "run"
    args = _args(data, "cnnspot", out) + ["--set", "optim.min_lr=0.001"]  # 3e-3 / 10 < 1e-3: the first drop ends it
    assert train.main(args) == 0
    assert [r["epoch"] for r in _metrics(out) if r["split"] == "val"] == ["1", "2"]
    assert torch.load(out / "last" / "training_state.pt", weights_only=True)["plateau"]["stopped"] is True
    assert train.main([*args, "--resume"]) == 0  # a finished run stays finished
    assert [r["epoch"] for r in _metrics(out) if r["split"] == "val"] == ["1", "2"]


def test_npr_sees_only_the_up_sampling_residual(runs, data, tiny_dir):
    """x - up(down(x)) vanishes on a x2 nearest-upsampled image and on any constant, so NPR's score ignores a
    colour shift of the whole image (CNNSpot's does not)."""
    from detector.families.npr import npr_residual

    gen = torch.Generator().manual_seed(0)
    small = torch.rand(2, 3, 8, 8, generator=gen)
    assert torch.equal(npr_residual(small.repeat_interleave(2, -1).repeat_interleave(2, -2)), torch.zeros(2, 3, 16, 16))
    x, _ = load_tensors(data["test"], runs["npr"]["trainer"].detector.preprocess)
    shift = torch.tensor([0.7, -0.4, 0.2]).view(1, 3, 1, 1)
    npr, cnn = runs["npr"]["trainer"].detector, runs["cnnspot"]["trainer"].detector
    assert torch.allclose(npr.score(x + shift), npr.score(x), atol=1e-6)
    assert not torch.allclose(cnn.score(x + shift), cnn.score(x), atol=1e-2)


def test_training_starts_from_an_official_file(runs, data, tmp_path, capsys):
    """`train.py --checkpoint NPR.pth`: init/ holds the file's tensors exactly, then training moves on from them; a
    file of another detector is refused in one line before any data is read."""
    import train

    det = runs["npr"]["trainer"].detector
    torch.save(_official_npr(det), tmp_path / "NPR.pth")
    out = tmp_path / "run"
    args = _args(data, "npr", out) + ["--set", "train.epochs=1"]
    assert train.main([*args, "--checkpoint", str(tmp_path / "NPR.pth")]) == 0
    init = load_file(str(out / "init" / "weights.safetensors"))
    state = det.checkpoint_state()
    assert init.keys() == state.keys() and all(torch.equal(init[k], state[k]) for k in init)
    last = load_file(str(out / "last" / "weights.safetensors"))
    assert not torch.equal(last["net.fc.weight"], init["net.fc.weight"])
    torch.save(_official_cnnspot(runs["cnnspot"]["trainer"].detector), tmp_path / "cnnspot.pth")
    bad = ["--config", "npr", "--tiny", "--out", str(tmp_path / "bad"), "--set", "data.train=[nowhere]",
           "--checkpoint", str(tmp_path / "cnnspot.pth")]
    capsys.readouterr()
    assert train.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "model.init_checkpoint" in err and "'cnnspot', not 'npr'" in err and len(err.splitlines()) == 1, err
