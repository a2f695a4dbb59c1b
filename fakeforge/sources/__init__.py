"""Real caption/image sources: COCO, Flickr30k, the embedded demo set and the shipped sample photos."""
from __future__ import annotations

from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.sources.base import Record, SourceConfig, select_records

__all__ = ["Record", "SourceConfig", "load_records", "check_images_exist"]


def load_records(cfg: SourceConfig, workdir: str | Path) -> list[Record]:
    """Read and select the records of a source (the demo source is written under `workdir` first)."""
    if cfg.kind == "coco":
        from fakeforge.sources.coco import read_coco_captions

        by_image = read_coco_captions(cfg.captions_file, cfg.images_dir)
    elif cfg.kind == "flickr30k":
        from fakeforge.sources.flickr30k import read_flickr30k

        by_image = read_flickr30k(cfg.captions_file, cfg.images_dir, cfg.split)
    elif cfg.kind == "demo":
        from fakeforge.sources.coco import read_coco_captions
        from fakeforge.sources.demo import write_demo_coco

        captions, images = write_demo_coco(Path(workdir) / "_demo_source")
        by_image = read_coco_captions(captions, images)
    elif cfg.kind == "photos":
        from fakeforge.sources.coco import read_coco_captions
        from fakeforge.sources.photos import split_records, write_photos_coco

        captions, images = write_photos_coco(Path(workdir) / "_photos_source")
        by_image = split_records(read_coco_captions(captions, images), cfg.split)
    else:  # guarded by the Literal type, kept for clarity
        raise ConfigError(f"unknown source.kind '{cfg.kind}'; valid: coco, flickr30k, demo, photos")
    records = select_records(by_image, cfg)
    if not records:
        raise ConfigError(f"source {cfg.kind} '{cfg.captions_file}' selected no records (limit={cfg.limit})")
    return records


def check_images_exist(records: list[Record], what: str) -> None:
    """Abort (before any model loads) when selected records have no image file."""
    missing = [r.image_path for r in records if not r.image_path or not Path(r.image_path).is_file()]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:3])
        raise ConfigError(f"{len(missing)} of {len(records)} images for {what} do not exist, e.g. {shown} "
                          "(check source.images_dir)")
