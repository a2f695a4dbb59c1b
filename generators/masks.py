"""Inpainting masks: named strategies with area bounds and a deterministic per-sample seed.

Strategies (all return a uint8 HxW array, 255 = region to inpaint):
  box    random axis-aligned rectangles (1..max_boxes), union area in [min_area, max_area].
  brush  free-form brush strokes of the kind LaMa was trained on (its thin/medium/thick presets,
         defined at 512 px and scaled to the image), added until the area reaches a target drawn
         uniformly in [min_area, max_area].
  coco   one COCO object from `instances_*.json` (polygon, uncompressed or compressed RLE), chosen
         among the image's objects whose mask covers [min_area, max_area] of the image. Polygons are
         rasterised by pycocotools, as the COCO API does; RLE is decoded here after checking that its
         runs add up to the image size (pycocotools' decoder trusts them).
A mask that is empty or covers the whole image is never returned. A strategy that cannot meet the
bounds falls back to `fallback` (recorded in the info) or raises `SampleError` with the reason.
The random stream is derived from the request seed, so a sample's mask is reproducible and
independent of its batch neighbours and of the diffusion noise.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from fakeforge.config import ConfigError
from generators.base import SampleError

#: LaMa's random irregular-mask presets (configs/data_gen/random_{thin,medium,thick}_512.yaml), at 512 px.
BRUSH_PRESETS = {
    "thin": {"max_width": 20, "max_len": 100, "max_angle": 4},
    "medium": {"max_width": 100, "max_len": 200, "max_angle": 4},
    "thick": {"max_width": 250, "max_len": 450, "max_angle": 4},
}
_MASK_STREAM = 0x6D61736B  # "mask": keeps the mask's random stream apart from the diffusion noise
_MAX_DRAW_SIDE = 1024      # box/brush masks of larger images are drawn at this size and scaled up (nearest)


@dataclass
class MaskConfig:
    """How inpainting masks are drawn (the `mask:` block of an inpainting generator).

    strategy: "box", "brush" or "coco" (see the module docstring).
    min_area / max_area: bounds on the fraction of image pixels the mask covers (0 < min <= max < 1).
    fallback: strategy used when `strategy` cannot meet the bounds (e.g. no COCO object in range);
        None = the sample fails with the reason.
    brush: LaMa stroke preset for "brush": thin, medium or thick.
    max_boxes: "box" draws 1..max_boxes rectangles.
    instances_file: COCO `instances_*.json` for "coco" (masks are drawn for `meta["image_id"]`).
    include_crowd: also pick `iscrowd=1` annotations (crowd RLE regions) for "coco".
    max_tries: attempts per sample before giving up.
    """

    strategy: Literal["box", "brush", "coco"] = "box"
    min_area: float = 0.1
    max_area: float = 0.4
    fallback: Literal["box", "brush"] | None = None
    brush: Literal["thin", "medium", "thick"] = "medium"
    max_boxes: int = 1
    instances_file: str | None = None
    include_crowd: bool = False
    max_tries: int = 100

    def validate(self) -> None:
        """Value checks (no file access)."""
        if not 0.0 < self.min_area < 1.0:
            raise ConfigError(f"mask.min_area = {self.min_area} must be within (0, 1)")
        if not self.min_area <= self.max_area < 1.0:
            raise ConfigError(f"mask.max_area = {self.max_area} must be within [mask.min_area = {self.min_area}, 1)")
        if self.max_boxes < 1:
            raise ConfigError(f"mask.max_boxes = {self.max_boxes} must be >= 1")
        if self.max_tries < 1:
            raise ConfigError(f"mask.max_tries = {self.max_tries} must be >= 1")
        if self.fallback == self.strategy:
            raise ConfigError(f"mask.fallback = '{self.fallback}' must differ from mask.strategy")
        if "coco" in (self.strategy, self.fallback) and not self.instances_file:
            raise ConfigError("mask.strategy = 'coco' needs mask.instances_file (a COCO instances_*.json)")

    def check(self) -> None:
        """File checks: the COCO instances file must exist."""
        if self.strategy == "coco" and not Path(self.instances_file).is_file():
            raise ConfigError(f"mask.instances_file = '{self.instances_file}' not found (COCO instances_*.json, "
                              "from annotations_trainval2017.zip at https://cocodataset.org/#download)")


def mask_rng(seed: int) -> np.random.Generator:
    """The mask's random stream for a request seed (any integer)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), _MASK_STREAM]))


