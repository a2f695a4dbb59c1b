"""Several detectors on the same images, and the side-by-side table (`fakeforge eval --checkpoint A B C`).

Scoring (`score_sets`): every image is decoded once. Each distinct preprocessing (`Preprocess.key()`) transforms
it once, and the tensors are batched per preprocessing. Detectors that name the same shared stage
(`Detector.shared_stage_key()`: the features of one frozen backbone, AntifakePrompt's vision encoder on one
base model) get that stage computed once per batch and then score from it; every other detector scores the
batch itself. A detector's scores equal those it gives alone (`score()` is `score_from_shared(shared_stage())`).

The table (`write_comparison`) has one row per detector in the layout of the AntifakePrompt results table
(papers.md §1.8: Method | Train set | #params | accuracy per set | Avg), followed by AUC and AP per set.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from detector.data import SetSpec, iter_set_images
from detector.eval.evaluate import SetScores, _jsonable
from detector.eval.tables import PaperRow, format_params, paper_table, pct  # noqa: F401  (format_params: importable from here)

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One detector of a side-by-side eval: its row label, the loaded detector, its scoring method."""

    label: str
    detector: Any  # a Detector (or detector.families.antifakeprompt.model.SharedBaseCheckpoint)
    method: str | None = None
    checkpoint: str = ""
    seconds: float = 0.0  # time spent in this detector's scoring (its share of a shared stage included)
    results: list[SetScores] = field(default_factory=list)


def _pre_key(det) -> str:
    return json.dumps(det.preprocess.key(), sort_keys=True, default=str)


def entry_transforms(entries: list[Entry]) -> dict[str, Any]:
    """One eval transform per distinct preprocessing of `entries`, by `Preprocess.key()`."""
    transforms: dict[str, Any] = {}
    for e in entries:
        transforms.setdefault(_pre_key(e.detector), e.detector.preprocess.transform(train=False))
    return transforms


