"""Robustness evaluation: several detectors on the same sets, clean and under every condition of a protocol.

`score_robustness` decodes each image once. Worker threads make every condition's degraded copy (see
fakeforge.degrade) and its tensors, one per distinct preprocessing, while the calling thread scores the
previous batches; each condition is batched on its own and scored with the side-by-side machinery
(`detector.eval.side_by_side.score_batch`: shared stages once per batch). A degradation that fails on one image
is that sample's recorded error in that condition (counted in the tables), never a crash. Randomness of a
degradation comes from the sample key, so results do not depend on the batch size or the thread count.

`write_robustness` writes robustness.json/.csv/.md (per condition: the paper-layout accuracy per set and
average, balanced accuracy, AUC/AP) and a few thumbnails per condition under `robustness/`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.data import SetSpec, iter_set_images
from detector.eval.evaluate import SetScores, _jsonable
from detector.eval.metrics import balanced_accuracy, summarize
from detector.eval.report_robustness import unchanged_note
from detector.eval.tables import pct as _pct
from detector.eval.side_by_side import Entry, entry_transforms, score_batch, stage_groups
from fakeforge.degrade import DegradeError
from fakeforge.protocols import CLEAN, Protocol

log = logging.getLogger(__name__)

THUMB_SIDE = 128  # thumbnails are shrunk to this long side (PNG)


@dataclass
class RobustnessRun:
    """Per condition, one Entry per detector (in the order given) holding its SetScores per set."""

    protocol: Protocol
    conditions: dict[str, list[Entry]]
    thumbnails: dict[str, list[tuple[str, object]]] = field(default_factory=dict)  # condition -> (key, PIL)
    timing: dict = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)  # condition -> images it left pixel-identical


def _degrade_and_transform(chains: dict, transforms: dict, img, key: str, seed: int, keep_thumb: bool) -> dict:
    """condition -> (tensors per preprocessing, thumbnail or None, error or None, unchanged) for one decoded
    image; `unchanged`: the condition left the image pixel-identical."""
    out, source_pixels = {}, None
    for cond, chain in chains.items():
        try:
            degraded = chain.apply(img, key=key, seed=seed) if chain else img
        except (DegradeError, ValueError, OSError) as exc:
            out[cond] = (None, None, f"{cond} ({chain.spec()}): {exc}", False)
            continue
        thumb = None
        if keep_thumb:
            thumb = degraded.copy()
            thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        unchanged = False  # a resize to a size the image already has, a crop of 1.0, ...
        if cond != CLEAN and degraded.size == img.size:
            source_pixels = source_pixels or img.convert("RGB").tobytes()
            unchanged = degraded.convert("RGB").tobytes() == source_pixels
        out[cond] = ({k: tf(degraded) for k, tf in transforms.items()}, thumb, None, unchanged)
    return out


@torch.no_grad()
def score_robustness(entries: list[Entry], specs: list[SetSpec], protocol: Protocol, batch_size: int = 8,
                     limit: int | None = None, loading: str = "fakeforge", workers: int = 2, seed: int = 0,
                     thumbnails: int = 3, progress: bool = True, include_clean: bool = True) -> RobustnessRun:
    """Score every readable item of every set with every entry, clean and under each of `protocol`'s
    conditions. The clean results are also appended to each given entry's `results` (as `score_sets` does),
    so the clean eval reports come out of the same pass. Unreadable items are errors of every condition;
    a degradation failing on an item is that item's error in that condition only. `include_clean` False: only
    the protocol's own conditions (the given entries' results are then left alone)."""
    from tqdm import tqdm

    chains = protocol.all_conditions() if include_clean else dict(protocol.conditions)
    conditions = {c: (entries if c == CLEAN else [Entry(e.label, e.detector, e.method, e.checkpoint)
                                                  for e in entries]) for c in chains}
    transforms = entry_transforms(entries)
    groups = {c: stage_groups(es) for c, es in conditions.items()}
    run = RobustnessRun(protocol, conditions, {c: [] for c in chains}, unchanged={c: 0 for c in chains})
    timing = {"conditions": len(chains), "workers": workers, "wait_for_workers_s": 0.0, "scoring_s": 0.0}
    t_start = time.perf_counter()
    in_flight = max(2 * batch_size, 4 * max(workers, 1))
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="degrade") as pool:
        for spec in specs:
            for es in conditions.values():
                for e in es:
                    e.results.append(SetScores(spec.name))
            pending = {c: ({k: [] for k in transforms}, []) for c in chains}

            def flush(cond: str) -> None:
                tensors, meta = pending[cond]
                if not meta:
                    return
                t0 = time.perf_counter()
                score_batch(groups[cond], {k: torch.stack(v) for k, v in tensors.items()}, meta)
                timing["scoring_s"] += time.perf_counter() - t0
                for v in tensors.values():
                    v.clear()
                meta.clear()

            def collect(item) -> None:
                key, label, future = item
                t0 = time.perf_counter()
                done = future.result()
                timing["wait_for_workers_s"] += time.perf_counter() - t0
                for cond, (tensors, thumb, err, unchanged) in done.items():
                    if err is not None:
                        for e in conditions[cond]:
                            e.results[-1].errors.append((key, err))
                        continue
                    run.unchanged[cond] += unchanged
                    if thumb is not None and len(run.thumbnails[cond]) < thumbnails:
                        run.thumbnails[cond].append((key, thumb))
                    for k, t in tensors.items():
                        pending[cond][0][k].append(t)
                    pending[cond][1].append((key, label))
                    if len(pending[cond][1]) >= batch_size:
                        flush(cond)

            queue: deque = deque()
            accepted = 0
            with tqdm(desc=f"robustness {spec.name}", unit="img", disable=not progress or None) as bar:
                for key, img, label, err in iter_set_images(spec, loading=loading):
                    if err is None and label is None:
                        err = "no label"
                    if err is not None:
                        for es in conditions.values():
                            for e in es:
                                e.results[-1].errors.append((key, err))
                        log.warning("skipped %s: %s", key, err)
                        continue
                    keep = accepted < -(-thumbnails // len(specs))  # a few of every set
                    queue.append((key, int(label), pool.submit(_degrade_and_transform, chains, transforms, img, key,
                                                               seed, keep)))
                    accepted += 1
                    bar.update(1)
                    while len(queue) >= in_flight:
                        collect(queue.popleft())
                    if limit and accepted >= limit:
                        break
                while queue:
                    collect(queue.popleft())
                for cond in chains:
                    flush(cond)
    timing["total_s"] = time.perf_counter() - t_start
    run.timing = {k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()}
    for cond, n in run.unchanged.items():
        scored = _scored(conditions[cond])
        if n and n == scored:
            log.warning("robustness condition '%s' (%s) left all %d images unchanged (they are already within its "
                        "bounds, e.g. no larger than a resize's size): its scores equal the clean ones", cond,
                        chains[cond].spec(), n)
    return run


def _scored(entries: list[Entry]) -> int:
    """Images the first detector scored (every detector of a condition scores the same images)."""
    return sum(len(r.keys) for r in entries[0].results) if entries else 0


# ------------------------------------------------------------------------------------------- summaries
def robustness_summary(run: RobustnessRun, thresholds: dict[str, float] | None = None) -> dict:
    """Plain data of a run: per condition and detector the per-set accuracy/AUC/AP, the average accuracy,
    balanced accuracy, AUC and AP over all sets, and the errors; the protocol's sweeps."""
    thresholds = thresholds or {}
    conditions = {}
    sets: list[str] = []
    for cond, es in run.conditions.items():
        chain = run.protocol.all_conditions()[cond]
        dets = {}
        for e in es:
            s = summarize(e.results, thresholds.get(e.label, 0.5))
            sets = list(s["sets"])
            fake_aucs = [v["auc"] for v in s["sets"].values() if not math.isnan(v["auc"])]
            dets[e.label] = {
                "threshold": s["threshold"], "average_accuracy": s["average_accuracy"],
                "balanced_accuracy": balanced_accuracy(s),
                "auc": s["overall"]["auc"], "ap": s["overall"]["ap"],
                "average_set_auc": float(np.mean(fake_aucs)) if fake_aucs else math.nan,
                "errors": sum(len(r.errors) for r in e.results),
                "sets": {n: {k: v[k] for k in ("n", "errors", "accuracy", "auc", "ap")} for n, v in s["sets"].items()}}
        conditions[cond] = {"chain": chain.spec(), "detectors": dets, "images": _scored(es),
                            "unchanged": run.unchanged.get(cond, 0)}
    return {"protocol": run.protocol.to_dict(), "sets": sets, "detectors": [e.label for e in
                                                                            next(iter(run.conditions.values()))],
            "conditions": conditions,
            "sweeps": {k: [[c, v] for c, v in pts] for k, pts in run.protocol.sweeps().items()},
            "timing": run.timing}


