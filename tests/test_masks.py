"""Mask strategies: area bounds, determinism, COCO polygon/RLE decoding, fallbacks, empty/full rejection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fakeforge.config import ConfigError, from_dict
from generators.base import SampleError
from generators.masks import (
    MaskConfig,
    area_ratio,
    check_mask,
    make_mask,
    polygons_decode,
    resize_mask,
    rle_counts_from_string,
    rle_decode,
)


def cfg(**kw) -> MaskConfig:
    return from_dict(MaskConfig, kw, "mask")


@pytest.mark.parametrize("strategy,extra", [("box", {}), ("box", {"max_boxes": 3}), ("brush", {"brush": "thin"}),
                                            ("brush", {"brush": "medium"}), ("brush", {"brush": "thick"})])
def test_area_bounds_and_determinism(strategy, extra):
    c = cfg(strategy=strategy, min_area=0.15, max_area=0.35, **extra)
    masks = []
    for seed in range(12):
        m, info = make_mask(c, (96, 72), seed)
        assert m.shape == (72, 96) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        assert 0.15 <= area_ratio(m) <= 0.35
        assert info["mask_strategy"] == strategy and info["mask_area_ratio"] == pytest.approx(area_ratio(m), abs=1e-6)
        masks.append(m)
    again, _ = make_mask(c, (96, 72), 3)
    assert np.array_equal(again, masks[3])                       # same seed -> same mask
    assert len({m.tobytes() for m in masks}) == len(masks)       # different seeds -> different masks


def test_brush_presets_differ_in_stroke_width():
    widths = {}
    for preset in ("thin", "thick"):
        m, _ = make_mask(cfg(strategy="brush", brush=preset, min_area=0.2, max_area=0.25), (256, 256), 1)
        # strokes of thick masks survive a 9x9 erosion much better than thin ones
        core = m > 0
        for _ in range(4):
            p = np.pad(core, 1)
            core = core & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        widths[preset] = core.mean() / (m > 0).mean()
    assert widths["thick"] > widths["thin"]


def test_impossible_bounds_give_a_reason():
    with pytest.raises(SampleError, match=r"could not draw a 'box' mask with area in \[0.5, 0.6\] on a 3x3 image"):
        make_mask(cfg(strategy="box", min_area=0.5, max_area=0.6, max_tries=20), (3, 3), 0)
    with pytest.raises(SampleError, match="cannot draw a mask on a 1x5 image"):
        make_mask(cfg(), (1, 5), 0)


def test_check_mask_rejects_empty_and_full():
    with pytest.raises(SampleError, match="empty"):
        check_mask(np.zeros((4, 5), np.uint8))
    with pytest.raises(SampleError, match="covers the whole image"):
        check_mask(np.full((4, 5), 255, np.uint8))
    check_mask(np.pad(np.full((2, 2), 255, np.uint8), 1))


def test_resize_mask_keeps_thin_strokes():
    m = np.zeros((100, 100), np.uint8)
    m[50, :] = 255                                               # a 1-px line
    small = resize_mask(m, (10, 10))
    assert small.any() and set(np.unique(small)) <= {0, 255}
    assert resize_mask(m, (100, 100)) is m


@pytest.mark.parametrize("kw,match", [
    ({"min_area": 0.5, "max_area": 0.2}, r"mask.max_area = 0.2"),
    ({"min_area": 0.0}, r"mask.min_area = 0.0"),
    ({"max_area": 1.0}, r"mask.max_area = 1.0"),
    ({"strategy": "coco"}, r"mask.instances_file"),
    ({"strategy": "box", "fallback": "box"}, r"mask.fallback = 'box'"),
    ({"max_boxes": 0}, r"mask.max_boxes = 0"),
    ({"strategy": "blob"}, r"'mask.strategy' = 'blob'"),
])
def test_config_errors_name_the_argument(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_missing_instances_file_is_a_config_error(tmp_path):
    c = cfg(strategy="coco", instances_file=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="instances_file .* not found"):
        c.check()


# ---------------------------------------------------------------- COCO decoding


def test_rle_compressed_strings_match_pycocotools():
    # strings produced by pycocotools.mask.encode for the masks below
    m = np.zeros((7, 9), bool)
    m[1:5, 2:6] = True
    m[6, 8] = m[0, 0] = True
    assert np.array_equal(rle_decode({"size": [7, 9], "counts": "01>3E00000c0M"}), m)
    m = np.zeros((12, 10), bool)
    m[2:11, 1:9] = True
    m[0, 9] = True
    assert np.array_equal(rle_decode({"size": [12, 10], "counts": b">930000000000000NH:"}), m)
    assert rle_counts_from_string("`<h[1X6") == [400, 1400, 200]   # multi-character runs
    m = np.zeros((40, 50), bool)
    m[:, 10:45] = True
    assert np.array_equal(rle_decode({"size": [40, 50], "counts": "`<h[1X6"}), m)


def test_rle_uncompressed_is_column_major():
    # 3x4 image; column-major runs: 1 bg, 2 fg, 9 bg -> pixels (1,0) and (2,0)
    m = rle_decode({"size": [3, 4], "counts": [1, 2, 9]})
    expect = np.zeros((3, 4), bool)
    expect[1:3, 0] = True
    assert np.array_equal(m, expect)
    with pytest.raises(ValueError, match="sum to 11"):
        rle_decode({"size": [3, 4], "counts": [1, 2, 8]})


def test_polygon_decoding_matches_the_coco_api():
    m = polygons_decode([[2, 2, 12, 2, 12, 8, 2, 8]], 20, 30)     # a 10x6 rectangle with integer corners
    expect = np.zeros((20, 30), bool)
    expect[2:8, 2:12] = True                                     # COCO fills exactly 10x6 pixels (a PIL fill: 11x7)
    assert np.array_equal(m, expect)
    tri = polygons_decode([[0, 0, 10, 0, 0, 10], [20, 5, 25, 5]], 12, 30)  # a 2-point polygon is skipped
    assert np.array_equal(tri, polygons_decode([[0, 0, 10, 0, 0, 10]], 12, 30))
    assert tri.sum() == 45 and tri[0, 0] and not tri[9, 9]       # the COCO API's 45 pixels for this triangle
    with pytest.raises(ValueError, match="outside the 30x20 image"):
        polygons_decode([[0, 0, 1e12, 0, 0, 5]], 20, 30)


def _instances(tmp_path, anns, w=40, h=30):
    data = {"images": [{"id": 7, "width": w, "height": h, "file_name": "7.jpg"}],
            "annotations": [{"id": i + 1, "image_id": 7, "category_id": 10 + i, "iscrowd": a.pop("iscrowd", 0), **a}
                            for i, a in enumerate(anns)],
            "categories": []}
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_picks_an_object_in_range(tmp_path):
    full = np.zeros((30, 40), np.uint8)
    full[:, :30] = 1                                             # 75 % -> out of range
    path = _instances(tmp_path, [
        {"segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]},            # tiny polygon -> out of range
        {"segmentation": [[5, 5, 25, 5, 25, 20, 5, 20]]},        # ~26 % polygon -> in range
        {"segmentation": {"size": [30, 40], "counts": _runs(full)}},                 # 75 % RLE -> out of range
        {"segmentation": {"size": [30, 40], "counts": _runs(_block(30, 40, 8, 30, 10, 30))}},  # ~37 % RLE
        {"segmentation": [], "iscrowd": 0},                      # empty -> never used
    ])
    c = cfg(strategy="coco", instances_file=path, min_area=0.2, max_area=0.5)
    seen = set()
    for seed in range(20):
        m, info = make_mask(c, (40, 30), seed, image_id="7")
        assert 0.2 <= area_ratio(m) <= 0.5 and info["mask_strategy"] == "coco"
        seen.add(info["coco_annotation_id"])
    assert seen == {2, 4}                                        # polygon and uncompressed RLE objects
    a, _ = make_mask(c, (40, 30), 5, image_id="7")
    b, _ = make_mask(c, (40, 30), 5, image_id="7")
    assert np.array_equal(a, b)
    big, _ = make_mask(c, (80, 60), 5, image_id="7")             # source twice the annotation size: mask rescaled
    assert big.shape == (60, 80) and abs(area_ratio(big) - area_ratio(a)) < 0.02


def _block(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: column-major run lengths, starting with background."""
    runs, cur, n = [], False, 0
    for v in np.ravel(m, order="F").astype(bool):
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    return runs + [n]


