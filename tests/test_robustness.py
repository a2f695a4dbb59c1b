"""Robustness eval: one pass (each image decoded once) gives, per condition, exactly the scores of a separate eval
on degraded copies of the files; results do not depend on batch size or thread count; a degradation failing on
an image is that sample's counted error; `fakeforge eval --robustness` writes the tables."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_helpers import write_dataset, write_odd_images
from family_helpers import one_thread  # noqa: F401  (autouse fixture)

from fakeforge.cli import main as fakeforge_main
from fakeforge.protocols import load_protocol, protocol_from_dict

PROTOCOL = {"description": "test", "conditions": {"jpeg_q40": "jpeg:40", "blur_s1": "blur:1",
                                                  "noisy": "noise:12+resize:0.5",
                                                  "crop_big": "crop:40", "rcrop": "crop:0.6,position=random"}}


@pytest.fixture(scope="module")
def checkpoints(tiny_dir, tmp_path_factory):
    """A linear probe and a kNN on the same open_clip twin (one shared features pass) and a DeepFake-Adapter."""
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig
    from detector.families.frozen.feature_cache import FeatureSet
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig, NearestNeighbor, NearestNeighborConfig
    from detector.checkpoint import save_detector

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rob_ckpts")
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, det in (("probe", LinearProbe.from_config(LinearProbeConfig(backbone="tiny:open_clip_vit",
                                                                          dtype="float32"), "cpu")),
                      ("knn", NearestNeighbor.from_config(NearestNeighborConfig(backbone="tiny:open_clip_vit",
                                                                                dtype="float32", k=3), "cpu"))):
        feats = torch.randn(40, det.backbone.feature_dim, generator=g)
        det.fit_features(FeatureSet(feats, (feats[:, 0] > 0).long(), torch.full((40,), -1),
                                    [str(i) for i in range(40)]))
        out[name] = save_detector(det, root / name)
    dfa = DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16), "cpu")
    with torch.no_grad():
        dfa.head[1].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(9))
    out["dfa"] = save_detector(dfa, root / "dfa")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("rob_sets") / "data", 10, 10, seed=3)


def _entries(checkpoints, names):
    from detector.checkpoint import load_detectors
    from detector.eval.side_by_side import Entry

    return [Entry(n, d) for n, d in zip(names, load_detectors([checkpoints[n] for n in names], device="cpu"))]


def _scores(entries):
    return {e.label: {r.name: dict(zip(r.keys, r.scores)) for r in e.results} for e in entries}


def _degraded_copy(data: Path, out: Path, chain) -> Path:
    """Degraded copies of every sample as lossless PNG shard sets with the same keys and labels."""
    import webdataset as wds

    from detector.data import parse_set_specs
    from fakeforge.shards.reader import sample_image_bytes

    for spec in parse_set_specs([str(data)]):
        (out / spec.name).mkdir(parents=True)
        with wds.TarWriter(str(out / spec.name / "000000.tar")) as w:
            for sample in wds.WebDataset([str(p) for p in spec.paths], shardshuffle=False, empty_check=False):
                from PIL import Image

                _ext, raw = sample_image_bytes(sample)
                img = chain.apply(Image.open(io.BytesIO(raw)).convert("RGB"), key=sample["__key__"])
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                w.write({"__key__": sample["__key__"], "png": buf.getvalue(), "json": sample["json"]})
    return out


def test_one_pass_equals_separate_evals_on_degraded_copies(checkpoints, data, tmp_path, monkeypatch):
    import detector.data
    from detector.data import parse_set_specs
    from detector.eval.robustness import score_robustness
    from detector.eval.side_by_side import score_sets

    names = ["probe", "knn", "dfa"]
    protocol = protocol_from_dict("t", {"conditions": {k: v for k, v in PROTOCOL["conditions"].items()
                                                      if k != "crop_big"}})
    entries = _entries(checkpoints, names)
    decoded = []
    real = detector.data.load_image
    monkeypatch.setattr(detector.data, "load_image",
                        lambda s, loading="fakeforge": decoded.append(1) or real(s, loading))
    run = score_robustness(entries, parse_set_specs([str(data)]), protocol, batch_size=4, workers=2, progress=False)
    monkeypatch.undo()
    assert len(decoded) == 20  # once per image, for 5 conditions
    assert run.conditions["clean"] is entries
    for cond, chain in protocol.all_conditions().items():
        folder = _degraded_copy(data, tmp_path / cond, chain)
        alone = _entries(checkpoints, names)
        score_sets(alone, parse_set_specs([str(folder)]), batch_size=4, progress=False)
        got, want = _scores(run.conditions[cond]), _scores(alone)
        for n in names:
            for s in want[n]:
                assert want[n][s].keys() == got[n][s].keys()
                assert all(abs(got[n][s][k] - want[n][s][k]) < 1e-5 for k in want[n][s]), (cond, n, s)
    clean, jpeg = _scores(run.conditions["clean"]), _scores(run.conditions["jpeg_q40"])
    assert clean["probe"]["sd2"] != jpeg["probe"]["sd2"]  # the condition changed what the detector saw


def test_results_do_not_depend_on_batch_size_or_threads(checkpoints, data):
    from detector.data import parse_set_specs
    from detector.eval.robustness import score_robustness

    protocol = protocol_from_dict("t", PROTOCOL)
    runs = [score_robustness(_entries(checkpoints, ["probe"]), parse_set_specs([str(data)]), protocol,
                             batch_size=b, workers=w, progress=False) for b, w in ((4, 1), (4, 4), (3, 1), (8, 3))]
    for cond in protocol.all_conditions():
        assert _scores(runs[0].conditions[cond]) == _scores(runs[1].conditions[cond]), cond  # threads: exact
        a, b = _scores(runs[2].conditions[cond])["probe"], _scores(runs[3].conditions[cond])["probe"]
        assert all(a[s].keys() == b[s].keys() and all(abs(a[s][k] - b[s][k]) < 1e-5 for k in a[s]) for s in a)


def test_failing_degradation_is_a_counted_per_sample_error(checkpoints, data, tmp_path):
    from detector.data import parse_set_specs
    from detector.eval.robustness import robustness_summary, score_robustness

    bad = write_odd_images(tmp_path / "odd")["bad"]
    specs = parse_set_specs([str(data), f"odd=real:{tmp_path / 'odd'}"])
    run = score_robustness(_entries(checkpoints, ["probe"]), specs, protocol_from_dict("t", PROTOCOL),
                           batch_size=4, progress=False)
    s = robustness_summary(run)
    odd_ok = s["conditions"]["clean"]["detectors"]["probe"]["sets"]["odd"]["n"]
    assert s["conditions"]["clean"]["detectors"]["probe"]["errors"] == len(bad)
    big = s["conditions"]["crop_big"]["detectors"]["probe"]
    assert big["errors"] == 20 + odd_ok + len(bad) and big["sets"]["coco"]["n"] == 0  # 44x36 images < 40x40
    assert "larger than the image" in run.conditions["crop_big"][0].results[0].errors[0][1]
    assert s["conditions"]["jpeg_q40"]["detectors"]["probe"]["errors"] == len(bad)
    clean = s["conditions"]["clean"]["detectors"]["probe"]  # balanced: mean of the real and fake recalls
    y = np.concatenate([r.label_array for r in run.conditions["clean"][0].results])
    pred = np.concatenate([r.score_array for r in run.conditions["clean"][0].results]) >= 0.5
    assert clean["balanced_accuracy"] == pytest.approx(0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean()))


def test_eval_cli_writes_robustness_tables_and_keeps_the_clean_results(checkpoints, data, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(checkpoints["probe"]), str(checkpoints["knn"]), "--sets", str(data),
            "--no-plots",
            "--batch-size", "4"]
    assert fakeforge_main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert fakeforge_main([*args, "--out", str(tmp_path / "rob"), "--robustness", "genimage"]) == 0
    for name in ("probe", "knn"):
        a = json.loads((tmp_path / "plain" / name / "results.json").read_text())
        b = json.loads((tmp_path / "rob" / name / "results.json").read_text())
        assert a["sets"] == b["sets"]
    rob = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert list(rob["conditions"]) == ["clean", *load_protocol("genimage").conditions]
    assert rob["conditions"]["clean"]["detectors"]["probe"]["average_accuracy"] == pytest.approx(
        json.loads((tmp_path / "rob" / "probe" / "results.json").read_text())["average_accuracy"])
    assert set(rob["sweeps"]) == {"resize size", "jpeg quality", "blur sigma"}
    md = (tmp_path / "rob" / "robustness.md").read_text()
    assert "| Method | clean | resize_112 | resize_64 | jpeg_q65 | jpeg_q30 | blur_s3 | blur_s5 |" in md
    assert (tmp_path / "rob" / "robustness.csv").read_text().count("\n") == 7 * 2 * 3 + 1
    assert all((tmp_path / "rob" / t["file"]).is_file() for ts in rob["thumbnails"].values() for t in ts)
    assert {t["key"].split("_")[0] for t in rob["thumbnails"]["blur_s5"]} == {"coco", "sd2"}  # from every set
    assert fakeforge_main(["report", str(tmp_path / "rob" / "probe"), str(tmp_path / "rob" / "knn"), "--out",
                           str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    section = page[page.index("<h2>Robustness: genimage</h2>"):]
    assert section.count("<h3>") == 5  # three tables, the curves, the thumbnails
    assert section.count('alt="') == 3 and "blur_s5<br><small>blur:5.0</small>" in section  # one curve per sweep
    assert section.count("image-rendering") == sum(map(len, rob["thumbnails"].values())) == 7 * 3
    assert "## Robustness: genimage" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("value, named", [("nope", "unknown robustness protocol 'nope'"),
                                          ("jpeg:0", "quality = 0"), ("blur:-2;jpeg:50", "sigma = -2")])
def test_bad_protocol_is_one_line_before_any_model_loads(value, named, data, tmp_path, capsys):
    rc = fakeforge_main(["eval", "--checkpoint", str(tmp_path / "missing"), "--sets", str(data), "--out",
                         str(tmp_path / "o"), "--robustness", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and named in err[0]


def test_eval_image_hook_equals_scoring_transformed_copies_and_its_failure_is_a_counted_error(
        checkpoints, data, tmp_path):
    """`EvalOptions.image_hook` (the per-image transform point of `evaluate`) changes what every detector
    scores exactly like copies of the files transformed beforehand; a hook raising on one key is that
    sample's recorded error, the others are scored."""
    from PIL import ImageOps

    from detector.data import parse_set_specs
    from detector.eval.report import load_eval_dir
    from detector.eval.run import EvalOptions, evaluate
    from detector.eval.side_by_side import score_sets

    class Invert:
        def apply(self, img, key=None):
            return ImageOps.invert(img)

    names = ["probe", "dfa"]
    ckpts = [checkpoints[n] for n in names]
    clean = _scores(_scored(checkpoints, ["probe"], data))["probe"]
    victim = next(iter(clean["sd2"]))

    def hook(key, img):
        if key == victim:
            raise ValueError("refused on purpose")
        return ImageOps.invert(img)

    res = evaluate(ckpts, [str(data)], EvalOptions(out=tmp_path / "hooked", names=names, batch_size=4, plots=False,
                                                   progress=False, device="cpu", image_hook=hook))
    copies = _degraded_copy(data, tmp_path / "inverted", Invert())
    alone = _entries(checkpoints, names)
    score_sets(alone, parse_set_specs([str(copies)]), batch_size=4, progress=False)
    want = _scores(alone)
    for n in names:
        got = {key: p for rows in load_eval_dir(res.folders[n]).samples.values() for key, _label, p in rows}
        expected = {k: v for s in want[n].values() for k, v in s.items() if k != victim}
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k]) < 1e-5 for k in expected), n
        results = json.loads((res.folders[n] / "results.json").read_text())
        assert results["sets"]["sd2"]["errors"] == 1
        assert results["sets"]["sd2"]["n"] == 9
    assert any(abs(clean[s][k] - want["probe"][s][k]) > 1e-4 for s in clean for k in clean[s])  # the hook mattered


