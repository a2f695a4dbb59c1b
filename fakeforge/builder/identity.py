"""Per-set identity: what an output already holds, and what this build may do with each set.

Every set folder holds a record `<set>/_set.json`: the set's settings (`set_settings`), their hash,
its label/generator/model, `limit`, the planned number of samples and shard jobs. Comparing the
records with the config decides, before any model loads:

  * a set that is not on disk yet is built;
  * a set with the same hash is resumed (finished shards are skipped; a larger `limit` adds shards);
  * a set whose settings changed is refused, naming the changed keys, unless `--rebuild-set NAME`:
    then it is built in `.rebuild-NAME/` beside the old one and swapped in when complete;
  * a set on disk that the config no longer names is kept (and stays in the manifest) with a
    warning, or deleted with `--prune`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fakeforge.builder.config import ResolvedBuild, ResolvedSet
from fakeforge.config import ConfigError
from fakeforge.shards.manifest import SET_RECORD
from fakeforge.shards.store import Store

log = logging.getLogger("fakeforge.builder")
REBUILD_PREFIX = ".rebuild-"
RECORD_FORMAT = 1


@dataclass
class OutputPlan:
    """What this build does with each set: the folder each config set is written to, the sets on disk
    outside the config (kept or pruned), and the finished rebuilds waiting to be swapped in."""

    folders: dict[str, str] = field(default_factory=dict)   # config set -> folder relative to the output
    records: dict[str, dict] = field(default_factory=dict)  # set -> its record on disk (current folder)
    rebuild: set[str] = field(default_factory=set)
    kept: list[str] = field(default_factory=list)            # on disk, not in the config: stay in the manifest
    pruned: list[str] = field(default_factory=list)          # on disk, not in the config: deleted (--prune)
    swaps: list[str] = field(default_factory=list)           # rebuilds found complete: swap them in first


def flatten(data, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, object] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two settings dicts, with old -> new values."""
    a, b = flatten(old or {}), flatten(new or {})
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def set_record(rset: ResolvedSet, label: str, records: int, shard_jobs: int, complete: bool | None = None) -> dict:
    """The record written into a set's folder (deterministic: ranks writing it at once write the same bytes)."""
    rec = {"format": RECORD_FORMAT, "name": rset.name, "set_hash": rset.set_hash, "label": label,
           "generator": rset.generator_name, "model_id": rset.model_label, "limit": rset.source.limit,
           "records": records, "shard_jobs": shard_jobs, "settings": rset.settings}
    if complete is not None:
        rec["complete"] = complete
    return rec


def read_record(store: Store, folder: str) -> dict | None:
    """A folder's set record; ConfigError when it exists but is unreadable."""
    try:
        return store.read_json(f"{folder}/{SET_RECORD}")
    except ValueError as exc:
        raise ConfigError(f"'{store.show(f'{folder}/{SET_RECORD}')}' is unreadable ({exc}); delete that set "
                          "folder or rebuild it with --rebuild-set") from None


