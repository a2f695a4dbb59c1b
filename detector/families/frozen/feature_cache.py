"""Backbone features computed once per set and cached on disk, and fitting feature detectors from the cache.

Layout: `<root>/<feature_key>/<set name>-<set fingerprint>.safetensors`, where `feature_key` is a hash of
the backbone (spec, architecture, SHA-256 of its weights), the dtype it runs in and the preprocessing
(`FeatureDetector.feature_identity()`), and the set fingerprint hashes the set's files (paths, sizes,
mtimes). Each file holds `features` [N, D] float32, `labels` [N], `groups` [N] (a hash of the sample's
`source_image_id`, -1 if none: the contrastive head's semantic positives) and, in its metadata, the full
identity, the sample keys and the unreadable samples. A file is used only if the identity and fingerprint
stored inside it equal the current ones; otherwise it is rebuilt (and the reason logged), never reused.

The root is `$FAKEFORGE_FEATURE_CACHE`, else `~/.cache/fakeforge/features`, unless given.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from detector.data import SetSpec, decode_sample, in_val_split, iter_set_images, iter_shard_samples
from detector.families.frozen.base import FeatureDetector
from fakeforge.config import ConfigError
from fakeforge.files import atomic_path
from fakeforge.images import ImageLoadError
from fakeforge.shards.reader import shard_fingerprint

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Backbone features of a set's readable samples, in set order."""

    features: torch.Tensor  # [N, D] float32
    labels: torch.Tensor  # [N] int64: 0 real, 1 fake
    groups: torch.Tensor  # [N] int64: hash of source_image_id, -1 unknown
    keys: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.keys)

    def counts(self) -> dict:
        return {"real": int((self.labels == 0).sum()), "fake": int((self.labels == 1).sum()),
                "errors": len(self.errors)}

    def subset(self, index: torch.Tensor, name: str | None = None) -> "FeatureSet":
        idx = index.tolist()
        return FeatureSet(self.features[index], self.labels[index], self.groups[index],
                          [self.keys[i] for i in idx], [], name or self.name)

    def split(self, fraction: float) -> tuple["FeatureSet", "FeatureSet"]:
        """(train, val) by the same key hash the shard trainer uses for its validation hold-out."""
        held = torch.tensor([in_val_split(k, fraction) for k in self.keys], dtype=torch.bool)
        return (self.subset(torch.nonzero(~held).flatten(), self.name),
                self.subset(torch.nonzero(held).flatten(), f"{self.name}:val"))

    @staticmethod
    def concat(sets: list["FeatureSet"], name: str = "") -> "FeatureSet":
        dim = next((s.features.shape[1] for s in sets if s.features.ndim == 2), 0)
        return FeatureSet(torch.cat([s.features.reshape(-1, dim) for s in sets]) if sets else torch.zeros(0, dim),
                          torch.cat([s.labels for s in sets]) if sets else torch.zeros(0, dtype=torch.long),
                          torch.cat([s.groups for s in sets]) if sets else torch.zeros(0, dtype=torch.long),
                          [k for s in sets for k in s.keys], [e for s in sets for e in s.errors],
                          name or "+".join(s.name for s in sets))


