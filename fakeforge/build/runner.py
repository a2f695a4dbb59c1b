"""Drive a build: plan every set's shards, split them across processes, skip finished ones, summarise.

Under `accelerate launch` each process (GPU) takes the shard jobs whose global index falls on its
rank, so ranks write disjoint shards and share nothing but the output folder. Rerunning the same
command resumes: finished shards (with a done-marker) are skipped, unfinished ones are redone.
"""
from __future__ import annotations

import gc
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from fakeforge import __version__
from fakeforge.build.config import ResolvedBuild, ResolvedSet
from fakeforge.build.plan import ShardJob, plan_shards
from fakeforge.build.worker import run_shard
from fakeforge.config import ConfigError, dump_yaml
from fakeforge.shards.manifest import build_manifest
from fakeforge.shards.writer import is_done
from fakeforge.sources import check_images_exist, load_records

log = logging.getLogger("fakeforge.build")
RESOLVED_CONFIG = "build_config.yaml"


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


def check_output_dir(out: Path, config_hash: str) -> None:
    """Refuse an output folder that holds shards of a different config (before any model loads)."""
    saved = out / RESOLVED_CONFIG
    if saved.is_file():
        old = (yaml.safe_load(saved.read_text()) or {}).get("config_hash")
        if old != config_hash:
            raise ConfigError(f"output folder '{out}' holds shards of a different config (config_hash {old}, "
                              f"this config {config_hash}); use another --output or delete that folder")
    elif out.is_dir() and any(out.glob("*/*.tar")):
        raise ConfigError(f"output folder '{out}' holds .tar shards not made by this config "
                          f"(no {RESOLVED_CONFIG}); use another --output")


def plan_build(resolved: ResolvedBuild, state) -> list[tuple[ResolvedSet, list[ShardJob]]]:
    """Read sources and cut shard jobs for every set; checks source images exist where needed."""
    plans = []
    for rset in resolved.sets:
        with state.main_process_first():  # the demo source is written once, by the main process
            records = load_records(rset.source, resolved.output)
        if rset.generator_cls.needs_source_image and rset.source.require_images:
            check_images_exist(records, f"set '{rset.name}'")
        plans.append((rset, plan_shards(rset.name, records, resolved.config.shards.max_count)))
    return plans


def process_state():
    """accelerate's PartialState; on a machine without CUDA, several launched processes use gloo on CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def build(resolved: ResolvedBuild, progress: bool = True, retry_failed: bool = False) -> dict:
    """Build (or resume) every set of `resolved`; returns a summary dict. Safe to rerun.

    `retry_failed` also redoes finished shards that recorded failed samples (e.g. after an
    out-of-memory error or a fixed source image); keys and seeds are the same, so nothing else changes."""
    from tqdm.auto import tqdm

    state = process_state()
    out = resolved.output
    check_output_dir(out, resolved.hash)
    plans = plan_build(resolved, state)
    if resolved.tiny:
        from fakeforge.tiny import ensure_tiny

        with state.main_process_first():
            for rset in resolved.sets:
                if rset.generator_raw.get("tiny_twin"):
                    ensure_tiny(rset.generator_raw["tiny_twin"], resolved.tiny_root)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml({**resolved.raw, "config_hash": resolved.hash, "tiny": resolved.tiny}, out / RESOLVED_CONFIG)
    state.wait_for_everyone()

    all_jobs = [(rset, job) for rset, jobs in plans for job in jobs]
    mine = [(rset, job) for i, (rset, job) in enumerate(all_jobs) if i % state.num_processes == state.process_index]
    todo = [(rset, job) for rset, job in mine if not is_done(out / rset.name, job.index, retry_failed)]
    summary = {"rank": state.process_index, "shards_total": len(all_jobs), "shards_mine": len(mine),
               "shards_skipped": len(mine) - len(todo), "written": 0, "failed": 0, "seconds": 0.0}
    versions = library_versions()
    start = time.time()
    bar = tqdm(total=sum(len(j.records) for _, j in todo), unit="img", desc=f"build[{state.process_index}]",
               position=state.process_index, disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=max(1, resolved.config.num_workers), thread_name_prefix="source-io")
    try:
        active = [rset for rset in resolved.sets if any(s is rset for s, _ in todo)]
        for n, rset in enumerate(active):
            jobs = [job for s, job in todo if s is rset]
            generator = rset.generator_cls(rset.generator_cfg, device=str(state.device))
            generator.image_policy = rset.image
            generator.load()
            settings = generator.settings()
            if "model_id" in settings:
                settings["model_id"] = rset.model_label  # the hub id (or twin name), not a local path
            common = {"label": generator.label, "set": rset.name, "generator": rset.generator_name,
                      "generator_type": rset.generator_cfg.type, "model_id": rset.model_label,
                      "source": rset.source.kind, "settings": settings, "config_hash": resolved.hash,
                      "versions": versions}
            header = {"set": rset.name, "config_hash": resolved.hash, "rank": state.process_index}

            def on_batch(n, ok):
                bar.update(n)
                summary["written"] += ok
                summary["failed"] += n - ok

            for job in jobs:
                bar.set_postfix_str(f"{rset.name}/{job.index:06d}")
                run_shard(job, generator, out / rset.name, rset.image, base_seed=resolved.config.seed,
                          common_meta=common, header=header, pool=pool, on_batch=on_batch,
                          max_size_bytes=int(resolved.config.shards.max_size_mb * 2**20))
            del generator
            if n + 1 < len(active):  # release the accelerator before the next set's model loads
                _free_memory()
    except KeyboardInterrupt:
        log.warning("interrupted: finished shards are kept; rerun the same command to resume")
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    summary["seconds"] = round(time.time() - start, 2)
    state.wait_for_everyone()
    if state.is_main_process:
        sets = [{"name": rset.name, "label": rset.generator_cls.label, "generator": rset.generator_name,
                 "model_id": rset.model_label, "shards": len(jobs)} for rset, jobs in plans]
        manifest = build_manifest(out, sets, resolved.hash, {"tiny": resolved.tiny, "versions": versions})
        summary["manifest"] = {k: {"count": v["count"], "failed": v["failed"]} for k, v in manifest["sets"].items()}
        if manifest["failed"]:
            log.warning("%d samples failed (their errors are in each shard's .stats.json); after fixing the "
                        "cause, rerun with --retry-failed to redo only the shards that have failures",
                        manifest["failed"])
    _log_summary(summary)
    return summary


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
    log.info("rank %d: %d written, %d failed, %d/%d shards skipped as done, %.1f s (%.2f img/s)", s["rank"],
             s["written"], s["failed"], s["shards_skipped"], s["shards_mine"], s["seconds"], rate)
    for name, v in (s.get("manifest") or {}).items():
        log.info("  set %-20s %6d samples, %d failed", name, v["count"], v["failed"])
