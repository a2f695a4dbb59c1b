"""Real photos that ship inside installed packages, as a small COCO-layout source (`source.kind: photos`).

scikit-image, scikit-learn and matplotlib each carry a few real photographs for their examples; they load
offline. This source writes several deterministic crops of each (so a demo has dozens of distinct real
images), with hand-written COCO-style captions, as `captions_photos.json` + `images/*.png` (lossless, so
the build's image policy is the first lossy encoding, as for the fakes). Each record keeps its photo's
name, package and licence in the sample metadata.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from fakeforge.files import write_atomic
from fakeforge.sources.base import SourceKind

# name -> (loader description, licence, captions)
PHOTOS: dict[str, tuple[str, str, list[str]]] = {
    "astronaut": ("skimage.data.astronaut", "public domain (NASA)",
                  ["an astronaut in a white space suit in front of a flag", "a smiling astronaut posing for a portrait",
                   "a woman in a space suit holding a helmet"]),
    "chelsea": ("skimage.data.chelsea", "CC0 (Stefan van der Walt)",
                ["a tabby cat sitting on a wooden floor", "a striped cat looking to the side",
                 "close up of a brown and grey cat"]),
    "coffee": ("skimage.data.coffee", "CC0 (Rachel Michetti)",
               ["a cup of coffee on a saucer with a spoon", "a white coffee cup on a wooden table",
                "a latte in a porcelain cup seen from above"]),
    "rocket": ("skimage.data.rocket", "public domain (SpaceX)",
               ["a rocket lifting off from a launch pad", "a launch tower and a rocket under a blue sky",
                "smoke below a rocket at launch"]),
    "camera": ("skimage.data.camera", "CC0 (Lav Varshney)",
               ["a black and white photo of a man with a camera on a tripod", "a photographer standing in a field",
                "a man in a coat looking through a camera"]),
    "china": ("sklearn.datasets.load_sample_images (china.jpg)", "CC BY 2.0 (see scikit-learn's README)",
              ["a traditional chinese temple with a curved roof", "an old pagoda surrounded by trees",
               "a temple building under a clear sky"]),
    "flower": ("sklearn.datasets.load_sample_images (flower.jpg)", "CC BY 2.0 (see scikit-learn's README)",
               ["a pink flower in close up", "a blossom with many petals and green leaves",
                "a macro photo of a flower"]),
    "grace_hopper": ("matplotlib sample_data/grace_hopper.jpg", "public domain (US Navy)",
                     ["a portrait of a woman in a navy uniform", "an officer in uniform smiling at the camera",
                      "an old photo of a woman with medals on her jacket"]),
}
CROPS_PER_PHOTO = 6
#: `source.split` of the photos source: which crops of every photo it gives (the whole photo is crop 0).
SPLITS = {"train": range(0, 4), "test": range(4, CROPS_PER_PHOTO), "all": range(0, CROPS_PER_PHOTO)}


def _load(name: str) -> Image.Image:
    """The photo as 8-bit RGB (ImportError names the package to install)."""
    if name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        try:
            import skimage.data
        except ImportError:
            raise ImportError("source.kind 'photos' needs scikit-image: pip install scikit-image") from None
        arr = getattr(skimage.data, name)()
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    else:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            return Image.open(fh).convert("RGB")
    arr = np.asarray(arr)
    return Image.fromarray(arr).convert("RGB")


def _crops(img: Image.Image, n: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """The whole photo first, then n-1 seeded crops covering 45-80 % of each side."""
    w, h = img.size
    boxes = [(0, 0, w, h)]
    for _ in range(n - 1):
        cw, ch = int(w * rng.uniform(0.45, 0.8)), int(h * rng.uniform(0.45, 0.8))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        boxes.append((x, y, x + cw, y + ch))
    return boxes


def write_photos_coco(root: str | Path, crops_per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> tuple[Path, Path]:
    """Write `root/captions_photos.json` and `root/images/*.png` once; returns (captions_file, images_dir)."""
    root = Path(root)
    images_dir = root / "images"
    captions_file = root / "captions_photos.json"
    if captions_file.is_file():
        return captions_file, images_dir
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations = [], []
    for p, (name, (origin, licence, captions)) in enumerate(PHOTOS.items()):
        photo = _load(name)
        for c, box in enumerate(_crops(photo, crops_per_photo, rng)):
            image_id = 100 * (p + 1) + c
            file_name = f"{name}_{c}.png"
            crop = photo.crop(box)
            crop.save(images_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": crop.width, "height": crop.height,
                           "photo": name, "origin": origin, "licence": licence, "crop_box": list(box)})
            for j, text in enumerate(captions):
                annotations.append({"id": image_id * 10 + j, "image_id": image_id, "caption": text})
    write_atomic(captions_file, json.dumps({"info": {"description": "fakeforge photos source: real sample photos shipped with "
                                                       "scikit-image, scikit-learn and matplotlib"},
                               "images": images, "annotations": annotations}))
    return captions_file, images_dir


def crop_index(image_id: str) -> int:
    """Crop number of a photos-source image id (ids are 100 * (photo + 1) + crop)."""
    return int(image_id) % 100


def split_records(by_image: dict, split: str) -> dict:
    """Keep the crops of `split` ("train": crops 0-3 of every photo, "test": crops 4-5, "all")."""
    from fakeforge.config import ConfigError

    if split not in SPLITS:
        raise ConfigError(f"source.split = {split!r} is not a split of the photos source; choose from {sorted(SPLITS)}")
    keep = SPLITS[split]
    return {k: v for k, v in by_image.items() if crop_index(k) in keep}


def _read_photos(cfg, workdir) -> dict:
    from fakeforge.sources.coco import read_coco_captions

    return split_records(read_coco_captions(*write_photos_coco(Path(workdir) / "_photos_source")), cfg.split)


PHOTOS_SOURCE = SourceKind(read=_read_photos)
