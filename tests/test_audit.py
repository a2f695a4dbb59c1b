"""`fakeforge audit`: format shortcuts between real and fake sets are flagged, matched sets pass."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from fakeforge.audit import audit_sets, file_features, jpeg_quality, load_specs
from fakeforge.cli import main


def _photo(rng, w, h):
    """A smooth random image with some texture (content varies per call)."""
    base = rng.uniform(0, 255, size=(4, 4, 3))
    img = Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=float) + rng.normal(0, 12, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write(folder, n, seed, size, fmt, quality=95, sizes=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = sizes[i % len(sizes)] if sizes else size
        img = _photo(rng, w, h)
        if fmt == "png":
            img.save(folder / f"{i}.png")
        else:
            img.save(folder / f"{i}.jpg", quality=quality)
    return folder


def _run(tmp_path, capsys, real, fake):
    code = main(["audit", f"real_set=real:{real}", f"fake_set=fake:{fake}", "--out", str(tmp_path / "a.json")])
    report = json.loads((tmp_path / "a.json").read_text())
    return code, report["pairs"][0], capsys.readouterr().out


def test_jpeg_quality_estimate_matches_the_encoder_setting():
    img = Image.new("RGB", (32, 32), (90, 120, 200))
    for q in (50, 75, 90, 95):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        assert abs(jpeg_quality(Image.open(io.BytesIO(buf.getvalue()))) - q) <= 1
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert file_features(buf.getvalue())["jpeg_quality"] == 101.0  # lossless stays distinguishable


def test_biased_pair_is_flagged(tmp_path, capsys):
    """The issue's example: real = JPEG q75 at 640x480, fake = PNG at 512x512."""
    real = _write(tmp_path / "real", 24, 0, (640, 480), "jpeg", quality=75)
    fake = _write(tmp_path / "fake", 24, 1, (512, 512), "png")
    code, pair, out = _run(tmp_path, capsys, real, fake)
    assert code == 1 and pair["flagged"] and pair["auc_format_only"] > 0.95
    assert {"log_width", "format_png", "jpeg_quality"} <= set(pair["leaking_features"])
    assert "FLAGGED" in out and "flagged: real_set vs fake_set" in out


@pytest.mark.parametrize("what", ["quality", "size"])
def test_a_single_format_difference_is_enough_to_flag(tmp_path, capsys, what):
    q, size = (75, (96, 96)) if what == "quality" else (95, (128, 96))
    real = _write(tmp_path / "real", 20, 0, (96, 96), "jpeg", quality=95)
    fake = _write(tmp_path / "fake", 20, 1, size, "jpeg", quality=q)
    code, pair, _ = _run(tmp_path, capsys, real, fake)
    assert code == 1 and pair["flagged"]
    expected = {"jpeg_quality"} if what == "quality" else {"log_width", "log_aspect"}
    assert expected <= set(pair["leaking_features"])


def test_matched_pair_passes(tmp_path, capsys):
    """Same sizes (a mix of them), same container and quality on both sides: nothing to learn from the format."""
    sizes = [(96, 96), (128, 96), (96, 128)]
    real = _write(tmp_path / "real", 24, 0, None, "jpeg", quality=95, sizes=sizes)
    fake = _write(tmp_path / "fake", 24, 1, None, "jpeg", quality=95, sizes=sizes)
    code, pair, out = _run(tmp_path, capsys, real, fake)
    assert code == 0 and not pair["flagged"] and pair["auc_format_only"] < 0.75
    assert pair["leaking_features"] == []
    assert "| ok |" in out


def test_shard_sets_of_a_built_dataset_are_audited(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(0)
    for name, label, fmt in (("coco", "real", "jpg"), ("sd2", "fake", "png")):
        (tmp_path / name).mkdir()
        with wds.TarWriter(str(tmp_path / name / "000000.tar")) as tw:
            for i in range(12):
                buf = io.BytesIO()
                _photo(rng, 64, 64).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
                tw.write({"__key__": f"{name}-{i}", fmt: buf.getvalue(), "json": {"label": label}})
    sets = load_specs([str(tmp_path)], max_samples=100)
    assert {s.name: (s.label, len(s.rows)) for s in sets} == {"coco": ("real", 12), "sd2": ("fake", 12)}
    report = audit_sets(sets)
    assert report["flagged"] == ["coco vs sd2"]


def test_bad_input_is_one_line(tmp_path, capsys):
    real = _write(tmp_path / "real", 4, 0, (32, 32), "jpeg")
    assert main(["audit", f"r=real:{real}"]) == 2
    assert "needs at least one real and one fake set" in capsys.readouterr().err
    assert main(["audit", f"r=real:{real}", "--threshold", "0.3"]) == 2
    assert "--threshold = 0.3" in capsys.readouterr().err
    assert main(["audit", f"r=real:{tmp_path / 'nope'}"]) == 2
    assert "image folder not found" in capsys.readouterr().err
