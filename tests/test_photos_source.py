"""The `photos` source: real sample photos shipped inside installed packages, as crops with captions."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from fakeforge.sources import SourceConfig, load_records
from fakeforge.sources.photos import CROPS_PER_PHOTO, PHOTOS, crop_index


def test_photos_source_gives_distinct_real_photos_with_captions(tmp_path):
    records = load_records(SourceConfig(kind="photos", captions_per_image="all"), tmp_path)
    images = {r.image_id: r for r in records}
    assert len(images) == len(PHOTOS) * CROPS_PER_PHOTO
    assert len(records) == 3 * len(images)  # three captions per crop
    digests = set()
    for r in images.values():
        img = Image.open(r.image_path)
        assert img.format == "PNG" and min(img.size) >= 100  # lossless crops of real photos
        arr = np.asarray(img.convert("RGB"), dtype=float)
        assert arr.std() > 10  # real content, not a flat colour
        digests.add(hashlib.sha256(arr.tobytes()).hexdigest())
        assert r.extra["photo"] in PHOTOS and r.extra["licence"]
        assert r.caption and r.caption == r.caption.strip()
    assert len(digests) == len(images)


def test_photos_source_is_deterministic_and_selectable(tmp_path):
    a = load_records(SourceConfig(kind="photos", limit=10, seed=3), tmp_path / "a")
    b = load_records(SourceConfig(kind="photos", limit=10, seed=3), tmp_path / "b")
    assert [(r.image_id, r.caption_id) for r in a] == [(r.image_id, r.caption_id) for r in b]
    assert len(a) == 10
    pa = {r.image_id: Image.open(r.image_path).tobytes() for r in a}
    pb = {r.image_id: Image.open(r.image_path).tobytes() for r in b}
    assert pa == pb


def test_train_and_test_splits_share_no_crop(tmp_path):
    """The demo's held-out real images: `split: test` gives crops that `split: train` never gives, and together
    they are every crop of every photo."""
    ids = {split: {r.image_id for r in load_records(SourceConfig(kind="photos", split=split,
                                                                 captions_per_image="all"), tmp_path)}
           for split in ("train", "test", "all")}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    assert ids["train"] | ids["test"] == ids["all"] and len(ids["all"]) == len(PHOTOS) * CROPS_PER_PHOTO
    assert {crop_index(i) for i in ids["test"]} == {4, 5}  # configs/build/demo_test.yaml documents crops 4-5
