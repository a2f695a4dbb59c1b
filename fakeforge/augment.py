"""Random training augmentation from the degradation operations (`data.augment` of a training config).

The schema is a list of steps, each an operation name, a probability and its parameters:

    augment:
      - {op: blur, p: 0.5, sigma: [0.0, 3.0]}     # CNNSpot's recipe: blur half the time, sigma ~ U[0, 3]
      - {op: jpeg, p: 0.5, quality: [30, 100], library: [cv2, pil]}

A parameter given as two numbers `[lo, hi]` is drawn uniformly per sample: a float parameter (sigma, std,
scale, fraction) from [lo, hi), an integer one (quality, size) from lo..hi inclusive. A list of strings is a
uniform choice among them; anything else is a fixed value. Steps run in the listed order on the decoded PIL
image, before the detector's own transform. Each draw comes from a hash of the seed, the sample key, the
visit number of that sample and the step's place, so a run is reproduced exactly by its seed whatever the
number of workers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.degrade import OPS, Chain, Op, make_op


def _kind(op_cls: type[Op], param: str) -> str:
    """'int', 'float' or 'other': the type a parameter's range is drawn in."""
    ftype = str(next(f.type for f in fields(op_cls) if f.name == param))
    if "float" in ftype:
        return "float"
    return "int" if "int" in ftype else "other"


@dataclass(frozen=True)
class Step:
    """One augmentation step: operation `op` applied with probability `p`, parameters fixed or drawn."""

    op: str
    p: float
    params: dict

    def draw(self, rng: np.random.Generator) -> Op | None:
        """The operation of one sample (None when this step is skipped for it)."""
        if rng.random() >= self.p:
            return None
        cls = OPS[self.op]
        values = {}
        for name, spec in self.params.items():
            if isinstance(spec, list) and spec and all(isinstance(v, str) for v in spec):
                values[name] = spec[int(rng.integers(len(spec)))]
            elif isinstance(spec, list):
                lo, hi = spec
                values[name] = (int(rng.integers(lo, hi + 1)) if _kind(cls, name) == "int"
                                else float(rng.uniform(lo, hi)))
            else:
                values[name] = spec
        return make_op(self.op, values)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ends(params: dict):
    """Parameter sets at the first value of every range/choice, then each other end or choice in turn."""
    base = {k: (v[0] if isinstance(v, list) and v else v) for k, v in params.items()}
    yield base
    for k, v in params.items():
        if isinstance(v, list):
            for x in v[1:]:
                yield {**base, k: x}


def parse_step(item: Any, where: str) -> Step:
    """A Step from one `data.augment` entry; ConfigError naming `where` and the bad value."""
    if not isinstance(item, dict) or not isinstance(item.get("op"), str):
        raise ConfigError(f"{where} = {item!r} must be a mapping with 'op:' naming one of {', '.join(sorted(OPS))}")
    params = dict(item)
    name, p = params.pop("op"), params.pop("p", 1.0)
    if name not in OPS:
        raise ConfigError(f"{where}.op = {name!r} is not a degradation; known: {', '.join(sorted(OPS))}")
    if not _number(p) or not 0 <= p <= 1:
        raise ConfigError(f"{where}.p = {p!r} must be a probability within [0, 1]")
    for key, spec in params.items():
        if isinstance(spec, list) and not all(isinstance(v, str) for v in spec):
            if len(spec) != 2 or not all(_number(v) for v in spec) or spec[0] > spec[1]:
                raise ConfigError(f"{where}.{key} = {spec!r} must be a range [low, high] of two numbers, low <= high")
            if _kind(OPS[name], key) == "int" and not all(isinstance(v, int) for v in spec):
                raise ConfigError(f"{where}.{key} = {spec!r} must be a range of two integers")
    for candidate in _ends(params):  # both ends of every range and every choice must make a valid operation
        try:
            make_op(name, candidate)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return Step(name, float(p), params)


class RandomAugment:
    """The augmentation of a training config: `aug(img, key, seed, visit)` -> augmented PIL image."""

    def __init__(self, steps: list[Step]):
        self.steps = list(steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def sample(self, key: str, seed: int = 0, visit: int = 0) -> Chain:
        """The operations drawn for one view of sample `key` (the empty chain when every step is skipped)."""
        ops = []
        for i, step in enumerate(self.steps):
            digest = hashlib.sha256(f"augment\x00{seed}\x00{key}\x00{visit}\x00{i}".encode()).digest()
            op = step.draw(np.random.default_rng(int.from_bytes(digest[:16], "little")))
            if op is not None:
                ops.append(op)
        return Chain(tuple(ops))

    def __call__(self, img: Image.Image, key: str, seed: int = 0, visit: int = 0) -> Image.Image:
        """Augment one view of sample `key`; raises fakeforge.degrade.DegradeError when a drawn op cannot apply."""
        return self.sample(key, seed, visit).apply(img, key=f"{key}#{visit}", seed=seed)


def parse_augment(items: list | None, where: str = "data.augment") -> RandomAugment:
    """The RandomAugment of a `data.augment` list (empty: no augmentation); ConfigError naming the entry."""
    if items is None:
        return RandomAugment([])
    if not isinstance(items, list):
        raise ConfigError(f"{where} = {items!r} must be a list of steps like {{op: blur, p: 0.5, sigma: [0.0, 3.0]}}")
    return RandomAugment([parse_step(item, f"{where}.{i}") for i, item in enumerate(items)])
