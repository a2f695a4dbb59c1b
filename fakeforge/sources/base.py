"""Caption/image source records and their deterministic selection."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Literal

from fakeforge.images import ImageLimits


@dataclass(frozen=True)
class SourceKind:
    """One `source.kind`: `read(cfg, workdir)` gives the source's records by image id (before selection),
    `finish(records, cfg, workdir)` post-processes the selected records (e.g. writes archive members out),
    `validate(cfg)` adds the kind's own config checks. Registered in `fakeforge.sources.registry.SOURCES`."""

    read: Callable[["SourceConfig", str], dict]
    finish: Callable[[list, "SourceConfig", str], list] | None = None
    validate: Callable[["SourceConfig"], None] | None = None
    # the config field that names the data when a selection is empty ("captions_file" or "images_dir")
    names: str = "captions_file"


@dataclass(frozen=True)
class Record:
    """One (image, caption) pair of a real source dataset. `error` marks a record that is planned (it
    keeps its key) but fails as a sample, e.g. a caption that is not a non-empty string."""

    image_id: str
    caption_id: str
    caption: str
    image_path: str | None
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    error: str | None = field(default=None, compare=False, hash=False)


def caption_text(value) -> tuple[str, str | None]:
    """(normalised caption, None) for a non-empty string; ("", reason) for anything else (a per-sample error)."""
    if isinstance(value, str) and value.strip():
        return " ".join(value.split()), None
    return "", f"caption {value!r} is not a non-empty string"


@dataclass
class SourceConfig:
    """Where captions and images come from, and which of them to use.

    kind: "coco" (captions_*.json + image folder), "flickr30k" (Karpathy dataset_flickr30k.json or
        results.csv + image folder), "imagefolder" (images_dir/<class>/<image>, labelled, no captions),
        "imagenet" (flat val folder + labels_file CSV, labelled, no captions), "demo" (a small
        synthetic COCO-layout set made on the fly), or "photos" (crops of the real sample photos shipped
        with scikit-image/scikit-learn/matplotlib; split train = crops 0-3, test = crops 4-5).
        Downloaded sets (docs/download_sets.md): "folder" (images under images_dir, captions from
        .txt sidecars or a captions_file CSV/JSON), "shards" (WebDataset .tar files under images_dir),
        "diffusiondb" (metadata parquet as captions_file + part-NNNNNN.zip archives under images_dir),
        "frames" (one folder of video frames per video under images_dir).
    labels_file: the label CSV of kind "imagenet" (LOC_val_solution.csv or filename,label).
    split: COCO: informational (the captions file decides); Flickr30k Karpathy: train/val/test/all.
    limit: number of *images* to keep after shuffling with `seed` (None = all).
    captions_per_image: 1 (the first caption after a seeded shuffle) or "all".
    label / set_name (downloaded sets): "real" or "fake", and the published set's name, both recorded
        in every sample's metadata by the `download` generator.
    frames_per_video ("frames"): evenly spaced frames taken from each video (None = every frame);
        `limit` then counts videos.
    require_images: check at plan time that every selected image file exists (sets that need them).
    image_limits: resource limits checked from each source image's header before it is decoded
        (see fakeforge.images.ImageLimits); a source image over them is that sample's error.
    """

    kind: str = "demo"  # a name registered in fakeforge.sources.registry.SOURCES
    captions_file: str | None = None
    labels_file: str | None = None
    images_dir: str | None = None
    split: str = "all"
    limit: int | None = None
    seed: int = 0
    captions_per_image: Literal[1, "all"] = 1
    require_images: bool = True
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # downloaded sets (fakeforge/sources/downloads.py)
    label: Literal["real", "fake"] | None = None
    set_name: str | None = None
    frames_per_video: int | None = None

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"source.limit = {self.limit} must be a positive integer or null")
        if self.kind in ("coco", "flickr30k", "diffusiondb") and not self.captions_file:
            raise ValueError(f"source.captions_file is required for source.kind = '{self.kind}'")
        if self.kind in ("imagefolder", "imagenet") and not self.images_dir:
            raise ValueError(f"source.images_dir is required for source.kind = '{self.kind}'")
        from fakeforge.registry import UnknownNameError
        from fakeforge.sources.registry import SOURCES

        try:
            kind = SOURCES.get(self.kind)
        except UnknownNameError as exc:
            raise ValueError(f"source.kind = {self.kind!r}: {exc}") from None
        if kind.validate is not None:
            kind.validate(self)


#: source kinds that read a downloaded set (fakeforge/sources/downloads.py)
DOWNLOAD_KINDS = ("folder", "shards", "diffusiondb", "frames")


def select_records(by_image: dict[str, list[Record]], cfg: SourceConfig) -> list[Record]:
    """Deterministic selection in a fixed seeded order: image ids (sorted, so the input file's order does
    not matter) shuffled with `seed`, the first `limit` kept, then their captions (one picked with a
    per-image seed, or all, in caption-id order).

    The output keeps the shuffled order: the records of a build with limit N are the first records of a
    build with any larger limit, so growing a set only appends shard jobs (keys depend on ids, not on
    positions).
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
    return chosen