def robustness_markdown(summary: dict) -> str:
    """The overview (detector x condition) and, per condition, the paper-layout table with AUC/AP."""
    dets, conds, sets = summary["detectors"], list(summary["conditions"]), summary["sets"]
    p = summary["protocol"]
    out = [f"# Robustness: {p['name']}", "", p["description"], "", f"Source: {p['source']}", ""]
    out += [f"- assumption: {a}" for a in p["assumptions"]] + [""]
    for metric, title in (("average_accuracy", "Average accuracy (%)"), ("balanced_accuracy", "Balanced accuracy (%)"),
                          ("auc", "AUC (%)")):
        out += [f"## {title}, detector x condition", "", "| Method | " + " | ".join(conds) + " |",
                "|---|" + "---|" * len(conds)]
        for d in dets:
            out.append(f"| {d} | " + " | ".join(_pct(summary["conditions"][c]["detectors"][d][metric])
                                              for c in conds) + " |")
        out.append("")
    for c in conds:
        cond = summary["conditions"][c]
        errors = max(v["errors"] for v in cond["detectors"].values())
        out += [f"## {c}: `{cond['chain']}`" + (f" ({errors} error(s) per detector)" if errors else ""), "",
                *([unchanged_note(c, cond), ""] if cond.get("unchanged") else []),
                "| Method | " + " | ".join(sets) + " | **Avg** | bal. acc | AUC | AP |",
                "|---|" + "---|" * (len(sets) + 4)]
        for d in dets:
            v = cond["detectors"][d]
            out.append(f"| {d} | " + " | ".join(_pct(v["sets"][n]["accuracy"]) for n in sets)
                       + f" | **{_pct(v['average_accuracy'])}** | {_pct(v['balanced_accuracy'])} | {_pct(v['auc'])} "
                         f"| {_pct(v['ap'])} |")
        out.append("")
    return "\n".join(out)


