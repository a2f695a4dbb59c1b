"""A small synthetic COCO-layout source (captions json + JPEG images), made offline and deterministically.

It is the embedded default of `fakeforge build`, so the whole pipeline can be dry-run anywhere:
the images are procedurally drawn scenes (sky, ground, a coloured object) that match their captions.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from fakeforge.sources.base import SourceKind

COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60), "yellow": (230, 200, 40),
           "white": (240, 240, 240), "black": (20, 20, 20)}
SHAPES = ["circle", "square", "kite", "boat"]
SCENES = {"on a beach": ((135, 200, 235), (230, 210, 160)), "in a field": ((150, 190, 240), (90, 160, 70)),
          "at night": ((15, 20, 50), (40, 40, 50)), "in the snow": ((200, 210, 225), (245, 245, 250))}


def write_demo_coco(root: str | Path, n_images: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Write `root/captions_demo.json` and `root/images/*.jpg`; returns (captions_file, images_dir).

    The files are written into a private temporary folder that is renamed to `root` in one step, so
    concurrent callers (two launches on one output folder) never see a half-written source."""
    root = Path(root)
    images_dir = root / "images"
    captions_file = root / "captions_demo.json"
    if captions_file.is_file():
        return captions_file, images_dir
    import os
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_demo(tmp, n_images, seed)
        try:
            os.rename(tmp, root)
        except OSError:
            if not captions_file.is_file():  # not a concurrent writer that won the rename: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return captions_file, images_dir


def _write_demo(root: Path, n_images: int, seed: int) -> None:
    images_dir = root / "images"
    captions_file = root / "captions_demo.json"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations = [], []
    for i in range(n_images):
        image_id = 1000 + i
        colour, shape, scene = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SCENES))
        w, h = rng.choice([(96, 72), (80, 80), (72, 96), (120, 90)])
        img = _draw(w, h, COLOURS[colour], shape, SCENES[scene], rng)
        name = f"{image_id:012d}.jpg"
        img.save(images_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        texts = [f"a {colour} {shape} {scene}", f"a photo of a {colour} {shape} {scene}",
                 f"an image of a {shape} that is {colour}"]
        for j, text in enumerate(texts):
            annotations.append({"id": image_id * 10 + j, "image_id": image_id, "caption": text})
    captions_file.write_text(json.dumps({"info": {"description": "fakeforge demo source"}, "images": images,
                                         "annotations": annotations}))


def _draw(w: int, h: int, colour, shape: str, scene, rng: random.Random) -> Image.Image:
    sky, ground = scene
    img = Image.new("RGB", (w, h), sky)
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.5, 0.7))
    draw.rectangle([0, horizon, w, h], fill=ground)
    for _ in range(30):  # a little texture so JPEG and resizing have something to do
        x, y = rng.randrange(w), rng.randrange(h)
        shade = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in (ground if y > horizon else sky))
        draw.point((x, y), fill=shade)
    s = int(min(w, h) * rng.uniform(0.25, 0.4))
    cx, cy = rng.randint(s, w - s), rng.randint(s, max(s + 1, horizon))
    box = [cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "kite":
        draw.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=colour)
    else:
        draw.polygon([(box[0], cy), (box[2], cy), (cx + s // 4, box[3]), (cx - s // 4, box[3])], fill=colour)
        draw.line([(cx, cy), (cx, box[1])], fill=colour, width=2)
    return img


def _read_demo(cfg, workdir) -> dict:
    from fakeforge.sources.coco import read_coco_captions

    return read_coco_captions(*write_demo_coco(Path(workdir) / "_demo_source"))


DEMO = SourceKind(read=_read_demo)
