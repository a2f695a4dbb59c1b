"""Downloaded sets stored in archives: WebDataset tar shards and DiffusionDB (parquet metadata + zip parts).

Archives are read, never extracted: a member is looked up by the name the metadata (or the shard's
own sample grouping) gives, must be a regular file no bigger than the byte limit, its bytes must pass
the image-header limits, and only then is it written under the build folder with a name made from
the sample id (fakeforge/sources/downloads.py: `write_member`). Paths stored in an archive never
become file-system paths. A member that fails becomes that sample's recorded error.

Layouts (docs/download_sets.md):
  shards       images_dir/**/*.tar (also .tar.gz): WebDataset samples `<key>.<ext>`; the image is the
               first of jpg/jpeg/png/webp, the caption the `txt` member or `caption`/`prompt` of `json`
  diffusiondb  captions_file = metadata.parquet (or metadata-large.parquet) with columns image_name,
               prompt, part_id (+ seed, step, cfg, sampler, width, height); images_dir holds
               part-NNNNNN.zip archives (any sub-folder). Only rows whose part was downloaded are used.
"""
from __future__ import annotations

import json
import random
import re
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.images import ImageLoadError
from fakeforge.sources import downloads
from fakeforge.sources.base import Record, SourceConfig
from fakeforge.sources.downloads import (
    check_image_header,
    download_extra,
    materialize_folder,
    with_error,
    write_member,
)

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_MAX_TEXT_BYTES = 1 * 2**20
_PART = re.compile(r"^part-(\d{6})\.zip$")