def area_ratio(mask: np.ndarray) -> float:
    """Fraction of pixels marked as hole."""
    return float(np.count_nonzero(mask)) / float(mask.size)


def check_mask(mask: np.ndarray, where: str = "mask") -> None:
    """Raise SampleError if `mask` is empty or covers the whole image (such masks are never used)."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise SampleError(f"{where} is empty ({mask.shape[1]}x{mask.shape[0]})")
    if n == mask.size:
        raise SampleError(f"{where} covers the whole image ({mask.shape[1]}x{mask.shape[0]})")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 0/255 mask to `size` (w, h); a pixel touched by the hole stays a hole (no thin stroke vanishes)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    img = Image.fromarray(mask)
    shrinking = size[0] < mask.shape[1] or size[1] < mask.shape[0]
    out = np.asarray(img.resize(size, Image.BOX if shrinking else Image.NEAREST))
    return np.where(out > 0, 255, 0).astype(np.uint8)


def make_mask(cfg: MaskConfig, size: tuple[int, int], seed: int, image_id: str | None = None
              ) -> tuple[np.ndarray, dict]:
    """Draw the mask for one sample of image size `size` (w, h). Returns (uint8 mask, info for metadata)."""
    rng = mask_rng(seed)
    try:
        mask, info = _draw(cfg.strategy, cfg, size, rng, image_id)
    except SampleError as exc:
        if cfg.fallback is None:
            raise
        mask, info = _draw(cfg.fallback, cfg, size, rng, image_id)
        info["mask_fallback_from"] = cfg.strategy
        info["mask_fallback_reason"] = str(exc)
    info.update(mask_area_ratio=round(area_ratio(mask), 6), mask_min_area=cfg.min_area, mask_max_area=cfg.max_area)
    return mask, info


def _draw(strategy: str, cfg: MaskConfig, size, rng, image_id) -> tuple[np.ndarray, dict]:
    w, h = size
    if w < 2 or h < 2:
        raise SampleError(f"cannot draw a mask on a {w}x{h} image")
    if strategy == "coco":
        return coco_mask(cfg, size, rng, image_id)
    draw = _box_once if strategy == "box" else _brush_once
    s = min(1.0, _MAX_DRAW_SIDE / max(w, h))
    dw, dh = max(2, round(w * s)), max(2, round(h * s))
    for _ in range(cfg.max_tries):
        mask = draw(cfg, dw, dh, rng)
        if (dw, dh) != (w, h):
            mask = resize_mask(mask, (w, h))
        r = area_ratio(mask)
        if cfg.min_area <= r <= cfg.max_area and 0 < r < 1:
            info = {"mask_strategy": strategy}
            if strategy == "brush":
                info["mask_brush"] = cfg.brush
            return mask, info
    raise SampleError(f"could not draw a '{strategy}' mask with area in [{cfg.min_area}, {cfg.max_area}] "
                      f"on a {w}x{h} image in {cfg.max_tries} tries")


def _box_once(cfg: MaskConfig, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    target = rng.uniform(cfg.min_area, cfg.max_area) * w * h
    n = int(rng.integers(1, cfg.max_boxes + 1))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n):
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        bw = int(np.clip(round(math.sqrt(target / n * aspect)), 1, w))
        bh = int(np.clip(round(target / n / bw), 1, h))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        mask[y0:y0 + bh, x0:x0 + bw] = 255
    return mask


def _brush_once(cfg: MaskConfig, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa-style strokes (1-5 connected segments each) added until the area reaches a random target."""
    p = BRUSH_PRESETS[cfg.brush]
    k = min(w, h) / 512.0
    target = rng.uniform(cfg.min_area, cfg.max_area)
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for stroke in range(4096):
        x, y = float(rng.integers(w)), float(rng.integers(h))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(p["max_angle"]))
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = (10 + int(rng.integers(p["max_len"]))) * k
            width = max(1, round((5 + int(rng.integers(p["max_width"]))) * k))
            x2 = float(np.clip(x + length * math.sin(angle), 0, w - 1))
            y2 = float(np.clip(y + length * math.cos(angle), 0, h - 1))
            draw.line([(x, y), (x2, y2)], fill=255, width=width)
            r = width / 2.0
            draw.ellipse([x2 - r, y2 - r, x2 + r, y2 + r], fill=255)  # round joints
            x, y = x2, y2
        if area_ratio(np.asarray(img)) >= target:
            break
    return np.asarray(img).copy()


