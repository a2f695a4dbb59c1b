"""`fakeforge detect / eval / stats` on folders and shards, with bad inputs, on the tiny twin."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_helpers import encode, make_image, write_dataset, write_folder, write_odd_images

from fakeforge.cli import main as fakeforge_main


@pytest.fixture(scope="module")
def ckpt(tiny_instructblip, tmp_path_factory):
    """A checkpoint with fixed random rows (no training needed to exercise the CLIs)."""
    from detector.families.antifakeprompt.model import AntifakePrompt, AntifakePromptConfig
    from detector.families.antifakeprompt.checkpoint import save_checkpoint

    det = AntifakePrompt.from_config(AntifakePromptConfig(model_id="tiny:instructblip"), device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in det.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("ckpt") / "tiny_ckpt"
    save_checkpoint(det, out, {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    good_real = write_folder(root / "real", "real", 5)
    odd = write_odd_images(root / "real" / "odd")
    good_fake = write_folder(root / "fake", "fake", 4, seed=1)
    (root / "empty").mkdir()
    return {"root": root, "good": good_real + odd["good"] + good_fake, "bad": odd["bad"], "n_real": 5 + 4,
            "n_fake": 4}


def test_detect_folders_scores_every_good_file_and_lists_bad_ones(ckpt, folders, tmp_path, capsys):
    log = tmp_path / "detect.log"
    root = folders["root"]
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--real_dir", str(root / "real"),
                           "--fake_dir", str(root / "fake"), "--log", str(log), "--batch_size", "3"]) == 0
    text = log.read_text()
    assert text == capsys.readouterr().out
    for path in folders["good"]:
        assert f"{path}: " in text and "P(fake) = " in text
    verdicts = [line for line in text.splitlines() if "(P(fake) = " in line]
    assert len(verdicts) == len(folders["good"])
    for path in folders["bad"]:
        assert f"skipped {path}: " in text
    assert "readme.txt" not in text
    assert "accuracy: " in text and f"/{folders['n_real'] + folders['n_fake']})" in text
    assert "confusion matrix" in text


def test_detect_single_image_and_usage_errors(ckpt, folders, tmp_path, capsys):
    img = folders["good"][0]
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--img_path", str(img)]) == 0
    out = capsys.readouterr().out
    assert f"{img}: " in out and ("Real (" in out or "Fake (" in out)
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--img_path", str(folders["bad"][0])]) == 2
    assert "empty (0 bytes)" in capsys.readouterr().out
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt)]) == 2
    assert "--img_path" in capsys.readouterr().err
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--fake_dir", str(folders["root"] / "empty")]) == 2
    assert "no .jpg/.jpeg/.png/.webp images under" in capsys.readouterr().out
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--real_dir", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().out


def test_detect_zero_shot_and_loss_rule(tiny_instructblip, folders, capsys):
    root = folders["root"]
    assert fakeforge_main(["detect", "--checkpoint", "zero-shot", "--tiny", "--fake_dir", str(root / "fake"),
                           "--scoring", "loss"]) == 0
    out = capsys.readouterr().out
    assert "'Is this photo real?'" in out and "scoring: loss" in out


def _shards_with_bad_samples(root):
    data = write_dataset(root / "data", n_real=6, n_fake=6)
    with tarfile.open(data / "sd2" / "000000.tar", "a") as tf:
        for name, payload in (("broken.jpg", b"not a jpeg"), ("broken.json", b'{"label": "fake"}'),
                              ("nolabel.jpg", encode(make_image("fake", np.random.default_rng(0)))),
                              ("nolabel.json", b'{"label": "maybe"}')):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return data


def test_eval_shards_and_folders_writes_all_reports(ckpt, folders, tmp_path, capsys):
    data = _shards_with_bad_samples(tmp_path)
    root = folders["root"]
    out = tmp_path / "eval"
    assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), f"flickr=real:{root / 'real'}",
                           f"gen=fake:{root / 'fake'}", "--out", str(out), "--batch-size", "4"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy.png", "results.csv", "results.json", "results.md", "roc.png", "scores.csv"]
    res = json.loads((out / "results.json").read_text())
    assert list(res["sets"]) == ["coco", "sd2", "flickr", "gen"]
    assert res["sets"]["coco"]["n"] == 6 and res["sets"]["sd2"]["n"] == 6 and res["sets"]["sd2"]["errors"] == 2
    assert res["sets"]["flickr"]["n"] == 9 and res["sets"]["flickr"]["errors"] == 4
    assert res["sets"]["coco"]["auc"] is None and 0 <= res["sets"]["sd2"]["auc"] <= 1
    assert res["threshold"] == 0.5 and len(res["errors"]["sd2"]) == 2
    md = (out / "results.md").read_text()
    assert "| Method | Train set | #params | coco | sd2 | flickr | gen | **Avg** |" in md
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "Avg" in (out / "results.csv").read_text()
    assert "| tiny_ckpt |" in capsys.readouterr().out


def test_eval_threshold_and_calibration(ckpt, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_real=6, n_fake=6)
    out = tmp_path / "eval"
    assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), "--out", str(out),
                           "--calibrate-on", "coco", "sd2", "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["calibration"]["sets"] == ["coco", "sd2"] and res["calibration"]["n"] == 12
    assert res["threshold"] == res["calibration"]["threshold"]
    assert not (out / "roc.png").exists()
    assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), "--out", str(out),
                           "--threshold", "0.0", "--no-plots"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sets"]["sd2"]["accuracy"] == 1.0 and res["sets"]["coco"]["accuracy"] == 0.0
    assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), "--out", str(out),
                           "--calibrate-on", "coco"]) == 2
    assert "needs both real and fake" in capsys.readouterr().err
    assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), "--out", str(out),
                           "--threshold", "0.3", "--calibrate-on", "coco"]) == 2


def test_stats_cli(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_real=4, n_fake=4)
    out = tmp_path / "stats.json"
    assert fakeforge_main(["stats", "--sets", str(data), "--image-size", "16", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["images"] == 8 and len(stats["mean"]) == 3 and all(0 < s < 1 for s in stats["std"])
    assert fakeforge_main(["stats", "--sets", f"x=real:{tmp_path / 'missing'}"]) == 2
    capsys.readouterr()
    assert fakeforge_main(["stats", "--sets", str(data), "--out", str(out / "stats.json")]) == 2  # under a file
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unwritable_outputs_stop_before_any_image_is_scored(ckpt, folders, tmp_path, capsys):
    """`eval --out` and `detect --log` are checked first: a file, or a path under a file, is one line (exit 2)
    and no model is loaded, no image scored."""
    data = write_dataset(tmp_path / "data", n_real=2, n_fake=2)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    capsys.readouterr()
    for bad, words in ((a_file, "is a file"), (a_file / "sub", "not writable")):
        assert fakeforge_main(["eval", "--checkpoint", str(ckpt), "--sets", str(data), "--out", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert words in err and "--out" in err and out == "" and len(err.strip().splitlines()) == 1
    root = folders["root"]
    for bad, words in ((tmp_path, "is a folder"), (a_file / "detect.log", "not writable")):
        assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--real_dir", str(root / "real"),
                               "--log", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert words in err and "--log" in err and "P(fake)" not in out and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "not a folder"


def test_detect_prints_what_runs_first(ckpt, folders, capsys):
    img = folders["good"][0]
    assert fakeforge_main(["detect", "--checkpoint", str(ckpt), "--img_path", str(img)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"checkpoint: {ckpt}")
    assert lines[1].startswith("precision: official") and "on cpu" in lines[1]
    # the resolved dtypes of the three parts, not just the policy's name (official on CPU: all fp32, as LAVIS)
    assert "ViT fp32, Q-Former fp32, LLM fp32" in lines[1]
    assert "LM tokens: </s> ▁Is ▁this ▁photo ▁real [*] ▁?" in lines[2]
    assert lines[3].startswith("preprocess: 32 px") and "mean [0.5, 0.5, 0.5]" in lines[3]
    assert lines[4].startswith("scoring: logits") and "image loading: fakeforge" in lines[4]


def test_official_image_loading(tmp_path):
    """`--image-loading official` is test.py's Image.open().convert("RGB") and its extension filter: no EXIF
    rotation, alpha dropped instead of composited on white, truncated files decoded, .JPG/.webp not listed."""
    from PIL import Image

    from detector.data import SetSpec, iter_set_images, load_image
    from fakeforge.images import ImageLoadError

    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 0))  # fully transparent dark pixels
    (tmp_path / "alpha.png").write_bytes(encode(rgba, "PNG"))
    assert load_image(tmp_path / "alpha.png", "official").getpixel((0, 0)) == (10, 20, 30)
    assert load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)
    rotated = Image.new("RGB", (8, 6), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", exif=exif)
    (tmp_path / "rot.jpg").write_bytes(buf.getvalue())
    assert load_image(tmp_path / "rot.jpg", "official").size == (8, 6)
    assert load_image(tmp_path / "rot.jpg").size == (6, 8)
    whole = encode(make_image("real", np.random.default_rng(0)), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    assert load_image(tmp_path / "cut.jpg", "official").size == (44, 36)
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "upper.JPG").write_bytes(whole)
    (tmp_path / "web.webp").write_bytes(encode(make_image("real", np.random.default_rng(1)), "WEBP"))
    spec = SetSpec("x", "folder", [tmp_path], 0)
    official = sorted(Path(k).name for k, *_ in iter_set_images(spec, loading="official"))
    ours = sorted(Path(k).name for k, *_ in iter_set_images(spec))
    assert official == ["alpha.png", "cut.jpg", "rot.jpg"]
    assert ours == ["alpha.png", "cut.jpg", "rot.jpg", "upper.JPG", "web.webp"]
