"""Deterministic shard plan: sample keys, per-sample seeds, and the split of records into shard jobs."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from fakeforge.sources import Record

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def sample_key(set_name: str, record: Record) -> str:
    """`<set>-<image id>-<caption id>`, restricted to [A-Za-z0-9_-] (webdataset splits keys at dots)."""
    return "-".join(_UNSAFE.sub("_", part) for part in (set_name, record.image_id, record.caption_id))


def sample_seed(set_name: str, record: Record, base_seed: int = 0) -> int:
    """A 31-bit seed derived from (base seed, set, source image id, caption id)."""
    text = f"{base_seed}|{set_name}|{record.image_id}|{record.caption_id}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass
class ShardJob:
    """One unit of work: shard `index` of `set_name`, holding `records` in order."""

    set_name: str
    index: int
    records: list[Record]


def plan_shards(set_name: str, records: list[Record], max_count: int) -> list[ShardJob]:
    """Cut the (already deterministic) record list into consecutive jobs of at most `max_count`."""
    return [ShardJob(set_name, i, records[start:start + max_count])
            for i, start in enumerate(range(0, len(records), max_count))]
