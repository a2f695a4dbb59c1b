"""Every attack preset runs through `fakeforge build --tiny` on the demo source into verified shards."""
from __future__ import annotations

import pytest
from attack_helpers import decode, one_thread, read_shards
from builder_helpers import write_build_config

from fakeforge.cli import main as cli_main
from fakeforge.shards.verify import verify_dataset
from generators import attack_preset_names


def test_every_attack_preset_builds_verified_shards(tmp_path, tiny_dir, capsys):
    pytest.importorskip("torchattacks")
    pytest.importorskip("art")
    presets = attack_preset_names()
    assert len(presets) >= 11
    sets = [{"name": "real", "generator": "real"}] + [{"name": p, "generator": p} for p in presets]
    cfg = write_build_config(tmp_path / "attacks.yaml", tmp_path / "out", sets, {"kind": "demo", "limit": 2},
                             image={"format": "jpeg", "quality": 90, "size": 48, "resize": "center_crop"})
    with one_thread():
        assert cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]) == 0
    assert "check it with: fakeforge verify" in capsys.readouterr().out
    assert verify_dataset(tmp_path / "out")["sets"] == {s["name"]: 2 for s in sets}
    for name in presets:
        samples = read_shards(tmp_path / "out" / name)
        for meta, data, ext in samples:
            assert ext == "png" and decode(data).shape == (48, 48, 3)  # lossless, stored geometry
            assert meta["generator_type"] == "attack" and meta["label"] == "fake"
            assert meta["settings"]["hyperparameters"] and meta["attack"] == meta["settings"]["attack"]
            assert isinstance(meta["success"], bool) and meta["linf_255"] >= 0 and "psnr" in meta
            if meta["attack_kind"] == "adversarial":
                assert meta["linf_255"] <= 8 and meta["label_from"] == "surrogate"
                assert meta["surrogate"] == "tiny-twin:surrogate_resnet50"
            if meta["attack_kind"] == "poison":
                assert meta["linf_255"] <= 16
    assert {ext for _, _, ext in read_shards(tmp_path / "out" / "real")} == {"jpg"}
