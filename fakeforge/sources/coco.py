"""COCO captions reader (`captions_train2017.json` / `captions_val2017.json` layout, images beside)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.sources.base import Record, SourceKind, caption_text


def read_coco_captions(captions_file: str | Path, images_dir: str | Path | None) -> dict[str, list[Record]]:
    """Image id -> its caption records. Raises ConfigError naming the file on a missing/malformed file."""
    path = Path(captions_file)
    if not path.is_file():
        raise ConfigError(f"COCO captions file not found: '{path}'")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"COCO captions file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ConfigError(f"COCO captions file '{path}' must hold 'images' and 'annotations' lists "
                          "(the captions_*2017.json layout)")
    files: dict[str, dict] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise ConfigError(f"COCO captions file '{path}': images[{i}] needs 'id' and 'file_name', got {img!r}")
        files[str(img["id"])] = img
    by_image: dict[str, list[Record]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not {"id", "image_id", "caption"} <= set(ann):
            raise ConfigError(f"COCO captions file '{path}': annotations[{i}] needs 'id', 'image_id' and "
                              f"'caption', got {ann!r}")
        image_id = str(ann["image_id"])
        if image_id not in files:
            raise ConfigError(f"COCO captions file '{path}': annotations[{i}] refers to unknown image_id {image_id}")
        info = files[image_id]
        image_path = str(Path(images_dir) / info["file_name"]) if images_dir else None
        extra = {k: info[k] for k in ("width", "height", "file_name", "photo", "licence") if k in info}
        caption, error = caption_text(ann["caption"])
        by_image[image_id].append(Record(image_id, str(ann["id"]), caption, image_path, extra, error))
    return dict(by_image)


COCO = SourceKind(read=lambda cfg, workdir: read_coco_captions(cfg.captions_file, cfg.images_dir))
