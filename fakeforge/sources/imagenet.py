"""ImageNet's flat validation folder (ILSVRC2012_val_00000001.JPEG, ...) with its label CSV.

Accepted label files:
  * Kaggle's `LOC_val_solution.csv`: header `ImageId,PredictionString`; the first WordNet id of the
    prediction string is the label;
  * a plain CSV with header `filename,label` (or `image,label`); label = ImageNet-1k index (0-999) or
    WordNet id; the file name may omit its extension.
Labels are ImageNet-1k indices in the standard (sorted WordNet id) order timm classifiers use.
"""
from __future__ import annotations

import csv
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.images import IMAGE_EXTENSIONS
from fakeforge.sources.base import Record, SourceKind
from fakeforge.sources.imagenet_labels import imagenet_classes


def read_imagenet_val(labels_file: str | Path | None, images_dir: str | Path | None) -> dict[str, list[Record]]:
    """Image id (file stem) -> [one record with its ImageNet-1k label]; ConfigError naming the file."""
    if not labels_file:
        raise ConfigError("source.labels_file is required for source.kind = 'imagenet' (LOC_val_solution.csv "
                          "or a filename,label CSV)")
    path = Path(labels_file)
    if not path.is_file():
        raise ConfigError(f"source.labels_file = '{path}': file not found")
    wnid_index, names = imagenet_classes()
    files = {}
    if images_dir and Path(images_dir).is_dir():
        files = {p.stem: p.name for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ConfigError(f"source.labels_file = '{path}' is empty")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] == ["imageid", "predictionstring"]:
        kaggle = True
    elif len(header) >= 2 and header[0] in ("filename", "image", "file_name") and header[1] == "label":
        kaggle = False
    else:
        raise ConfigError(f"source.labels_file = '{path}' must start with the header 'ImageId,PredictionString' "
                          f"(LOC_val_solution.csv) or 'filename,label', got {rows[0]}")
    by_image: dict[str, list[Record]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip():
            raise ConfigError(f"source.labels_file = '{path}' line {n}: expected 2 fields, got {row!r}")
        name = row[0].strip()
        value = (row[1].split() or [""])[0] if kaggle else row[1].strip()  # Kaggle: first id of the boxes
        label = _label(value, wnid_index, f"source.labels_file = '{path}' line {n}")
        stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
        file_name = files.get(stem) or (name if Path(name).suffix else f"{stem}.JPEG")
        image_path = str(Path(images_dir) / file_name) if images_dir else None
        extra = {"label": label, "class_name": names[label], "file_name": file_name, "label_space": "imagenet-1k"}
        by_image[stem] = [Record(stem, "0", "", image_path, extra)]
    if not by_image:
        raise ConfigError(f"source.labels_file = '{path}' holds no labels")
    return by_image


def _label(value: str, wnid_index: dict[str, int], where: str) -> int:
    if value in wnid_index:
        return wnid_index[value]
    if value.isdigit() and int(value) < len(wnid_index):
        return int(value)
    raise ConfigError(f"{where}: label {value!r} is neither an ImageNet-1k WordNet id nor an index 0-999")


IMAGENET = SourceKind(read=lambda cfg, workdir: read_imagenet_val(cfg.labels_file, cfg.images_dir), names="images_dir")
