"""The dataset manifest: counts per set and sha256 per tar, assembled from the per-shard stats files."""
from __future__ import annotations

import json
import time
from pathlib import Path

from fakeforge.shards.writer import STATS_SUFFIX, write_json_atomic

MANIFEST = "manifest.json"


def collect_stats(out_dir: str | Path, set_name: str) -> list[dict]:
    """Stats of every finished shard of a set, sorted by shard index."""
    set_dir = Path(out_dir) / set_name
    stats = []
    for p in sorted(set_dir.glob(f"*{STATS_SUFFIX}")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if data.get("done"):
            stats.append(data)
    return stats


def build_manifest(out_dir: str | Path, sets: list[dict], config_hash: str, extra: dict | None = None) -> dict:
    """Write manifest.json from the stats files. `sets` are {"name", "label", "generator", "shards"} dicts
    where "shards" is the planned number of shard jobs (the manifest says if any is missing)."""
    out_dir = Path(out_dir)
    manifest = {"format": "fakeforge-webdataset/1", "config_hash": config_hash,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sets": {}, "total": 0, "failed": 0}
    manifest.update(extra or {})
    for s in sets:
        stats = collect_stats(out_dir, s["name"])
        tars = [{"name": f"{s['name']}/{t['name']}", "count": t["count"], "bytes": t["bytes"], "sha256": t["sha256"]}
                for st in stats for t in st["tars"]]
        written = sum(st["written"] for st in stats)
        failed = sum(st["failed"] for st in stats)
        manifest["sets"][s["name"]] = {
            "label": s["label"], "generator": s["generator"], "model_id": s.get("model_id"),
            "count": written, "failed": failed, "shard_jobs": s["shards"], "shard_jobs_done": len(stats),
            "tars": tars}
        manifest["total"] += written
        manifest["failed"] += failed
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
