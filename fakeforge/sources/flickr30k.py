"""Flickr30k captions reader: Karpathy `dataset_flickr30k.json` or the `results.csv` layout."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.sources.base import Record, SourceKind, caption_text


def read_flickr30k(captions_file: str | Path, images_dir: str | Path | None, split: str = "all"
                   ) -> dict[str, list[Record]]:
    """Image id (file stem) -> caption records; `split` filters the Karpathy json (train/val/test/all)."""
    path = Path(captions_file)
    if not path.is_file():
        raise ConfigError(f"Flickr30k captions file not found: '{path}'")
    if path.suffix.lower() == ".json":
        rows = _karpathy_rows(path, split)
    elif path.suffix.lower() in (".csv", ".txt", ".token"):
        if split != "all":
            raise ConfigError(f"source.split = '{split}' needs the Karpathy json; '{path}' has no splits "
                              "(use split: all)")
        rows = _csv_rows(path)
    else:
        raise ConfigError(f"Flickr30k captions file '{path}' must be dataset_flickr30k.json or results.csv")
    by_image: dict[str, list[Record]] = defaultdict(list)
    for filename, caption_id, caption in rows:
        image_id = Path(filename).stem
        image_path = str(Path(images_dir) / filename) if images_dir else None
        text, error = caption_text(caption)
        by_image[image_id].append(Record(image_id, str(caption_id), text, image_path, {"file_name": filename},
                                         error))
    if not by_image:
        raise ConfigError(f"Flickr30k captions file '{path}' holds no captions for split '{split}'")
    return dict(by_image)


def _karpathy_rows(path: Path, split: str):
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Flickr30k captions file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"Flickr30k captions file '{path}' must hold an 'images' list (Karpathy layout)")
    rows = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("filename"), str) \
                or not isinstance(img.get("sentences"), list):
            raise ConfigError(f"Flickr30k captions file '{path}': images[{i}] needs 'filename' and 'sentences'")
        if split != "all" and img.get("split") != split:
            continue
        for j, sent in enumerate(img["sentences"]):
            if not isinstance(sent, dict):
                raise ConfigError(f"Flickr30k captions file '{path}': images[{i}].sentences[{j}] must be a mapping "
                                  f"with 'raw' text, got {sent!r}")
            rows.append((img["filename"], sent.get("sentid", j), sent.get("raw")))  # a bad 'raw' fails that sample
    return rows


def _csv_rows(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"Flickr30k captions file '{path}' is empty")
    delimiter = "|" if "|" in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    if header[:3] != ["image_name", "comment_number", "comment"]:
        raise ConfigError(f"Flickr30k results.csv '{path}' must start with the header "
                          f"'image_name| comment_number| comment', got {header}")
    rows = []
    for n, row in enumerate(reader, start=2):
        if len(row) < 3:
            raise ConfigError(f"Flickr30k results.csv '{path}' line {n}: expected 3 fields, got {row!r}")
        rows.append((row[0].strip(), row[1].strip(), delimiter.join(row[2:]).strip()))
    return rows


FLICKR30K = SourceKind(read=lambda cfg, workdir: read_flickr30k(cfg.captions_file, cfg.images_dir, cfg.split))
