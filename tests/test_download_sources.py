"""Downloaded sets as sources: folder, video frames, WebDataset shards, DiffusionDB; hostile files; optional sets."""
from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zipfile
import zlib

import pytest
from builder_helpers import write_build_config
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError, from_dict
from fakeforge.shards.verify import verify_dataset
from fakeforge.sources import SourceConfig, load_records
from fakeforge.sources.downloads import evenly_spaced

DOWNLOAD = {"type": "download"}


def png_bytes(size=(24, 20), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def huge_header_png(w=9000, h=9000) -> bytes:
    """A tiny file whose header claims w x h pixels (a decompression bomb in spirit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def source(**kw) -> SourceConfig:
    return from_dict(SourceConfig, kw, "source")


def _build(cfg, tiny_dir):
    return cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"])


def _failures(out, set_name) -> dict[str, str]:
    """sample key -> recorded error, over every shard's stats file."""
    return {f["key"]: f["error"] for p in sorted((out / set_name).glob("*.done.json"))
            for f in json.loads(p.read_text())["failures"]}


def _samples(out, set_name):
    """key -> {"json": bytes} of every sample in a set's tars."""
    samples = {}
    for tar in sorted((out / set_name).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    samples[m.name[:-5]] = {"json": tf.extractfile(m).read()}
    return samples


def test_folder_source_captions_labels_and_hostile_files(tmp_path, tiny_dir):
    root = tmp_path / "dalle2"
    (root / "batch1").mkdir(parents=True)
    (root / "batch1" / "a.png").write_bytes(png_bytes())
    (root / "batch1" / "a.txt").write_text("a red  cat\n")                      # sidecar caption
    (root / "b.jpg").write_bytes(png_bytes(colour=(0, 90, 0)))                 # a PNG named .jpg: content decides
    (root / "empty.png").write_bytes(b"")
    (root / "notimage.png").write_text("hello")
    (root / "bomb.png").write_bytes(huge_header_png())
    (tmp_path / "prompts.csv").write_text("filename,prompt\nb.jpg,a green dog\n")
    src = {"kind": "folder", "images_dir": str(root), "label": "fake", "set_name": "DALLE-2",
           "captions_file": str(tmp_path / "prompts.csv")}
    # hostile files on purpose: every failure is recorded, so the budget is lifted for this set
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "dalle2", "generator": DOWNLOAD}], src,
                             max_failed_fraction=1.0)
    assert _build(cfg, tiny_dir) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sets"]["dalle2"]["label"] == "fake" and manifest["sets"]["dalle2"]["count"] == 2
    assert manifest["sets"]["dalle2"]["failed"] == 3
    samples = _samples(tmp_path / "out", "dalle2")
    metas = {json.loads(s["json"])["source_image_id"]: json.loads(s["json"]) for s in samples.values()}
    assert metas["batch1/a"]["caption"] == "a red cat" and metas["b"]["caption"] == "a green dog"
    assert metas["b"]["label"] == "fake" and metas["b"]["download"]["download_set"] == "DALLE-2"
    assert metas["b"]["download"]["file_name"] == "b.jpg"
    errors = {k.split("-")[1]: e for k, e in _failures(tmp_path / "out", "dalle2").items()}
    assert "empty (0 bytes)" in errors["empty"] and "cannot read image header" in errors["notimage"]
    assert "9000x9000 pixels, outside the limit" in errors["bomb"]
    assert verify_dataset(tmp_path / "out")["samples"] == 2


def test_frame_folders_sampling_and_videos_without_readable_frames(tmp_path):
    root = tmp_path / "dfdc"
    for name, n in (("vid_a", 12), ("vid_b", 3)):
        (root / "part0" / name).mkdir(parents=True)
        for i in range(n):
            (root / "part0" / name / f"frame_{i}.png").write_bytes(png_bytes(colour=(i * 20, 0, 0)))
    (root / "part0" / "vid_empty").mkdir()
    (root / "part0" / "vid_mp4").mkdir()
    (root / "part0" / "vid_mp4" / "video.mp4").write_bytes(b"\0" * 64)
    (root / "part0" / "vid_bad").mkdir()
    for i in range(2):
        (root / "part0" / "vid_bad" / f"{i}.jpg").write_bytes(b"broken")
    recs = load_records(source(kind="frames", images_dir=str(root), label="fake", frames_per_video=2), tmp_path)
    by_video = {}
    for r in recs:
        by_video.setdefault(r.image_id, []).append(r)
    # frame order is numeric (frame_2 before frame_10), so evenly spaced picks are evenly spaced in time
    assert [r.extra["frame_file"] for r in by_video["part0/vid_a"]] == ["frame_3.png", "frame_9.png"]
    assert [r.extra["frame_index"] for r in by_video["part0/vid_b"]] == [0, 2]
    assert "has no readable frames" in by_video["part0/vid_empty"][0].error
    assert "found e.g. video.mp4" in by_video["part0/vid_mp4"][0].error
    assert all("no readable frames among the 2 sampled" in r.error for r in by_video["part0/vid_bad"])
    assert len(load_records(source(kind="frames", images_dir=str(root), label="fake"), tmp_path)) == 12 + 3 + 2 + 2
    assert evenly_spaced(300, 4) == [37, 112, 187, 262] and evenly_spaced(2, 5) == [0, 1]


