"""DE-FAKE through the generic trainer and eval: it learns against its own init/ on held-out data, training reads the
shards' own captions (no BLIP call), test-time scoring captions with BLIP once per image through an on-disk cache
that is rebuilt when its settings differ or it was cut short, CLIP and BLIP stay frozen, only the MLP is saved,
save -> load scores identically and foreign checkpoints are refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detector_helpers import encode, make_image, write_dataset
from family_helpers import load_tensors, one_thread  # noqa: F401  (autouse fixture)
from safetensors.torch import load_file

from fakeforge.cli import main as fakeforge_main


def _captioned_set(folder: Path, kind: str, n: int, seed: int) -> Path:
    """A shard set whose samples carry distinct captions."""
    import numpy as np
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with wds.TarWriter(str(folder / "000000.tar")) as writer:
        for i in range(n):
            key = f"{folder.name}_{i:05d}"
            meta = {"key": key, "label": kind, "caption": f"a {'red' if i % 2 else 'blue'} cat number {i}"}
            writer.write({"__key__": key, "jpg": encode(make_image(kind, rng)), "json": json.dumps(meta).encode()})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("defake")
    return {"root": root, "train": write_dataset(root / "train", 48, 48, shards=2, seed=0),
            "val": write_dataset(root / "val", 12, 12, seed=50),
            "test": write_dataset(root / "test", 24, 24, seed=100)}


@pytest.fixture(scope="module")
def run(data, tiny_dir):
    from detector.cli import load_train_config
    from detector.train.loop import Trainer

    torch.set_num_threads(1)
    out = data["root"] / "run"
    cfg = load_train_config("defake", [f"data.train=[{data['train']}]", f"data.val=[{data['val']}]",
                                       f"data.feature_cache={data['root'] / 'features'}",
                                       f"model.caption_cache={data['root'] / 'captions'}"], tiny=True, out=str(out))
    trainer = Trainer(cfg)
    trainer.fit()
    return {"out": out, "trainer": trainer}


def _accuracy(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["average_accuracy"]


def test_best_beats_its_own_init_on_held_out_data(run, data, tmp_path):
    out = run["out"]
    assert run["trainer"].detector.captioner.calls == 0  # training read the shards' captions only
    assert fakeforge_main(["eval", "--checkpoint", str(out / "init"), str(out / "best"), "--sets", str(data["test"]),
                           "--out", str(tmp_path), "--no-plots"]) == 0
    before, after = _accuracy(tmp_path / "init"), _accuracy(tmp_path / "best")
    assert after >= 0.9 and after >= before + 0.3, (before, after)
    assert "| 165.12K |" in (tmp_path / "comparison.md").read_text()
    history = json.loads((out / "best" / "detector.json").read_text())["training"]["history"]
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"] - 0.3


def test_clip_and_blip_stay_frozen_and_only_the_mlp_is_saved(run, tiny_dir):
    from detector.families.defake import DeFake

    det = run["trainer"].detector
    fresh = DeFake.from_config(run["trainer"].cfg.model, "cpu")
    for part in ("backbone", "captioner"):
        mine, base = getattr(det, part).state_dict(), getattr(fresh, part).state_dict()
        assert [k for k in mine if not torch.equal(mine[k], base[k])] == [], part
        assert not any(p.requires_grad for p in getattr(det, part).parameters())
    for folder in ("init", "best"):
        saved = load_file(str(run["out"] / folder / "weights.safetensors"))
        assert sorted(saved) == sorted(k for k in det.state_dict() if k.startswith("head.")), folder
    init = load_file(str(run["out"] / "init" / "weights.safetensors"))
    trained = det.checkpoint_state()
    assert all(torch.equal(init[k], v) for k, v in fresh.checkpoint_state().items())
    assert {k for k in trained if not torch.equal(trained[k], init[k])} == set(trained)  # every MLP tensor moved
    assert det.num_trainable() == 64 * 512 + 512 + 512 * 256 + 256 + 256 * 2 + 2


def test_the_official_mlp_has_656642_parameters():
    from detector.families.defake import DeFakeConfig, build_head

    head = build_head(2 * 512, DeFakeConfig())  # CLIP ViT-B/32: 512-d image and text embeddings
    assert sum(p.numel() for p in head.parameters()) == 656_642
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.5]


def test_saved_checkpoint_loads_with_identical_scores(run, data):
    from detector.checkpoint import load_detector

    det = run["trainer"].detector
    back = load_detector(run["out"] / "best", device="cpu")
    x, _ = load_tensors(data["test"], det.preprocess)
    assert torch.equal(det.score(x), back.score(x))
    assert back.preprocess == det.preprocess


def test_training_features_embed_each_samples_own_caption(data, tmp_path, tiny_dir):
    """The cached feature of every training sample = [CLIP image | CLIP text of its stored caption]."""
    from detector.data import parse_set_specs
    from detector.families.defake import DeFake, DeFakeConfig
    from detector.families.frozen.feature_cache import FeatureCache

    det = DeFake.from_config(DeFakeConfig(caption_cache=str(tmp_path / "captions")), "cpu", tiny=True)
    spec = parse_set_specs([str(_captioned_set(tmp_path / 'cap', 'fake', 6, seed=1))])[0]
    fs = FeatureCache(tmp_path / "features").load_or_build(det, spec, batch_size=4, workers=1)
    x, _ = load_tensors(tmp_path / "cap", det.preprocess)
    captions = [f"a {'red' if i % 2 else 'blue'} cat number {i}" for i in range(6)]
    assert torch.allclose(fs.features, det.backbone(x, captions), atol=1e-5)
    assert det.captioner.calls == 0
    assert not torch.allclose(fs.features[:, 32:], det.backbone(x, ["a photo"] * 6)[:, 32:])


def test_blip_captions_once_per_image_and_the_cache_is_rebuilt_when_stale(data, tmp_path, tiny_dir):
    from detector.families.defake import DeFake, DeFakeConfig

    cfg = DeFakeConfig(caption_cache=str(tmp_path / "captions"), max_length=12)
    det = DeFake.from_config(cfg, "cpu", tiny=True)
    x, _ = load_tensors(data["test"], det.preprocess)
    x = x[:6]
    first = det.score(x)
    assert det.captioner.calls == 6
    assert torch.equal(det.score(x), first) and det.captioner.calls == 6  # from the cache
    again = DeFake.from_config(cfg, "cpu", tiny=True)  # a new process reads the file
    assert torch.equal(again.score(x), first) and again.captioner.calls == 0
    path = again.caption_cache.path
    path.write_bytes(path.read_bytes()[:-7])  # cut short inside the last caption line
    cut = DeFake.from_config(cfg, "cpu", tiny=True)
    assert cut.caption_cache.rebuilt == "cut short" and len(cut.caption_cache.entries) == 5
    assert torch.equal(cut.score(x), first) and cut.captioner.calls == 1
    other = DeFake.from_config(DeFakeConfig(**{**cfg.__dict__, "num_beams": 1}), "cpu", tiny=True)
    other.score(x)
    assert other.captioner.calls == 6 and other.caption_cache.path != path  # other settings: never reused
    path.write_text(path.read_text().replace('"num_beams": 3', '"num_beams": 4'))  # a header for other settings
    stale = DeFake.from_config(cfg, "cpu", tiny=True)
    assert stale.caption_cache.rebuilt == "made with other settings" and not stale.caption_cache.entries


def test_caption_stored_scores_with_the_given_captions(tmp_path, data, tiny_dir):
    from detector.families.defake import DeFake, DeFakeConfig

    blip = DeFake.from_config(DeFakeConfig(caption_cache=str(tmp_path / "c")), "cpu", tiny=True)
    stored = DeFake.from_config(DeFakeConfig(caption_cache=str(tmp_path / "c"), caption="stored"), "cpu", tiny=True)
    with torch.no_grad():
        for det in (blip, stored):
            det.head[-1].weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    x, _ = load_tensors(data["test"], blip.preprocess)
    x = x[:4]
    given = ["a red cat", "a blue dog", None, "a kite"]
    expected = stored.score_features(stored.backbone(x, [c or t for c, t in zip(given, blip.blip_captions(x))]))
    assert torch.equal(stored.score(x, captions=given), expected)
    assert torch.equal(blip.score(x, captions=given), blip.score(x))  # blip: the given captions are ignored


def test_foreign_checkpoints_are_refused_naming_both(run, tmp_path, tiny_dir):
    from detector.base import CheckpointError
    from detector.families.defake import DeFake, DeFakeConfig
    from detector.checkpoint import load_detector, load_detector_state

    with pytest.raises(CheckpointError, match="'defake' detector, but 'linear_probe' was asked for"):
        load_detector(run["out"] / "best", expect="linear_probe")
    other = DeFake.from_config(DeFakeConfig(num_beams=1, caption_cache=str(tmp_path)), "cpu", tiny=True)
    with pytest.raises(CheckpointError, match=r"made for defake on backbone 'tiny:hf_clip'.*differ in captioner"):
        load_detector_state(other, run["out"] / "best")


def test_config_errors_are_one_line_before_any_model_loads(data, tmp_path, capsys):
    import train

    for extra, words in ((["--set", "model.num_beams=0"], "model.num_beams = 0"),
                         (["--set", "model.min_length=70"], "model.min_length = 70"),
                         (["--set", "model.caption=generated"], "model.caption")):
        args = ["--config", "defake", "--out", str(tmp_path / "run"), "--set", f"data.train=[{data['train']}]",
                "--set", f"model.backbone={tmp_path / 'no_such_clip'}", *extra]
        assert train.main(args) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "no_such_clip" not in err and len(err.strip().splitlines()) == 1, err
