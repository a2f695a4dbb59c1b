"""Downloaded sets as sources: a folder of images, video-frame folders, and the shared safety checks.

Every outside image is hostile until its header passed the size limits (`check_image_header`: bytes
on disk, pixel count, a known format), checked for each *selected* record before the build starts.
A record that fails carries `Record.error`: the builder records it as that sample's error
instead of decoding the file (per-sample failures are data). Archive members (shards, DiffusionDB
zips, fakeforge/sources/archives.py) are read by the name the metadata gives, checked the same way and
written under the build folder with names we make; a path stored inside an archive is never used.

Layouts (docs/download_sets.md):
  folder   images_dir/**/*.{jpg,jpeg,png,webp}; caption from `<stem>.txt` beside the image or from
           captions_file (CSV with a file and a caption/prompt column, or JSON {file: caption} / list)
  frames   images_dir/**/<video>/<frame>.{jpg,png,...}: every folder holding images is one video;
           `frames_per_video` evenly spaced frames are taken from each (all when null)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections import defaultdict
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.files import write_atomic
from fakeforge.images import IMAGE_EXTENSIONS, ImageLoadError
from fakeforge.sources.base import Record, SourceConfig

#: limits every outside image must pass before it is decoded (bytes on disk, width x height)
MAX_IMAGE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 64_000_000
_FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_name", "image_path", "path")
_CAPTION_COLUMNS = ("caption", "prompt", "text", "revised_prompt")


def validate_download_source(cfg: SourceConfig) -> None:
    """Config checks of the downloaded-set kinds (values only; paths are checked when records load)."""
    if not cfg.images_dir:
        raise ConfigError(f"source.images_dir is required for source.kind = '{cfg.kind}' (the downloaded set's folder)")
    if cfg.label is None:
        raise ConfigError(f"source.label is required for source.kind = '{cfg.kind}': 'real' or 'fake'")
    if cfg.frames_per_video is not None:
        if cfg.kind != "frames":
            raise ConfigError(f"source.frames_per_video applies to source.kind = 'frames', not '{cfg.kind}'")
        if cfg.frames_per_video < 1:
            raise ConfigError(f"source.frames_per_video = {cfg.frames_per_video} must be >= 1 or null")


def check_image_header(source: str | Path | bytes, name: str | None = None) -> tuple[str, tuple[int, int]]:
    """(format, (w, h)) read from the header only; ImageLoadError when the file is too big, not an image
    or has more than MAX_IMAGE_PIXELS pixels. Nothing is decoded."""
    from PIL import Image

    name = name or ("<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))
    size = len(source) if isinstance(source, (bytes, bytearray)) else os.stat(source).st_size
    max_bytes, max_pixels = MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
    if size == 0:
        raise ImageLoadError(f"image '{name}' is empty (0 bytes)")
    if size > max_bytes:
        raise ImageLoadError(f"image '{name}' is {size} bytes, more than the {max_bytes} byte limit")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)) as img:
            fmt, (w, h) = img.format, img.size
    except Exception as exc:  # noqa: BLE001 - hostile input: any parser failure (incl. decompression bombs)
        raise ImageLoadError(f"cannot read image header of '{name}': {type(exc).__name__}: {exc}") from None
    if w < 1 or h < 1 or w * h > max_pixels:
        raise ImageLoadError(f"image '{name}' is {w}x{h} pixels, outside the limit of {max_pixels} pixels")
    return fmt or "", (w, h)


def checked(record: Record) -> Record:
    """The record, or a copy carrying `error` when its image fails the header limits."""
    if record.error or not record.image_path:
        return record
    try:
        check_image_header(record.image_path)
    except (ImageLoadError, OSError) as exc:
        return with_error(record, str(exc))
    return record


def with_error(record: Record, message: str) -> Record:
    """A copy of `record` whose sample will be recorded as failed with `message`."""
    return dataclasses.replace(record, error=message)


def download_extra(src: SourceConfig, /, **more) -> dict:
    """What every record of a downloaded set carries into the sample metadata."""
    return {"label": src.label, "download_set": src.set_name or src.kind, **more}


def _images_under(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ConfigError(f"source.images_dir '{root}' is not a folder")
    from fakeforge.images import image_files

    return image_files(root)


def _unique_ids(rel_paths: list[str]) -> list[str]:
    """Image ids: the relative path without extension, or with it where two files share a stem."""
    stems = [str(Path(r).with_suffix("")) for r in rel_paths]
    counts: dict[str, int] = defaultdict(int)
    for s in stems:
        counts[s] += 1
    return [s if counts[s] == 1 else r for s, r in zip(stems, rel_paths)]


def read_caption_table(path: Path) -> dict[str, str]:
    """File name -> caption from a CSV (a file column and a caption/prompt column) or JSON file."""
    if not path.is_file():
        raise ConfigError(f"source.captions_file '{path}' not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".json", ".jsonl"):
        try:
            data = ([json.loads(ln) for ln in text.splitlines() if ln.strip()] if path.suffix.lower() == ".jsonl"
                    else json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"source.captions_file '{path}' is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        rows = data if isinstance(data, list) else []
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    table = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"source.captions_file '{path}': entry {i} is not a mapping")
        low = {str(k).strip().lower(): v for k, v in row.items()}
        file_col = next((c for c in _FILE_COLUMNS if c in low), None)
        cap_col = next((c for c in _CAPTION_COLUMNS if c in low), None)
        if file_col is None or cap_col is None:
            raise ConfigError(f"source.captions_file '{path}' needs a file column ({', '.join(_FILE_COLUMNS)}) and "
                              f"a caption column ({', '.join(_CAPTION_COLUMNS)}); got {sorted(low)}")
        table[str(low[file_col]).strip()] = " ".join(str(low[cap_col] or "").split())
    return table


def read_folder(cfg: SourceConfig) -> dict[str, list[Record]]:
    """Image id -> [record] for every image under images_dir (one record per image, caption_id "0")."""
    root = Path(cfg.images_dir)
    files = _images_under(root)
    if not files:
        raise ConfigError(f"source.images_dir '{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    table = read_caption_table(Path(cfg.captions_file)) if cfg.captions_file else {}
    rel = [p.relative_to(root).as_posix() for p in files]
    out = {}
    for path, r, image_id in zip(files, rel, _unique_ids(rel)):
        caption = table.get(r, table.get(path.name))
        if caption is None:
            side = path.with_suffix(".txt")
            caption = " ".join(side.read_text(errors="replace").split()) if side.is_file() else ""
        out[image_id] = [Record(image_id, "0", caption, str(path), download_extra(cfg, file_name=r))]
    return out


def evenly_spaced(n_items: int, n_pick: int | None) -> list[int]:
    """Indices of `n_pick` items spread evenly over `n_items` (centres of equal segments); all if None."""
    if n_pick is None or n_pick >= n_items:
        return list(range(n_items))
    return [int((i + 0.5) * n_items / n_pick) for i in range(n_pick)]


def read_frames(cfg: SourceConfig) -> dict[str, list[Record]]:
    """Video id -> records of its sampled frames. A video folder whose files include no image gives one
    record carrying the error (it becomes a failed sample, not a crash)."""
    root = Path(cfg.images_dir)
    if not root.is_dir():
        raise ConfigError(f"source.images_dir '{root}' is not a folder")
    videos: dict[Path, list[Path]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        frames = sorted((here / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS), key=_natural)
        if frames or (not dirnames and here != root):  # an empty leaf folder is a video without frames
            videos[here] = frames
    if not videos:
        raise ConfigError(f"source.images_dir '{root}' holds no video frame folders")
    out = {}
    for folder, frames in sorted(videos.items()):
        video_id = folder.relative_to(root).as_posix() if folder != root else root.name
        if not frames:
            others = sorted(p.name for p in folder.iterdir())[:3]
            msg = (f"video folder '{folder}' has no readable frames (no {', '.join(IMAGE_EXTENSIONS)} files"
                   + (f"; found e.g. {', '.join(others)})" if others else "; it is empty)"))
            out[video_id] = [Record(video_id, "none", "", None, download_extra(cfg), error=msg)]
            continue
        picks = evenly_spaced(len(frames), cfg.frames_per_video)
        out[video_id] = [Record(video_id, f"{i:06d}", "", str(frames[i]),
                                download_extra(cfg, video=video_id, frame_index=i, frame_file=frames[i].name,
                                               frames_in_video=len(frames)))
                         for i in picks]
    return out


def flag_unreadable_videos(records: list[Record]) -> list[Record]:
    """When none of a video's sampled frames is readable, say so in each of its errors."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_video[r.image_id].append(i)
    out = list(records)
    for video, idx in by_video.items():
        errors = [records[i].error for i in idx]
        if all(errors) and not errors[0].startswith("video folder"):
            for i in idx:
                out[i] = with_error(records[i], f"video '{video}' has no readable frames among the {len(idx)} "
                                                f"sampled: {records[i].error}")
    return out


def _natural(path: Path):
    """Sort key so frame_2 comes before frame_10."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def materialize_folder(workdir: str | Path, cfg: SourceConfig) -> Path:
    """Where archive members of this source are written (inside the build folder)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in (cfg.set_name or cfg.kind))
    folder = Path(workdir) / "_sources" / f"{cfg.kind}-{safe}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_member(folder: Path, image_id: str, data: bytes, fmt: str) -> Path:
    """Write checked image bytes under a name made from `image_id` (never from the archive), atomically."""
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(fmt, ".img")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in image_id)[:150] or "image"
    path = folder / f"{safe}{ext}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    write_atomic(path, data, fsync=False)
    return path
