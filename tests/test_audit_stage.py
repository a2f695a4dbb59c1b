"""The format-shortcut guard: a build warns at its start when a fake set is encoded unlike the real sets,
the audit stage flags such a build and passes one stored under one policy; the demo's test data passes."""
from __future__ import annotations

import logging

import pytest
from builder_helpers import write_build_config

from fakeforge.builder.config import resolve_build
from fakeforge.builder.format_policy import encoding_mismatches
from fakeforge.builder.runner import build

JPEG = {"format": "jpeg", "quality": 95, "size": 32, "resize": "center_crop"}


def _build(tmp_path, name, backdoor, tiny_dir, caplog):
    sets = [{"name": "photos", "generator": "real"}, {"name": "backdoor", "generator": backdoor}]
    cfg = write_build_config(tmp_path / f"{name}.yaml", tmp_path / name, sets, {"kind": "demo", "limit": 12},
                             image=JPEG, shards={"max_count": 12})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fakeforge.builder"):
        build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    return tmp_path / name, [r.getMessage() for r in caplog.records if "format shortcut" in r.getMessage()]


def test_png_attack_beside_jpeg_reals_is_warned_and_flagged_and_one_policy_passes(tmp_path, tiny_dir, caplog):
    from fakeforge.audit_stage import audit_datasets, verdict_line

    png, warned = _build(tmp_path, "png", "backdoor_blended", tiny_dir, caplog)
    assert len(warned) == 1 and "set 'backdoor' is stored as png while the real sets are jpeg q95" in warned[0]
    assert "lossless: false" in warned[0]
    jpeg, quiet = _build(tmp_path, "jpeg", {"preset": "backdoor_blended", "lossless": False}, tiny_dir, caplog)
    assert quiet == []
    bad = audit_datasets({"png": png}, tmp_path / "audit_png")
    assert bad["verdict"] == "flagged" and bad["flagged"] == ["png: photos vs backdoor"]
    assert verdict_line(bad).startswith("shortcut audit: FLAGGED png: photos vs backdoor")
    good = audit_datasets({"jpeg": jpeg}, tmp_path / "audit_jpeg")
    assert good["verdict"] == "pass", good
    assert verdict_line(good).startswith("shortcut audit: pass") and (tmp_path / "audit_jpeg" / "jpeg.json").is_file()


def test_shipped_build_configs_encode_real_and_fake_alike():
    from fakeforge.config import CONFIG_ROOT

    from test_shipped_configs import AWAITING  # configs that name presets not shipped yet

    for path in sorted((CONFIG_ROOT / "build").glob("*.yaml")):
        if path.stem in AWAITING:
            continue
        assert encoding_mismatches(resolve_build(str(path), tiny=True, demo_data=True)) == [], path.name
    bad = resolve_build("demo_test", ["sets.5.generator.lossless=true"], tiny=True)
    assert [m.split(":")[0] for m in encoding_mismatches(bad)] == \
        ["set 'backdoor' is stored as png while the real sets are jpeg q95"]


@pytest.mark.slow
def test_the_demo_test_data_passes_its_own_audit(tmp_path, tiny_dir):
    """The demo's held-out data (every set, tiny twins) passes the audit, and its backdoor trigger survives
    the build's JPEG (its recorded success is true)."""
    import json
    import tarfile

    from fakeforge.audit_stage import audit_datasets

    out = tmp_path / "demo_test"
    build(resolve_build("demo_test", tiny=True, tiny_root=tiny_dir, output=str(out)), progress=False)
    result = audit_datasets({"test": out}, tmp_path / "audit")
    assert result["verdict"] == "pass", result
    with tarfile.open(out / "backdoor" / "000000.tar") as tf:
        metas = [json.load(tf.extractfile(m)) for m in tf if m.name.endswith(".json")]
    assert {m["image"]["format"] for m in metas} == {"jpeg"} and all(m["success"] for m in metas)


def test_a_pipeline_runs_the_audit_as_a_stage_and_prints_its_verdict(tmp_path, tiny_dir, capsys):
    import json

    import yaml

    from fakeforge.cli import main

    sets = [{"name": "photos", "generator": "real"},
            {"name": "backdoor", "generator": {"preset": "backdoor_blended", "lossless": False}}]
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "unused", sets, {"kind": "demo", "limit": 12}, image=JPEG,
                             shards={"max_count": 12})
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"description": "audit only", "output": "unused",
                                    "datasets": [{"name": "d", "build": str(cfg)}], "audit": True}))
    assert main(["run", "--config", str(pipe), "--tiny", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "] shortcut audit of d" in out and "shortcut audit: pass (no real/fake pair separable" in out, out
    record = json.loads((tmp_path / "run" / "stages" / "audit.json").read_text())
    assert record["done"] and record["inputs"]["verdict"] == "pass"
    assert (tmp_path / "run" / "audit" / "d.json").is_file()
