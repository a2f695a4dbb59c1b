"""Drive a build: plan every set's shards, split them across processes, skip finished ones, summarise.

Under `accelerate launch` each process (GPU) takes the shard jobs whose global index falls on its
rank, so ranks write disjoint shards and share nothing but the output folder. One build owns its
output folder (`fakeforge.locking.OutputLock`, taken by rank 0 for the whole job). Rerunning the same
command resumes: a shard is skipped only when its done-marker is there and every tar it lists is
whole; anything else is redone, and the log says why.

A build that ends without a complete dataset ends with `BuildFailed` (exit 1): a shard that could not
be written, a set whose first batch failed entirely, a set over its failure budget (see failures.py).
"""
from __future__ import annotations

import gc
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import yaml

from fakeforge import __version__
from fakeforge.build.config import ResolvedBuild, ResolvedSet
from fakeforge.build.plan import ShardJob, check_unique_keys, plan_shards
from fakeforge.build.failures import BuildFailed, DiskFullError, SetGuard, over_budget, shard_write_failed
from fakeforge.build.worker import BatchReport, run_shard
from fakeforge.config import ConfigError, dump_yaml
from fakeforge.locking import FolderLockedError, OutputLock
from fakeforge.shards.manifest import MANIFEST, build_manifest
from fakeforge.shards.writer import ShardWriteError, list_shard_files, shard_state
from fakeforge.sources import check_images_exist, load_records
from generators.base import GeneratorFailure

__all__ = ["BuildFailed", "DiskFullError", "Terminated", "build", "check_output_dir", "plan_build"]
log = logging.getLogger("fakeforge.build")
RESOLVED_CONFIG = "build_config.yaml"


class Terminated(BaseException):
    """SIGTERM (a scheduler's preemption): handled like Ctrl-C, unfinished shard dropped."""


def install_sigterm_handler() -> None:
    """Turn the first SIGTERM into `Terminated` in the main thread (later ones are ignored, so the
    cleanup of the unfinished shard is not cut short)."""
    import signal

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def library_versions() -> dict:
    """Versions recorded in every sample's metadata."""
    import importlib.metadata as md

    out = {"fakeforge": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "webdataset", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def check_output_path(out: Path) -> None:
    """Refuse an output path that is a file, or whose folder cannot be written (before any work)."""
    import os

    if out.exists() and not out.is_dir():
        raise ConfigError(f"output '{out}' is a file, not a folder; choose another --output")
    anchor = out
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"output '{out}' cannot be written: '{anchor}' is read-only or not writable for this user")


def check_output_dir(out: Path, config_hash: str) -> None:
    """Refuse an output folder that holds shards of a different config (before any model loads)."""
    saved = out / RESOLVED_CONFIG
    if saved.is_file():
        try:
            old = (yaml.safe_load(saved.read_text()) or {}).get("config_hash")
        except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
            raise ConfigError(f"'{saved}' is unreadable; this folder's config is unknown: use another --output "
                              "or delete that folder") from None
        if old != config_hash:
            raise ConfigError(f"output folder '{out}' holds shards of a different config (config_hash {old}, "
                              f"this config {config_hash}); use another --output or delete that folder")
    elif out.is_dir() and any(out.glob("*/*.tar")):
        raise ConfigError(f"output folder '{out}' holds .tar shards not made by this config "
                          f"(no {RESOLVED_CONFIG}); use another --output")


def plan_build(resolved: ResolvedBuild, state) -> list[tuple[ResolvedSet, list[ShardJob]]]:
    """Read sources and cut shard jobs for every set; checks keys are unique and source images exist."""
    plans = []
    for rset in resolved.sets:
        with state.main_process_first():  # the demo source is written once, by the main process
            records = load_records(rset.source, resolved.output)
        check_unique_keys(rset.name, records)
        if rset.generator_cls.needs_source_image and rset.source.require_images:
            check_images_exist(records, f"set '{rset.name}'")
        plans.append((rset, plan_shards(rset.name, records, resolved.config.shards.max_count)))
    return plans


