"""The dataset manifest: counts per set, sha256 per tar and each set's settings hash, assembled from the
per-shard stats files and the per-set records (`<set>/_set.json`)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fakeforge.shards.store import Store
from fakeforge.shards.writer import as_store, is_marker

MANIFEST = "manifest.json"
SET_RECORD = "_set.json"


def dataset_hash(set_hashes: dict[str, dict]) -> str:
    """The whole dataset's identity: a hash over every set's name, settings hash and `limit`. It changes
    when a set is added, removed (with --prune), rebuilt with other settings, or grown."""
    from fakeforge.config import config_hash

    return config_hash({name: {"set_hash": v.get("set_hash"), "limit": v.get("limit")}
                        for name, v in sorted(set_hashes.items())})


def collect_stats(out_dir: str | Path | Store, set_name: str) -> list[dict]:
    """Stats of every finished shard of a set, sorted by shard index (one listing, concurrent reads)."""
    store = as_store(out_dir)
    listing = store.listdir(set_name)
    # one marker per shard: the current name wins over a legacy one left beside it
    names = sorted(n for n in listing if is_marker(n) and not (n.endswith(".stats.json")
                                                                and n[:6] + ".done.json" in listing))
    stats = []
    for data in store.read_many([f"{set_name}/{n}" for n in names]).values():
        try:
            value = json.loads(data) if data is not None else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(value, dict) and value.get("done"):
            stats.append(value)
    return stats


def build_manifest(out_dir: str | Path | Store, sets: list[dict], config_hash: str | None = None,
                   extra: dict | None = None) -> dict:
    """Write manifest.json from the stats files. `sets` are {"name", "label", "generator", "model_id",
    "shards", "set_hash", "limit"} dicts, "shards" being the planned number of shard jobs (the manifest
    says if any is missing). `config_hash` defaults to `dataset_hash` over the sets."""
    store = as_store(out_dir)
    hashes = {s["name"]: {"set_hash": s.get("set_hash"), "limit": s.get("limit")} for s in sets}
    manifest = {"format": "fakeforge-webdataset/2",
                "config_hash": config_hash if config_hash is not None else dataset_hash(hashes),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sets": {}, "total": 0, "failed": 0}
    manifest.update(extra or {})
    for s in sets:
        stats = collect_stats(store, s["name"])
        tars = [{"name": f"{s['name']}/{t['name']}", "count": t["count"], "bytes": t["bytes"], "sha256": t["sha256"]}
                for st in stats for t in st["tars"]]
        written = sum(st["written"] for st in stats)
        failed = sum(st["failed"] for st in stats)
        manifest["sets"][s["name"]] = {
            "label": s["label"], "generator": s["generator"], "model_id": s.get("model_id"),
            "set_hash": s.get("set_hash"), "limit": s.get("limit"),
            "count": written, "failed": failed, "shard_jobs": s["shards"], "shard_jobs_done": len(stats),
            "tars": tars}
        manifest["total"] += written
        manifest["failed"] += failed
    store.write_json(MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class Manifest:
    """A finished dataset's manifest.json, typed: its location, dataset hash, per-set counts and the raw JSON."""

    location: str
    config_hash: str
    sets: dict[str, dict]
    total: int
    failed: int
    raw: dict

    @classmethod
    def read(cls, location: str | Path | Store) -> "Manifest":
        """Read `location/manifest.json`; FileNotFoundError when the dataset is not complete (no manifest)."""
        store = as_store(location)
        data = store.read_json(MANIFEST)
        if data is None:
            raise FileNotFoundError(f"'{store.show(MANIFEST)}' does not exist: the dataset is not complete")
        return cls(str(store.url()), str(data.get("config_hash")), dict(data.get("sets") or {}),
                   int(data.get("total", 0)), int(data.get("failed", 0)), data)

    def counts(self) -> dict[str, int]:
        """Samples per set."""
        return {name: int(v.get("count", 0)) for name, v in self.sets.items()}


def zoo_models(dataset: str) -> dict[str, dict]:
    """Set name -> per-model summary for every zoo set of a built dataset (from its manifest.json)."""
    manifest = Store(dataset, "dataset").read_json("manifest.json") or {}
    return {name: info["models"] for name, info in (manifest.get("sets") or {}).items() if info.get("models")}


def zoo_models_of_specs(specs: list[str]) -> dict[str, dict]:
    """Per-model summaries of the zoo sets among `fakeforge stats`-style set specs (dataset folders, or
    a set folder inside one); {} when none is a zoo set."""
    out: dict[str, dict] = {}
    for spec in specs:
        path = Path(str(spec).split("=", 1)[-1])
        for folder, only in ((path, None), (path.parent, path.name)):
            if (folder / "manifest.json").is_file():
                found = zoo_models(str(folder))
                out.update({k: v for k, v in found.items() if only is None or k == only})
                break
    return out
