"""Robustness protocols: named sets of degradation conditions (`configs/robustness/*.yaml`).

A protocol file holds a `description`, the `source` it follows, the `assumptions` made where the source is
silent, and `conditions`: an ordered mapping of condition name -> degradation chain (a string such as
`jpeg:75+resize:0.5`, a mapping `{op: jpeg, quality: 75}` or a list of them; see fakeforge.degrade).
The clean condition is always scored too and needs no entry.

`load_protocol` takes a shipped name (`genimage`), a path to such a file, or inline conditions separated by
`;` (`jpeg:75;blur:1+resize:0.5`, one condition each, named by their canonical chain).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fakeforge.config import CONFIG_ROOT, ConfigError, load_yaml
from fakeforge.degrade import Chain, parse_chain

KIND = "robustness"
CLEAN = "clean"


@dataclass
class Protocol:
    """A named list of conditions, each a degradation chain; `clean` is implied first."""

    name: str
    conditions: dict[str, Chain]
    description: str = ""
    source: str = ""
    assumptions: list[str] = field(default_factory=list)

    def all_conditions(self) -> dict[str, Chain]:
        """`clean` (the empty chain) followed by the protocol's own conditions."""
        return {CLEAN: Chain(), **self.conditions}

    def sweeps(self) -> dict[str, list[tuple[str, float]]]:
        """Swept parameters for curves: "jpeg quality" -> [(condition, value), ...] in value order, for every
        operation that occurs as the single op of two or more conditions (sigma 0 counts as blur)."""
        groups: dict[str, list[tuple[str, float]]] = {}
        for name, chain in self.conditions.items():
            if len(chain.ops) != 1:
                continue
            op = chain.ops[0]
            param = next((k for k in op.primary if getattr(op, k) is not None), None)
            if param is None:
                continue
            groups.setdefault(f"{op.name} {param}", []).append((name, float(getattr(op, param))))
        return {k: sorted(v, key=lambda item: item[1]) for k, v in groups.items() if len(v) >= 2}

    def to_dict(self) -> dict:
        """Plain data: name, description, source, assumptions, condition -> canonical chain string."""
        return {"name": self.name, "description": self.description, "source": self.source,
                "assumptions": list(self.assumptions),
                "conditions": {k: c.spec() for k, c in self.conditions.items()}}


def protocol_dir() -> Path:
    """The folder of the shipped protocol presets."""
    return CONFIG_ROOT / KIND


def protocol_names() -> list[str]:
    """Names of the shipped protocols."""
    return sorted(p.stem for p in protocol_dir().glob("*.yaml"))


def protocol_from_dict(name: str, data: dict) -> Protocol:
    """A Protocol from a preset's plain data; ConfigError naming the file key and value."""
    unknown = sorted(set(data) - {"description", "source", "assumptions", "conditions"})
    if unknown:
        raise ConfigError(f"robustness protocol {name!r}: unknown key(s) {unknown}; valid: "
                          "['assumptions', 'conditions', 'description', 'source']")
    raw = data.get("conditions")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"robustness protocol {name!r}: 'conditions' must be a non-empty mapping of "
                          "name -> degradation (e.g. jpeg_q75: jpeg:75)")
    conditions = {}
    for cname, value in raw.items():
        if str(cname) == CLEAN:
            raise ConfigError(f"robustness protocol {name!r}: condition name 'clean' is reserved (always scored)")
        try:
            conditions[str(cname)] = parse_chain(value)
        except ConfigError as exc:
            raise ConfigError(f"robustness protocol {name!r}, condition {cname!r}: {exc}") from None
        if not conditions[str(cname)]:
            raise ConfigError(f"robustness protocol {name!r}: condition {cname!r} = {value!r} applies nothing")
    assumptions = data.get("assumptions") or []
    if isinstance(assumptions, str):
        assumptions = [assumptions]
    source = " ".join(str(data.get("source") or "").split())
    return Protocol(name, conditions, str(data.get("description") or ""), source,
                    [" ".join(str(a).split()) for a in assumptions])


def load_protocol(spec: str | Path | Protocol) -> Protocol:
    """A shipped protocol by name, a protocol YAML by path, or inline chains separated by `;`
    (`jpeg:75;blur:1+resize:0.5`: one condition each); one-line ConfigError for an unknown name or bad value."""
    if isinstance(spec, Protocol):
        return spec
    text = str(spec).strip()
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        return protocol_from_dict(path.stem, load_yaml(path))
    if text in protocol_names():
        return protocol_from_dict(text, load_yaml(protocol_dir() / f"{text}.yaml"))
    if ":" not in text:
        raise ConfigError(f"unknown robustness protocol {text!r}; known: {', '.join(protocol_names())} "
                          "(or a YAML path, or chains such as 'jpeg:75;blur:1')")
    parts = [p for p in text.split(";") if p.strip()]
    return protocol_from_dict("custom", {"description": "conditions given on the command line",
                                         "conditions": {parse_chain(p).spec(): p for p in parts}})