def process_state():
    """accelerate's PartialState; on a machine without CUDA, several launched processes use gloo on CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _broadcast_from_main(state, value):
    """`value` as rank 0 has it, on every rank (a no-op with one process)."""
    import torch.distributed as dist

    if state.num_processes == 1 or not dist.is_available() or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def build_lock(out: Path, state):
    """One build job per output folder: rank 0 takes the lock and tells every rank whether it got it,
    so every rank of a second job exits with the holder named."""
    lock = OutputLock(out, "build")
    error = None
    if state.is_main_process:
        try:
            lock.acquire()
        except FolderLockedError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"output folder '{out}' cannot be created or locked: {exc.strerror or exc}"
    error = _broadcast_from_main(state, error)
    if error:
        raise FolderLockedError(error)
    try:
        yield
    finally:
        lock.release()


def build(resolved: ResolvedBuild, progress: bool = True, retry_failed: bool = False,
          verify_existing: bool = False) -> dict:
    """Build (or resume) every set of `resolved`; returns a summary dict. Safe to rerun.

    `retry_failed` also redoes finished shards that recorded failed samples (e.g. after an
    out-of-memory error or a fixed source image); keys and seeds are the same, so nothing else changes.
    `verify_existing` checks the sha256 of every finished shard before skipping it (default: sizes).
    Raises ConfigError before any work, BuildFailed (or DiskFullError) when the dataset is incomplete
    or over its failure budget, KeyboardInterrupt / Terminated after dropping the unfinished shard."""
    out = resolved.output
    check_output_path(out)
    check_output_dir(out, resolved.hash)
    state = process_state()
    plans = plan_build(resolved, state)
    with build_lock(out, state):
        check_output_dir(out, resolved.hash)  # again, now that nobody else can write here
        return _build_locked(resolved, state, plans, progress, retry_failed, verify_existing)


def _build_locked(resolved, state, plans, progress, retry_failed, verify_existing) -> dict:
    from tqdm.auto import tqdm

    out = resolved.output
    if resolved.tiny:
        from fakeforge.tiny import ensure_tiny

        with state.main_process_first():
            for rset in resolved.sets:
                if rset.generator_raw.get("tiny_twin"):
                    ensure_tiny(rset.generator_raw["tiny_twin"], resolved.tiny_root)
    if state.is_main_process:
        dump_yaml({**resolved.raw, "config_hash": resolved.hash, "tiny": resolved.tiny}, out / RESOLVED_CONFIG)
    state.wait_for_everyone()

    all_jobs = [(rset, job) for rset, jobs in plans for job in jobs]
    mine = [(rset, job) for i, (rset, job) in enumerate(all_jobs) if i % state.num_processes == state.process_index]
    todo, redone = _todo(out, mine, retry_failed, verify_existing)
    summary = {"rank": state.process_index, "shards_total": len(all_jobs), "shards_mine": len(mine),
               "shards_skipped": len(mine) - len(todo), "shards_redone": redone, "written": 0, "failed": 0,
               "seconds": 0.0, "shard_errors": []}
    if todo:
        (out / MANIFEST).unlink(missing_ok=True)  # the dataset is about to change: no manifest until it is whole
    versions = library_versions()
    start = time.time()
    bar = tqdm(total=sum(len(j.records) for _, j in todo), unit="img", desc=f"build[{state.process_index}]",
               position=state.process_index, disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=max(1, resolved.config.num_workers), thread_name_prefix="source-io")
    try:
        _run_jobs(resolved, state, todo, summary, versions, bar, pool)
    except KeyboardInterrupt:
        log.warning("interrupted (Ctrl-C): the unfinished shard was dropped, finished shards are kept; "
                    "rerun the same command to resume")
        raise
    except Terminated:
        log.warning("terminated (SIGTERM): the unfinished shard was dropped, finished shards are kept; "
                    "rerun the same command to resume")
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    summary["seconds"] = round(time.time() - start, 2)
    state.wait_for_everyone()
    failures = [f"shard {e['set']}/{e['shard']} was not written: {e['error']}" for e in summary["shard_errors"]]
    if state.is_main_process:
        sets = [{"name": rset.name, "label": set_label(rset), "generator": rset.generator_name,
                 "model_id": rset.model_label, "shards": len(jobs)} for rset, jobs in plans]
        manifest = build_manifest(out, sets, resolved.hash, {"tiny": resolved.tiny, "versions": versions,
                                                            "max_failed_fraction":
                                                                resolved.config.max_failed_fraction})
        summary["manifest"] = {k: {"count": v["count"], "failed": v["failed"]} for k, v in manifest["sets"].items()}
        failures += [f"set '{k}': {v['shard_jobs_done']} of {v['shard_jobs']} shard jobs finished (rerun the "
                     "same command to complete it)" for k, v in manifest["sets"].items()
                     if v["shard_jobs_done"] != v["shard_jobs"]]
        failures += over_budget(out, manifest, resolved.config.max_failed_fraction)
        if manifest["failed"] and not failures:
            log.warning("%d samples failed (their errors are in each shard's .stats.json); after fixing the "
                        "cause, rerun with --retry-failed to redo only the shards that have failures",
                        manifest["failed"])
    _log_summary(summary)
    if failures:
        raise BuildFailed("\n".join(failures))
    return summary


def set_label(rset: ResolvedSet) -> str:
    """A set's label: the generator's, except for pass-through generators of downloaded sets, whose
    label is the source's (`download` generator + `source.label`)."""
    if getattr(rset.generator_cls, "label_from_source", False) and rset.source.label:
        return rset.source.label
    return rset.generator_cls.label


