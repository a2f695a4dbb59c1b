"""A small lazy registry: one instance per component kind (generators, attacks, detectors, tiny twins).

Entries are "module:attribute" strings, so looking up the attack registry never imports diffusers;
the module is imported only when that entry is used.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any


class UnknownNameError(KeyError):
    """An unknown component name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    """Maps names to lazily imported objects ("package.module:Name")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, target: str, help: str = "") -> None:
        """Register `name` -> "module:attr". Re-registering a name to another target is an error."""
        if ":" not in target:
            raise ValueError(f"{self.kind} target '{target}' must look like 'package.module:Name'")
        old = self._targets.get(name)
        if old is not None and old != target:
            raise ValueError(f"{self.kind} '{name}' is already registered to '{old}'")
        self._targets[name] = target
        self._help[name] = help

    def names(self) -> list[str]:
        return sorted(self._targets)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def check(self, name: str) -> None:
        """Raise UnknownNameError (listing valid names and close matches) unless `name` is registered."""
        if name not in self._targets:
            close = difflib.get_close_matches(str(name), self.names(), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'.{hint} Valid {self.kind} names: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        """Import and return the object registered as `name`."""
        self.check(name)
        module_name, attr = self._targets[name].split(":", 1)
        module = importlib.import_module(module_name)
        return getattr(module, attr)