def group_id(source_image_id) -> int:
    """A stable non-negative int64 for a sample's `source_image_id` (-1 when it has none)."""
    text = "" if source_image_id is None else str(source_image_id)
    if not text:
        return -1
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def default_root() -> Path:
    env = os.environ.get("FAKEFORGE_FEATURE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fakeforge" / "features"


def set_fingerprint(spec: SetSpec) -> str:
    """Hash of the set's files (path, size, mtime): a changed or regenerated set gets new features."""
    digest = hashlib.sha256(f"{spec.kind}|{spec.label}".encode())
    if spec.kind == "folder":
        from fakeforge.images import find_images

        files = find_images(spec.paths[0])
    else:
        files = sorted(spec.paths)
    for path in files:
        digest.update(f"{shard_fingerprint(path)}\n".encode())  # local: path|size|mtime; URLs: url|size|ETag
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- extraction
def _decode_shard_sample(sample: dict) -> tuple[str, object, int | None, int, str | None, str | None]:
    key = str(sample.get("__key__"))
    try:
        key, img, label = decode_sample(sample)
        meta = sample.get("json")
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
        caption = meta.get("caption")
        caption = caption if isinstance(caption, str) and caption.strip() else None
        return key, img, label, group_id(meta.get("source_image_id")), None, caption
    except (ValueError, KeyError, ImageLoadError) as exc:
        return key, None, None, -1, str(exc), None


def iter_set_items(spec: SetSpec, workers: int = 4, window: int = 64) -> Iterator[tuple]:
    """(key, PIL image or None, label or None, group, error or None, caption or None) for every item of a set, in
    order (the caption: the shard json's `caption`). Shard samples are decoded by `workers` threads, `window` at a
    time; bad items carry their error."""
    if spec.kind == "folder":
        for key, img, label, err in iter_set_images(spec, split_nodes=False):
            yield key, img, label, -1, err, None
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[dict] = []
        for sample in iter_shard_samples(spec.paths, shuffle=False, split_nodes=False):
            pending.append(sample)
            if len(pending) >= window:
                yield from pool.map(_decode_shard_sample, pending)
                pending = []
        yield from pool.map(_decode_shard_sample, pending)


@torch.no_grad()
def extract_features(detector: FeatureDetector, spec: SetSpec, batch_size: int = 64, workers: int = 4,
                     progress: bool = False) -> FeatureSet:
    """Run the detector's backbone over every readable image of a set (eval preprocessing, batched). Detectors with
    `needs_caption` get each sample's stored caption (None where it has none): `features(pixels, captions=...)`."""
    from tqdm import tqdm

    transform = detector.preprocess.transform(train=False)
    feats, labels, groups, keys, errors = [], [], [], [], []
    batch: list[torch.Tensor] = []
    captions: list[str | None] = []

    def flush():
        if batch:
            extra = {"captions": list(captions)} if getattr(detector, "needs_caption", False) else {}
            feats.append(detector.features(torch.stack(batch), **extra).cpu())
            batch.clear()
            captions.clear()

    for key, img, label, group, err, caption in tqdm(iter_set_items(spec, workers), desc=f"features {spec.name}",
                                            unit="img", disable=not progress or None):
        if err is None and label is None:
            err = "no label"
        if err is not None:
            errors.append((key, err))
            log.warning("skipped %s: %s", key, err)
            continue
        batch.append(transform(img))
        captions.append(caption)
        keys.append(key)
        labels.append(int(label))
        groups.append(int(group))
        if len(batch) >= batch_size:
            flush()
    flush()
    dim = detector.backbone.feature_dim
    return FeatureSet(torch.cat(feats) if feats else torch.zeros(0, dim), torch.tensor(labels, dtype=torch.long),
                      torch.tensor(groups, dtype=torch.long), keys, errors, spec.name)


# ------------------------------------------------------------------------------------------- the cache
class FeatureCache:
    """Feature files per (backbone identity, set); counts what it reused, built and rebuilt."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()
        self.reused: list[str] = []
        self.built: list[str] = []
        self.rebuilt: list[tuple[str, str]] = []  # (set, reason)

    def path_for(self, detector: FeatureDetector, spec: SetSpec, fingerprint: str | None = None) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)[:80] or "set"
        fingerprint = fingerprint or set_fingerprint(spec)
        return self.root / detector.feature_key() / f"{safe}-{fingerprint[:16]}.safetensors"

    def _expected(self, detector: FeatureDetector, spec: SetSpec, fingerprint: str) -> dict:
        return {"cache_version": CACHE_VERSION, "feature": detector.feature_identity(), "set": spec.name,
                "set_fingerprint": fingerprint}

    def load_or_build(self, detector: FeatureDetector, spec: SetSpec, batch_size: int = 64, workers: int = 4,
                      progress: bool = False) -> FeatureSet:
        """The set's features from the cache when the stored identity matches, else computed and stored."""
        fingerprint = set_fingerprint(spec)
        path = self.path_for(detector, spec, fingerprint)
        expected = self._expected(detector, spec, fingerprint)
        if path.is_file():
            stale = self._mismatch(path, expected)
            if stale is None:
                self.reused.append(spec.name)
                return self._read(path, spec.name)
            log.warning("feature cache %s does not match (%s): rebuilding", path, stale)
            self.rebuilt.append((spec.name, stale))
        else:
            self.built.append(spec.name)
        start = time.time()
        fs = extract_features(detector, spec, batch_size, workers, progress)
        self._write(path, fs, expected)
        log.info("cached %d features of %s in %.1f s -> %s", len(fs), spec.name, time.time() - start, path)
        return fs

    @staticmethod
    def _canonical(obj) -> str:
        return json.dumps(obj, sort_keys=True, default=str)

    def _mismatch(self, path: Path, expected: dict) -> str | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            stored = json.loads(meta.get("identity", "null"))
        except (OSError, ValueError, RuntimeError) as exc:  # unreadable / truncated file
            return f"unreadable ({type(exc).__name__})"
        if not isinstance(stored, dict):
            return "no identity stored"
        for key in ("cache_version", "set_fingerprint"):
            if stored.get(key) != expected[key]:
                return f"{key} {stored.get(key)!r} != {expected[key]!r}"
        have, want = stored.get("feature", {}), expected["feature"]
        if self._canonical(have) != self._canonical(want):
            bb_have, bb_want = have.get("backbone", {}), want["backbone"]
            if self._canonical(bb_have) != self._canonical(bb_want):
                return (f"made with backbone {bb_have.get('backbone')!r} (weights "
                        f"{str(bb_have.get('weights_sha256'))[:12]}), this run uses {bb_want['backbone']!r} "
                        f"(weights {bb_want['weights_sha256'][:12]})")
            return f"made with preprocessing {have.get('preprocess')} / dtype {have.get('dtype')}, this run uses " \
                   f"{want['preprocess']} / dtype {want['dtype']}"
        return None

    def _write(self, path: Path, fs: FeatureSet, identity: dict) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": fs.features.float().contiguous(), "labels": fs.labels.contiguous(),
                   "groups": fs.groups.contiguous()}
        meta = {"identity": self._canonical(identity), "keys": json.dumps(fs.keys),
                "errors": json.dumps(fs.errors)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        (path.parent / "backbone.json").write_text(json.dumps(identity["feature"], indent=2, default=str))

    @staticmethod
    def _read(path: Path, name: str) -> FeatureSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            t = {k: fh.get_tensor(k) for k in ("features", "labels", "groups")}
        return FeatureSet(t["features"], t["labels"], t["groups"], json.loads(meta["keys"]),
                          [tuple(e) for e in json.loads(meta["errors"])], name)


# ------------------------------------------------------------------------------------------- fitting
def fit_from_cache(detector: FeatureDetector, train_specs: list[SetSpec], val_specs: list[SetSpec] | None = None,
                   cache: FeatureCache | None = None, val_fraction: float = 0.0, batch_size: int = 64,
                   workers: int = 4, progress: bool = False) -> tuple[list[dict], dict]:
    """Features of every set (cached), then `detector.fit_features`; returns (metric rows, data summary).

    Validation: `val_specs` if given, else `val_fraction` of the training samples held out by key hash."""
    cache = cache or FeatureCache()
    parts = [cache.load_or_build(detector, s, batch_size, workers, progress) for s in train_specs]
    train = FeatureSet.concat(parts, "train")
    if val_specs:
        val = FeatureSet.concat([cache.load_or_build(detector, s, batch_size, workers, progress)
                                 for s in val_specs], "val")
    elif val_fraction > 0:
        train, val = train.split(val_fraction)
    else:
        val = None
    counts = train.counts()
    if min(counts["real"], counts["fake"]) == 0:
        raise ConfigError(f"training data has only one class ({counts['real']} real, {counts['fake']} fake "
                          f"readable samples in {[s.name for s in train_specs]}); add a set of the missing class")
    history = detector.fit_features(train, val)
    summary = {"sets": {p.name: p.counts() for p in parts}, "train_samples": len(train),
               "val_samples": len(val) if val is not None else 0,
               "errors": {p.name: p.errors for p in parts if p.errors},
               "feature_key": detector.feature_key(), "cache": str(cache.root),
               "cache_reused": list(cache.reused), "cache_built": list(cache.built),
               "cache_rebuilt": [list(r) for r in cache.rebuilt]}
    return history, summary
