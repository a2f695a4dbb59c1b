"""ImageFolder and ImageNet-val sources: labels recorded, captions not needed, clear errors; a source
image the attack cannot take is a per-sample error and the build goes on."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from attack_helpers import pil, read_shards

from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError, from_dict
from fakeforge.shards.verify import verify_dataset
from fakeforge.sources import SourceConfig, load_records


def _img(path, size=(40, 30), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    pil(np.full((size[1], size[0], 3), value)).save(path)


def test_imagefolder_with_wordnet_ids_uses_imagenet_indices(tmp_path):
    for wnid in ("n01751748", "n01440764"):
        for i in range(2):
            _img(tmp_path / "train" / wnid / f"img{i}.JPEG")
    recs = load_records(from_dict(SourceConfig, {"kind": "imagefolder", "images_dir": str(tmp_path / "train")}),
                        tmp_path)
    by_id = {r.image_id: r for r in recs}
    assert set(by_id) == {"n01440764/img0", "n01440764/img1", "n01751748/img0", "n01751748/img1"}
    assert by_id["n01751748/img1"].extra["label"] == 65 and by_id["n01751748/img1"].extra["class_name"] == "n01751748"
    assert by_id["n01440764/img0"].extra["label"] == 0
    assert {r.extra["label_space"] for r in recs} == {"imagenet-1k"} and {r.caption for r in recs} == {""}


def test_imagefolder_with_plain_class_names_uses_folder_order(tmp_path):
    _img(tmp_path / "dogs" / "a.png")
    _img(tmp_path / "cats" / "sub" / "b.jpg")
    recs = load_records(from_dict(SourceConfig, {"kind": "imagefolder", "images_dir": str(tmp_path)}), tmp_path)
    labels = {r.image_id: (r.extra["label"], r.extra["label_space"]) for r in recs}
    assert labels == {"cats/sub/b": (0, "folder"), "dogs/a": (1, "folder")}


def test_imagefolder_without_class_folders_says_so(tmp_path):
    _img(tmp_path / "flat" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ConfigError) as exc:
        load_records(from_dict(SourceConfig, {"kind": "imagefolder", "images_dir": str(tmp_path / "flat")}), tmp_path)
    msg = str(exc.value)
    assert f"source.images_dir = '{tmp_path / 'flat'}' has no class folders" in msg
    assert "1 loose image(s)" in msg and "kind: imagenet" in msg
    with pytest.raises(ConfigError, match="folder not found"):
        load_records(from_dict(SourceConfig, {"kind": "imagefolder", "images_dir": str(tmp_path / "no")}), tmp_path)
    with pytest.raises(ValueError, match="source.images_dir is required for source.kind = 'imagefolder'"):
        from_dict(SourceConfig, {"kind": "imagefolder"})


def test_imagenet_val_with_kaggle_solution_csv(tmp_path):
    for i in (1, 2):
        _img(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n01751748 10 20 30 40 n01751748 1 2 3 4 \n"
        "ILSVRC2012_val_00000001,n01443537 0 0 5 5 \n")
    cfg = from_dict(SourceConfig, {"kind": "imagenet", "labels_file": str(tmp_path / "LOC_val_solution.csv"),
                                   "images_dir": str(tmp_path / "val")})
    recs = load_records(cfg, tmp_path)
    assert [(r.image_id, r.extra["label"], r.extra["class_name"]) for r in recs] == [
        ("ILSVRC2012_val_00000001", 1, "goldfish"), ("ILSVRC2012_val_00000002", 65, "sea snake")]
    assert recs[0].image_path == str(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")


@pytest.mark.parametrize("text, needle", [
    ("id,class\nx,1\n", "must start with the header 'ImageId,PredictionString'"),
    ("filename,label\nILSVRC2012_val_00000001,1000\n", "line 2: label '1000' is neither"),
    ("filename,label\nILSVRC2012_val_00000001,n99999999\n", "line 2: label 'n99999999' is neither"),
    ("", "is empty"),
])
def test_imagenet_label_file_errors(tmp_path, text, needle):
    (tmp_path / "labels.csv").write_text(text)
    cfg = from_dict(SourceConfig, {"kind": "imagenet", "labels_file": str(tmp_path / "labels.csv"),
                                   "images_dir": str(tmp_path)})
    with pytest.raises(ConfigError) as exc:
        load_records(cfg, tmp_path)
    assert needle in str(exc.value)


def test_attack_build_on_imagefolder_records_labels_and_skips_unusable_images(tmp_path, tiny_dir):
    """No captions needed; labels recorded; an image below the attack's min_size and a zero-byte file
    are per-sample errors; the build exits 0 and verify accepts the shards."""
    root = tmp_path / "folder"
    for i in range(3):
        _img(root / "n01440764" / f"ok{i}.png", value=40 * i)
    _img(root / "n01443537" / "tiny.png", size=(8, 8))
    (root / "n01443537" / "empty.png").write_bytes(b"")
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({
        "output": str(tmp_path / "out"), "source": {"kind": "imagefolder", "images_dir": str(root)},
        "image": {"format": "jpeg"}, "shards": {"max_count": 10},
        "max_failed_fraction": 0.5,  # 2 of 5 unusable on purpose
        "sets": [{"name": "adv", "generator": "adv_fgsm"}, {"name": "real", "generator": "real"}]}))
    assert cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]) == 0
    summary = verify_dataset(tmp_path / "out")
    assert summary["sets"] == {"adv": 3, "real": 4}
    stats = json.loads((tmp_path / "out" / "adv" / "000000.done.json").read_text())
    errors = " | ".join(str(f) for f in stats["failures"])
    assert "smaller than min_size=16" in errors and "empty (0 bytes)" in errors
    metas = [m for m, _, ext in read_shards(tmp_path / "out" / "adv")]
    assert {(m["source_label"], m["source_class_name"], m["caption"]) for m in metas} == {(0, "n01440764", "")}
    assert {m["label_from"] for m in metas} == {"dataset"} and {m["label_used"] for m in metas} == {0}
