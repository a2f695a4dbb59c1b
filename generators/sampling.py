"""Per-sample generation settings: config values given as distributions, drawn from each sample's key.

Any top-level generator setting (`num_inference_steps`, `guidance_scale`, `negative_prompt`,
`scheduler`, `strength`, ...), any `call_kwargs` entry and the image `size` ([width, height], setting
`width` and `height`) may be written as a distribution instead of a value:

    num_inference_steps: {choice: [4, 25, 50]}
    guidance_scale: {uniform: [3.0, 12.0]}          # rounded to 4 decimals
    call_kwargs: {max_sequence_length: {int_uniform: [128, 256]}}   # both ends included
    scheduler: {choice: [DPMSolverMultistepScheduler, DDIMScheduler]}
    size: {choice: [[512, 512], [768, 512]]}        # [width, height]

`split_space` moves these out of a raw config into its `sample` mapping (leaving the first possible
value in place, so the config dataclass still type-checks) and checks every possible value through the
config's own `validate()`. `draw` picks one value per entry from a hash of the sample key and the
entry's name: the same sample gets the same settings whatever its batch, shard or rank.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

from fakeforge.config import ConfigError

KINDS = ("choice", "uniform", "int_uniform")
SIZE = "size"


def is_distribution(value: Any) -> bool:
    """True for a one-key mapping `{choice|uniform|int_uniform: ...}`."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def _check_distribution(name: str, dist: dict, path: str) -> None:
    kind, arg = next(iter(dist.items()))
    where = f"{path}.{name}" if path else name
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where} = {dist!r}: 'choice' needs a non-empty list of values")
        return
    if not (isinstance(arg, list) and len(arg) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise ConfigError(f"{where} = {dist!r}: '{kind}' needs [low, high], two numbers")
    if kind == "int_uniform" and not all(isinstance(v, int) for v in arg):
        raise ConfigError(f"{where} = {dist!r}: 'int_uniform' needs two integers")
    if arg[0] > arg[1]:
        raise ConfigError(f"{where} = {dist!r}: low {arg[0]} > high {arg[1]}")


def _extremes(dist: dict) -> list:
    """The values that bound what `dist` can draw: every choice, or both ends of a range."""
    kind, arg = next(iter(dist.items()))
    return list(arg) if kind == "choice" else [arg[0], arg[1]]


def _set_value(raw: dict, name: str, value: Any) -> None:
    """Put one drawn value into a raw config (or a dataclass's dict): 'size' sets width and height,
    'call_kwargs.X' one call argument."""
    if name == SIZE:
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise ConfigError(f"size = {value!r} must be [width, height]")
        raw["width"], raw["height"] = value[0], value[1]
    elif name.startswith("call_kwargs."):
        raw["call_kwargs"] = {**(raw.get("call_kwargs") or {}), name.split(".", 1)[1]: value}
    else:
        raw[name] = value


def split_space(raw: dict, config_class: type, path: str = "generator") -> dict:
    """A copy of raw config `raw` with every distribution moved into `sample` (its first possible value
    left in its place). Every possible value (each choice, both ends of a range) is checked through
    `config_class` (types, `validate()`), and scheduler names against diffusers; a bad one raises a
    one-line ConfigError naming the entry. Raw configs without distributions come back unchanged."""
    space: dict[str, dict] = {}
    for name, value in raw.items():
        if is_distribution(value):
            space[name] = value
    for name, value in (raw.get("call_kwargs") or {}).items() if isinstance(raw.get("call_kwargs"), dict) else ():
        if is_distribution(value):
            space[f"call_kwargs.{name}"] = value
    if not space:
        return raw
    if "sample" in raw and raw["sample"]:
        raise ConfigError(f"{path}.sample is filled from distribution-valued settings; do not set it by hand")
    if not any(f.name == "sample" for f in dataclasses.fields(config_class)):
        raise ConfigError(f"{path}: generator type '{raw.get('type')}' takes no per-sample settings "
                          f"(distributions given for {sorted(space)})")
    from fakeforge.config import from_dict

    out = copy.deepcopy(raw)
    out.pop(SIZE, None)
    for name, dist in space.items():
        _check_distribution(name, dist, path)
        if name != SIZE:
            _set_value(out, name, _extremes(dist)[0])
    if SIZE in space:
        _set_value(out, SIZE, _extremes(space[SIZE])[0])
    for name, dist in space.items():
        for value in _extremes(dist):
            probe = copy.deepcopy(out)
            try:
                _set_value(probe, name, value)
                from_dict(config_class, {**probe, "sample": {}}, path)
            except ConfigError as exc:
                raise ConfigError(f"{path}.{name} = {dist!r}: the value {value!r} is not valid: "
                                  f"{'; '.join(exc.problems)}") from None
        if name == "scheduler":
            _check_schedulers(_extremes(dist), f"{path}.scheduler")
    out["sample"] = space
    return out


def _check_schedulers(names: list, where: str) -> None:
    import inspect

    import diffusers

    for n in names:
        cls = getattr(diffusers, str(n), None)
        if not (inspect.isclass(cls) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ConfigError(f"{where}: unknown scheduler '{n}' in its choice list")


def _unit(key: str, name: str) -> float:
    """A number in [0, 1) from the sample key and the setting's name (sha256, 52 bits)."""
    digest = hashlib.sha256(f"{key}|{name}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 12) / float(1 << 52)


def draw(space: dict, key: str) -> dict:
    """The settings sample `key` uses: one value per entry of `space`, in sorted entry order."""
    out = {}
    for name in sorted(space):
        kind, arg = next(iter(space[name].items()))
        u = _unit(key, name)
        if kind == "choice":
            out[name] = arg[min(int(u * len(arg)), len(arg) - 1)]
        elif kind == "int_uniform":
            out[name] = min(arg[0] + int(u * (arg[1] - arg[0] + 1)), arg[1])
        else:
            out[name] = round(arg[0] + u * (arg[1] - arg[0]), 4)
    return out


def signature(drawn: dict) -> str:
    """A canonical text of drawn settings: samples with equal signatures share a batch."""
    return json.dumps(drawn, sort_keys=True, default=str)


def apply(config, drawn: dict):
    """A copy of config dataclass `config` with the drawn values in place (its `sample` kept)."""
    data = {f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(config)}
    for name, value in drawn.items():
        _set_value(data, name, value)
    return dataclasses.replace(config, **{k: v for k, v in data.items() if k in drawn or k in
                                          ("width", "height", "call_kwargs")})


def grouped_order(space: dict, keys: list[str]) -> list[int]:
    """Indices of `keys` ordered so samples with equal drawn settings are next to each other (stable:
    groups in order of first appearance, samples in their own order)."""
    if not space:
        return list(range(len(keys)))
    first: dict[str, int] = {}
    sigs = []
    for i, k in enumerate(keys):
        s = signature(draw(space, k))
        first.setdefault(s, i)
        sigs.append(s)
    return sorted(range(len(keys)), key=lambda i: (first[sigs[i]], i))
