"""Load-once sharing of frozen models while several detectors are loaded together (a side-by-side eval).

Inside `sharing_loads()`, `shared(key)` returns what an earlier load under the same key stored with
`remember(key, value)`; outside it nothing is kept. Families key their frozen parts by what makes them
identical (a backbone spec, device and dtype), so detectors of different families on one backbone load it once.
"""
from __future__ import annotations

import contextlib
from typing import Any, Hashable, Iterator

_SHARED: dict | None = None


@contextlib.contextmanager
def sharing_loads() -> Iterator[None]:
    """Within this block, loads that go through `shared`/`remember` are done once per key (nestable)."""
    global _SHARED
    outer = _SHARED
    _SHARED = {} if outer is None else outer
    try:
        yield
    finally:
        _SHARED = outer


def shared(key: Hashable) -> Any | None:
    """The value remembered under `key` inside the current `sharing_loads()` block, else None."""
    return None if _SHARED is None else _SHARED.get(key)


def remember(key: Hashable, value: Any) -> None:
    """Keep `value` under `key` for the rest of the current `sharing_loads()` block (no-op outside one)."""
    if _SHARED is not None:
        _SHARED[key] = value
