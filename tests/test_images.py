"""Hostile images are per-sample errors everywhere images are read, checked from the header before any
decode or resize: a 65-byte PNG bomb, a 40000x1 strip, a valid 12000x12000 image. Peak memory is
measured on real subprocesses (`build`, `detect`, `eval`) with getrusage(RUSAGE_CHILDREN)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builder_helpers import write_build_config, write_coco
from detector_helpers import write_folder
from hostile_images import write_hostile
from PIL import Image

from fakeforge.images import ImageLimits, ImageLoadError, load_rgb

# Peak RSS bounds, generous: measured peaks were ~0.66 GB (build) and ~0.96 GB (detect/eval, tiny InstructBLIP).
# Decoding the 12000x12000 image alone adds ~0.7 GB (1.84 GB and 1.62 GB peaks with the header check removed).
BUILD_RSS_LIMIT_MB = 1100
DETECT_RSS_LIMIT_MB = 1350
MEASURE = ("import resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[1:]).returncode\n"
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)\n")


def _run_measured(args: list[str], tiny_dir: str | None = None) -> tuple[int, str, str, float]:
    """Run `python -m fakeforge.cli ARGS` under a small wrapper; returns (exit code, stdout, stderr, peak MB)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if tiny_dir:
        env["FAKEFORGE_TINY_DIR"] = tiny_dir
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "fakeforge.cli", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB "))
    return proc.returncode, proc.stdout, proc.stderr, int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile(tmp_path_factory.mktemp("hostile"))


def test_limits_are_checked_from_the_header(hostile):
    expected = {"bomb": "is refused by PIL as a decompression bomb",
                "strip": "declares 40000x1, an aspect ratio over the limit of 20:1 (image_limits.max_aspect)",
                "huge": "declares 12000x12000 = 144000000 pixels, over the limit of 89478485 (image_limits.max_pixels)"}
    for name, path in hostile.items():
        assert path.stat().st_size < 200_000
        with pytest.raises(ImageLoadError) as err:
            load_rgb(path)
        assert f"image '{path}' {expected[name]}" in str(err.value)
        with pytest.raises(ImageLoadError, match=r"image 'k1' "):
            load_rgb(path.read_bytes(), name="k1")
    assert hostile["bomb"].stat().st_size == 65
    with pytest.raises(ImageLoadError, match=r"declares 300x40, a side over the limit of 256 \(image_limits.max_side\)"):
        load_rgb(Image.new("RGB", (300, 40)), ImageLimits(max_side=256))
    with pytest.raises(ImageLoadError, match=r"8000 pixels, over the limit of 7999"):
        load_rgb(_png(100, 80), ImageLimits(max_pixels=7999))
    assert load_rgb(_png(100, 80), ImageLimits(max_pixels=8000)).size == (100, 80)


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_large_jpeg_is_decoded_at_reduced_scale_when_the_caller_allows():
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(buf, format="JPEG")
    full = load_rgb(buf.getvalue())
    small = load_rgb(buf.getvalue(), min_side=140)
    assert full.size == (1600, 1200) and small.size == (200, 150)     # DCT scaling by 1/8, shorter side >= 140
    assert load_rgb(buf.getvalue(), min_side=700).size == (1600, 1200)  # no 1/2 step keeps >= 700: full decode


def test_anything_pil_raises_is_the_files_error(tmp_path):
    broken = tmp_path / "broken.png"
    data = bytearray(_png(40, 30))
    data[16:20] = (0).to_bytes(4, "big")                             # IHDR width 0
    broken.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match=f"image '{broken}'"):
        load_rgb(broken)
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="cannot read image .*text.jpg"):
        load_rgb(tmp_path / "text.jpg")


def test_hostile_source_images_are_per_sample_errors_in_a_build(tmp_path, hostile):
    captions, images = write_coco(tmp_path / "coco", n=6, captions=1)
    data = json.loads(captions.read_text())
    for i, name in zip((4, 5, 6), ("bomb", "strip", "huge")):       # the last three images of the source
        data["images"][i - 1]["file_name"] = name + ".png"
        (images / f"{name}.png").write_bytes(hostile[name].read_bytes())
    captions.write_text(json.dumps(data))
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [{"name": "real", "generator": "real"}], src,
                             max_failed_fraction=0.5, shards={"max_count": 6})
    code, _out, err, peak_mb = _run_measured(["build", "--config", str(cfg), "--no-progress"])
    assert code == 0, err[-2000:]
    assert peak_mb < BUILD_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    stats = json.loads((tmp_path / "out" / "real" / "000000.done.json").read_text())
    assert stats["written"] == 3
    errors = {f["key"]: f["error"] for f in stats["failures"]}
    assert sorted(errors) == ["real-4-400", "real-5-500", "real-6-600"]
    assert "bomb.png' is refused by PIL as a decompression bomb" in errors["real-4-400"]
    assert "strip.png' declares 40000x1, an aspect ratio over the limit" in errors["real-5-500"]
    assert "huge.png' declares 12000x12000 = 144000000 pixels, over the limit" in errors["real-6-600"]


def test_hostile_images_are_skipped_by_name_in_detect_and_eval(tmp_path, hostile, tiny_instructblip):
    folder = tmp_path / "real"
    good = write_folder(folder, "real", 3)
    for name, path in hostile.items():
        (folder / f"{name}.png").write_bytes(path.read_bytes())
    code, out, err, peak_mb = _run_measured(["detect", "--checkpoint", "zero-shot", "--tiny", "--real_dir",
                                             str(folder)], os.environ["FAKEFORGE_TINY_DIR"])
    assert code == 0, err[-2000:]
    assert peak_mb < DETECT_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    for name in hostile:
        assert f"skipped {folder / name}.png: image '{folder / name}.png' " in out
    assert sum(f"{p}: " in out and "P(fake) = " in out for p in good) == 3
    assert f"{folder}: 3 scored, 3 skipped" in out

    code, out, err, peak_mb = _run_measured(["eval", "--checkpoint", "zero-shot", "--tiny", "--sets",
                                             f"mixed=real:{folder}", "--out", str(tmp_path / "eval"), "--no-plots"],
                                            os.environ["FAKEFORGE_TINY_DIR"])
    assert code == 0, err[-2000:]
    assert peak_mb < DETECT_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["sets"]["mixed"]["n"] == 3 and res["sets"]["mixed"]["errors"] == 3
    assert sorted(Path(e["key"]).name for e in res["errors"]["mixed"]) == ["bomb.png", "huge.png", "strip.png"]
    assert all(f"image '{e['key']}' " in e["error"] for e in res["errors"]["mixed"])
