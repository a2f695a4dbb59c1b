"""Config plumbing shared by every component: YAML files, `key=value` overrides, typed dataclasses.

A component declares a dataclass of its settings; `from_dict` builds it from plain YAML data and
checks every value's type, so a wrong type fails with the dotted key path and the value it got,
before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from fakeforge.files import write_atomic

#: The shipped named configs: the checkout's `configs/` folder, installed as the package `fakeforge.configs`
#: (so a wheel install finds them too).
CONFIG_ROOT = Path(str(importlib.resources.files("fakeforge.configs")))


class ConfigError(ValueError):
    """A configuration problem the user must fix; raised before any model is loaded.

    One error may carry several problems (`problems`, one line each, each naming its key or file);
    `str()` joins them with newlines, so the CLIs print one line per problem.
    """

    def __init__(self, message: str | None = None, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [str(message)]
        super().__init__("\n".join(self.problems))

    @classmethod
    def merge(cls, errors: list["ConfigError"]) -> "ConfigError":
        """One error holding every problem of `errors`."""
        return cls(problems=[p for e in errors for p in e.problems])


class MissingCheckpointError(ConfigError):
    """A checkpoint file the config needs is not there (the message says what it is and where to get it)."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ConfigError(f"config '{path}' is a {'folder' if path.is_dir() else 'special file'}, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"config file '{path}' is not valid YAML: {one_line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at top level, got {type(data).__name__}")
    return data


def resolve_named_config(name_or_path: str | Path, kind: str) -> Path:
    """Find a config by path, or by name under `configs/<kind>/<name>.yaml`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.exists() and not p.is_file():
            raise ConfigError(f"config '{p}' is a {'folder' if p.is_dir() else 'special file'}, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: '{p}'")
        return p
    candidate = CONFIG_ROOT / kind / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(f.stem for f in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(f"unknown {kind} config '{name_or_path}'; known: {', '.join(known) or '(none)'}")


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated recursively by override (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists; list items by index."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. source.limit=100)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for part in parts[:-1]:
            node = _child(node, part, key)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        else:
            node[last] = value
    return data


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{key}': '{part}' is not a valid index into a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise ConfigError(f"override '{key}': cannot descend into '{part}' of a {type(node).__name__}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check (and gently coerce int->float) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"'{path}' = {value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"'{path}' = {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' = {value!r} must be a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items, errors = [], []
        for i, v in enumerate(value):
            try:
                items.append(_coerce(v, item_tp, f"{path}.{i}"))
            except ConfigError as exc:
                errors.append(exc)
        if errors:
            raise ConfigError.merge(errors)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' = {value!r} must be a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' = {value!r} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' = {value!r} must be an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' = {value!r} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' = {value!r} must be a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"'{path}' = {value!r} must be of type {_type_name(tp)}")
    return value


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types (errors name the key).

    Every bad key is reported, not just the first (`ConfigError.problems`). The dataclass's own
    `validate()` runs when the types are right; a `ValueError` it raises becomes a ConfigError
    prefixed with `path`, so no bad value ends in a traceback."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{path or cls.__name__}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    errors: list[ConfigError] = []
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where = f" in '{path}'" if path else ""
        errors.append(ConfigError(f"unknown key(s) {unknown}{where}; valid keys: {sorted(fields)}"))
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        try:
            kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
        except ConfigError as exc:
            errors.append(exc)
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        errors.append(ConfigError(f"missing required key(s) {missing} in '{path or cls.__name__}'"))
    if errors:
        raise ConfigError.merge(errors)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(_with_path(path, str(exc))) from None
    return obj


def _with_path(path: str, message: str) -> str:
    """Prefix a validate() message with the dotted path of its block, unless it already names it."""
    if not path or message.startswith(path) or message.startswith(f"'{path}"):
        return message
    return f"{path}: {message}"


def to_dict(obj: Any) -> Any:
    """Dataclass (or nested containers of them) to plain YAML/JSON-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(data: Any) -> str:
    """Stable short hash of plain config data (key order does not matter)."""
    blob = json.dumps(to_dict(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(data: Any, path: str | Path) -> None:
    """Write plain data as YAML, atomically."""
    write_atomic(path, yaml.safe_dump(to_dict(data), sort_keys=False))