def _todo(out: Path, mine, retry_failed: bool, verify_existing: bool):
    """The jobs to (re)do; logs each finished shard that is redone because it is no longer whole."""
    listings: dict[str, dict[str, set[str]]] = {}
    todo, redone = [], 0
    for rset, job in mine:
        set_dir = out / rset.name
        if rset.name not in listings:
            listings[rset.name] = list_shard_files(set_dir)
        done, reason = shard_state(set_dir, job.index, without_failures=retry_failed, check_hash=verify_existing,
                                   existing=listings[rset.name])
        if not done:
            todo.append((rset, job))
            if reason:
                redone += 1
                log.warning("redoing shard %s/%06d: %s", rset.name, job.index, reason)
    return todo, redone


def _run_jobs(resolved: ResolvedBuild, state, todo, summary, versions, bar, pool) -> None:
    out = resolved.output
    active = [rset for rset in resolved.sets if any(s is rset for s, _ in todo)]
    for n, rset in enumerate(active):
        jobs = [job for s, job in todo if s is rset]
        generator = rset.generator_cls(rset.generator_cfg, device=str(state.device))
        generator.image_policy = rset.image
        generator.load()
        settings = generator.settings()
        if "model_id" in settings:
            settings["model_id"] = rset.model_label  # the hub id (or twin name), not a local path
        common = {"label": set_label(rset), "set": rset.name, "generator": rset.generator_name,
                  "generator_type": rset.generator_cfg.type, "model_id": rset.model_label,
                  "source": rset.source.kind, "settings": settings, "config_hash": resolved.hash,
                  "versions": versions}
        header = {"set": rset.name, "config_hash": resolved.hash, "rank": state.process_index}
        guard = SetGuard(rset.name, sum(len(j.records) for j in jobs))

        def on_batch(report: BatchReport, guard=guard):
            bar.update(report.size)
            summary["written"] += report.ok
            summary["failed"] += report.size - report.ok
            guard(report)

        for job in jobs:
            bar.set_postfix_str(f"{rset.name}/{job.index:06d}")
            try:
                run_shard(job, generator, out / rset.name, rset.image, base_seed=resolved.config.seed,
                          common_meta=common, header=header, pool=pool, on_batch=on_batch,
                          limits=rset.source.image_limits,
                          max_size_bytes=int(resolved.config.shards.max_size_mb * 2**20))
            except GeneratorFailure as exc:
                raise BuildFailed(f"set '{rset.name}': the generator failed (a configuration or code problem, "
                                  f"not one sample's): {exc}") from exc
            except ShardWriteError as exc:
                shard_write_failed(exc, rset.name, job.index, summary)
        del generator
        if n + 1 < len(active):  # release the accelerator before the next set's model loads
            _free_memory()


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