def test_frames_of_real_videos_are_labelled_real(tmp_path, tiny_dir):
    root = tmp_path / "ffpp_real"
    (root / "000").mkdir(parents=True)
    for i in range(4):
        (root / "000" / f"{i:04d}.png").write_bytes(png_bytes())
    src = {"kind": "frames", "images_dir": str(root), "label": "real", "set_name": "FF++ original",
           "frames_per_video": 2}
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "ffpp_real", "generator": DOWNLOAD}],
                             src)
    assert _build(cfg, tiny_dir) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sets"]["ffpp_real"]["label"] == "real" and manifest["sets"]["ffpp_real"]["count"] == 2
    metas = [json.loads(s["json"]) for s in _samples(tmp_path / "out", "ffpp_real").values()]
    assert {m["label"] for m in metas} == {"real"} and sorted(m["download"]["frame_index"] for m in metas) == [1, 3]


def _add(tf, name, data, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, linkname
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_shard_source_reads_members_by_key_and_never_trusts_member_paths(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    with tarfile.open(root / "000000.tar", "w") as tf:
        _add(tf, "s1.png", png_bytes())
        _add(tf, "s1.txt", b"a caption from txt")
        _add(tf, "sub/s2.jpg", png_bytes(colour=(1, 2, 3)))
        _add(tf, "sub/s2.json", json.dumps({"prompt": "from json"}).encode())
        _add(tf, "../../escape.png", png_bytes())                               # path traversal attempt
        _add(tf, "link.png", b"", tarfile.SYMTYPE, "/etc/passwd")             # a link: ignored
        _add(tf, "bomb.png", huge_header_png())
    recs = load_records(source(kind="shards", images_dir=str(root), label="fake", set_name="some set"), tmp_path / "w")
    by_id = {r.image_id: r for r in recs}
    assert set(by_id) == {"000000/s1", "000000/sub/s2", "000000/../../escape", "000000/bomb"}
    assert by_id["000000/s1"].caption == "a caption from txt" and by_id["000000/sub/s2"].caption == "from json"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and "w" in p.parts)
    assert all(p.parts[:3] == ("w", "_sources", "shards-some_set") for p in written), written
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "escape.png").exists()
    assert "outside the limit" in by_id["000000/bomb"].error
    assert by_id["000000/bomb"].image_path is None, "a member that fails its header check is never written out"
    assert not [p for p in written if "bomb" in p.name], written
    assert by_id["000000/../../escape"].image_path.endswith("000000_______escape.png")
    assert Image.open(by_id["000000/sub/s2"].image_path).getpixel((0, 0)) == (1, 2, 3)


def test_oversized_archive_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from fakeforge.sources import downloads

    root = tmp_path / "shards"
    root.mkdir()
    with tarfile.open(root / "a.tar", "w") as tf:
        _add(tf, "big.png", png_bytes(size=(64, 64)))
    monkeypatch.setattr(downloads, "MAX_IMAGE_BYTES", 100)
    (rec,) = load_records(source(kind="shards", images_dir=str(root), label="fake"), tmp_path / "w")
    # refused by the member size from the tar header, before any byte is read (the header check of bytes
    # already read would name the 'image', not the 'archive member')
    assert rec.error.startswith("archive member 'a.tar:big.png' is ") and "more than the 100 byte limit" in rec.error
    assert rec.image_path is None


def write_diffusiondb(root, rows, parts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image_name": [r[0] for r in rows], "prompt": [r[1] for r in rows],
                      "part_id": pa.array([r[2] for r in rows], pa.uint16()), "seed": [7] * len(rows),
                      "step": [50] * len(rows), "cfg": [7.0] * len(rows), "sampler": [8] * len(rows)})
    pq.write_table(table, root / "metadata.parquet")
    for part, members in parts.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / "images" / f"part-{part:06d}.zip", "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
            zf.writestr(f"part-{part:06d}.json", "{}")