def plan_output(store: Store, resolved: ResolvedBuild, rebuild: list[str] | None = None,
                prune: bool = False) -> OutputPlan:
    """Compare the output's set records with the config; ConfigError listing every refused set."""
    names = [s.name for s in resolved.config.sets]
    rebuild = list(dict.fromkeys(rebuild or []))
    unknown = [n for n in rebuild if n not in names]
    if unknown:
        raise ConfigError(f"--rebuild-set {unknown[0]!r}: no set of that name in this config; its sets: {names}")
    plan = OutputPlan(rebuild=set(rebuild))
    on_disk = [d for d in store.subdirs() if not d.startswith(".")]
    pending = {d[len(REBUILD_PREFIX):] for d in store.subdirs() if d.startswith(REBUILD_PREFIX)}
    problems = []
    by_lower = {n.lower(): n for n in names}
    for folder in on_disk:
        record = read_record(store, folder)
        files = store.listdir(folder)
        if record is None:
            if any(f.endswith(".tar") for f in files):
                problems.append(f"folder '{store.show(folder)}' holds .tar shards without a set record "
                                f"({SET_RECORD}: made by an older fakeforge or another tool); use another --output, "
                                f"or --rebuild-set {folder} if the config has that set")
                if folder in plan.rebuild:
                    problems.pop()
            continue
        claimed = by_lower.get(folder.lower())
        if record.get("name") != folder or (claimed is not None and claimed != folder):
            problems.append(f"folder '{store.show(folder)}' holds set '{record.get('name')}' but the config's set "
                            f"'{claimed or folder}' claims it (names differing only in case share a folder on "
                            "case-insensitive stores); rename the set")
            continue
        plan.records[folder] = record
    for name in pending:
        done = _rebuild_record(store, name)
        if done is not None and done.get("complete"):
            plan.swaps.append(name)
        elif name not in plan.rebuild:
            log.warning("an unfinished rebuild of set '%s' lies in '%s': rerun with --rebuild-set %s to finish it, "
                        "or delete that folder", name, store.show(REBUILD_PREFIX + name), name)
    for rset in resolved.sets:
        plan.folders[rset.name] = rset.name
        record = plan.records.get(rset.name)
        if rset.name in plan.rebuild and (record is not None or store.listdir(rset.name)):
            plan.folders[rset.name] = REBUILD_PREFIX + rset.name
            continue
        if record is None or record.get("set_hash") == rset.set_hash:
            continue
        changes = changed_keys(record.get("settings") or {}, rset.settings)
        problems.append(f"set '{rset.name}' in '{store}' was built with other settings (set hash "
                        f"{record.get('set_hash')}, now {rset.set_hash}); changed: {'; '.join(changes[:8])}"
                        f"{' ...' if len(changes) > 8 else ''}. Rerun with --rebuild-set {rset.name} to rebuild "
                        "only this set, or use another --output")
    if problems:
        raise ConfigError(problems=problems)
    config_names = set(names)
    for folder in sorted(plan.records):
        if folder in config_names:
            continue
        if prune:
            plan.pruned.append(folder)
        else:
            plan.kept.append(folder)
            same = [r.name for r in resolved.sets if r.set_hash == plan.records[folder].get("set_hash")]
            hint = (f" (set '{same[0]}' of this config has its settings: renamed? keys carry the set name, so "
                    f"'{same[0]}' is built anew)") if same else ""
            log.warning("set '%s' in '%s' is not in this config: kept on disk and in the manifest%s; "
                        "rerun with --prune to delete it", folder, store, hint)
    return plan


def _rebuild_record(store: Store, name: str) -> dict | None:
    try:
        return store.read_json(f"{REBUILD_PREFIX}{name}/{SET_RECORD}")
    except ValueError:
        return None


def check_growth(store: Store, plan: OutputPlan, rset: ResolvedSet, records: int) -> None:
    """Refuse a set whose plan is smaller than what its folder already holds (a lowered limit)."""
    folder = plan.folders[rset.name]
    record = plan.records.get(rset.name) if folder == rset.name else _rebuild_record(store, rset.name)
    if record and isinstance(record.get("records"), int) and record["records"] > records:
        raise ConfigError(f"set '{rset.name}' in '{store}' holds a plan of {record['records']} samples (limit "
                          f"{record.get('limit')}), this config plans {records} (limit {rset.source.limit}): a set "
                          f"only grows; rerun with --rebuild-set {rset.name} to rebuild it smaller, or keep the "
                          "limit")


def swap_in(store: Store, name: str) -> None:
    """Replace set `name` by its finished rebuild: the old record goes first, then the old folder; the
    rebuild's files are moved in with its record last. Safe to repeat after an interruption."""
    src = REBUILD_PREFIX + name
    store.remove(f"{name}/{SET_RECORD}")
    store.remove_tree(name)
    store.move_tree(src, name, last=SET_RECORD)
    record = store.read_json(f"{name}/{SET_RECORD}") or {}
    record.pop("complete", None)
    store.write_json(f"{name}/{SET_RECORD}", record)
    log.info("set '%s': the rebuild is complete and replaced the old set", name)


def prune_set(store: Store, name: str) -> None:
    """Delete a set that the config no longer names (its record first)."""
    store.remove(f"{name}/{SET_RECORD}")
    store.remove_tree(name)
    log.warning("set '%s' deleted from '%s' (--prune)", name, store)
