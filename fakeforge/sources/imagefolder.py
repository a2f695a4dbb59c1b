"""ImageFolder reader: `<root>/<class>/<image>` (ImageNet train/val once sorted into class folders).

Labels: when every class folder is an ImageNet WordNet id (n01440764, ...), the label is its standard
ImageNet-1k index (`label_space: imagenet-1k`, the order timm classifiers use); otherwise it is the
folder's position in the sorted class list (`label_space: folder`). Records carry no caption.
"""
from __future__ import annotations

from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.images import IMAGE_EXTENSIONS, image_files
from fakeforge.sources.base import Record, SourceKind
from fakeforge.sources.imagenet_labels import WNID, imagenet_classes


def read_imagefolder(images_dir: str | Path | None) -> dict[str, list[Record]]:
    """Image id (`<class>/<relative stem>`) -> [one record]; ConfigError naming the folder when it is
    missing, has no class folders, or holds no images."""
    if not images_dir:
        raise ConfigError("source.images_dir is required for source.kind = 'imagefolder'")
    root = Path(images_dir)
    if not root.is_dir():
        raise ConfigError(f"source.images_dir = '{root}': folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        hint = (f"; it holds {loose} loose image(s): for ImageNet's flat val folder use source.kind: imagenet with "
                "source.labels_file") if loose else ""
        raise ConfigError(f"source.images_dir = '{root}' has no class folders (ImageFolder layout: "
                          f"<root>/<class>/<image>){hint}")
    wnid_index = imagenet_classes()[0] if all(WNID.match(c) for c in classes) else None
    if wnid_index is not None and not all(c in wnid_index for c in classes):
        wnid_index = None  # WordNet ids outside ImageNet-1k: plain folder labels
    by_image: dict[str, list[Record]] = {}
    for idx, cls in enumerate(classes):
        label = wnid_index[cls] if wnid_index is not None else idx
        for path in image_files(root / cls, inside=root):
            rel = path.relative_to(root)
            image_id = rel.with_suffix("").as_posix()
            if image_id in by_image:
                raise ConfigError(f"source.images_dir = '{root}': '{rel}' and "
                                  f"'{by_image[image_id][0].extra['file_name']}' share the id '{image_id}'")
            extra = {"label": label, "class_name": cls, "file_name": rel.as_posix(),
                     "label_space": "imagenet-1k" if wnid_index is not None else "folder"}
            by_image[image_id] = [Record(image_id, "0", "", str(path), extra)]
    if not by_image:
        raise ConfigError(f"source.images_dir = '{root}': its {len(classes)} class folder(s) hold no images "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    return by_image


IMAGEFOLDER = SourceKind(read=lambda cfg, workdir: read_imagefolder(cfg.images_dir), names="images_dir")
