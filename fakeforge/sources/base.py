"""Caption/image source records and their deterministic selection."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Record:
    """One (image, caption) pair of a real source dataset."""

    image_id: str
    caption_id: str
    caption: str
    image_path: str | None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SourceConfig:
    """Where captions and images come from, and which of them to use.

    kind: "coco" (captions_*.json + image folder), "flickr30k" (Karpathy dataset_flickr30k.json or
        results.csv + image folder), "demo" (a small synthetic COCO-layout set made on the fly), or
        "photos" (crops of the real sample photos shipped with scikit-image/scikit-learn/matplotlib).
    split: COCO: informational (the captions file decides); Flickr30k Karpathy: train/val/test/all.
    limit: number of *images* to keep after shuffling with `seed` (None = all).
    captions_per_image: 1 (the first caption after a seeded shuffle) or "all".
    """

    kind: Literal["coco", "flickr30k", "demo", "photos"] = "demo"
    captions_file: str | None = None
    images_dir: str | None = None
    split: str = "all"
    limit: int | None = None
    seed: int = 0
    captions_per_image: Literal[1, "all"] = 1
    require_images: bool = True

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"source.limit = {self.limit} must be a positive integer or null")
        if self.kind not in ("demo", "photos") and not self.captions_file:
            raise ValueError(f"source.captions_file is required for source.kind = '{self.kind}'")


def select_records(by_image: dict[str, list[Record]], cfg: SourceConfig) -> list[Record]:
    """Deterministic selection: shuffle image ids with `seed`, keep `limit`, pick captions, sort.

    The output order is sorted by (image_id, caption_id) so the shard plan does not depend on
    the order of the input file.
    """
    image_ids = sorted(by_image)
    rng = random.Random(cfg.seed)
    rng.shuffle(image_ids)
    if cfg.limit is not None:
        image_ids = image_ids[: cfg.limit]
    chosen: list[Record] = []
    for image_id in image_ids:
        caps = sorted(by_image[image_id], key=lambda r: r.caption_id)
        if cfg.captions_per_image == 1:
            pick = random.Random(f"{cfg.seed}:{image_id}").randrange(len(caps))
            chosen.append(caps[pick])
        else:
            chosen.extend(caps)
    return sorted(chosen, key=lambda r: (_sort_key(r.image_id), _sort_key(r.caption_id)))


def _sort_key(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)
