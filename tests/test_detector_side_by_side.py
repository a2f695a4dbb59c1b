"""`fakeforge eval --checkpoint A B C ...`: one table for several detectors of every family, each image decoded
once, shared stages computed once, and every detector's results equal to its own single eval, row by row."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from detector_helpers import write_dataset, write_folder, write_odd_images
from family_helpers import one_thread  # noqa: F401  (autouse fixture)

from fakeforge.cli import main as fakeforge_main


def _random_rows(det, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in det.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def checkpoints(tiny_dir, tmp_path_factory):
    """Checkpoints of every family with non-trivial scores (no training needed to compare scorers):
    AntifakePrompt x3 on one base (a and b with the same statistics), DeepFake-Adapter, a probe and a kNN on the
    same open_clip twin, a contrastive head on the timm twin."""
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.families.antifakeprompt.checkpoint import save_checkpoint
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig
    from detector.families.frozen.disentangle import ContrastiveDisentangle, ContrastiveDisentangleConfig
    from detector.families.frozen.feature_cache import FeatureSet
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig, NearestNeighbor, NearestNeighborConfig
    from detector.checkpoint import save_detector

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    afp = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), device="cpu")
    for name, seed, mean in (("afp_a", 0, 0.5), ("afp_b", 1, 0.5), ("afp_c", 2, 0.4)):
        _random_rows(afp, seed)
        out[name] = save_checkpoint(afp, root / name, {"image_size": 32, "mean": [mean] * 3, "std": [0.25] * 3,
                                                       "source": "test"}, {"epoch": 1})
    dfa = DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16), "cpu")
    with torch.no_grad():
        for i, gba in enumerate(dfa.gba):
            gba.up_proj.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(i))
        dfa.head[1].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(9))
    out["dfa"] = save_detector(dfa, root / "dfa")
    g = torch.Generator().manual_seed(0)
    for name, det in (("probe", LinearProbe.from_config(LinearProbeConfig(backbone="tiny:open_clip_vit",
                                                                          dtype="float32"), "cpu")),
                      ("knn", NearestNeighbor.from_config(NearestNeighborConfig(backbone="tiny:open_clip_vit",
                                                                                dtype="float32", k=3), "cpu")),
                      ("contrastive", ContrastiveDisentangle.from_config(ContrastiveDisentangleConfig(
                          backbone="tiny:timm_vit", dtype="float32", hidden_dim=16, proj_dim=8, epochs=2,
                          batch_size=16), "cpu"))):
        feats = torch.randn(40, det.backbone.feature_dim, generator=g)
        det.fit_features(FeatureSet(feats, (feats[:, 0] > 0).long(), torch.full((40,), -1),
                                    [str(i) for i in range(40)]))
        out[name] = save_detector(det, root / name)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sbs_sets")
    data = write_dataset(root / "data", 10, 10, seed=3)
    write_folder(root / "real", "real", 4, seed=4)
    odd = write_odd_images(root / "real" / "odd")
    return {"specs": [str(data), f"flickr=real:{root / 'real'}"], "bad": odd["bad"]}


def _scores(folder: Path) -> list[dict]:
    with (folder / "scores.csv").open() as fh:
        return list(csv.DictReader(fh))


ALL = ["afp_a", "afp_b", "afp_c", "zero-shot", "dfa", "probe", "knn", "contrastive"]


def test_side_by_side_equals_the_single_evals_row_by_row(checkpoints, sets, tmp_path, capsys):
    paths = [str(checkpoints[n]) if n in checkpoints else n for n in ALL]
    multi = tmp_path / "multi"
    assert fakeforge_main(["eval", "--checkpoint", *paths, "--tiny", "--sets", *sets["specs"], "--out", str(multi),
                           "--batch-size", "3", "--no-plots"]) == 0
    capsys.readouterr()
    names = sorted(p.name for p in multi.iterdir())
    assert names == sorted(["comparison.csv", "comparison.json", "comparison.md", *ALL])
    for name, path in zip(ALL, paths):
        single = tmp_path / f"single_{name}"
        assert fakeforge_main(["eval", "--checkpoint", path, "--tiny", "--sets", *sets["specs"], "--out",
                               str(single), "--batch-size", "3", "--no-plots", "--name", name]) == 0
        assert sorted(p.name for p in single.iterdir()) == ["results.csv", "results.json", "results.md", "scores.csv"]
        rows, expected = _scores(multi / name), _scores(single)
        assert len(rows) == 10 + 10 + 4 + 4 and rows == expected, name
        got, want = json.loads((multi / name / "results.json").read_text()), json.loads((single / "results.json")
                                                                                        .read_text())
        assert got == want, name
        assert (multi / name / "results.md").read_text() == (single / "results.md").read_text()
        # bad images are listed (and skipped) for every detector
        assert sorted(Path(e["key"]).name for e in got["errors"]["flickr"]) == sorted(p.name for p in sets["bad"])
    capsys.readouterr()


def test_one_table_in_the_paper_layout(checkpoints, sets, tmp_path, capsys):
    out = tmp_path / "eval"
    ckpts = [str(checkpoints[n]) for n in ("afp_a", "dfa", "probe")]
    assert fakeforge_main(["eval", "--checkpoint", *ckpts, "--sets", *sets["specs"], "--out", str(out),
                           "--name", "AntifakePrompt", "DeepFake-Adapter", "UnivFD probe", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    md = (out / "comparison.md").read_text()
    assert md in printed
    assert "| Method | Train set | #params | coco | sd2 | flickr | **Avg** |" in md
    lines = [line for line in md.splitlines() if line.startswith("| DeepFake-Adapter |")]
    assert len(lines) == 3 and "| 168.71K |" in lines[0]  # accuracy, AUC and AP rows
    assert "## AUC (%) per set" in md and "| Method | sd2 | **Avg** | overall |" in md
    comparison = json.loads((out / "comparison.json").read_text())
    assert [m["method"] for m in comparison["methods"]] == ["AntifakePrompt", "DeepFake-Adapter", "UnivFD probe"]
    assert comparison["sets"] == ["coco", "sd2", "flickr"]
    for m in comparison["methods"]:
        summary = json.loads((Path(m["folder"]) / "results.json").read_text())
        assert m["average_accuracy"] == summary["average_accuracy"]
        assert m["sets"]["sd2"]["auc"] == summary["sets"]["sd2"]["auc"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["AntifakePrompt", "DeepFake-Adapter",
                                                                  "UnivFD_probe"]
    with (out / "comparison.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header[:4] == ["method", "train_set", "trainable_parameters", "coco:accuracy"]
    assert fakeforge_main(["eval", "--checkpoint", *ckpts, "--sets", *sets["specs"], "--out", str(out),
                           "--name", "one", "two"]) == 2
    assert "--name gives 2 label(s) for 3 checkpoint(s)" in capsys.readouterr().err


def test_shared_stages_run_once_per_batch(checkpoints, sets, tiny_dir, monkeypatch):
    """Every image is decoded once; AntifakePrompt checkpoints on one base load ONE model; the vision encoder runs
    once per batch for a and b (same statistics) and once more for c; the probe and kNN on one backbone share one
    features() pass."""
    import detector.data
    from detector.data import parse_set_specs
    from detector.checkpoint import load_detectors
    from detector.eval.side_by_side import Entry, score_sets

    names = ["afp_a", "afp_b", "afp_c", "probe", "knn", "dfa"]
    dets = load_detectors([checkpoints[n] for n in names], device="cpu")
    afp = [d.base for d in dets[:3]]
    assert afp[0] is afp[1] is afp[2]
    assert dets[3].backbone is dets[4].backbone
    calls = {"vision": 0, "backbone": 0}

    def count(key):
        def hook(*_):
            calls[key] += 1
        return hook

    afp[0].model.vision_model.register_forward_hook(count("vision"))
    dets[3].backbone.register_forward_hook(count("backbone"))
    entries = [Entry(n, d) for n, d in zip(names, dets)]
    specs = parse_set_specs(sets["specs"][:1])  # 20 shard samples
    real_load_image = detector.data.load_image
    decoded = []

    def counting_load_image(source, loading="fakeforge"):
        decoded.append(1)
        return real_load_image(source, loading)

    monkeypatch.setattr(detector.data, "load_image", counting_load_image)
    timing = score_sets(entries, specs, batch_size=4, progress=False)
    monkeypatch.undo()
    batches = 2 * 3  # two sets of 10 images in batches of 4
    assert calls == {"vision": 2 * batches, "backbone": batches} and len(decoded) == 20
    assert timing["shared_stages"] == 2
    alone = {}
    for name, det in zip(names, dets):  # each detector alone gives the same scores
        e = Entry(name, det)
        score_sets([e], specs, batch_size=4, progress=False)
        alone[name] = [r.scores for r in e.results]
    assert {e.label: [r.scores for r in e.results] for e in entries} == alone


def test_calibration_is_per_detector(checkpoints, sets, tmp_path, capsys):
    out = tmp_path / "eval"
    ckpts = [str(checkpoints[n]) for n in ("afp_a", "dfa")]
    assert fakeforge_main(["eval", "--checkpoint", *ckpts, "--sets", *sets["specs"], "--out", str(out),
                           "--calibrate-on", "coco", "sd2", "--no-plots"]) == 0
    thresholds = {}
    for name in ("afp_a", "dfa"):
        res = json.loads((out / name / "results.json").read_text())
        assert res["threshold"] == res["calibration"]["threshold"] and res["calibration"]["n"] == 20
        thresholds[name] = res["threshold"]
    assert thresholds["afp_a"] != thresholds["dfa"]
    capsys.readouterr()


def test_old_antifakeprompt_folders_load_through_the_generic_entry(checkpoints, sets, tmp_path, caplog, capsys):
    """A version-1 AntifakePrompt folder (fewer model keys, no prompt pieces or precision recorded) and a version-2
    one open through `load_detector` and score alike; the version-1 warning is kept."""
    import shutil

    from detector.families.antifakeprompt.model import AntifakePrompt
    from detector.checkpoint import load_detector

    v2 = checkpoints["afp_a"]
    v1 = tmp_path / "v1"
    shutil.copytree(v2, v1)
    meta = json.loads((v1 / "detector.json").read_text())
    keep = ("model_id", "question", "pseudo_word", "position", "real_answer", "fake_answer", "scoring")
    old = {"format": "fakeforge.antifakeprompt", "format_version": 1, "detector": "antifakeprompt",
           "model": {k: meta["model"][k] for k in keep}, "prompt": meta["prompt"], "preprocess": meta["preprocess"],
           "training": {}}
    (v1 / "detector.json").write_text(json.dumps(old))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dets = [load_detector(p, device="cpu") for p in (v1, v2)]
    assert all(isinstance(d, AntifakePrompt) for d in dets)
    assert torch.equal(dets[0].score(x), dets[1].score(x))
    assert "format version 1" in caplog.text
    assert fakeforge_main(["eval", "--checkpoint", str(v1), str(v2), "--sets", *sets["specs"][:1], "--out",
                           str(tmp_path / "eval"), "--no-plots"]) == 0
    assert _scores(tmp_path / "eval" / "v1") == _scores(tmp_path / "eval" / "afp_a")
    capsys.readouterr()


@pytest.mark.parametrize("name", ["dfa", "knn"])
def test_detect_and_stats_work_for_every_family(checkpoints, sets, name, tmp_path, capsys):
    """`detect` on another family's checkpoint: its banner, a verdict per good image, the bad ones listed;
    `stats --checkpoint` measures after that checkpoint's own resize rule (only detector.json is read)."""
    from PIL import Image

    real = Path(sets["specs"][1].split(":", 1)[1])
    assert fakeforge_main(["detect", "--checkpoint", str(checkpoints[name]), "--real_dir", str(real)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"checkpoint: {checkpoints[name]}  detector: ")
    assert sum("(P(fake) = " in line for line in out) == 4 + 4 and sum(line.startswith("skipped ") for line in out) == 4
    stats = tmp_path / "stats.json"
    assert fakeforge_main(["stats", "--sets", f"x=real:{real}", "--checkpoint", str(checkpoints[name]),
                           "--out", str(stats)]) == 0
    got = json.loads(stats.read_text())
    meta = json.loads((checkpoints[name] / "detector.json").read_text())["preprocess"]
    assert got["preprocess"]["resize"] == meta["resize"] and got["image_size"] == meta["image_size"]
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 32))  # a blue stripe at the left edge: kept by a square resize only
    (tmp_path / "one").mkdir()
    img.save(tmp_path / "one" / "a.png")
    assert fakeforge_main(["stats", "--sets", f"x=real:{tmp_path / 'one'}", "--checkpoint",
                           str(checkpoints[name]), "--out", str(stats)]) == 0
    blue = json.loads(stats.read_text())["mean"][2]
    assert (blue > 0.05) == (meta["resize"] == "square"), (blue, meta["resize"])
    capsys.readouterr()