def _scored(checkpoints, names, data):
    from detector.data import parse_set_specs
    from detector.eval.side_by_side import score_sets

    entries = _entries(checkpoints, names)
    score_sets(entries, parse_set_specs([str(data)]), batch_size=4, progress=False)
    return entries



def test_a_condition_that_leaves_images_unchanged_is_counted_and_named(checkpoints, data, tmp_path, caplog):
    """A resize to a size the images already are below changes nothing: the run counts those images, warns
    once naming the condition, and the tables and the report say so (a flat curve is explained)."""
    import logging

    from detector.data import parse_set_specs
    from detector.eval.report_robustness import robustness_section
    from detector.eval.robustness import score_robustness, write_robustness

    protocol = protocol_from_dict("t", {"conditions": {"big": "resize:4096", "half": "resize:0.5",
                                                       "same_jpeg": "jpeg:95"}})
    with caplog.at_level(logging.WARNING, logger="detector.eval.robustness"):
        run = score_robustness(_entries(checkpoints, ["probe"]), parse_set_specs([str(data)]), protocol,
                               batch_size=4, workers=2, progress=False)
    assert run.unchanged == {"clean": 0, "big": 20, "half": 0, "same_jpeg": 0}
    warned = [r.getMessage() for r in caplog.records if "unchanged" in r.getMessage()]
    assert len(warned) == 1 and "'big' (resize:4096) left all 20 images unchanged" in warned[0]
    write_robustness(run, tmp_path)
    summary = json.loads((tmp_path / "robustness.json").read_text())
    assert summary["conditions"]["big"]["unchanged"] == 20 and summary["conditions"]["big"]["images"] == 20
    note = "big left 20 of 20 images unchanged"
    assert note in (tmp_path / "robustness.md").read_text()
    html_part, md_part = robustness_section(tmp_path / "robustness.json", plots=False)
    assert note in html_part and note in md_part and "half left" not in md_part