def test_diffusiondb_parquet_and_zip_parts(tmp_path, tiny_dir):
    root = tmp_path / "diffusiondb"
    root.mkdir()
    rows = [("aa.png", "a castle, trending on artstation", 1), ("bb.png", "a cat", 1), ("cc.png", "missing", 1),
            ("dd.png", "not an image", 1), ("ee.png", "part not downloaded", 2)]
    write_diffusiondb(root, rows, {1: {"aa.png": png_bytes(), "bb.png": png_bytes(colour=(9, 9, 9)),
                                       "dd.png": b"garbage"}})
    src = {"kind": "diffusiondb", "captions_file": str(root / "metadata.parquet"), "images_dir": str(root / "images"),
           "label": "fake", "set_name": "DiffusionDB 2M"}
    recs = load_records(source(**src), tmp_path / "w")
    assert sorted(r.image_id for r in recs) == ["aa", "bb", "cc", "dd"]                 # part 2 is absent
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "diffusiondb", "generator": DOWNLOAD}],
                             src, max_failed_fraction=1.0)
    assert _build(cfg, tiny_dir) == 0
    metas = {json.loads(s["json"])["source_image_id"]: json.loads(s["json"])
             for s in _samples(tmp_path / "out", "diffusiondb").values()}
    assert set(metas) == {"aa", "bb"} and metas["aa"]["caption"] == "a castle, trending on artstation"
    assert metas["aa"]["download"]["part_id"] == 1 and metas["aa"]["download"]["cfg"] == 7.0
    errors = sorted(_failures(tmp_path / "out", "diffusiondb").values())
    assert "image 'cc.png' is not in 'part-000001.zip'" in errors[1] and "cannot read image header" in errors[0]
    limited = load_records(source(**src, limit=2), tmp_path / "w")
    assert len(limited) == 2 and limited == load_records(source(**src, limit=2), tmp_path / "w")


def test_optional_sets_are_skipped_with_one_line_and_built_once_the_data_is_there(tmp_path, tiny_dir, caplog):
    data = tmp_path / "data" / "dalle3"
    sets = [{"name": "real", "generator": "real"},
            {"name": "dalle3", "generator": DOWNLOAD, "optional": True,
             "source": {"kind": "folder", "images_dir": str(data), "label": "fake"}}]
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", sets, {"kind": "demo", "limit": 2})
    with caplog.at_level(logging.WARNING, logger="fakeforge.builder"):
        resolved = resolve_build(str(cfg), tiny=True)
    assert [s.name for s in resolved.sets] == ["real"] and resolved.skipped == ["dalle3"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == [f"set 'dalle3' skipped (optional): {data} not found"]
    assert _build(cfg, tiny_dir) == 0
    assert set(json.loads((tmp_path / "out" / "manifest.json").read_text())["sets"]) == {"real"}
    data.mkdir(parents=True)
    (data / "x.png").write_bytes(png_bytes())
    assert resolve_build(str(cfg), tiny=True).hash == resolved.hash       # same folder, resumable
    assert _build(cfg, tiny_dir) == 0
    assert verify_dataset(tmp_path / "out")["sets"] == {"real": 2, "dalle3": 1}
    sets[1]["optional"] = False
    sets[1]["source"]["images_dir"] = str(tmp_path / "nowhere")
    bad = write_build_config(tmp_path / "c.yaml", tmp_path / "out2", sets, {"kind": "demo", "limit": 2})
    assert _build(bad, tiny_dir) == 2                                       # not optional: a configuration error


@pytest.mark.parametrize("kw,match", [
    ({"kind": "folder", "images_dir": "x"}, "source.label is required"),
    ({"kind": "folder", "label": "fake"}, "source.images_dir is required"),
    ({"kind": "diffusiondb", "images_dir": "x", "label": "fake"}, "captions_file is required"),
    ({"kind": "folder", "images_dir": "x", "label": "fake", "frames_per_video": 2}, "applies to source.kind = 'frames'"),
    ({"kind": "frames", "images_dir": "x", "label": "fake", "frames_per_video": 0}, "must be >= 1"),
    ({"kind": "folder", "images_dir": "x", "label": "maybe"}, r"'source.label' = 'maybe'"),
])
def test_bad_download_source_configs(kw, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        source(**kw)


def test_download_generator_needs_a_labelled_source(tmp_path, tiny_dir, capsys):
    """A configuration error, found before any work (it would fail every sample)."""
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "x", "generator": DOWNLOAD}],
                             {"kind": "demo", "limit": 1})
    assert _build(cfg, tiny_dir) == 2
    assert "needs a downloaded-set source with a label" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
