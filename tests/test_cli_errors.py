"""One line per bad value, before any work: `build`, `validate` and `verify` on careless input.
`validate` checks every set of every config and says which model would come from where."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from builder_helpers import write_build_config

from fakeforge.cli import main as cli_main
from fakeforge.config import CONFIG_ROOT

SETS = [{"name": "real", "generator": "real"}, {"name": "sd2", "generator": "sd2"}]


@pytest.fixture
def good_cfg(tmp_path):
    return write_build_config(tmp_path / "good.yaml", tmp_path / "out", SETS)


BAD_OVERRIDES = [
    ("shards.max_count=0", "shards.max_count = 0 must be >= 1"),
    ("image.quality=0", "image.quality = 0 must be within 1..100"),
    ("sets.0.name=../evil", "sets.0: set name '../evil' may only contain letters, digits and '_' (it is a folder "
                            "name and the first part of every key, '<set>-<image id>-<caption id>')"),
    ("source.limit=0", "source.limit = 0 must be a positive integer or null"),
    ("sets.1.generator.batch_size=0", "sets.1.generator: generator.batch_size = 0 must be >= 1 (set 'sd2')"),
    ("sets.1.generator.height=7", "sets.1.generator: generator.height = 7 must be a positive multiple of 8 (set 'sd2')"),
    ("sets=[]", "sets = []: a build config needs at least one entry under 'sets'"),
    ("source=5", "'source' must be a mapping, got 5"),
    ("output=", "output = '' must name a folder (an empty output would write into the current folder)"),
    ("max_failed_fraction=2", "max_failed_fraction = 2.0 must be within [0, 1]"),
    ("sets.1.generator=5", "sets.1.generator (set 'sd2'): 'generator' must be a preset name or a mapping, got 5"),
    ("source.image_limits.max_aspect=0", "source.image_limits: image_limits.max_aspect = 0.0 must be >= 1"),
]


@pytest.mark.parametrize("override,message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_values_are_one_line_with_exit_2_before_any_work(good_cfg, tmp_path, capsys, monkeypatch, override,
                                                             message):
    monkeypatch.chdir(tmp_path)  # `output=` must not write into the current folder (nor into the checkout)
    assert cli_main(["build", "--config", str(good_cfg), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fakeforge build: error: {message}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"], "nothing is written"


def test_several_problems_are_all_listed(good_cfg, capsys):
    assert cli_main(["build", "--config", str(good_cfg), "--set", "shards.max_count=zero", "--set", "seed=x",
                     "--set", "sets.1.generator.num_inference_steps=0", "--set", "sets.0.generator=sd9"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == ["fakeforge build: error: 'seed' = 'x' must be an integer",
                             "fakeforge build: error: 'shards.max_count' = 'zero' must be an integer"], lines
    cfg = json.loads(json.dumps({"output": "o", "sets": [{"name": "a", "generator": "sd9"},
                                                        {"name": "b", "generator": {"preset": "sd2", "steps": 3}},
                                                        {"name": "c", "generator": "sd2"}]}))
    path = good_cfg.with_name("multi.yaml")
    path.write_text(json.dumps(cfg))
    assert cli_main(["build", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("fakeforge build: error: sets.0.generator (set 'a'): unknown "
                                                   "generator 'sd9'")
    assert lines[1].startswith("fakeforge build: error: sets.1.generator (set 'b'): unknown key(s) ['steps']")


@pytest.mark.parametrize("content,message", [
    (b"", "sets = []: a build config needs at least one entry under 'sets'"),
    (b"sets: [\xff\xfe]\n", "is not UTF-8 text (invalid start byte at byte 7)"),
    (b"sets: [a\n", "is not valid YAML"),
    (b"- a list\n", "must hold a mapping at top level, got list"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert cli_main(["build", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err


def test_verify_names_a_corrupt_or_malformed_manifest(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "manifest.json").write_text(json.dumps({"sets": {"x": {"count": "many"}}}))
    assert cli_main(["verify", str(tmp_path / "d"), str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"FAILED {tmp_path / 'd'}: '{tmp_path / 'd' / 'manifest.json'}' is not readable JSON")
    assert err[1] == (f"FAILED {tmp_path / 'e'}: '{tmp_path / 'e' / 'manifest.json'}' is malformed (expected 'sets' "
                      "with counts and tars per set); rerun the build command to rewrite it")


# ------------------------------------------------------------------ validate


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("FAKEFORGE_LAMA_MODEL", raising=False)
    monkeypatch.delenv("FAKEFORGE_LIIF_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)                                   # no data/ folder here
    return cache


def test_validate_checks_every_set_and_names_every_problem(empty_hub_cache, capsys):
    target = str(CONFIG_ROOT / "build" / "antifakeprompt_test.yaml")
    snapshot = empty_hub_cache / "models--stabilityai--stable-diffusion-2-1" / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")              # SD2 is cached, the others are not
    assert cli_main(["validate", target]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert all(ln.startswith(f"FAIL build  {target}: sets.") for ln in lines[:-1]), lines
    assert lines[-1] == "1 of 1 config(s) have problems"
    sets = yaml.safe_load(Path(target).read_text())["sets"]
    at = {s["name"]: i for i, s in enumerate(sets)}
    regenerated = [i for i, s in enumerate(sets) if not s.get("optional")]   # optional downloads are skipped
    assert len(regenerated) >= 14
    for i in regenerated:                                         # every regenerated set is checked
        assert any(f": sets.{i}." in ln or f": sets.{i} " in ln for ln in lines), i
    text = captured.err
    assert "sets.0.source.captions_file = 'data/coco/annotations/captions_val2017.json' not found" in text
    assert f"sets.{at['lama']}.generator (set 'lama'): generator 'lama' has no checkpoint configured" in text
    assert f"sets.{at['sr_liif']}.generator (set 'sr_liif'): generator 'liif' has no checkpoint configured" in text
    assert (f"sets.{at['sdxl']}.generator.model_id = 'stabilityai/stable-diffusion-xl-base-1.0' is not in the local "
            f"hub cache ({empty_hub_cache}) and HF_HUB_OFFLINE=1") in text
    assert (f"sets.{at['controlnet']}.generator.controlnet_model_id = 'lllyasviel/sd-controlnet-canny' is not in"
            in text)
    assert "sets.2.generator.model_id" not in text                # cached


def test_validate_says_which_models_would_be_downloaded(empty_hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert cli_main(["validate", str(CONFIG_ROOT / "generators" / "sd3.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok   preset {CONFIG_ROOT / 'generators' / 'sd3.yaml'}"
    assert out[1].endswith("generator.model_id = 'stabilityai/stable-diffusion-3-medium-diffusers' is not in the "
                           "local hub cache: the build would download it from the hub")


def test_validate_goes_on_after_a_bad_config_and_accepts_local_folders(tmp_path, empty_hub_cache, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("FAKEFORGE_TINY_DIR", str(tmp_path / "twins"))
    (tmp_path / "model").mkdir()
    good = write_build_config(tmp_path / "good.yaml", tmp_path / "o", [
        {"name": "real", "generator": "real"},
        {"name": "local", "generator": {"preset": "sd2", "model_id": str(tmp_path / "model")}}])
    bad = write_build_config(tmp_path / "bad.yaml", tmp_path / "o", [
        {"name": "x", "generator": {"preset": "sd2", "model_id": "not a hub id!"}},
        {"name": "y", "generator": {"preset": "sd2", "batch_size": 0}},
        {"name": "z", "generator": {"preset": "sd2", "model_id": "/no/such/folder"}}])
    assert cli_main(["validate", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"FAIL build  {bad}: sets.1.generator: generator.batch_size = 0 must be >= 1 (set 'y')",
        f"FAIL build  {bad}: sets.0.generator.model_id = 'not a hub id!' is neither an existing folder nor a "
        "well-formed hub id",
        f"FAIL build  {bad}: sets.2.generator.model_id = '/no/such/folder' is neither an existing folder nor a "
        "well-formed hub id",
        "1 of 2 config(s) have problems"]
    assert captured.out.startswith(f"ok   build  {good}: sets real, local (config_hash ")
    assert cli_main(["validate", "--tiny", str(CONFIG_ROOT / "build" / "default.yaml")]) == 0
    assert "tiny twin 'sd2', built on first use" in capsys.readouterr().out
