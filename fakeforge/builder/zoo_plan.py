"""Planning a zoo set: which model makes which sample, which rank takes which model, and the per-model
summary and failure budget of a finished build.

Samples go to models by weighted rendezvous (highest-random-weight) hashing of the sample key: every
(key, model) pair gets a hash-derived score `-weight / ln(u)` and the model with the highest score
makes the sample. The choice depends only on the key and the model list, never on the batch size or
the rank count; adding a model moves only the samples it now wins (about its share), and removing
one moves only its own samples.

Each model's samples are cut into its own shard jobs (`ShardJob.model`). Ranks take whole models:
models are dealt largest first to the least-loaded rank, and a model is split into runs of its shard
jobs only when its share exceeds one rank's fair share. So each rank loads each of its models once.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict

import numpy as np

from fakeforge.builder.plan import ShardJob, sample_key
from fakeforge.sources import Record

log = logging.getLogger("fakeforge.builder")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def is_zoo(rset) -> bool:
    """True for a set whose generator is a zoo."""
    return getattr(rset.generator_cfg, "type", None) == "zoo"


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def assign_models(keys: list[str], models: list[tuple[str, float]], chunk: int = 4096) -> list[str]:
    """The model (name) that makes each sample key: weighted rendezvous hashing over `models` (name, weight)."""
    if not models:
        return []
    names = [n for n, _ in models]
    mh = np.array([_h64(f"model|{n}") for n in names], dtype=np.uint64)
    w = np.array([float(wt) for _, wt in models])
    out: list[str] = []
    with np.errstate(over="ignore"):
        for start in range(0, len(keys), chunk):
            kh = np.array([_h64(f"key|{k}") for k in keys[start:start + chunk]], dtype=np.uint64)
            z = _mix(kh[:, None] ^ mh[None, :])
            u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
            out += [names[i] for i in np.argmax(-w[None, :] / np.log(u), axis=1)]
    return out


def plan_zoo_shards(set_name: str, records: list[Record], max_count: int, models: list[tuple[str, float]]
                    ) -> list[ShardJob]:
    """Shard jobs of a zoo set: each model's samples (in source order) cut into jobs of at most `max_count`,
    models in entry order, jobs numbered consecutively. A model that draws no sample has no job."""
    owner = assign_models([sample_key(set_name, r) for r in records], models)
    per_model: dict[str, list[Record]] = defaultdict(list)
    for rec, name in zip(records, owner):
        per_model[name].append(rec)
    jobs: list[ShardJob] = []
    for name, _w in models:
        recs = per_model.get(name, [])
        for start in range(0, len(recs), max_count):
            jobs.append(ShardJob(set_name, len(jobs), recs[start:start + max_count], model=name))
    return jobs


def assign_jobs(all_jobs: list, rank: int, world: int) -> list:
    """This rank's (set, job) pairs. Jobs of plain sets: job i of the whole build goes to rank i mod world
    (as without zoos). Zoo jobs: units of one model's jobs, split into runs of about a fair share
    (total zoo samples / world) only when larger, dealt largest first to the least-loaded rank.
    Deterministic: every rank computes the same assignment from the same plan. Result in plan order."""
    if world == 1:
        return list(all_jobs)
    load = [0] * world
    owner: dict[int, int] = {}
    units: list[tuple[int, list[int]]] = []
    by_model: dict[tuple[str, str], list[int]] = {}
    for i, (_rset, job) in enumerate(all_jobs):
        if job.model is None:
            owner[i] = i % world
            load[i % world] += len(job.records)
        else:
            by_model.setdefault((job.set_name, job.model), []).append(i)
    total = sum(len(all_jobs[i][1].records) for idx in by_model.values() for i in idx)
    fair = max(1, math.ceil(total / world))
    for idx in by_model.values():
        run: list[int] = []
        size = 0
        for i in idx:
            n = len(all_jobs[i][1].records)
            if run and size + n > fair:
                units.append((size, run))
                run, size = [], 0
            run.append(i)
            size += n
        if run:
            units.append((size, run))
    for size, run in sorted(units, key=lambda u: (-u[0], u[1][0])):
        target = min(range(world), key=lambda r: (load[r], r))
        load[target] += size
        for i in run:
            owner[i] = target
    return [pair for i, pair in enumerate(all_jobs) if owner[i] == rank]


def model_summary(stats: list[dict]) -> dict[str, dict]:
    """Per-model counts of a zoo set from its shards' done-markers: written, failed, shards, and the
    model's failure record (load failure, OOM at batch 1, every sample failed) when it has one."""
    out: dict[str, dict] = {}
    errors: dict[str, Counter] = defaultdict(Counter)
    for st in stats:
        name = st.get("model")
        if name is None:
            continue
        m = out.setdefault(name, {"written": 0, "failed": 0, "shards": 0, "planned": 0, "failure": None})
        m["written"] += int(st.get("written", 0))
        m["failed"] += int(st.get("failed", 0))
        m["shards"] += 1
        m["planned"] += int((st.get("plan") or {}).get("count", 0))
        if st.get("model_failure") and m["failure"] is None:
            m["failure"] = st["model_failure"]
        for f in st.get("failures", []):
            errors[name][str(f.get("error"))[:200]] += 1
    for name, m in out.items():
        if m["failure"] is None and m["written"] == 0 and m["failed"] > 0:
            error = errors[name].most_common(1)[0][0]
            m["failure"] = {"model": name, "class": "NaN" if "nan" in error.lower() else "error",
                            "stage": "generate", "reason": f"all {m['failed']} samples failed: {error}",
                            "traceback": ""}
    return out


def budget_lines(set_name: str, summary: dict[str, dict], allowed: int, n_models: int) -> list[str]:
    """One line when more models failed than `allowed`; logs the failed models (within budget or not)."""
    failed = {n: m["failure"] for n, m in summary.items() if m["failure"]}
    if not failed:
        return []
    listed = "; ".join(f"{n} [{f['class']}] {f['reason']}" for n, f in sorted(failed.items()))
    if len(failed) > allowed:
        return [f"set '{set_name}': {len(failed)} of {n_models} models failed, over failure_budget ({allowed} "
                f"allowed): {listed}; after fixing them rerun with --retry-failed (only their shards are redone)"]
    log.warning("set '%s': %d of %d models failed (within failure_budget %d): %s; rerun with --retry-failed to "
                "retry only them", set_name, len(failed), n_models, allowed, listed)
    return []


def write_model_failure_shard(store, set_rel: str, job: ShardJob, failure: dict, header: dict, plan: dict,
                              staging=None) -> dict:
    """The done-marker of a shard whose model failed: no samples, the model's failure record and how many
    samples it should have made. `--retry-failed` redoes it; budgets count it as a model, not as samples."""
    from fakeforge.shards.writer import ShardSink

    sink = ShardSink(store, set_rel, job.index, 1 << 30, header, staging=staging, plan=plan)
    return sink.close({"model": job.model, "model_failure": failure, "model_failed_samples": len(job.records)})
