"""Run one shard job: load source images (threads), generate in batches, encode + write (a thread).

Three stages overlap so the accelerator is never idle on I/O: while batch k is being generated,
batch k+1's source images are decoded and batch k-1 is encoded and appended to the tar.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from fakeforge.build.plan import ShardJob, sample_key, sample_seed
from fakeforge.images import ImageLoadError, ImagePolicy, encode_mask, load_rgb
from fakeforge.shards.writer import ShardSink
from fakeforge.sources import Record
from generators.base import Generator, GenRequest, GenResult


def _prepare(records: list[Record], set_name: str, base_seed: int, needs_image: bool
             ) -> list[tuple[GenRequest, str | None]]:
    """Requests for a batch; a source image that cannot be read becomes that sample's error."""
    out = []
    for rec in records:
        req = GenRequest(key=sample_key(set_name, rec), prompt=rec.caption, seed=sample_seed(set_name, rec, base_seed),
                         source_image_id=rec.image_id,
                         meta={"image_id": rec.image_id, "caption_id": rec.caption_id, **rec.extra})
        error = rec.extra.get("source_error") if needs_image else None  # a downloaded image that failed its checks
        if needs_image and error is None:
            try:
                req.image = load_rgb(rec.image_path) if rec.image_path else None
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


def run_shard(job: ShardJob, generator: Generator, set_dir, policy: ImagePolicy, *, base_seed: int,
              common_meta: dict, header: dict, max_size_bytes: int, pool: ThreadPoolExecutor,
              on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Make and write every sample of `job`; returns the shard stats (also written as the done-marker)."""
    sink = ShardSink(set_dir, job.index, max_size_bytes, header)
    bs = generator.config.batch_size
    batches = [job.records[i:i + bs] for i in range(0, len(job.records), bs)]
    needs_image = generator.needs_source_image
    gen_seconds = 0.0

    def write(prepared, results):
        ok = 0
        for (req, _), res in zip(prepared, results):
            if res.error is not None or res.image is None:
                sink.fail(req.key, res.error or "generator returned no image")
                continue
            try:
                sink.write(_sample(req, res, policy, common_meta))
                ok += 1
            except (ValueError, OSError) as exc:
                sink.fail(req.key, f"{type(exc).__name__}: {exc}")
        return ok

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    try:
        next_prep = pool.submit(_prepare, batches[0], job.set_name, base_seed, needs_image) if batches else None
        writes: list[Future] = []
        for b in range(len(batches)):
            prepared = next_prep.result()
            if b + 1 < len(batches):
                next_prep = pool.submit(_prepare, batches[b + 1], job.set_name, base_seed, needs_image)
            todo = [req for req, err in prepared if err is None]
            start = time.perf_counter()
            made = iter(generator.generate_safe(todo) if todo else [])
            gen_seconds += time.perf_counter() - start
            results = [next(made) if err is None else GenResult(error=err) for _, err in prepared]
            writes.append(writer.submit(write, prepared, results))
            if on_batch:
                on_batch(len(prepared), sum(r.error is None for r in results))
        for w in writes:
            w.result()
        return sink.close({"generate_seconds": round(gen_seconds, 3)})
    except BaseException:
        writer.shutdown(wait=True, cancel_futures=True)
        sink.abort()
        raise
    finally:
        writer.shutdown(wait=True)
