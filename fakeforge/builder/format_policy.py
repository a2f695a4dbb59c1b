"""Before any work: do the build's real and fake sets get the same final encoding?

A fake set stored in another container or quality than the real sets (an attack set kept lossless as
PNG beside JPEG photos) hands a detector the label through the file format, which `fakeforge audit`
then flags after the build. `encoding_mismatches` names such pairs from the resolved config alone, so
the build can say so in one line at its start, before any model loads.
"""
from __future__ import annotations

__all__ = ["encoding_mismatches"]


def _encoding(policy) -> str:
    if policy is None:
        return "the source's own encoding"
    return f"{policy.format} q{policy.quality}" if policy.format in ("jpeg", "webp") else policy.format


def encoding_mismatches(resolved) -> list[str]:
    """One message per fake set whose stored encoding differs from the real sets' (none when the build
    has no real set, or every set is encoded alike)."""
    from fakeforge.builder.config import set_label

    real = {_encoding(s.image) for s in resolved.sets if set_label(s) == "real"}
    if len(real) != 1:
        return []
    want = next(iter(real))
    out = []
    for s in resolved.sets:
        have = _encoding(s.image)
        if set_label(s) == "fake" and have != want:
            hint = (" (an attack set: set `lossless: false` on it, or store the whole build as png)"
                    if s.generator_raw.get("type") == "attack" else "")
            out.append(f"set '{s.name}' is stored as {have} while the real sets are {want}: a detector can learn the "
                       f"file format instead of the generator{hint}")
    return out
