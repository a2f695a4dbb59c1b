"""Detector inputs: shard sets and image folders, transforms, label counts and mean/std statistics.

Set specs (used by `train`, `stats` and `eval`):
  * a shard path accepted by `fakeforge.shards.reader.find_sets`: a .tar, a set folder of tars, a dataset
    folder (one set per subfolder) or NAME=PATH. Labels come from each sample's json "label".
  * an image folder: NAME=real:DIR or NAME=fake:DIR (or real:DIR / fake:DIR, named after the folder),
    walked recursively for .jpg/.jpeg/.png/.webp.

Image loading (`loading`):
  * "fakeforge" (default): `fakeforge.images.load_rgb`: EXIF orientation applied, transparency composited on
    white, 16-bit images scaled to 8 bits, truncated files reported as errors.
  * "official": what the official AntifakePrompt test.py does, for exact parity runs: `Image.open(p)
    .convert("RGB")` (no EXIF rotation, alpha dropped, PIL's own 16-bit conversion), truncated files decoded
    as far as they go (LAVIS sets `ImageFile.LOAD_TRUNCATED_IMAGES`), and folders scanned like its
    `os.walk` filter: names ending exactly in .jpg, .jpeg or .png.
"""
from __future__ import annotations

import io
import json
import logging
import random
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from detector.preprocess import build_transform  # noqa: F401  (the AntifakePrompt rule)
from fakeforge.config import ConfigError
from fakeforge.images import ImageLoadError, find_images, load_rgb
from fakeforge.shards.reader import find_sets, open_shard, sample_image_bytes

log = logging.getLogger(__name__)

LABELS = {"real": 0, "fake": 1}
IMAGE_LOADING = ("fakeforge", "official")
OFFICIAL_EXTENSIONS = (".jpg", ".jpeg", ".png")  # test.py's EXT list, compared case-sensitively
LABEL_NAMES = ("real", "fake")
_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's __key__ / extension split


@dataclass
class SetSpec:
    """One evaluation/training set: tar shards (labels per sample) or an image folder with one label."""

    name: str
    kind: str  # "shards" | "folder"
    paths: list[Path] = field(default_factory=list)
    label: int | None = None  # folders only


def parse_set_specs(specs: list[str]) -> list[SetSpec]:
    """Turn command-line/config set specs into SetSpecs (see the module docstring); names stay unique."""
    out: list[SetSpec] = []
    for spec in specs:
        text = str(spec)
        name, _, rest = text.partition("=") if "=" in text and not Path(text).exists() else ("", "", text)
        kind, _, folder = rest.partition(":")
        if kind in LABELS and folder:
            path = Path(folder)
            if not path.is_dir():
                raise FileNotFoundError(f"image folder not found: '{path}' (from set spec {text!r})")
            out.append(SetSpec(name or path.name, "folder", [path], LABELS[kind]))
            continue
        for set_name, tars in find_sets(text).items():
            if not tars:
                raise FileNotFoundError(f"no .tar shards found for set spec {text!r}")
            out.append(SetSpec(set_name, "shards", list(tars)))
    seen: Counter = Counter()
    for s in out:
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name = f"{s.name}_{seen[s.name]}"
    return out


def label_of(meta: dict) -> int:
    """0 (real) or 1 (fake) from a sample's json; ValueError naming the bad value otherwise."""
    value = meta.get("label") if isinstance(meta, dict) else None
    if isinstance(value, str) and value.lower() in LABELS:
        return LABELS[value.lower()]
    raise ValueError(f"sample json 'label' = {value!r} must be 'real' or 'fake'")


def in_val_split(key: str, fraction: float) -> bool:
    """Deterministic train/val split of shard samples by a hash of the sample key."""
    return fraction > 0 and (zlib.crc32(key.encode()) % 10000) < fraction * 10000