# ------------------------------------------------------------------ WebDataset shards


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset grouping: key = folder + base name up to the first dot, extension = the rest (lower case)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _scan_shards(root: Path) -> dict[str, dict]:
    """Sample id -> {'tar': path, 'image': TarInfo, 'caption': str} over every shard under `root`."""
    tars = sorted(p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".tar") or p.name.endswith(".tar.gz")))
    if not tars:
        raise ConfigError(f"source.images_dir '{root}' holds no .tar shards")
    samples: dict[str, dict] = {}
    for tar_path in tars:
        groups: dict[str, dict] = defaultdict(dict)
        try:
            with tarfile.open(tar_path, "r:*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue  # links, devices, folders: ignored, never followed
                    key, ext = _split_member(member.name)
                    groups[key][ext] = member
                    if ext in ("txt", "json") and member.size <= _MAX_TEXT_BYTES:
                        groups[key][f"_{ext}"] = tf.extractfile(member).read().decode("utf-8", "replace")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ConfigError(f"shard '{tar_path}' is not a readable tar file: {exc}") from None
        rel = tar_path.relative_to(root).as_posix()
        for key, members in groups.items():
            image_ext = next((e for e in _IMAGE_EXTS if e in members), None)
            if image_ext is None:
                continue
            sample_id = f"{rel.split('.')[0]}/{key}"
            samples[sample_id] = {"tar": tar_path, "member": members[image_ext], "caption": _caption(members),
                                  "shard": rel, "key": key}
    return samples


def _caption(members: dict) -> str:
    if "_txt" in members:
        return " ".join(members["_txt"].split())
    if "_json" in members:
        try:
            meta = json.loads(members["_json"])
        except json.JSONDecodeError:
            return ""
        if isinstance(meta, dict):
            return " ".join(str(meta.get("caption") or meta.get("prompt") or "").split())
    return ""


def read_shards(cfg: SourceConfig) -> dict[str, list[Record]]:
    """Sample id -> [record]; the image is materialised later, for selected records only."""
    samples = _scan_shards(Path(cfg.images_dir))
    return {sid: [Record(sid, "0", s["caption"], None,
                         download_extra(cfg, shard=s["shard"], shard_key=s["key"]))]
            for sid, s in samples.items()}


def materialize_shards(records: list[Record], cfg: SourceConfig, workdir) -> list[Record]:
    """Write the selected samples' images (after the limits) under the build folder; errors per record."""
    samples = _scan_shards(Path(cfg.images_dir))
    folder = materialize_folder(workdir, cfg)
    by_tar: dict[Path, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_tar[samples[rec.image_id]["tar"]].append(i)
    out = list(records)
    for tar_path, idx in by_tar.items():
        with tarfile.open(tar_path, "r:*") as tf:
            for i in idx:
                rec = records[i]
                member = samples[rec.image_id]["member"]
                out[i] = _materialize(rec, folder, f"{tar_path.name}:{member.name}", member.size,
                                      lambda m=member, t=tf: t.extractfile(m).read(m.size))
    return out


# ------------------------------------------------------------------ DiffusionDB


_DDB_EXTRA = ["seed", "step", "cfg", "sampler", "width", "height"]


def _read_parquet(path: Path, columns: list[str]):
    """The parquet table with `columns` (required) plus DiffusionDB's generation settings when present."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading DiffusionDB's parquet metadata needs pyarrow (pip install pyarrow, or the "
                          "'downloads' extra)") from None
    if not path.is_file():
        raise ConfigError(f"DiffusionDB metadata file not found: '{path}'")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001 - not a parquet file
        raise ConfigError(f"DiffusionDB metadata '{path}' is not a readable parquet file: {exc}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConfigError(f"DiffusionDB metadata '{path}' lacks the column(s) {missing} (has {names})")
    return pq.read_table(path, columns=columns + [c for c in _DDB_EXTRA if c in names])


def _parts(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        raise ConfigError(f"source.images_dir '{root}' is not a folder")
    return {int(m.group(1)): p for p in sorted(root.rglob("part-*.zip")) if (m := _PART.match(p.name))}


def read_diffusiondb(cfg: SourceConfig) -> dict[str, list[Record]]:
    """Image id -> [record] for the metadata rows whose part archive is present. The seeded selection of
    every source (shuffle the sorted ids, keep `limit`) is done on the names first, so a 2M-row table
    costs records only for the selected rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = _parts(Path(cfg.images_dir))
    if not parts:
        raise ConfigError(f"source.images_dir '{cfg.images_dir}' holds no DiffusionDB part-NNNNNN.zip archives")
    table = _read_parquet(Path(cfg.captions_file), ["image_name", "prompt", "part_id"])
    table = table.filter(pc.is_in(table["part_id"], value_set=pa.array(sorted(parts), table["part_id"].type)))
    if table.num_rows == 0:
        raise ConfigError(f"no row of '{cfg.captions_file}' belongs to the parts found under '{cfg.images_dir}' "
                          f"(parts {sorted(parts)[:5]}...)")
    names = [str(n) for n in table["image_name"].to_pylist()]
    row_of = {n: i for i, n in enumerate(names)}
    ids = sorted(row_of)
    random.Random(cfg.seed).shuffle(ids)
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
    chosen = table.take(pa.array([row_of[n] for n in ids])).to_pylist()
    out = {}
    for row in chosen:
        image_id = Path(row["image_name"]).stem
        extra = download_extra(cfg, image_name=row["image_name"], part_id=int(row["part_id"]),
                               **{k: row[k] for k in _DDB_EXTRA if k in row})
        out[image_id] = [Record(image_id, "0", " ".join(str(row["prompt"] or "").split()), None, extra)]
    return out


def materialize_diffusiondb(records: list[Record], cfg: SourceConfig, workdir) -> list[Record]:
    parts = _parts(Path(cfg.images_dir))
    folder = materialize_folder(workdir, cfg)
    by_part: dict[int, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_part[rec.extra["part_id"]].append(i)
    out = list(records)
    for part_id, idx in by_part.items():
        try:
            zf = zipfile.ZipFile(parts[part_id])
        except (zipfile.BadZipFile, OSError) as exc:
            for i in idx:
                out[i] = with_error(records[i], f"archive '{parts[part_id]}' is not readable: {exc}")
            continue
        with zf:
            for i in idx:
                rec = records[i]
                name = rec.extra["image_name"]
                try:
                    info = zf.getinfo(name)
                except KeyError:
                    out[i] = with_error(rec, f"image '{name}' is not in '{parts[part_id].name}'")
                    continue
                out[i] = _materialize(rec, folder, f"{parts[part_id].name}:{name}", info.file_size,
                                      lambda inf=info, z=zf: z.read(inf))
    return out


# ------------------------------------------------------------------ shared


def _materialize(rec: Record, folder: Path, label: str, size: int, read) -> Record:
    """Size limit -> read -> header limits -> write under `folder`; any failure is the record's error."""
    limit = downloads.MAX_IMAGE_BYTES
    if size > limit:
        return with_error(rec, f"archive member '{label}' is {size} bytes, more than the {limit} byte limit")
    try:
        data = read()
        fmt, _ = check_image_header(data, label)
    except ImageLoadError as exc:
        return with_error(rec, str(exc))
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError) as exc:
        return with_error(rec, f"cannot read archive member '{label}': {type(exc).__name__}: {exc}")
    path = write_member(folder, rec.image_id, data, fmt)
    return Record(rec.image_id, rec.caption_id, rec.caption, str(path), rec.extra)


def materialize(records: list[Record], cfg: SourceConfig, workdir) -> list[Record]:
    """Archive-backed records -> records whose image_path is a checked file under the build folder."""
    if cfg.kind == "shards":
        return materialize_shards(records, cfg, workdir)
    if cfg.kind == "diffusiondb":
        return materialize_diffusiondb(records, cfg, workdir)
    return records


__all__ = ["materialize", "read_diffusiondb", "read_shards"]
