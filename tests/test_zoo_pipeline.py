"""`fakeforge run --config zoo_demo --tiny --demo-data`: a detector trained on a zoo set, evaluated held out."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

pytestmark = pytest.mark.slow  # ~40 s on 2 cores: three twin generators, training and evaluation

ZOO_MODELS = {"sd2", "sd14", "sd2_mixed_sampler"}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory, tiny_dir, tiny_instructblip):
    out = tmp_path_factory.mktemp("zoo_pipe") / "out"
    env = {**os.environ, "FAKEFORGE_TINY_DIR": tiny_dir, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "fakeforge.cli", "run", "--config", "zoo_demo", "--tiny", "--demo-data",
                    "--out", str(out)], check=True, env=env, capture_output=True)
    return out


def _samples(folder):
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                if member.name.endswith(".json"):
                    yield json.load(tf.extractfile(member))


def test_zoo_set_counts_per_model_in_manifest_and_card(zoo_run):
    manifest = json.loads((zoo_run / "data" / "train" / "manifest.json").read_text())
    zoo = manifest["sets"]["zoo"]
    models = zoo["models"]
    assert set(models) == ZOO_MODELS
    assert all(m["written"] >= 1 and m["failed"] == 0 and m["failure"] is None for m in models.values())
    assert sum(m["written"] for m in models.values()) == zoo["count"] == manifest["sets"]["photos"]["count"]
    card = (zoo_run / "data" / "train" / "README.md").read_text()
    assert "### Models of set zoo" in card
    for name, m in models.items():
        assert f"| {name} | {m['written']} | 0 | - |" in card
    # every zoo sample names its model; only the per-sample one records drawn settings, within its choices
    samples = list(_samples(zoo_run / "data" / "train" / "zoo"))
    assert {s["model"] for s in samples} == ZOO_MODELS
    for s in samples:
        if s["model"] == "sd2_mixed_sampler":
            assert s["sampled"]["num_inference_steps"] in (1, 2)
            assert s["sampled"]["guidance_scale"] in (5.0, 7.5)
            assert s["sampled"]["scheduler"] in {"DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
                                                 "DDIMScheduler"}
        else:
            assert not s.get("sampled")


def test_zoo_trained_detector_evaluated_on_held_out_build(zoo_run):
    test_sets = {"photos", "sd2", "sd14", "sd2ip"}
    manifest = json.loads((zoo_run / "data" / "test" / "manifest.json").read_text())
    assert set(manifest["sets"]) == test_sets
    for name in ("antifakeprompt", "untrained"):
        table = json.loads((zoo_run / "eval" / name / "results.json").read_text())["sets"]
        assert set(table) == test_sets
        assert all(table[s]["n"] == manifest["sets"][s]["count"] > 0 for s in test_sets)
        assert all(0.0 <= table[s]["accuracy"] <= 1.0 for s in test_sets)
    trained = json.loads((zoo_run / "eval" / "antifakeprompt" / "results.json").read_text())
    assert trained["checkpoint"] == str(zoo_run / "train" / "antifakeprompt" / "best")
    page = (zoo_run / "report" / "report.html").read_text()
    assert "zoo demo" in page and "<td>antifakeprompt</td>" in page and "<td>untrained</td>" in page