def write_robustness(run: RobustnessRun, out_dir: str | Path, thresholds: dict[str, float] | None = None) -> list[Path]:
    """robustness.json/.csv/.md and robustness/thumbs/<condition>_<i>.png under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = robustness_summary(run, thresholds)
    thumbs_dir = out_dir / "robustness" / "thumbs"
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    written_thumbs = {}
    for cond, items in run.thumbnails.items():
        written_thumbs[cond] = []
        for i, (key, img) in enumerate(items):
            path = thumbs_dir / f"{_safe(cond)}_{i}.png"
            img.save(path, format="PNG")
            written_thumbs[cond].append({"key": key, "file": str(path.relative_to(out_dir))})
    summary["thumbnails"] = written_thumbs
    errors = {c: {e.label: {r.name: [{"key": k, "error": m} for k, m in r.errors] for r in e.results if r.errors}
                  for e in es[:1]} for c, es in run.conditions.items()}
    js = out_dir / "robustness.json"
    js.write_text(json.dumps(_jsonable({**summary, "errors": errors}), indent=2))
    md = out_dir / "robustness.md"
    md.write_text(robustness_markdown(summary))
    table = out_dir / "robustness.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "chain", "method", "set", "n", "errors", "accuracy", "balanced_accuracy", "auc", "ap"])
        for c, cond in summary["conditions"].items():
            for d, v in cond["detectors"].items():
                for n, sv in v["sets"].items():
                    w.writerow([c, cond["chain"], d, n, sv["n"], sv["errors"], sv["accuracy"], "", sv["auc"], sv["ap"]])
                w.writerow([c, cond["chain"], d, "Avg", "", v["errors"], v["average_accuracy"],
                            v["balanced_accuracy"], v["auc"], v["ap"]])
    return [md, table, js]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