# ---------------------------------------------------------------- COCO instances


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' rleFrString) into run lengths."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("truncated compressed RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE ({"size": [h, w], "counts": list or compressed string}) -> bool HxW mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h}x{w} = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True  # runs alternate, starting with background
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T  # column-major (Fortran) order


def polygons_decode(polygons: list, h: int, w: int) -> np.ndarray:
    """COCO polygons ([[x1, y1, x2, y2, ...], ...]) -> bool HxW mask, rasterised by pycocotools exactly as
    the COCO API does (`frPyObjects` + `merge` + `decode`). Polygons with fewer than 3 points are
    skipped; coordinates must be finite and near the image (a hostile file cannot make it allocate)."""
    from pycocotools import mask as coco_mask_api

    polys = []
    for poly in polygons:
        if not isinstance(poly, (list, tuple)) or len(poly) < 6:
            continue  # (4 numbers would be read as a box by frPyObjects)
        arr = np.asarray(poly[: len(poly) // 2 * 2], dtype=np.float64)
        if not np.isfinite(arr).all() or (np.abs(arr[0::2]) > 2 * w + 2).any() or (np.abs(arr[1::2]) > 2 * h + 2).any():
            raise ValueError(f"polygon coordinates outside the {w}x{h} image")
        polys.append(arr.tolist())
    if not polys:
        return np.zeros((h, w), dtype=bool)
    rle = coco_mask_api.merge(coco_mask_api.frPyObjects(polys, h, w))
    return coco_mask_api.decode(rle).astype(bool)


def segmentation_to_mask(segm, h: int, w: int) -> np.ndarray:
    """Any COCO `segmentation` (polygon list, uncompressed RLE, compressed RLE) -> bool HxW mask."""
    if isinstance(segm, list):
        return polygons_decode(segm, h, w)
    if isinstance(segm, dict) and "counts" in segm:
        rle = dict(segm)
        rle.setdefault("size", [h, w])
        return rle_decode(rle)
    raise ValueError(f"unsupported COCO segmentation of type {type(segm).__name__}")


@functools.lru_cache(maxsize=2)
def load_instances(path: str) -> tuple[dict[int, tuple[int, int]], dict[int, list[dict]]]:
    """Read a COCO instances file once per process: (image id -> (w, h), image id -> annotations)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read COCO instances file '{path}': {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ConfigError(f"COCO instances file '{path}' must hold an 'annotations' list (instances_*.json)")
    sizes = {int(im["id"]): (int(im["width"]), int(im["height"])) for im in data.get("images", [])
             if isinstance(im, dict) and {"id", "width", "height"} <= set(im)}
    anns: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "segmentation" in ann and "image_id" in ann:
            anns.setdefault(int(ann["image_id"]), []).append(
                {k: ann.get(k) for k in ("id", "category_id", "iscrowd", "segmentation")})
    return sizes, anns


def coco_mask(cfg: MaskConfig, size, rng, image_id) -> tuple[np.ndarray, dict]:
    """One COCO object of image `image_id` whose mask area is within bounds, chosen with `rng`."""
    if image_id is None or not str(image_id).strip().lstrip("-").isdigit():
        raise SampleError(f"coco mask needs a COCO integer image id, got {image_id!r}")
    sizes, anns = load_instances(str(cfg.instances_file))
    iid = int(image_id)
    if iid not in anns:
        raise SampleError(f"no COCO instance annotations for image id {iid}")
    w, h = size
    ann_w, ann_h = sizes.get(iid, (w, h))
    candidates = []
    for ann in anns[iid]:
        if ann.get("iscrowd") and not cfg.include_crowd:
            continue
        try:
            m = segmentation_to_mask(ann["segmentation"], ann_h, ann_w)
        except (ValueError, TypeError, KeyError) as exc:
            raise SampleError(f"COCO annotation {ann.get('id')} of image {iid}: {exc}") from None
        mask = resize_mask(np.where(m, 255, 0).astype(np.uint8), (w, h))
        r = area_ratio(mask)
        if cfg.min_area <= r <= cfg.max_area and 0 < r < 1:
            candidates.append((ann, mask))
    if not candidates:
        raise SampleError(f"no COCO object of image {iid} covers [{cfg.min_area}, {cfg.max_area}] of the image "
                          f"({len(anns[iid])} annotations)")
    ann, mask = candidates[int(rng.integers(len(candidates)))]
    return mask, {"mask_strategy": "coco", "coco_annotation_id": ann.get("id"),
                  "coco_category_id": ann.get("category_id"), "coco_candidates": len(candidates)}