def count_shards(tars: list[Path], val_fraction: float = 0.0) -> dict:
    """Scan the json members of tar shards: sample/label/generator counts per split, without decoding images."""
    summary = {"train": Counter(), "val": Counter(), "generators": Counter(), "bad": 0, "shards": len(tars)}
    for tar in tars:
        try:
            with open_shard(tar) as fh, tarfile.open(fileobj=fh, mode="r|") as tf:  # local file or URL, streamed
                for member in tf:
                    m = _WDS_KEY.match(member.name)
                    if not member.isfile() or not m or m.group(2) != "json":
                        continue
                    try:
                        meta = json.loads(tf.extractfile(member).read())
                        label = label_of(meta)
                    except (ValueError, UnicodeDecodeError):
                        summary["bad"] += 1
                        continue
                    split = "val" if in_val_split(m.group(1), val_fraction) else "train"
                    summary[split][LABEL_NAMES[label]] += 1
                    summary["generators"][str(meta.get("generator", "?"))] += 1
        except (tarfile.TarError, OSError) as exc:
            log.warning("cannot read shard %s: %s", tar, exc)
            summary["bad"] += 1
    return {"shards": summary["shards"], "bad_samples": summary["bad"],
            "train": dict(summary["train"]), "val": dict(summary["val"]),
            "generators": dict(summary["generators"])}


# ------------------------------------------------------------------------------------------ transforms
# ------------------------------------------------------------------------------------------ shard reading
def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def iter_shard_samples(tars: list[Path], shuffle: bool = False, seed: int = 0,
                       split_nodes: bool = True) -> Iterator[dict]:
    """Raw webdataset samples of `tars` (split across nodes unless `split_nodes` is False, and across
    DataLoader workers); unreadable shards are logged and skipped."""
    import webdataset as wds

    urls = [str(t) for t in tars]
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle else False,
                        nodesplitter=wds.split_by_node if split_nodes else None,
                        workersplitter=wds.split_by_worker, empty_check=False, seed=seed,
                        handler=wds.warn_and_continue)
    yield from ds


