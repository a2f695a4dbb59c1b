"""Issue 13's generators and download sets end to end: `fakeforge build --tiny` on the demo source into
verified shards, `fakeforge ls`, and the paper test-set config listing every column."""
from __future__ import annotations

import json
import tarfile

from builder_helpers import write_build_config
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.cli import main as cli_main
from fakeforge.shards.verify import verify_dataset

NEW_PRESETS = ["deepfloyd_if", "deepfloyd_if_1024", "lte_x4", "stylegan_xl"]
#: one preset per new generator type (deepfloyd_if_1024's costly stage III is built by test_build_all_generators)
DEMO_PRESETS = ["deepfloyd_if", "lte_x4", "stylegan_xl"]


def test_new_generators_build_verified_shards_on_the_demo_source(tmp_path, tiny_dir):
    frames = tmp_path / "dfdc" / "video_1"
    frames.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (10 * i, 80, 160)).save(frames / f"{i:03d}.png")
    sets = [{"name": p, "generator": p} for p in DEMO_PRESETS]
    sets.append({"name": "dfdc", "generator": {"type": "download"},
                 "source": {"kind": "frames", "images_dir": str(tmp_path / "dfdc"), "label": "fake",
                            "set_name": "DFDC", "frames_per_video": 2}})
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", sets, {"kind": "demo", "limit": 2},
                             image={"format": "png"})
    assert cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]) == 0
    summary = verify_dataset(tmp_path / "out")
    assert summary["sets"] == {**{p: 2 for p in DEMO_PRESETS}, "dfdc": 2}
    sizes = {}
    for name in DEMO_PRESETS:
        with tarfile.open(tmp_path / "out" / name / "000000.tar") as tf:
            meta = json.loads(next(tf.extractfile(m).read() for m in tf if m.name.endswith(".json")))
        assert meta["label"] == "fake" and meta["set"] == name
        sizes[name] = meta["generated_size"]
    assert sizes["deepfloyd_if"] == [32, 32] and sizes["stylegan_xl"] == [16, 16]


def test_ls_lists_the_new_presets_types_and_twins(capsys):
    assert cli_main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in NEW_PRESETS + ["cascade", "lte", "stylegan_xl", "download", "deepfloyd_if"]:
        assert f"  {name} " in out, name


def test_paper_test_config_lists_every_column_and_skips_absent_downloads(caplog):
    """v1 + v3 columns of AntifakePrompt's tables (papers.md 1.7-1.8), attacks aside."""
    import logging

    from fakeforge.config import CONFIG_ROOT, load_yaml

    raw = load_yaml(CONFIG_ROOT / "build" / "antifakeprompt_test.yaml")
    names = {s["name"] for s in raw["sets"]}
    columns = {"coco", "flickr", "sd2", "sdxl", "if", "dalle2", "sgxl", "controlnet", "deeperforensics", "lama",
               "sd2ip", "sr_lte", "sr_sd2",                                                  # v1
               "sd3", "dalle3", "playground", "diffusiondb", "glide", "dfdc", "ffpp", "sr_liif"}  # v3 additions
    assert columns <= names, columns - names
    downloads = [s for s in raw["sets"] if isinstance(s.get("generator"), dict)
                 and s["generator"].get("type") == "download"]
    assert {s["name"] for s in downloads} == {"dalle2", "dalle3", "diffusiondb", "glide", "deeperforensics", "dfdc",
                                               "ffpp", "ffpp_real"}
    assert all(s.get("optional") for s in downloads)
    assert {s["name"]: s["source"]["label"] for s in downloads} == {                    # FF++ originals are real
        "dalle2": "fake", "dalle3": "fake", "diffusiondb": "fake", "glide": "fake", "deeperforensics": "fake",
        "dfdc": "fake", "ffpp": "fake", "ffpp_real": "real"}
    with caplog.at_level(logging.WARNING, logger="fakeforge.builder"):
        resolved = resolve_build("antifakeprompt_test", tiny=True)          # no data/ here: downloads skipped
    assert sorted(resolved.skipped) == sorted(s["name"] for s in downloads)
    lines = [r.getMessage() for r in caplog.records if "skipped (optional)" in r.getMessage()]
    assert len(lines) == len(downloads) and "set 'dalle2' skipped (optional): data/dalle2 not found" in lines
    assert columns - {s["name"] for s in downloads} <= {s.name for s in resolved.sets}
