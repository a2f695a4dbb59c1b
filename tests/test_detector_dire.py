"""DIRE through the generic trainer and eval: it learns against its own init/ on held-out data, DIRE images are computed
once per image (later epochs and evals read the on-disk cache; a cache of other settings or cut short is
recomputed), the UNet stays frozen, only the classifier is saved, save -> load scores identically, foreign
checkpoints are refused, and the official ResNet-50 head has 23,510,081 parameters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detector_helpers import write_dataset
from family_helpers import load_tensors, one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from fakeforge.cli import main as fakeforge_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dire")
    return {"root": root, "train": write_dataset(root / "train", 48, 48, shards=2, seed=0),
            "val": write_dataset(root / "val", 12, 12, seed=50),
            "test": write_dataset(root / "test", 24, 24, seed=100)}


@pytest.fixture(scope="module")
def run(data, tiny_dir):
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    out = data["root"] / "run"
    cfg = load_train_config("dire", [f"data.train=[{data['train']}]", f"data.val=[{data['val']}]",
                                     f"model.dire_cache={data['root'] / 'dire'}"], tiny=True, out=str(out))
    trainer = Trainer(cfg)
    trainer.fit()
    return {"out": out, "trainer": trainer, "cache": data["root"] / "dire"}


def _accuracy(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["average_accuracy"]


def test_best_beats_its_own_init_on_held_out_data(run, data, tmp_path):
    out = run["out"]
    assert fakeforge_main(["eval", "--checkpoint", str(out / "init"), str(out / "best"), "--sets", str(data["test"]),
                           "--out", str(tmp_path), "--no-plots"]) == 0
    before, after = _accuracy(tmp_path / "init"), _accuracy(tmp_path / "best")
    assert after >= 0.85 and after >= before + 0.25, (before, after)


def test_dire_images_are_computed_once_per_image_over_all_epochs(run):
    det = run["trainer"].detector
    unique = 96 + 24  # training and validation images; 5 epochs of training read the cache after the first
    assert det.cache.computed == unique and not det.cache.rebuilt
    assert len(list(det.cache.folder.rglob("*.safetensors"))) >= unique  # + the test set of any eval before


def test_the_unet_stays_frozen_and_only_the_classifier_is_saved(run, tiny_dir):
    from detector.families.dire import Dire

    det = run["trainer"].detector
    fresh = Dire.from_config(run["trainer"].cfg.model, "cpu")
    mine, base = det.unet.state_dict(), fresh.unet.state_dict()
    assert [k for k in mine if not torch.equal(mine[k], base[k])] == []
    assert not any(p.requires_grad for p in det.unet.parameters())
    saved = load_file(str(run["out"] / "best" / "weights.safetensors"))
    assert set(saved) == {k for k in det.state_dict() if k.startswith("classifier.")}
    init = load_file(str(run["out"] / "init" / "weights.safetensors"))
    assert all(torch.equal(init[k], v) for k, v in fresh.checkpoint_state().items())
    assert any(not torch.equal(saved[k], init[k]) for k in saved)


def test_saved_checkpoint_loads_with_identical_scores(run, data):
    from detector.checkpoint import load_detector

    det = run["trainer"].detector
    back = load_detector(run["out"] / "last", device="cpu")  # the in-memory detector is the last epoch's
    x, _ = load_tensors(data["test"], det.preprocess)
    assert torch.equal(det.score(x), back.score(x))


def test_the_cache_holds_the_dire_image_and_is_recomputed_when_stale(data, tmp_path, tiny_dir):
    from detector.families.dire import Dire, DireConfig, ddim_reconstruct, image_key

    cfg = DireConfig(dire_cache=str(tmp_path / "dire"))
    det = Dire.from_config(cfg, "cpu", tiny=True)
    x, _ = load_tensors(data["test"], det.preprocess)
    x = x[:4]
    dire = det.dire_images(x)
    recon = ddim_reconstruct(det.unet, det.scheduler_config, x, det.config.steps)
    assert torch.equal(dire, ((x - recon).abs() * 127.5).clamp(0, 255).round() / 255)
    again = Dire.from_config(cfg, "cpu", tiny=True)
    assert torch.equal(again.dire_images(x), dire) and again.cache.computed == 0
    files = sorted(again.cache.folder.rglob("*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:-40])  # cut short
    cut = Dire.from_config(cfg, "cpu", tiny=True)
    redone = cut.dire_images(x)
    assert cut.cache.computed == 1
    i = [image_key(p) for p in x].index(files[0].stem)
    keep = [j for j in range(4) if j != i]
    assert torch.equal(redone[keep], dire[keep])
    alone = ddim_reconstruct(det.unet, det.scheduler_config, x[i:i + 1], det.config.steps)  # computed alone again
    assert torch.equal(redone[i:i + 1], ((x[i:i + 1] - alone).abs() * 127.5).clamp(0, 255).round() / 255)
    assert cut.cache.read(files[0].stem) is not None  # the file was rewritten whole
    assert "unreadable" in cut.cache.rebuilt[0][1]
    fewer = Dire.from_config(DireConfig(dire_cache=str(tmp_path / "dire"), steps=2), "cpu", tiny=True)
    fewer.dire_images(x)
    assert fewer.cache.computed == 4 and fewer.cache.folder != det.cache.folder  # other settings: never reused
    other = fewer.cache.path(sorted(p.stem for p in files)[1])  # a file of the 2-step settings put in place
    det_path = det.cache.path(other.stem)
    det_path.write_bytes(other.read_bytes())
    stale = Dire.from_config(cfg, "cpu", tiny=True)
    stale.dire_images(x)
    assert stale.cache.computed == 1 and stale.cache.rebuilt[0][1] == "made with other settings"


def test_foreign_checkpoints_are_refused_naming_both(run, tmp_path, tiny_dir):
    from detector.base import CheckpointError
    from detector.families.dire import Dire, DireConfig
    from detector.checkpoint import load_detector, load_detector_state

    with pytest.raises(CheckpointError, match="'dire' detector, but 'deepfake_adapter' was asked for"):
        load_detector(run["out"] / "best", expect="deepfake_adapter")
    other = Dire.from_config(DireConfig(steps=2, dire_cache=str(tmp_path)), "cpu", tiny=True)
    with pytest.raises(CheckpointError, match=r"made for dire on base model 'tiny:ddpm_uncond'.*differ in steps"):
        load_detector_state(other, run["out"] / "best")


def test_the_official_classifier_has_23510081_parameters():
    import timm

    with torch.device("meta"):
        model = timm.create_model("resnet50", pretrained=False, num_classes=1)
    assert sum(p.numel() for p in model.parameters()) == 23_510_081


def test_config_errors_are_one_line_before_any_model_loads(data, tmp_path, capsys):
    import train

    for extra, words in ((["--set", "model.steps=0"], "model.steps = 0"),
                         (["--set", "model.crop_size=300"], "model.crop_size = 300"),
                         (["--set", "train.batch_size=1"], "train.batch_size = 1")):
        args = ["--config", "dire", "--out", str(tmp_path / "run"), "--set", f"data.train=[{data['train']}]",
                "--set", f"model.model_id={tmp_path / 'no_such_unet'}", *extra]
        assert train.main(args) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "no_such_unet" not in err and len(err.strip().splitlines()) == 1, err


def test_resume_after_a_kill_equals_an_uninterrupted_run(run, data, tmp_path):
    """SIGKILL after epoch 1, then --resume (the DIRE cache shared): the classifier, BatchNorm statistics included,
    equals the uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import train

    out = tmp_path / "run"
    state = out / "last" / "training_state.pt"
    args = ["--config", "dire", "--tiny", "--out", str(out), "--set", f"data.train=[{data['train']}]",
            "--set", f"data.val=[{data['val']}]", "--set", f"model.dire_cache={run['cache']}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(Path(train.__file__)), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file(), proc.stderr.read().decode()[-2000:]
    assert torch.load(state, weights_only=True)["epoch"] == 1, "the kill came too late to interrupt epoch 2"
    assert train.main([*args, "--resume"]) == 0
    resumed = load_file(str(out / "last" / "weights.safetensors"))
    straight = load_file(str(run["out"] / "last" / "weights.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.allclose(resumed[key].float(), straight[key].float(), atol=1e-5), key


def test_a_released_dire_file_converts_into_a_checkpoint_that_scores_like_its_classifier(run, data, tmp_path, capsys):
    """`fakeforge convert-dire FILE.pth`: DIRE's released layout ({'model': ResNet state dict, plain keys, 1-logit
    fc}, made here from a trained twin's classifier) becomes a DIRE checkpoint folder whose classifier holds exactly
    the file's tensors and scores like the detector they came from; other layouts and extra tensors are refused."""
    from detector.checkpoint import load_detector

    trained = run["trainer"].detector
    official = {k[len("classifier."):]: v for k, v in trained.checkpoint_state().items()}
    src = tmp_path / "lsun_adm.pth"
    torch.save({"model": official, "optimizer": {}, "total_steps": 7}, src)
    out = tmp_path / "converted"
    assert fakeforge_main(["convert-dire", str(src), "--out", str(out), "--tiny"]) == 0
    assert "converted" in capsys.readouterr().out
    det = load_detector(out, device="cpu", tiny=True)
    for k, v in official.items():
        assert torch.equal(det.state_dict()[f"classifier.{k}"], v), k
    x, _ = load_tensors(data["test"], det.preprocess)
    # the trained detector reads DIRE images cached during training; the converted one computes them again
    # (another thread count in a full run rounds the DDIM loop differently): equal up to that rounding
    assert torch.allclose(det.score(x), trained.score(x), atol=2e-3)
    torch.save({"model": {**official, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    assert fakeforge_main(["convert-dire", str(tmp_path / "extra.pth"), "--out", str(tmp_path / "x"), "--tiny"]) == 2
    assert "unexpected ['classifier.extra.weight']" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, tmp_path / "fc_weights.pth")
    assert fakeforge_main(["convert-dire", str(tmp_path / "fc_weights.pth"), "--out", str(tmp_path / "y"),
                           "--tiny"]) == 2
    assert "keys are those of 'linear_probe'" in capsys.readouterr().err
