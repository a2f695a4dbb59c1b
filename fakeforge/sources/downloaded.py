"""The source kinds of downloaded sets (docs/download_sets.md): a folder of images, video frames, WebDataset
shards, DiffusionDB. Each reads its layout (`downloads.py`, `archives.py`), then the selected records are
written out of their archives and every image header is checked before anything decodes it."""
from __future__ import annotations

from fakeforge.sources.archives import materialize, read_diffusiondb, read_shards
from fakeforge.sources.base import Record, SourceConfig, SourceKind
from fakeforge.sources.downloads import (
    checked,
    flag_unreadable_videos,
    read_folder,
    read_frames,
    validate_download_source,
)


def finish_download(records: list[Record], cfg: SourceConfig, workdir) -> list[Record]:
    """Selected records of a downloaded set: archive members written out, every image header checked."""
    records = [checked(r) for r in materialize(records, cfg, workdir)]
    return flag_unreadable_videos(records) if cfg.kind == "frames" else records


def _kind(read) -> SourceKind:
    return SourceKind(read=lambda cfg, workdir: read(cfg), finish=finish_download,
                      validate=validate_download_source, names="images_dir")


FOLDER = _kind(read_folder)
FRAMES = _kind(read_frames)  # frames_per_video decides how many frames of a video are kept
SHARDS = _kind(read_shards)
DIFFUSIONDB = _kind(read_diffusiondb)
