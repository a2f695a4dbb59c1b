"""Robustness protocols: the shipped presets hold the published conditions, name their source and assumptions,
are listed by `fakeforge ls`, and bad protocols are one-line errors (also in pipeline configs)."""
from __future__ import annotations

import pytest
import yaml

from fakeforge.cli import main
from fakeforge.config import ConfigError
from fakeforge.protocols import load_protocol, protocol_from_dict, protocol_names

SPECS = {
    "genimage": ["resize:112", "resize:64", "jpeg:65", "jpeg:30", "blur:3.0", "blur:5.0"],
    "aigcdetect": ["jpeg:95", "blur:1.0", "resize:0.5"],
    "cnnspot_jpeg": [f"jpeg:{q}" for q in range(100, 29, -10)],
    "cnnspot_blur": [f"blur:{s / 2:.1f}" for s in range(7)],
    "social": ["resize:1080,side=long,interpolation=bicubic+jpeg:80"],
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shipped_protocols_hold_the_published_conditions_and_say_where_from(name):
    p = load_protocol(name)
    assert [c.spec() for c in p.conditions.values()] == SPECS[name]
    assert p.description and p.source and p.assumptions
    assert list(p.all_conditions())[0] == "clean" and not p.all_conditions()["clean"]


def test_every_shipped_protocol_is_tested_and_listed(capsys):
    assert protocol_names() == sorted(SPECS)
    assert main(["ls", "robustness"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("robustness protocols") and [ln.split()[0] for ln in lines[1:]] == sorted(SPECS)


def test_sweeps_are_the_single_op_conditions_of_one_kind():
    assert load_protocol("cnnspot_jpeg").sweeps() == {"jpeg quality": [(f"jpeg_q{q}", float(q))
                                                                       for q in range(30, 101, 10)]}
    assert set(load_protocol("genimage").sweeps()) == {"resize size", "jpeg quality", "blur sigma"}
    assert load_protocol("social").sweeps() == {} and load_protocol("aigcdetect").sweeps() == {}


def test_inline_and_file_protocols(tmp_path):
    p = load_protocol("jpeg:75;blur:1+resize:0.5")
    assert list(p.conditions) == ["jpeg:75", "blur:1.0+resize:0.5"]
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"description": "d", "source": "s",
                                 "conditions": {"q50": {"op": "jpeg", "quality": 50}}}))
    assert load_protocol(str(f)).conditions["q50"].spec() == "jpeg:50"


@pytest.mark.parametrize("data, named", [
    ({"conditions": {"a": "jpeg:0"}}, "condition 'a': jpeg: quality = 0"),
    ({"conditions": {}}, "'conditions' must be a non-empty mapping"),
    ({"conditions": {"clean": "jpeg:50"}}, "'clean' is reserved"),
    ({"conditions": {"a": "clean"}}, "applies nothing"),
    ({"conditions": {"a": "jpeg:50"}, "sourse": "x"}, "unknown key(s) ['sourse']"),
])
def test_bad_protocols_are_one_line(data, named):
    with pytest.raises(ConfigError) as info:
        protocol_from_dict("p", data)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_pipeline_refuses_an_unknown_protocol_before_any_work(tmp_path, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"datasets": [{"name": "d", "build": "demo_test"}],
                                    "detectors": [{"name": "z", "checkpoint": "zero-shot"}],
                                    "evaluate": {"datasets": ["d"], "robustness": "genimag"}}))
    assert main(["run", "--config", str(pipe), "--out", str(tmp_path / "o")]) == 2
    assert "unknown robustness protocol 'genimag'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # three pipeline runs (build subprocesses): ~30 s alone, more on a busy machine
def test_pipeline_scores_the_protocol_beside_every_detector_and_reports_it(tmp_path, tiny_dir, capsys):
    """`evaluate: {robustness: ...}` in a pipeline: one robustness table over every detector in OUT/eval, shown
    in the report; a rerun reuses it, and dropping the protocol removes the stale table."""
    import torch

    from detector.families.frozen.feature_cache import FeatureSet
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig
    from detector.checkpoint import save_detector

    ckpts = []
    for i in range(2):
        det = LinearProbe.from_config(LinearProbeConfig(backbone="tiny:open_clip_vit", dtype="float32"), "cpu")
        feats = torch.randn(32, det.backbone.feature_dim, generator=torch.Generator().manual_seed(i))
        det.fit_features(FeatureSet(feats, (feats[:, 0] > 0).long(), torch.full((32,), -1),
                                    [str(j) for j in range(32)]))
        ckpts.append(str(save_detector(det, tmp_path / f"probe{i}")))
    from detector_helpers import write_folder

    write_folder(tmp_path / "fakes", "fake", 6)
    build = tmp_path / "build.yaml"
    build.write_text(yaml.safe_dump({
        "output": "unused", "seed": 0, "source": {"kind": "demo", "limit": 6},
        "image": {"format": "jpeg", "quality": 95, "size": 48, "resize": "center_crop"},
        "shards": {"max_count": 6, "max_size_mb": 16},
        "sets": [{"name": "coco_demo", "generator": "real"}, {"name": "fakes", "generator": {"type": "download"},
                                                              "source": {"kind": "folder", "label": "fake",
                                                                         "images_dir": str(tmp_path / "fakes")}}]}))
    pipe = tmp_path / "p.yaml"
    config = {"datasets": [{"name": "d", "build": str(build)}], "audit": False,
              "detectors": [{"name": "a", "checkpoint": ckpts[0]}, {"name": "b", "checkpoint": ckpts[1]}],
              "evaluate": {"datasets": ["d"], "robustness": "jpeg:50;blur:2"}}
    pipe.write_text(yaml.safe_dump(config))
    out = tmp_path / "o"
    assert main(["run", "--config", str(pipe), "--out", str(out)]) == 0
    rob = yaml.safe_load((out / "eval" / "robustness.json").read_text())
    assert rob["detectors"] == ["a", "b"] and list(rob["conditions"]) == ["clean", "jpeg:50", "blur:2.0"]
    assert "<h2>Robustness: custom</h2>" in (out / "report" / "report.html").read_text()
    capsys.readouterr()
    assert main(["run", "--config", str(pipe), "--out", str(out)]) == 0
    assert "reused" in capsys.readouterr().out and (out / "eval" / "robustness.json").is_file()
    del config["evaluate"]["robustness"]
    pipe.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(pipe), "--out", str(out)]) == 0
    assert not (out / "eval" / "robustness.json").exists() and not (out / "eval" / "robustness").exists()
    assert "Robustness" not in (out / "report" / "report.html").read_text()
