"""The detector interface shared by every family: preprocessing, registry, recipes, schedules, checkpoint I/O."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from family_helpers import one_thread  # noqa: F401  (autouse fixture)
from PIL import Image

from fakeforge.config import ConfigError

NEW_FAMILIES = ("deepfake_adapter", "linear_probe", "nearest_neighbor", "contrastive_disentangle")


# ------------------------------------------------------------------------------------------- preprocess
def test_preprocess_reads_antifakeprompt_dicts_and_matches_its_transform():
    from detector.base import Preprocess
    from detector.data import build_transform

    afp = {"image_size": 32, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.3, 0.25], "source": "stats"}
    pre = Preprocess.from_dict(afp)
    assert (pre.resize, pre.interpolation, pre.crop_pct, pre.train_augment) == ("shorter_side", "bicubic", 1.0,
                                                                               "crop_flip")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    assert torch.equal(pre.transform(False)(img), build_transform(32, afp["mean"], afp["std"], train=False)(img))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['crop'\] in 'preprocess'"):
        Preprocess.from_dict({"crop": 0.9})


def test_square_resize_keeps_the_whole_image_and_crop_pct_crops():
    from detector.base import Preprocess

    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :8] = 255  # a white stripe at the left edge
    img = Image.fromarray(arr)
    square = Preprocess(image_size=16, resize="square", mean=[0, 0, 0], std=[1, 1, 1]).transform(False)(img)
    cropped = Preprocess(image_size=16, mean=[0, 0, 0], std=[1, 1, 1]).transform(False)(img)
    assert square.shape == cropped.shape == (3, 16, 16)
    assert square[:, :, 0].mean() > 0.9 and cropped[:, :, 0].mean() < 0.1  # the crop cuts the stripe away
    tight = Preprocess(image_size=16, crop_pct=0.5, interpolation="bilinear", mean=[0, 0, 0], std=[1, 1, 1])
    assert tight.transform(False)(Image.fromarray(np.full((40, 40, 3), 9, np.uint8))).shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="preprocess.std"):
        Preprocess(std=[0.5, 0.0, 0.5]).transform()


# ------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_family_lazily():
    code = ("import sys, detector; from detector import DETECTORS; "
            f"assert set({NEW_FAMILIES!r}) <= set(DETECTORS.names()), DETECTORS.names(); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    from detector import DETECTORS
    from detector.base import FIT_FEATURES, FIT_GRADIENT, Detector

    modes = {}
    for name in NEW_FAMILIES:
        cls = DETECTORS.get(name)
        assert issubclass(cls, Detector) and cls.name == name and cls.config_class is not None
        modes[name] = cls.fit_mode
    assert modes == {"deepfake_adapter": FIT_GRADIENT, "linear_probe": FIT_FEATURES,
                     "nearest_neighbor": FIT_FEATURES, "contrastive_disentangle": FIT_FEATURES}


def test_every_config_parses_with_and_without_tiny():
    """Every named config types; --tiny swaps every real model id for a twin (its `tiny:` block applied first)."""
    from detector.train.config import load_train_config
    from fakeforge.config import CONFIG_ROOT

    names = [p.stem for p in (CONFIG_ROOT / "detector").glob("*.yaml")]
    assert set(NEW_FAMILIES) <= set(names)
    for name in names:
        cfg = load_train_config(name, ["data.train=[x]"])
        tiny = load_train_config(name, ["data.train=[x]"], tiny=True)
        assert cfg.detector == tiny.detector and cfg.description, name
        model_id = getattr(tiny.model, "model_id", None) or tiny.model.backbone
        assert model_id.startswith("tiny:"), name
        for extra in ("captioner", "classifier"):  # DE-FAKE's BLIP, DIRE's ResNet
            assert str(getattr(tiny.model, extra, "tiny:")).startswith("tiny:"), (name, extra)
    dfa = load_train_config("deepfake_adapter", ["data.train=[x]"])
    assert (dfa.optim.name, dfa.optim.lr, dfa.optim.blr, dfa.optim.warmup_epochs, dfa.train.epochs) == \
        ("sgd", None, 0.1, 15, 100)
    assert (dfa.model.mean, dfa.model.std, dfa.model.bottleneck) == ([0.5] * 3, [0.5] * 3, 64)
    assert dfa.optim.peak_lr(64) == pytest.approx(0.025)
    tiny = load_train_config("deepfake_adapter", ["data.train=[x]", "model.backbone=vit_small_patch16_224"],
                             tiny=True)
    assert tiny.model.backbone == "tiny:timm_vit" and tiny.model.spm_channels == 16  # --set cannot escape --tiny
    afp = load_train_config("antifakeprompt", ["data.train=[x]", "train.epochs=2"], tiny=True)
    assert (afp.model.model_id, afp.model.llm_id, afp.model.dtype, afp.data.image_size, afp.train.epochs,
            afp.optim.lr, afp.optim.schedule) == ("tiny:instructblip", None, "float32", 32, 2, 0.05, "cosine_epoch")
    # the named tiny config is the same recipe as `antifakeprompt --tiny` (the tiny: block)
    from fakeforge.config import to_dict

    flat = [to_dict(load_train_config(n, ["data.train=[x]"], tiny=True)) for n in ("antifakeprompt",
                                                                                  "antifakeprompt_tiny")]
    for d in flat:
        d.pop("description")
        d["train"].pop("output_dir")
        d["train"].pop("device")
    assert flat[0] == flat[1]


def test_config_errors_name_the_key(tmp_path):
    from detector.train.config import load_train_config
    from fakeforge.registry import UnknownNameError

    def load(name, *overrides):
        return load_train_config(name, ["data.train=[x]", *overrides])

    with pytest.raises(ConfigError, match="model.k"):
        load("nearest_neighbor", "model.k=0")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bottlenek'\]"):
        load("deepfake_adapter", "model.bottlenek=32")
    with pytest.raises(ConfigError, match="optim.warmup"):
        load("deepfake_adapter", "optim.warmup_steps=10")
    with pytest.raises(ConfigError, match="backbone"):
        load("linear_probe", "model.backbone=clip-vit")
    with pytest.raises(UnknownNameError, match="linear_probe"):
        load("linear_probe", "detector=linear_prob")
    with pytest.raises(ConfigError, match="data.image_size = 64: 'deepfake_adapter' takes its input size"):
        load("deepfake_adapter", "data.image_size=64")
    with pytest.raises(ConfigError, match="data.stats_file: 'linear_probe' normalises with its model's own"):
        load("linear_probe", "data.stats_file=stats.json")
    with pytest.raises(ConfigError, match="data.mix .* fits on every cached training sample"):
        load("linear_probe", "data.mix={coco: 1}")
    with pytest.raises(ConfigError, match="train.batch_size = 1: 'deepfake_adapter' needs training batches of at "
                                          "least 2"):
        load("deepfake_adapter", "train.batch_size=1")
    with pytest.raises(ConfigError, match="model.zero_shot = true has nothing to train"):
        load("antifakeprompt", "model.zero_shot=true")
    bad = tmp_path / "bad_tiny.yaml"
    bad.write_text("detector: linear_probe\ntiny: [1, 2]\n")
    with pytest.raises(ConfigError, match="'tiny' must be a mapping"):
        load_train_config(str(bad), ["data.train=[x]"], tiny=True)


# ------------------------------------------------------------------------------------------- schedule
def test_deepfake_adapter_schedule_matches_the_official_rule():
    """lr = 0.1 x batch/256; linear warm-up from 0 over 15 epochs, per step; half cosine to 0 at 100 epochs."""
    from detector.train.config import OptimConfig, build_optimizer, lr_at

    cfg = OptimConfig(name="sgd", lr=None, blr=0.1, schedule="cosine_step", warmup_lr=0.0, warmup_epochs=15,
                      weight_decay=1e-4)
    peak = cfg.peak_lr(64)
    assert peak == pytest.approx(0.025)  # the released scripts: 2 GPUs x 32
    spe, epochs = 10, 100

    def official(epoch: float) -> float:  # util/lr_sched.py, in units of the peak LR
        if epoch < 15:
            return epoch / 15
        return 0.5 * (1 + math.cos(math.pi * (epoch - 15) / (epochs - 15)))

    for step in (0, 1, 75, 149, 150, 151, 500, 999):
        got = lr_at(cfg, step // spe, step % spe, step, epochs, spe, peak=peak)
        assert got == pytest.approx(peak * official(step / spe)), step
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg, peak)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == peak


def test_cosine_step_warmup_from_warmup_lr_and_min_lr():
    from detector.train.config import OptimConfig, lr_at

    cfg = OptimConfig(name="adamw", lr=1e-5, min_lr=1e-6, schedule="cosine_step", warmup_lr=0.0, warmup_steps=4)
    assert [lr_at(cfg, 0, s, s, 10, 10) / 1e-5 for s in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert lr_at(cfg, 9, 9, 99, 10, 10) == pytest.approx(1e-6, rel=0.01)  # ends near min_lr
    assert lr_at(cfg, 10, 0, 100, 10, 10) == pytest.approx(1e-6)


# ------------------------------------------------------------------------------------------- checkpoint I/O
@pytest.fixture(scope="module")
def probe_ckpt(tiny_dir, tmp_path_factory):
    """A fitted tiny linear probe saved to a folder."""
    from detector.families.frozen.feature_cache import FeatureSet
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig
    from detector.checkpoint import save_detector

    torch.set_num_threads(1)
    det = LinearProbe.from_config(LinearProbeConfig(backbone="tiny:open_clip_vit", dtype="float32"), "cpu")
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, det.backbone.feature_dim, generator=g)
    labels = (feats[:, 0] > 0).long()
    det.fit_features(FeatureSet(feats, labels, torch.full((40,), -1), [str(i) for i in range(40)]))
    out = save_detector(det, tmp_path_factory.mktemp("ckpt") / "probe", training={"val_acc": 1.0})
    return {"det": det, "path": out}


def test_save_writes_safetensors_json_and_card(probe_ckpt):
    path = probe_ckpt["path"]
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "detector.json", "weights.safetensors"]
    meta = json.loads((path / "detector.json").read_text())
    assert (meta["format"], meta["format_version"], meta["detector"]) == ("fakeforge.detector", 1, "linear_probe")
    assert meta["identity"]["backbone"] == "tiny:open_clip_vit" and len(meta["identity"]["weights_sha256"]) == 64
    assert meta["preprocess"]["image_size"] == 32 and meta["model"]["backbone"] == "tiny:open_clip_vit"
    assert set(meta["state_tensors"]) == {"head.weight", "head.bias", "feature_mean", "feature_std"}
    assert "linear_probe" in (path / "README.md").read_text()


def test_load_gives_identical_scores_and_preprocessing(probe_ckpt, tmp_path):
    from dataclasses import replace

    from detector.checkpoint import load_detector, save_detector

    det = probe_ckpt["det"]
    back = load_detector(probe_ckpt["path"], device="cpu")
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(det.score(x), back.score(x))
    assert back.preprocess == det.preprocess
    # preprocessing set by training (e.g. measured mean/std) travels with the checkpoint
    back.preprocess = replace(back.preprocess, mean=[0.1, 0.2, 0.3], source="measured")
    again = load_detector(save_detector(back, tmp_path / "p"), device="cpu")
    assert again.preprocess.mean == [0.1, 0.2, 0.3] and again.preprocess.source == "measured"


def test_checkpoint_for_another_detector_or_backbone_is_refused(probe_ckpt, tmp_path):
    from detector.base import CheckpointError
    from detector.families.frozen.heads import NearestNeighbor, NearestNeighborConfig
    from detector.checkpoint import load_detector, load_detector_state

    with pytest.raises(CheckpointError, match="'linear_probe' detector, but 'nearest_neighbor' was asked for"):
        load_detector(probe_ckpt["path"], expect="nearest_neighbor")
    knn = NearestNeighbor.from_config(NearestNeighborConfig(backbone="tiny:open_clip_vit", dtype="float32"), "cpu")
    with pytest.raises(CheckpointError, match="is a 'linear_probe' detector, not 'nearest_neighbor'"):
        load_detector_state(knn, probe_ckpt["path"])
    with pytest.raises(CheckpointError) as err:
        load_detector(probe_ckpt["path"], model_overrides={"backbone": "tiny:hf_clip_vit"})
    msg = str(err.value)
    assert "tiny:open_clip_vit" in msg and "tiny:hf_clip_vit" in msg and "weights_sha256" in msg


def test_damaged_or_foreign_checkpoints_are_refused(probe_ckpt, tmp_path):
    from detector.base import CheckpointError
    from detector.checkpoint import load_detector

    with pytest.raises(CheckpointError, match="no detector.json"):
        load_detector(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(probe_ckpt["path"], bad)
    meta = json.loads((bad / "detector.json").read_text())
    (bad / "detector.json").write_text(json.dumps({**meta, "detector": "univfd"}))
    with pytest.raises(CheckpointError, match="unknown detector 'univfd'.*linear_probe"):
        load_detector(bad)
    (bad / "detector.json").write_text(json.dumps({**meta, "format": "something.else"}))
    with pytest.raises(CheckpointError, match="format 'something.else'"):
        load_detector(bad)
    (bad / "detector.json").write_text(json.dumps(meta))
    data = (bad / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_detector(bad)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(probe_ckpt["path"] / "weights.safetensors"))
    save_file({**tensors, "head.weight": torch.zeros(1, 7)}, str(bad / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"head.weight has shape \(1, 7\)"):
        load_detector(bad)
    save_file({k: v for k, v in tensors.items() if k != "feature_std"}, str(bad / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors \\['feature_std'\\]"):
        load_detector(bad)


def test_benchmark_smoke(tiny_dir, capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_detectors.py"
    spec = importlib.util.spec_from_file_location("bench_detectors", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--iters", "1", "--warmup", "0", "--batch-size", "4", "--bank", "20", "--fit-images", "8",
                       "--workers", "1", "--eval-images", "4", "--eval-size", "48", "--repeats", "1", "--checkpoints",
                       "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["scoring"]) == {"antifakeprompt", *NEW_FAMILIES}
    assert res["multi_eval"]["scores_identical"] and len(res["multi_eval"]["checkpoints"]) == 5
    assert res["multi_eval_from_folders"]["speedup"] > 0
    assert res["probe_fit"]["from_images"]["built"] == ["coco", "sd2"]
    assert res["probe_fit"]["from_cache"]["reused"] == ["coco", "sd2"] and res["probe_fit"]["images"] == 16
    assert "trainable parameters: " in capsys.readouterr().out
