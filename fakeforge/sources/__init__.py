"""Caption/image sources: COCO, Flickr30k, ImageFolder, ImageNet val, the embedded demo set, the sample
photos shipped with scikit-image/scikit-learn/matplotlib, and downloaded sets (folder, shards, DiffusionDB,
video frames; fakeforge/sources/downloads.py and archives.py)."""
from __future__ import annotations

from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.sources.base import DOWNLOAD_KINDS, Record, SourceConfig, select_records

__all__ = ["Record", "SourceConfig", "check_images_exist", "load_records", "missing_data"]


def load_records(cfg: SourceConfig, workdir: str | Path) -> list[Record]:
    """Read and select the records of a source (the demo source is written under `workdir` first)."""
    if cfg.kind == "coco":
        from fakeforge.sources.coco import read_coco_captions

        by_image = read_coco_captions(cfg.captions_file, cfg.images_dir)
    elif cfg.kind == "flickr30k":
        from fakeforge.sources.flickr30k import read_flickr30k

        by_image = read_flickr30k(cfg.captions_file, cfg.images_dir, cfg.split)
    elif cfg.kind == "imagefolder":
        from fakeforge.sources.imagefolder import read_imagefolder

        by_image = read_imagefolder(cfg.images_dir)
    elif cfg.kind == "imagenet":
        from fakeforge.sources.imagenet import read_imagenet_val

        by_image = read_imagenet_val(cfg.labels_file, cfg.images_dir)
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
    elif cfg.kind in DOWNLOAD_KINDS:
        return _load_download(cfg, workdir)
    else:  # guarded by the Literal type, kept for clarity
        raise ConfigError(f"unknown source.kind '{cfg.kind}'; valid: coco, flickr30k, imagefolder, imagenet, demo, "
                          f"photos, {', '.join(DOWNLOAD_KINDS)}")
    records = select_records(by_image, cfg)
    if not records:
        raise ConfigError(f"source {cfg.kind} '{cfg.captions_file}' selected no records (limit={cfg.limit})")
    return records


def _load_download(cfg: SourceConfig, workdir: str | Path) -> list[Record]:
    """Records of a downloaded set: read, select, archive members written out, every image header checked."""
    from dataclasses import replace

    from fakeforge.sources import archives, downloads

    readers = {"folder": downloads.read_folder, "frames": downloads.read_frames, "shards": archives.read_shards,
               "diffusiondb": archives.read_diffusiondb}
    by_image = readers[cfg.kind](cfg)
    if cfg.kind == "frames":  # frames_per_video decides how many frames of a video are kept
        cfg = replace(cfg, captions_per_image="all")
    records = select_records(by_image, cfg)
    if not records:
        raise ConfigError(f"source {cfg.kind} '{cfg.images_dir}' selected no records (limit={cfg.limit})")
    records = [downloads.checked(r) for r in archives.materialize(records, cfg, workdir)]
    if cfg.kind == "frames":
        records = downloads.flag_unreadable_videos(records)
    return records


def missing_data(cfg: SourceConfig) -> str | None:
    """The first data path a source names that does not exist (None when all are there or none is named)."""
    for path in (cfg.captions_file, cfg.images_dir):
        if path and not Path(path).exists():
            return str(path)
    return None


def check_images_exist(records: list[Record], what: str) -> None:
    """Abort (before any model loads) when selected records have no image file. Records that already carry
    an `error` (e.g. a downloaded image that failed its checks) are per-sample failures, not aborts."""
    missing = [r.image_path for r in records if not r.error
               and (not r.image_path or not Path(r.image_path).is_file())]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:3])
        raise ConfigError(f"{len(missing)} of {len(records)} images for {what} do not exist, e.g. {shown} "
                          "(check source.images_dir)")
