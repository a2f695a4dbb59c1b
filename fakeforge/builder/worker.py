"""Run one shard job: load source images (threads), generate in batches, encode + write (a thread).

Three stages overlap so the accelerator is never idle on I/O: while batch k is being generated,
batch k+1's source images are decoded and batch k-1 is encoded and appended to the tar.

A failure of one sample (its source image, its caption, a NaN output) is recorded and the shard goes
on. A write error is not a sample's failure: the tar stream may be misaligned, so the whole shard is
dropped (`ShardWriteError`) and left unfinished for the next run.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fakeforge.builder.plan import ShardJob, sample_key, sample_seed
from fakeforge.images import ImageLimits, ImageLoadError, ImagePolicy, encode_mask, load_rgb
from fakeforge.shards.store import Store
from fakeforge.shards.writer import ShardSink
from fakeforge.sources import Record
from generators.base import Generator, GenRequest, GenResult


@dataclass
class BatchReport:
    """What happened to one batch: its size, how many samples were made, how many failed on their
    input (source image, caption), and the generator's errors for the others."""

    size: int
    ok: int
    input_failed: int
    generator_errors: list[str] = field(default_factory=list)


def _prepare(records: list[Record], set_name: str, base_seed: int, needs_image: bool,
             limits: ImageLimits | None = None) -> list[tuple[GenRequest, str | None]]:
    """Requests for a batch; a source image that cannot be read, or a bad caption, becomes that sample's error."""
    out = []
    for rec in records:
        req = GenRequest(key=sample_key(set_name, rec), prompt=rec.caption, seed=sample_seed(set_name, rec, base_seed),
                         source_image_id=rec.image_id,
                         meta={"image_id": rec.image_id, "caption_id": rec.caption_id, **rec.extra})
        error = rec.error
        if needs_image and error is None:
            try:
                req.image = load_rgb(rec.image_path, limits) if rec.image_path else None
                if req.image is None:
                    error = "record has no image path"
                else:
                    req.meta["width"], req.meta["height"] = req.image.size
            except ImageLoadError as exc:
                error = f"ImageLoadError: {exc}"
        out.append((req, error))
    return out


def _sample(req: GenRequest, res: GenResult, policy: ImagePolicy, common: dict) -> dict:
    data, image_info = policy.encode(res.image)
    meta = dict(common)
    meta.update({"key": req.key, "caption": req.prompt, "caption_id": req.meta.get("caption_id"),
                 "source_image_id": req.source_image_id, "seed": req.seed, "image": image_info,
                 "generated_size": list(res.image.size)})
    if "width" in req.meta:
        meta["source_size"] = [req.meta["width"], req.meta["height"]]
    meta.update(res.extra)
    sample = {"__key__": req.key, policy.extension: data, "json": meta}
    if res.mask is not None:
        sample["mask.png"] = encode_mask(res.mask)
    return sample


def run_shard(job: ShardJob, generator: Generator, store: Store, set_rel: str, policy: ImagePolicy, *,
              base_seed: int, common_meta: dict, header: dict, max_size_bytes: int, pool: ThreadPoolExecutor,
              limits: ImageLimits | None = None, on_batch: Callable[[BatchReport], None] | None = None,
              staging: Path | None = None, plan: dict | None = None, publisher: ThreadPoolExecutor | None = None
              ) -> dict | Future:
    """Make and write every sample of `job` into folder `set_rel` of `store`; returns the shard stats (also
    written as the done-marker, with `plan`). `staging`: the local folder where shards for an object
    store are made before their upload. With `publisher`, the last part's upload and the done-marker
    run there and a Future of the stats is returned (the next shard is generated meanwhile); a failed
    upload drops the shard (the Future raises `ShardWriteError`).

    Raises `ShardWriteError` (the shard dropped) when writing fails; anything `on_batch` raises stops
    the shard the same way (nothing of it stays)."""
    sink = ShardSink(store, set_rel, job.index, max_size_bytes, header, staging=staging, plan=plan)
    bs = generator.config.batch_size
    records = [job.records[i] for i in generator.batch_order([sample_key(job.set_name, r) for r in job.records])]
    batches = [records[i:i + bs] for i in range(0, len(records), bs)]
    needs_image = generator.needs_source_image
    gen_seconds = 0.0

    def write(prepared, results):
        for (req, _), res in zip(prepared, results):
            if res.error is not None or res.image is None:
                sink.fail(req.key, res.error or "generator returned no image")
                continue
            try:
                sample = _sample(req, res, policy, common_meta)
            except (ValueError, OSError) as exc:  # encoding this image failed (in memory): its own error
                sink.fail(req.key, f"{type(exc).__name__}: {exc}")
                continue
            sink.write(sample)  # ShardWriteError propagates: the shard is dropped

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    try:
        next_prep = pool.submit(_prepare, batches[0], job.set_name, base_seed, needs_image, limits) \
            if batches else None
        writes: list[Future] = []
        for b in range(len(batches)):
            prepared = next_prep.result()
            if b + 1 < len(batches):
                next_prep = pool.submit(_prepare, batches[b + 1], job.set_name, base_seed, needs_image, limits)
            todo = [req for req, err in prepared if err is None]
            start = time.perf_counter()
            made = iter(generator.generate_varied(todo) if todo else [])
            gen_seconds += time.perf_counter() - start
            results = [next(made) if err is None else GenResult(error=err) for _, err in prepared]
            for w in writes:  # a failed write stops the shard now, not after every batch is generated
                if w.done() and w.exception() is not None:
                    w.result()
            writes.append(writer.submit(write, prepared, results))
            if on_batch:
                input_failed = sum(err is not None for _, err in prepared)
                gen_errors = [r.error or "generator returned no image" for (_, err), r in zip(prepared, results)
                              if err is None and (r.error is not None or r.image is None)]
                on_batch(BatchReport(len(prepared), len(prepared) - input_failed - len(gen_errors), input_failed,
                                     gen_errors))
        for w in writes:
            w.result()
        extra = {"generate_seconds": round(gen_seconds, 3)}
        if publisher is None:
            return sink.close(extra)

        def publish():
            try:
                return sink.close(extra)
            except BaseException:
                sink.abort()
                raise

        return publisher.submit(publish)
    except BaseException:
        writer.shutdown(wait=True, cancel_futures=True)
        sink.abort()
        raise
    finally:
        writer.shutdown(wait=True)
