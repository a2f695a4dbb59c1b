"""Drive a build: plan every set's shards, split them across processes, skip finished ones, summarise.

The output is a local folder or any fsspec URL (`fakeforge.shards.store.Store`). Each set is checked
against the record in its folder before any model loads (`fakeforge.builder.identity`): new sets are
built, unchanged ones resumed or skipped, changed ones refused unless rebuilt (`--rebuild-set`).

Under `accelerate launch` / torchrun each process (GPU) takes the shard jobs whose global index falls
on its rank, so ranks write disjoint shards and share nothing but the output. Independent processes
(a SLURM job array) do the same with `--rank R --world-size W`. One build owns its output (a flock on
local folders, a lock object with a heartbeat on object stores; `fakeforge.locking`), taken by rank 0
for the whole job. Rerunning the same command resumes: a shard is skipped only when its done-marker
is there, was made for the current plan, and every tar it lists is whole; anything else is redone,
and the log says why. Which rank made a shard does not matter, so a resume may use any number of
processes.

A build that ends without a complete dataset ends with `BuildFailed` (exit 1): a shard that could not
be written, a set whose first batch failed entirely, a set over its failure budget (see failures.py).
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fakeforge.versions import BUILD_LIBRARIES, library_versions
from fakeforge.builder import identity
from fakeforge.builder.config import ResolvedBuild, ResolvedSet, set_label
from fakeforge.builder.failures import BuildFailed, DiskFullError, SetGuard, over_budget, shard_write_failed
from fakeforge.builder.plan import ShardJob, check_unique_keys, job_keys, plan_shards
from fakeforge.builder.progress import make_progress
from fakeforge.builder.ranks import Ranks, build_lock, process_state, resolve_ranks
from fakeforge.builder.worker import BatchReport, run_shard
from fakeforge.interrupts import Terminated, install_handlers, mark_reported
from fakeforge.builder.zoo_plan import (
    assign_jobs,
    budget_lines,
    is_zoo,
    model_summary,
    plan_zoo_shards,
    write_model_failure_shard,
)
from fakeforge.shards.manifest import MANIFEST, SET_RECORD, build_manifest, collect_stats
from fakeforge.shards.store import Store, redact_url
from fakeforge.shards.writer import ShardWriteError, existing_marker, list_shard_files, plan_record, shard_state
from fakeforge.sources import check_images_exist, load_records
from generators.base import GeneratorFailure, ModelFault
from generators.zoo import ModelFailure

__all__ = ["BuildFailed", "BuildOptions", "BuildRun", "DiskFullError", "Terminated", "build", "plan_build"]
log = logging.getLogger("fakeforge.builder")
RESOLVED_CONFIG = "build_config.yaml"


def install_sigterm_handler() -> None:
    """Turn the first SIGINT / SIGTERM into KeyboardInterrupt / `Terminated` (see `fakeforge.interrupts`)."""
    install_handlers()


def plan_build(resolved: ResolvedBuild, state, workdir: Path | None = None
               ) -> list[tuple[ResolvedSet, list[ShardJob]]]:
    """Read sources and cut shard jobs for every set; checks keys are unique and source images exist.
    `workdir`: where generated sources (demo, photos, archive members) are written (default: the output)."""
    workdir = workdir if workdir is not None else Path(resolved.output)
    plans = []
    for rset in resolved.sets:
        with state.local_main_process_first():  # generated sources are written once per machine
            records = load_records(rset.source, workdir)
        check_unique_keys(rset.name, records)
        if rset.generator_cls.needs_source_image and rset.source.require_images:
            check_images_exist(records, f"set '{rset.name}'")
        if is_zoo(rset):
            jobs = plan_zoo_shards(rset.name, records, resolved.config.shards.max_count,
                                   [(m["name"], m["weight"]) for m in rset.generator_cfg.models])
        else:
            jobs = plan_shards(rset.name, records, resolved.config.shards.max_count)
        plans.append((rset, jobs))
    return plans


@dataclass
class BuildOptions:
    """How to run a build (the command line's flags), apart from what to build (the config).

    `retry_failed` also redoes finished shards that recorded failed samples (e.g. after an out-of-memory
    error or a fixed source image); keys and seeds are the same, so nothing else changes. `verify_existing`
    checks the sha256 of every finished shard before skipping it (default: sizes). `rebuild_sets` rebuilds
    these sets (beside the old ones, swapped in when complete); `prune` deletes sets on disk that the config
    no longer names. `rank`/`world_size`: this process's slot among independent processes."""

    progress: bool = True
    retry_failed: bool = False
    verify_existing: bool = False
    rebuild_sets: list[str] = field(default_factory=list)
    prune: bool = False
    rank: int | None = None
    world_size: int | None = None
    log_every: float = 30.0


@dataclass
class BuildRun:
    """Everything one build process works with once its output is locked (passed to the steps below as one
    object instead of a dozen arguments)."""

    resolved: ResolvedBuild
    options: BuildOptions
    store: Store
    state: Any  # accelerate PartialState (or the single-process stand-in of ranks.process_state)
    ranks: Ranks
    plans: list
    out_plan: Any  # identity.OutputPlan
    lock: Any
    staging: Path | None
    versions: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    bar: Any = None
    pool: ThreadPoolExecutor | None = None
    publisher: ThreadPoolExecutor | None = None
    uploads: list = field(default_factory=list)


def build(resolved: ResolvedBuild, options: BuildOptions | None = None, **flags) -> dict:
    """Build (or resume, or extend) every set of `resolved`; returns a summary dict. Safe to rerun.

    `options` (or the same fields as keyword arguments: `build(resolved, retry_failed=True)`) say how; see
    `BuildOptions`. Raises ConfigError before any work, BuildFailed (or DiskFullError) when the dataset is
    incomplete or over its failure budget, KeyboardInterrupt / Terminated after dropping the unfinished shard."""
    opts = options or BuildOptions(**flags)
    rebuild_sets, prune = list(opts.rebuild_sets or []), opts.prune
    store = Store(resolved.config.output)
    store.check_writable()
    identity.plan_output(store, resolved, rebuild_sets, prune)  # refusals before any model loads
    state = process_state()
    ranks = resolve_ranks(state, opts.rank, opts.world_size)
    if state.is_main_process:
        from fakeforge.builder.format_policy import encoding_mismatches

        for line in encoding_mismatches(resolved):
            log.warning("format shortcut: %s", line)
    workdir = store.root if store.local else _remote_workdir(store)
    plans = plan_build(resolved, state, workdir)
    with build_lock(store, state, ranks) as lock:
        out_plan = identity.plan_output(store, resolved, rebuild_sets, prune)  # again: nobody else writes now
        for rset, jobs in plans:
            identity.check_growth(store, out_plan, rset, sum(len(j.records) for j in jobs))
        staging = None if store.local else Path(tempfile.mkdtemp(prefix="fakeforge-stage-"))
        try:
            return _build_locked(BuildRun(resolved, opts, store, state, ranks, plans, out_plan, lock, staging))
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _remote_workdir(store: Store) -> Path:
    """A local folder for generated sources (demo images, archive members) of a build into an object store."""
    import os

    base = Path(os.environ.get("FAKEFORGE_WORK_DIR") or Path.home() / ".cache" / "fakeforge" / "work")
    return base / hashlib.sha256(str(store.url()).encode()).hexdigest()[:16]


def _prepare_output(resolved, store: Store, plans, out_plan, state, ranks: Ranks) -> None:
    """Swap in finished rebuilds, prune, clear stale rebuild folders, write set records and the config
    (rank 0, or every independent rank: records are deterministic)."""
    if not (state.is_main_process or ranks.independent):
        return
    if not ranks.independent:
        if out_plan.pruned or [n for n in out_plan.swaps if n not in out_plan.rebuild]:
            store.remove(MANIFEST)
        for name in out_plan.swaps:
            if name not in out_plan.rebuild:
                identity.swap_in(store, name)
        for name in out_plan.pruned:
            identity.prune_set(store, name)
    for rset, jobs in plans:
        folder = out_plan.folders[rset.name]
        record = identity.set_record(rset, set_label(rset), sum(len(j.records) for j in jobs), len(jobs),
                                     complete=False if folder != rset.name else None)
        try:
            old = store.read_json(f"{folder}/{SET_RECORD}")
        except ValueError:
            old = None
        if folder != rset.name and old is not None and old.get("set_hash") != rset.set_hash:
            store.remove_tree(folder)  # an earlier rebuild with other settings: start over
            old = None
        if old != record:
            store.makedirs(folder)
            store.write_json(f"{folder}/{SET_RECORD}", record)
    raw = dict(resolved.raw)
    raw["output"] = redact_url(raw.get("output", ""))
    text = yaml.safe_dump({**raw, "config_hash": resolved.hash, "tiny": resolved.tiny,
                           "set_hashes": {r.name: r.set_hash for r, _ in plans}}, sort_keys=False)
    if store.read_bytes(RESOLVED_CONFIG) != text.encode():
        store.write_bytes(RESOLVED_CONFIG, text.encode())


def _build_locked(run: BuildRun) -> dict:
    resolved, store, state, ranks, plans, out_plan = (run.resolved, run.store, run.state, run.ranks, run.plans,
                                                      run.out_plan)
    if resolved.tiny:
        from fakeforge.twins import ensure_tiny

        with state.main_process_first():
            for rset in resolved.sets:
                if rset.generator_raw.get("tiny_twin"):
                    ensure_tiny(rset.generator_raw["tiny_twin"], resolved.tiny_root)
    _prepare_output(resolved, store, plans, out_plan, state, ranks)
    state.wait_for_everyone()

    all_jobs = [(rset, job) for rset, jobs in plans for job in jobs]
    mine = assign_jobs(all_jobs, ranks.rank, ranks.world)
    todo, redone = _todo(store, out_plan, mine, run.options.retry_failed, run.options.verify_existing)
    run.summary = summary = {"rank": ranks.rank, "shards_total": len(all_jobs), "shards_mine": len(mine),
               "shards_skipped": len(mine) - len(todo), "shards_redone": redone, "written": 0, "failed": 0,
               "seconds": 0.0, "shard_errors": []}
    if any(out_plan.folders[rset.name] == rset.name for rset, _ in todo):
        store.remove(MANIFEST)  # the dataset is about to change: no manifest until it is whole (a rebuild
        # works beside the old set, which stays valid until the swap)
    run.versions = versions = library_versions(BUILD_LIBRARIES)
    start = time.time()
    run.bar = bar = make_progress(sum(len(j.records) for _, j in todo), ranks.rank, run.options.progress,
                                  run.options.log_every)
    run.pool = pool = ThreadPoolExecutor(max_workers=max(1, resolved.config.num_workers),
                                         thread_name_prefix="source-io")
    try:
        _run_jobs(run, todo)
    except KeyboardInterrupt as exc:
        log.warning("interrupted (Ctrl-C): the unfinished shard was dropped, finished shards are kept; "
                    "rerun the same command to resume")
        raise mark_reported(exc)
    except Terminated as exc:
        log.warning("terminated (SIGTERM): the unfinished shard was dropped, finished shards are kept; "
                    "rerun the same command to resume")
        raise mark_reported(exc)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    summary["seconds"] = round(time.time() - start, 2)
    failures = [f"shard {e['set']}/{e['shard']} was not written: {e['error']}" for e in summary["shard_errors"]]
    if ranks.independent:
        _log_summary(summary)
        if failures:
            raise BuildFailed("\n".join(failures))
        log.info("rank %d of %d: its shards are done. Once every rank has finished, run the same command once "
                 "without --rank/--world-size: it skips every finished shard and writes the manifest", ranks.rank,
                 ranks.world)
        return summary
    state.wait_for_everyone()
    if state.is_main_process:
        failures += _finish(resolved, store, plans, out_plan, versions, summary)
        if not failures:
            _write_card(store)
    _log_summary(summary)
    if failures:
        raise BuildFailed("\n".join(failures))
    return summary


def _write_card(store: Store) -> None:
    """The dataset card (README.md, sample grids) with the shortcut audit of its real/fake set pairs. It
    describes a finished dataset, so a problem here is logged, never a reason to fail the build."""
    from fakeforge.audit import audit_sets, read_set
    from fakeforge.builder.card import write_dataset_card
    from fakeforge.shards.hub import listed_tars, unlisted_tars

    location = str(store.url())
    try:
        manifest = store.read_json(MANIFEST) or {}
        stray = unlisted_tars(location, manifest)
        if stray:
            log.warning("dataset card: ignored %d file(s) the manifest does not list: %s (an interrupted copy? "
                        "`fakeforge verify` flags them)", len(stray), ", ".join(stray))
        sets = [read_set(name, [store.url(t) for t in tars], None, 200)
                for name, tars in listed_tars(manifest).items()]
        labels = {s.label for s in sets if s.rows}
        audit = audit_sets(sets) if {"real", "fake"} <= labels else None
        if audit and audit["flagged"]:
            log.warning("shortcut audit: format features alone separate %s (see the dataset card)",
                        ", ".join(audit["flagged"]))
        log.info("dataset card: %s", write_dataset_card(location, audit=audit))
    except Exception as exc:  # noqa: BLE001 - the data is complete; only its description failed
        log.warning("could not write the dataset card: %s: %s", type(exc).__name__, exc)


def _finish(resolved, store: Store, plans, out_plan, versions, summary) -> list[str]:
    """Rank 0, after every rank is done: swap in complete rebuilds, write the manifest over every set of
    the output (this config's and the kept ones), check completeness and budgets."""
    failures = []
    for rset, jobs in plans:
        folder = out_plan.folders[rset.name]
        if folder == rset.name:
            continue
        remaining, _ = _todo(store, out_plan, [(rset, job) for job in jobs], False, False)
        done = len(jobs) - len(remaining)
        if not remaining:
            store.remove(MANIFEST)
            record = store.read_json(f"{folder}/{SET_RECORD}") or {}
            store.write_json(f"{folder}/{SET_RECORD}", {**record, "complete": True})
            identity.swap_in(store, rset.name)
            out_plan.folders[rset.name] = rset.name
        else:
            failures.append(f"set '{rset.name}': the rebuild finished {done} of {len(jobs)} shard jobs (rerun the "
                            f"same command with --rebuild-set {rset.name} to complete it; the old set is unchanged)")
    if failures:
        return failures
    sets = [{"name": rset.name, "label": set_label(rset), "generator": rset.generator_name,
             "model_id": rset.model_label, "shards": len(jobs), "set_hash": rset.set_hash,
             "limit": rset.source.limit} for rset, jobs in plans]
    built = {s["name"] for s in sets}
    for name in [*out_plan.kept, *resolved.skipped]:
        rec = out_plan.records.get(name)
        if rec is not None and name not in built:
            sets.append({"name": name, "label": rec.get("label"), "generator": rec.get("generator"),
                         "model_id": rec.get("model_id"), "shards": rec.get("shard_jobs", 0),
                         "set_hash": rec.get("set_hash"), "limit": rec.get("limit")})
    manifest = build_manifest(store, sets, None, {"tiny": resolved.tiny, "versions": versions,
                                                  "max_failed_fraction": resolved.config.max_failed_fraction})
    summary["manifest"] = {k: {"count": v["count"], "failed": v["failed"]} for k, v in manifest["sets"].items()}
    summary["config_hash"] = manifest["config_hash"]
    failures += [f"set '{k}': {v['shard_jobs_done']} of {v['shard_jobs']} shard jobs finished (rerun the "
                 "same command to complete it)" for k, v in manifest["sets"].items()
                 if v["shard_jobs_done"] != v["shard_jobs"]]
    failures += over_budget(store, manifest, resolved.config.max_failed_fraction)
    zoo_sets = [rset for rset, _jobs in plans if is_zoo(rset)]
    for rset in zoo_sets:
        models = model_summary(collect_stats(store, rset.name))
        summary.setdefault("models", {})[rset.name] = models
        manifest["sets"][rset.name]["models"] = models  # per-model counts and failures, for the card
        failures += budget_lines(rset.name, models, rset.generator_cfg.allowed_failures(),
                                 len(rset.generator_cfg.models))
    if zoo_sets:
        store.write_json(MANIFEST, manifest)
    if manifest["failed"] and not failures:
        log.warning("%d samples failed (their errors are in each shard's .done.json); after fixing the "
                    "cause, rerun with --retry-failed to redo only the shards that have failures",
                    manifest["failed"])
    return failures


def _todo(store: Store, out_plan, jobs, retry_failed: bool, verify_existing: bool):
    """The jobs to (re)do; logs each finished shard that is redone because it is no longer whole or was
    planned with other samples (a set that grew). One listing per set folder; only the done-markers of
    `jobs` are read (concurrently on object stores)."""
    listings: dict[str, dict] = {}
    for rset, _job in jobs:
        folder = out_plan.folders[rset.name]
        if folder not in listings:
            listings[folder] = list_shard_files(store, folder)
    found = {(rset.name, job.index): existing_marker(listings[out_plan.folders[rset.name]].get(f"{job.index:06d}", {}),
                                                   job.index) for rset, job in jobs}
    wanted = [f"{out_plan.folders[rset.name]}/{found[rset.name, job.index]}" for rset, job in jobs
              if found[rset.name, job.index]]
    markers = store.read_many(wanted)
    todo, redone = [], 0
    for rset, job in jobs:
        folder = out_plan.folders[rset.name]
        name = found[rset.name, job.index]
        raw = markers.get(f"{folder}/{name}") if name else None
        try:
            stats = json.loads(raw) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            stats = None
        plan = plan_record(job_keys(rset.name, job))
        done, reason = shard_state(store, folder, job.index, plan=plan, without_failures=retry_failed,
                                   check_hash=verify_existing, existing=listings[folder], stats=stats)
        if not done:
            todo.append((rset, job))
            if reason:
                redone += 1
                log.warning("redoing shard %s/%06d: %s", rset.name, job.index, reason)
    return todo, redone


def _settle(uploads: list, summary: dict, keep: int) -> None:
    """Wait for queued shard uploads until at most `keep` are left; a failed one is a dropped shard."""
    while len(uploads) > keep:
        name, index, future = uploads.pop(0)
        try:
            future.result()
        except ShardWriteError as exc:
            shard_write_failed(exc, name, index, summary)


def _run_jobs(run: BuildRun, todo) -> None:
    """Every shard job of this rank. On object stores a shard's upload overlaps the next shard's generation
    (one upload at a time); an interruption waits for that upload, so the shard is either done or dropped."""
    run.publisher = None if run.store.local else ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
    try:
        _run_sets(run, todo)
    except BaseException:
        for _name, _index, future in run.uploads:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the upload dropped (aborted) its shard; a rerun redoes it
                log.warning("shard %s/%06d was dropped: %s", _name, _index, exc)
        raise
    finally:
        if run.publisher is not None:
            run.publisher.shutdown(wait=True)


def _run_sets(run: BuildRun, todo) -> None:
    resolved, summary, bar = run.resolved, run.summary, run.bar
    active = [rset for rset in resolved.sets if any(s is rset for s, _ in todo)]
    for n, rset in enumerate(active):
        jobs = [job for s, job in todo if s is rset]
        if getattr(rset.generator_cls, "reads_other_set", False):  # a degrade set reads its original back
            of = rset.generator_cfg.of
            rset.generator_cfg.of_location = str(run.store.url(run.out_plan.folders.get(of, of)))
        generator = rset.generator_cls(rset.generator_cfg, device=str(run.state.device))
        generator.image_policy = rset.image
        try:
            generator.load()
        except ModelFault as exc:  # a model that cannot run as configured (a LoRA that does not fit its base)
            raise BuildFailed(f"set '{rset.name}': {exc.fault_class}: {exc}") from exc
        settings = generator.settings()
        if "model_id" in settings:
            settings["model_id"] = rset.model_label  # the hub id (or twin name), not a local path
        common = {"label": set_label(rset), "set": rset.name, "generator": rset.generator_name,
                  "generator_type": rset.generator_cfg.type, "model_id": rset.model_label,
                  "source": rset.source.kind, "settings": settings, "set_hash": rset.set_hash,
                  "versions": run.versions}
        header = {"set": rset.name, "set_hash": rset.set_hash, "rank": run.ranks.rank}
        guard = SetGuard(rset.name, sum(len(j.records) for j in jobs)) if not is_zoo(rset) else None

        def on_batch(report: BatchReport, guard=guard):
            bar.update(report.size)
            summary["written"] += report.ok
            summary["failed"] += report.size - report.ok
            if guard is not None:  # a zoo's models fail one by one (generators/zoo.py), not the set
                guard(report)
            run.lock.check()

        for job in jobs:
            bar.set_postfix_str(f"{rset.name}/{job.index:06d}")
            if job.model is not None and _zoo_job(run, generator, job, rset, header, None):
                continue
            try:
                result = run_shard(job, generator, run.store, run.out_plan.folders[rset.name], rset.image,
                                   base_seed=resolved.config.seed, common_meta=common, pool=run.pool,
                                   header=header if job.model is None else {**header, "model": job.model},
                                   on_batch=on_batch, limits=rset.source.image_limits, staging=run.staging,
                                   plan=plan_record(job_keys(rset.name, job)),
                                   max_size_bytes=int(resolved.config.shards.max_size_mb * 2**20),
                                   publisher=run.publisher)
            except ModelFailure as exc:
                _zoo_job(run, generator, job, rset, header, exc)
                continue
            except GeneratorFailure as exc:
                raise BuildFailed(f"set '{rset.name}': the generator failed (a configuration or code problem, "
                                  f"not one sample's): {exc}") from exc
            except ShardWriteError as exc:
                shard_write_failed(exc, rset.name, job.index, summary)
                continue
            if isinstance(result, Future):
                _settle(run.uploads, summary, keep=0)  # at most one upload runs while the next shard is generated
                run.uploads.append((rset.name, job.index, result))
        _settle(run.uploads, summary, keep=0)
        del generator
        if n + 1 < len(active):  # release the accelerator before the next set's model loads
            _free_memory()


def _zoo_job(run: BuildRun, generator, job: ShardJob, rset: ResolvedSet, header: dict, error) -> bool:
    """Before a zoo shard (`error` None): activate its model; after a `ModelFailure` (`error`): record it.
    True when the shard was written as a model-failure shard (no samples, the model's failure record)."""
    failure = generator.fail(job.model, error, "generate") if error is not None else generator.activate(job.model)
    if failure is None:
        return False
    write_model_failure_shard(run.store, run.out_plan.folders[rset.name], job, failure, {**header, "model": job.model},
                              plan_record(job_keys(rset.name, job)), run.staging)
    run.summary.setdefault("model_failures", {})[job.model] = failure["class"]
    if error is None:
        run.bar.update(len(job.records))
    return True


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _log_summary(s: dict) -> None:
    rate = s["written"] / s["seconds"] if s["seconds"] > 0 else 0.0
    log.info("rank %d: %d written, %d failed, %d/%d shards skipped as done, %d redone, %.1f s (%.2f img/s)",
             s["rank"], s["written"], s["failed"], s["shards_skipped"], s["shards_mine"], s["shards_redone"],
             s["seconds"], rate)
    for name, v in (s.get("manifest") or {}).items():
        log.info("  set %-20s %6d samples, %d failed", name, v["count"], v["failed"])