def stage_groups(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by shared stage key (`alone:i` for a detector that shares nothing)."""
    groups: dict[str, list[Entry]] = {}
    for i, e in enumerate(entries):
        key = e.detector.shared_stage_key() if hasattr(e.detector, "shared_stage_key") else None
        groups.setdefault(key or f"alone:{i}", []).append(e)
    return groups


@torch.no_grad()
def score_batch(groups: dict[str, list[Entry]], batches: dict[str, torch.Tensor], meta: list[tuple[str, int]]) -> None:
    """Score one batch (`batches`: pixels per preprocessing key, `meta`: (key, label) per row) with every entry
    of `groups`, each shared stage once; appends to each entry's last SetScores."""
    for key, members in groups.items():
        pixels = batches[_pre_key(members[0].detector)]
        start = time.perf_counter()
        stage = None if key.startswith("alone:") else members[0].detector.shared_stage(pixels)
        share = (time.perf_counter() - start) / len(members)
        for e in members:
            t0 = time.perf_counter()
            probs = (e.detector.score(pixels, e.method) if stage is None
                     else e.detector.score_from_shared(stage, e.method))
            e.seconds += share + time.perf_counter() - t0
            res = e.results[-1]
            for (k, label), p in zip(meta, probs.tolist()):
                res.keys.append(k)
                res.labels.append(label)
                res.scores.append(float(p))


@torch.no_grad()
def score_sets(entries: list[Entry], specs: list[SetSpec], batch_size: int = 8, limit: int | None = None,
               loading: str = "fakeforge", progress: bool = True,
               image_hook: Callable[[str, Any], Any] | None = None) -> dict:
    """Score every readable item of every set with every entry (results appended to `entry.results`, one
    SetScores per set); unreadable items are listed in each entry's SetScores.errors. Returns timings.

    `image_hook(key, image) -> image`: applied to each decoded PIL image before the detectors' transforms
    (e.g. a degradation); an exception it raises is that sample's recorded error."""
    from tqdm import tqdm

    transforms = entry_transforms(entries)
    groups = stage_groups(entries)
    timing = {"decode_transform_s": 0.0, "shared_stages": sum(1 for k, g in groups.items()
                                                                if not k.startswith("alone:") and len(g) > 1)}
    for spec in specs:
        for e in entries:
            e.results.append(SetScores(spec.name))
        pending: dict[str, list[torch.Tensor]] = {k: [] for k in transforms}
        meta: list[tuple[str, int]] = []

        def flush():
            if not meta:
                return
            score_batch(groups, {k: torch.stack(v) for k, v in pending.items()}, meta)
            for v in pending.values():
                v.clear()
            meta.clear()

        scored = 0
        with tqdm(desc=f"scoring {spec.name}", unit="img", disable=not progress or None) as bar:
            t0 = time.perf_counter()
            for key, img, label, err in iter_set_images(spec, loading=loading):
                if err is None and label is None:
                    err = "no label"
                if err is None and image_hook is not None:
                    try:
                        img = image_hook(key, img)
                    except Exception as exc:  # noqa: BLE001 - one sample's failure, recorded like a bad file
                        err = f"{type(exc).__name__}: {exc}"
                if err is not None:
                    for e in entries:
                        e.results[-1].errors.append((key, err))
                    log.warning("skipped %s: %s", key, err)
                    continue
                for k, tf in transforms.items():
                    pending[k].append(tf(img))
                meta.append((key, int(label)))
                bar.update(1)
                if len(meta) >= batch_size:
                    timing["decode_transform_s"] += time.perf_counter() - t0
                    scored += len(meta)
                    flush()
                    t0 = time.perf_counter()
                if limit and scored + len(meta) >= limit:
                    break
            timing["decode_transform_s"] += time.perf_counter() - t0
            flush()
    return timing


# ------------------------------------------------------------------------------------------- the table
def train_set_label(meta: dict | None) -> str:
    """"coco vs sd2" from a checkpoint's training summary (real sets vs fake sets); "–" for the zero-shot
    baseline, "untrained" for a run's init/."""
    t = (meta or {}).get("training") or {}
    if t.get("init"):
        return "untrained (init)"
    source = str(t.get("source") or "")
    if source == "zero-shot":
        return "–"
    if source.startswith("converted"):
        return f"official ({source.split('checkpoint ')[-1]})"
    sets = (t.get("data") or {}).get("sets") or {}
    real = [n for n, c in sets.items() if (c or {}).get("real")]
    fake = [n for n, c in sets.items() if (c or {}).get("fake")]
    return f"{' + '.join(real) or '?'} vs {' + '.join(fake) or '?'}" if sets else "?"


def comparison_rows(entries: list[Entry], summaries: dict[str, dict], folders: dict[str, Path]) -> list[dict]:
    """One JSON-able row per detector: label, train set, #params, per-set accuracy/AUC/AP, averages."""
    rows = []
    for e in entries:
        s = summaries[e.label]
        meta = getattr(e.detector, "checkpoint_meta", None) or {}
        params = meta.get("trainable_parameters")
        if params is None and hasattr(e.detector, "num_trainable"):
            params = e.detector.num_trainable()
        rows.append({"method": e.label, "checkpoint": e.checkpoint, "folder": str(folders[e.label]),
                     "detector": e.detector.name, "train_set": train_set_label(meta), "trainable_parameters": params,
                     "threshold": s["threshold"], "average_accuracy": s["average_accuracy"],
                     "sets": {n: {k: v[k] for k in ("n", "errors", "accuracy", "auc", "ap")}
                              for n, v in s["sets"].items()},
                     "overall": {k: s["overall"][k] for k in ("n", "accuracy", "auc", "ap")},
                     "seconds": round(e.seconds, 3)})
    return rows


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def comparison_markdown(rows: list[dict]) -> str:
    """Accuracy (paper layout), then AUC and AP per set (each set's fakes against all real samples)."""
    names = list(rows[0]["sets"]) if rows else []
    table = paper_table([PaperRow(r["method"], {n: r["sets"][n]["accuracy"] for n in names}, r["average_accuracy"],
                                  r["train_set"], r["trainable_parameters"]) for r in rows])[1]
    thresholds = {r["threshold"] for r in rows}
    threshold = (f"{thresholds.pop():.4f}" if len(thresholds) == 1 else
                 ", ".join(f"{r['method']} {r['threshold']:.4f}" for r in rows))
    out = ["# Side-by-side evaluation", "", f"Decision threshold on P(fake): {threshold}", "",
           "## Accuracy (%) per set", "", table, ""]
    fake_sets = [n for n in names if any(r["sets"][n]["auc"] is not None and not math.isnan(r["sets"][n]["auc"])
                                         for r in rows)]
    for metric, title in (("auc", "AUC"), ("ap", "AP")):
        out += [f"## {title} (%) per set (the set's fakes against all real samples)", "",
                "| Method | " + " | ".join(fake_sets) + " | **Avg** | overall |",
                "|---|" + "---|" * (len(fake_sets) + 2)]
        for r in rows:
            vals = [r["sets"][n][metric] for n in fake_sets]
            out.append(f"| {r['method']} | " + " | ".join(pct(v) for v in vals)
                       + f" | **{pct(_mean(vals))}** | {pct(r['overall'][metric])} |")
        out.append("")
    out += ["Per-detector results (results.md/.csv/.json, scores.csv): "
            + ", ".join(f"`{Path(r['folder']).name}/`" for r in rows), ""]
    return "\n".join(out)


def write_comparison(rows: list[dict], out_dir: str | Path, timing: dict | None = None) -> list[Path]:
    """comparison.md, comparison.csv and comparison.json under `out_dir`."""
    out_dir = Path(out_dir)
    md = out_dir / "comparison.md"
    md.write_text(comparison_markdown(rows))
    names = list(rows[0]["sets"]) if rows else []
    table = out_dir / "comparison.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "train_set", "trainable_parameters", *[f"{n}:{k}" for n in names
                                                                    for k in ("accuracy", "auc", "ap")],
                    "avg_accuracy", "overall_auc", "overall_ap"])
        for r in rows:
            w.writerow([r["method"], r["train_set"], r["trainable_parameters"],
                        *[r["sets"][n][k] for n in names for k in ("accuracy", "auc", "ap")],
                        r["average_accuracy"], r["overall"]["auc"], r["overall"]["ap"]])
    js = out_dir / "comparison.json"
    js.write_text(json.dumps(_jsonable({"sets": names, "methods": rows, "timing": timing or {}}), indent=2))
    return [md, table, js]


def unique_labels(checkpoints: list[str], names: list[str] | None = None) -> list[str]:
    """Row labels: `names`, else each checkpoint folder's name; clashing names get their parent folder's name
    (runs/a/best, runs/b/best -> a-best, b-best), then a number."""
    if names:
        labels = list(names)
    else:
        labels = ["zero-shot" if str(c).lower().startswith("zero") else Path(c).name for c in checkpoints]
        counts = {lbl: labels.count(lbl) for lbl in labels}
        labels = [f"{Path(c).parent.name}-{lbl}" if counts[lbl] > 1 and Path(c).parent.name else lbl
                  for c, lbl in zip(checkpoints, labels)]
    seen: dict[str, int] = {}
    out = []
    for lbl in labels:
        seen[lbl] = seen.get(lbl, 0) + 1
        out.append(lbl if seen[lbl] == 1 else f"{lbl}_{seen[lbl]}")
    return out


def folder_names(labels: list[str]) -> list[str]:
    """A distinct, filesystem-safe sub-folder name per row label."""
    out: list[str] = []
    for lbl in labels:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in lbl).strip(".") or "detector"
        name, n = safe, 1
        while name in out:
            n += 1
            name = f"{safe}_{n}"
        out.append(name)
    return out
