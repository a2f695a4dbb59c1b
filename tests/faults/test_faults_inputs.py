"""Hostile inputs from outside: a source folder with a FIFO and links leading out of it, an output inside
another finished dataset, tar members named `../x` or `/abs`, and config abuse. Each case: the exact
one-line message, and no file outside the output changed."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
from builder_helpers import write_build_config
from fault_helpers import ROOT, run, snapshot

from fakeforge.cli import main as cli_main

pytestmark = pytest.mark.faults


def _png(colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 20), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_source_folder_with_fifo_links_outside_empty_file_and_bomb(tmp_path, tiny_dir):
    from hostile_images import png_bomb

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png())
    os.symlink(src / "a.png", src / "alias.png")                   # a link inside the folder: kept
    os.mkfifo(src / "pipe.png")                                    # opening it would block forever
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png((0, 0, 200)))
    os.symlink(outside / "secret.png", src / "leak.png")           # leads outside the source folder
    (src / "empty.png").write_bytes(b"")
    png_bomb(src / "bomb.png")
    source = {"kind": "folder", "images_dir": str(src), "label": "fake", "set_name": "dl"}
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "dl", "generator": {"type": "download"}}],
                             source, max_failed_fraction=1.0)
    before = snapshot(tmp_path, tmp_path / "out")
    code, out = run([str(ROOT / "build_dataset.py"), "--config", str(cfg), "--tiny-dir", tiny_dir, "--no-progress"],
                    timeout=120)
    assert code == 0, out[-3000:]
    assert out.count(f"skipped 1 link(s) in '{src}' leading outside it: leak.png") == 1, out[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sets"]["dl"]["count"] == 2 and manifest["sets"]["dl"]["failed"] == 2
    with tarfile.open(tmp_path / "out" / "dl" / "000000.tar") as tf:
        ids = sorted(json.load(tf.extractfile(m))["source_image_id"] for m in tf if m.name.endswith(".json"))
    assert ids == ["a", "alias"]
    assert snapshot(tmp_path, tmp_path / "out") == before


def test_output_inside_another_finished_dataset_is_refused(tmp_path, tiny_dir, capsys):
    real = [{"name": "real", "generator": "real"}]
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "done", real, {"kind": "demo", "limit": 2})
    assert cli_main(["build", "--config", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    for inner in (tmp_path / "done" / "real" / "more", tmp_path / "done" / "more"):
        assert cli_main(["build", "--config", str(cfg), "--output", str(inner), "--no-progress"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"fakeforge build: error: output '{inner}' is inside the dataset '{tmp_path / 'done'}' (it has a "
            "manifest.json); build into a folder outside it"]
    assert snapshot(tmp_path) == before


def _hostile_tar(path, names):
    with tarfile.open(path, "w") as tf:
        for name, data in names:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_members_named_dotdot_or_absolute_are_never_written_out(tmp_path, capsys):
    """`audit`, the dataset card and `verify` read sets whose tars name members `../x` and `/abs`:
    nothing is written outside their output, and `verify` refuses the dataset in one line."""
    from fakeforge.shards.store import sha256_of

    ds = tmp_path / "ds"
    sets = {}
    for name, label in (("coco", "real"), ("sd2", "fake")):
        meta = json.dumps({"label": label, "set": name}).encode()
        (ds / name).mkdir(parents=True)
        tar = ds / name / "000000.tar"
        _hostile_tar(tar, [("../escaped.png", _png()), ("../escaped.json", meta), ("/tmp/abs_escape.png", _png()),
                           ("/tmp/abs_escape.json", meta)] + [(f"{name}-{i}.{e}", d) for i in range(6)
                                                              for e, d in (("png", _png((40 * i, 9, 9))), ("json", meta))])
        with tar.open("rb") as fh:
            digest = sha256_of(fh)
        sets[name] = {"label": label, "count": 8, "failed": 0, "shard_jobs": 1, "shard_jobs_done": 1,
                      "tars": [{"name": f"{name}/000000.tar", "count": 8, "bytes": tar.stat().st_size,
                                "sha256": digest}]}
    (ds / "manifest.json").write_text(json.dumps({"format": "fakeforge-webdataset/2", "sets": sets}))
    (ds / "build_config.yaml").write_text("sets: []\n")
    from fakeforge.builder.card import write_dataset_card

    write_dataset_card(ds)                                                      # writes README.md + _card/ in ds
    before = snapshot(tmp_path, ds / "README.md", ds / "_card")
    assert cli_main(["audit", str(ds)]) in (0, 1)
    capsys.readouterr()
    assert cli_main(["verify", str(ds)]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "escaped.png").exists() and not os.path.exists("/tmp/abs_escape.png")
    assert snapshot(tmp_path, ds / "README.md", ds / "_card") == before, "nothing outside any output changed"


CONFIG_ABUSE = [
    ("image.size=100000", "image.size = 100000 is above 16384 px (one such RGB image needs 28 GiB of memory)"),
    ("sets.1.generator.height=100000",
     "sets.1.generator: generator.height = 100000 is above 8192 px, more than any diffusers model makes (set 'sd2')"),
    ("source.limit=-5", "source.limit = -5 must be a positive integer or null"),
    ("shards.max_count=-1", "shards.max_count = -1 must be >= 1"),
    ("seed=[1]", "'seed' = [1] must be an integer"),
    ("num_workers=-2", "num_workers = -2 must be >= 1"),
]


@pytest.mark.parametrize("override,message", CONFIG_ABUSE, ids=[o for o, _ in CONFIG_ABUSE])
def test_config_abuse_is_one_line_before_any_work(tmp_path, capsys, override, message):
    sets = [{"name": "real", "generator": "real"}, {"name": "sd2", "generator": "sd2"}]
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", sets)
    assert cli_main(["build", "--config", str(cfg), "--set", override]) == 2
    assert capsys.readouterr().err.splitlines() == [f"fakeforge build: error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"], "nothing is written"


def test_a_folder_or_fifo_given_as_config_is_named(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.yaml")
    for path, kind in ((tmp_path, "folder"), (tmp_path / "pipe.yaml", "special file")):
        assert cli_main(["build", "--config", str(path)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"fakeforge build: error: config '{path}' is a {kind}, not a YAML file"]