def test_coco_compressed_rle_and_crowd(tmp_path):
    # pycocotools string for a 40x50 image with columns 10..44 set (70 %), marked crowd
    path = _instances(tmp_path, [{"segmentation": {"size": [40, 50], "counts": "`<h[1X6"}, "iscrowd": 1}], w=50, h=40)
    c = cfg(strategy="coco", instances_file=path, min_area=0.5, max_area=0.8)
    with pytest.raises(SampleError, match="no COCO object of image 7"):
        make_mask(c, (50, 40), 0, image_id="7")                 # crowd regions are skipped by default
    m, info = make_mask(cfg(strategy="coco", instances_file=path, min_area=0.5, max_area=0.8, include_crowd=True),
                        (50, 40), 0, image_id="7")
    assert area_ratio(m) == pytest.approx(0.7) and info["coco_annotation_id"] == 1


def test_coco_fallback_and_errors(tmp_path):
    path = _instances(tmp_path, [{"segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}])
    strict = cfg(strategy="coco", instances_file=path, min_area=0.2, max_area=0.4)
    with pytest.raises(SampleError, match=r"covers \[0.2, 0.4\]"):
        make_mask(strict, (40, 30), 0, image_id="7")
    with pytest.raises(SampleError, match="no COCO instance annotations for image id 99"):
        make_mask(strict, (40, 30), 0, image_id="99")
    with pytest.raises(SampleError, match="COCO integer image id"):
        make_mask(strict, (40, 30), 0, image_id="flickr_123")
    lenient = cfg(strategy="coco", instances_file=path, min_area=0.2, max_area=0.4, fallback="box")
    m, info = make_mask(lenient, (40, 30), 0, image_id="7")
    assert info["mask_strategy"] == "box" and info["mask_fallback_from"] == "coco"
    assert "covers" in info["mask_fallback_reason"] and 0.2 <= area_ratio(m) <= 0.4