def load_image(source: str | Path | bytes, loading: str = "fakeforge") -> Image.Image:
    """An RGB PIL image from a path or bytes by the `loading` policy (see the module docstring); raises
    ImageLoadError naming the source."""
    if loading == "fakeforge":
        return load_rgb(source)
    if loading != "official":
        raise ConfigError(f"image loading = {loading!r} must be one of {list(IMAGE_LOADING)}")
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)) and not source:
        raise ImageLoadError(f"image '{name}' is empty (0 bytes)")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        return img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"cannot read image '{name}': {exc}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def official_find_images(folder: str | Path) -> list[Path]:
    """Files under `folder` whose names end exactly in .jpg/.jpeg/.png (test.py's os.walk filter), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: '{folder}'")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in OFFICIAL_EXTENSIONS)


def decode_sample(sample: dict, loading: str = "fakeforge") -> tuple[str, object, int]:
    """(key, PIL image, label) of a raw sample; raises ValueError/ImageLoadError/KeyError when unusable."""
    meta = sample.get("json")
    meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
    label = label_of(meta)
    _ext, data = sample_image_bytes(sample)
    return str(sample.get("__key__")), load_image(data, loading), label


class ShardStream(IterableDataset):
    """(image tensor, label, key) from several shard sets.

    split="train": an endless stream; each step picks a set with probability `weights[set]`, reads its
    shards in shuffled order (repeating them), and shuffles samples through a buffer. split="val": one
    ordered pass. With `val_fraction` > 0 samples whose key hashes into the fraction go to "val" only.
    `augment` (a fakeforge.augment.RandomAugment) degrades each decoded image before `transform`, drawn from
    the stream's seed, the sample key and its visit number. Unusable samples (bad json label, unreadable image,
    an augmentation that cannot apply) are logged and skipped.
    """

    def __init__(self, sets: dict[str, list[Path]], transform: Callable, split: str = "train",
                 weights: dict[str, float] | None = None, val_fraction: float = 0.0, seed: int = 0,
                 shuffle_buffer: int = 1000, augment: Callable | None = None):
        super().__init__()
        self.sets, self.transform, self.split, self.augment = sets, transform, split, augment
        self.weights = weights or {name: 1.0 for name in sets}
        self.val_fraction, self.seed, self.shuffle_buffer = val_fraction, seed, shuffle_buffer
        self.skipped = 0

    def _keep(self, key: str) -> bool:
        if self.val_fraction <= 0:
            return True
        return in_val_split(key, self.val_fraction) == (self.split == "val")

    def _samples(self, tars: list[Path], rng: random.Random) -> Iterator[tuple]:
        endless = self.split == "train"
        visits: Counter = Counter()
        while True:
            seen = 0
            for sample in iter_shard_samples(tars, shuffle=endless, seed=rng.randrange(1 << 30)):
                seen += 1
                if not self._keep(str(sample.get("__key__"))):
                    continue
                try:
                    key, img, label = decode_sample(sample)
                    if self.augment:
                        visits[key] += 1
                        img = self.augment(img, key, self.seed, visits[key] - 1)
                except (ValueError, KeyError, ImageLoadError) as exc:
                    self.skipped += 1
                    log.warning("skipping sample %s: %s", sample.get("__key__"), exc)
                    continue
                yield self.transform(img), label, key
            if not endless or seen == 0:  # this worker has no shard of the set: stop instead of spinning
                return

    def __iter__(self):
        info = get_worker_info()
        rank, _world = _rank_world()
        rng = random.Random(self.seed * 1_000_003 + rank * 1009 + (info.id if info else 0))
        streams = {name: self._samples(tars, rng) for name, tars in self.sets.items()}
        if self.split != "train":
            for stream in streams.values():
                yield from stream
            return
        buffer: list = []
        while streams:
            names = list(streams)
            name = rng.choices(names, weights=[self.weights.get(n, 0.0) for n in names])[0]
            try:
                item = next(streams[name])
            except StopIteration:
                del streams[name]
                continue
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], item = item, buffer[i]
            yield item
        rng.shuffle(buffer)
        yield from buffer


# ------------------------------------------------------------------------------------------ any set
def iter_set_images(spec: SetSpec, split_nodes: bool = True,
                    loading: str = "fakeforge") -> Iterator[tuple[str, object, int | None, str | None]]:
    """(key, PIL image or None, label or None, error or None) for every item of a set, in order.
    Bad files/samples come back with their error instead of raising, so a scan can go on.
    Shard sets are split across distributed processes unless `split_nodes` is False."""
    if spec.kind == "folder":
        if loading == "official":
            files, kinds = official_find_images(spec.paths[0]), "/".join(OFFICIAL_EXTENSIONS)
        else:
            files, kinds = find_images(spec.paths[0]), ".jpg/.jpeg/.png/.webp"
        if not files:
            raise FileNotFoundError(f"no {kinds} images under '{spec.paths[0]}' (set {spec.name!r})")
        for path in files:
            try:
                yield str(path), load_image(path, loading), spec.label, None
            except ImageLoadError as exc:
                yield str(path), None, spec.label, str(exc)
        return
    for sample in iter_shard_samples(spec.paths, shuffle=False, split_nodes=split_nodes):
        key = str(sample.get("__key__"))
        try:
            key, img, label = decode_sample(sample, loading)
            yield key, img, label, None
        except (ValueError, KeyError, ImageLoadError) as exc:
            yield key, None, None, str(exc)


def compute_mean_std(specs: list[SetSpec], image_size: int, max_images: int | None = None,
                     geometry=None) -> dict:
    """Per-channel mean/std (0..1 scale) over images after the eval resize + center crop (every shard,
    whatever the distributed rank). `geometry`: a `detector.base.Preprocess` whose resize rule (at its own
    image size) replaces the default bicubic shorter-side resize + centre crop to `image_size`."""
    import numpy as np
    from torchvision import transforms as T
    from tqdm import tqdm

    if geometry is not None:
        image_size = geometry.image_size
        prep = T.Compose(geometry.resize_steps(train=False))
    else:
        prep = T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                          T.CenterCrop(image_size)])
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels, n, bad = 0, 0, 0
    with tqdm(total=max_images, desc="mean/std", unit="img", disable=None) as bar:
        for spec in specs:
            for _key, img, _label, err in iter_set_images(spec, split_nodes=False):
                if err is not None:
                    bad += 1
                    continue
                arr = np.asarray(prep(img), dtype=np.float64).reshape(-1, 3) / 255.0
                total += arr.sum(0)
                total_sq += (arr ** 2).sum(0)
                pixels += arr.shape[0]
                n += 1
                bar.update(1)
                if max_images and n >= max_images:
                    break
            if max_images and n >= max_images:
                break
    if n == 0:
        raise ConfigError(f"no readable images in sets {[s.name for s in specs]} to compute mean/std from")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean ** 2, 1e-12))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
            "images": n, "skipped": bad, "image_size": image_size, "sets": [s.name for s in specs]}
