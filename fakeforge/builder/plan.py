"""Deterministic shard plan: sample keys, per-sample seeds, and the split of records into shard jobs.

A key is `<set>-<image id>-<caption id>`. Set names are restricted to letters, digits and '_', and
the two ids are escaped injectively into the same alphabet (see `escape_key_part`), so the two '-'
separate the parts unambiguously and different (set, image id, caption id) triples can never share
a key. Plain digit ids (COCO, Flickr30k sentence ids) are unchanged. No key contains a '.', which
webdataset would take for the start of the file extension.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from fakeforge.config import ConfigError
from fakeforge.sources import Record

_PLAIN = re.compile(r"[A-Za-z0-9]")


def escape_key_part(text: str) -> str:
    """Injective escape into [A-Za-z0-9_]: letters and digits stay, '_' becomes '__', any other
    character becomes '_' plus two lowercase hex digits per UTF-8 byte ('.' -> '_2e', '-' -> '_2d')."""
    out = []
    for ch in str(text):
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        elif ch == "_":
            out.append("__")
        else:
            out.append("".join(f"_{b:02x}" for b in ch.encode("utf-8")))
    return "".join(out)


def sample_key(set_name: str, record: Record) -> str:
    """`<set>-<escaped image id>-<escaped caption id>` (set names are checked to be [A-Za-z0-9_]+)."""
    return f"{set_name}-{escape_key_part(record.image_id)}-{escape_key_part(record.caption_id)}"


def sample_seed(set_name: str, record: Record, base_seed: int = 0) -> int:
    """A 31-bit seed derived from (base seed, set, source image id, caption id): the key's parts."""
    text = f"{base_seed}|{set_name}|{record.image_id}|{record.caption_id}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def check_unique_keys(set_name: str, records: list[Record]) -> None:
    """Refuse a plan in which two records would get the same key (e.g. duplicate annotation ids),
    naming the colliding source ids; called before any model loads."""
    counts = Counter(sample_key(set_name, r) for r in records)
    dup = [k for k, n in counts.items() if n > 1]
    if not dup:
        return
    seen = {}
    for r in records:
        k = sample_key(set_name, r)
        if counts[k] > 1:
            seen.setdefault(k, r)
    shown = "; ".join(f"image id {seen[k].image_id!r} caption id {seen[k].caption_id!r} ({counts[k]} records)"
                      for k in dup[:5])
    raise ConfigError(f"set '{set_name}': {len(dup)} sample key(s) would repeat, from source ids {shown}"
                      f"{' ...' if len(dup) > 5 else ''}; each (image id, caption id) pair of a source must be "
                      "unique (duplicate annotation ids in the captions file?)")


@dataclass
class ShardJob:
    """One unit of work: shard `index` of `set_name`, holding `records` in order; `model`: the model of a
    zoo set that makes it (fakeforge/builder/zoo_plan.py), None for other sets."""

    set_name: str
    index: int
    records: list[Record]
    model: str | None = None


def job_keys(set_name: str, job: ShardJob) -> list[str]:
    """The sample keys of a shard job, in order (what its done-marker's plan records)."""
    return [sample_key(set_name, r) for r in job.records]


def plan_shards(set_name: str, records: list[Record], max_count: int) -> list[ShardJob]:
    """Cut the (already deterministic) record list into consecutive jobs of at most `max_count`."""
    return [ShardJob(set_name, i, records[start:start + max_count])
            for i, start in enumerate(range(0, len(records), max_count))]
