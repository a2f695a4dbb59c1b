"""Caption/image sources: COCO, Flickr30k, ImageFolder, ImageNet val, the embedded demo set, the sample
photos shipped with scikit-image/scikit-learn/matplotlib, and downloaded sets (folder, shards, DiffusionDB,
video frames; fakeforge/sources/downloads.py and archives.py)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.sources.base import DOWNLOAD_KINDS, Record, SourceConfig, SourceKind, select_records
from fakeforge.sources.registry import SOURCES

__all__ = ["DOWNLOAD_KINDS", "SOURCES", "Record", "SourceConfig", "SourceKind", "check_images_exist", "load_records",
           "missing_data"]


def load_records(cfg: SourceConfig, workdir: str | Path) -> list[Record]:
    """Read and select the records of a source (`SOURCES[cfg.kind]`; made-on-the-fly sources are written under
    `workdir` first, downloaded archives are unpacked there)."""
    kind = SOURCES.get(cfg.kind)
    by_image = kind.read(cfg, str(workdir))
    if cfg.kind == "frames":  # frames_per_video decides how many frames of a video are kept
        cfg = replace(cfg, captions_per_image="all")
    records = select_records(by_image, cfg)
    if not records:
        raise ConfigError(f"source {cfg.kind} '{getattr(cfg, kind.names)}' selected no records (limit={cfg.limit})")
    return kind.finish(records, cfg, str(workdir)) if kind.finish else records


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
