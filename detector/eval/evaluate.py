"""Scoring sets, metrics (accuracy, confusion matrix, ROC AUC, average precision) and reports.

Metrics are plain numpy (no scikit-learn needed). Plots need matplotlib (the optional `eval` extra),
imported lazily with the Agg backend.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from detector.data import LABEL_NAMES, SetSpec, iter_set_images
from detector.eval.metrics import (  # noqa: F401  (the metrics, importable from here)
    accuracy,
    average_precision,
    balanced_accuracy,
    calibrate_threshold,
    confusion_matrix,
    roc_auc,
    roc_curve,
    summarize,
)
from detector.eval.tables import PaperRow, paper_table, pct

log = logging.getLogger(__name__)


@dataclass
class SetScores:
    """Per-sample results of one set; unreadable items are kept in `errors` (key, message)."""

    name: str
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # P(fake)
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=int)

    @property
    def score_array(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=float)


def score_set(detector, spec: SetSpec, transform: Callable, batch_size: int = 8, method: str | None = None,
              limit: int | None = None, progress: bool = True, loading: str = "fakeforge") -> SetScores:
    """P(fake) for every readable item of `spec`, in batches; bad items are recorded, never raised.
    `loading`: the image-loading policy (see detector.data)."""
    from tqdm import tqdm

    out = SetScores(spec.name)
    pending: list[tuple[str, torch.Tensor, int]] = []

    def flush():
        if not pending:
            return
        probs = detector.score(torch.stack([t for _k, t, _l in pending]), method=method)
        for (key, _t, label), p in zip(pending, probs.tolist()):
            out.keys.append(key)
            out.labels.append(label)
            out.scores.append(float(p))
        pending.clear()

    with tqdm(desc=f"scoring {spec.name}", unit="img", disable=not progress or None) as bar:
        for key, img, label, err in iter_set_images(spec, loading=loading):
            if err is None and label is None:
                err = "no label"
            if err is not None:
                out.errors.append((key, err))
                log.warning("skipped %s: %s", key, err)
                continue
            pending.append((key, transform(img), int(label)))
            bar.update(1)
            if len(pending) >= batch_size:
                flush()
            if limit and len(out.keys) + len(pending) >= limit:
                break
        flush()
    return out


# --------------------------------------------------------------------------------------------- reports
def markdown_table(summary: dict, method: str = "AntifakePrompt", train_set: str = "", params: int | None = None) -> str:
    """results.md of one detector: the paper-layout row (`tables.paper_table`), then AUC/AP per set and the
    confusion matrix."""
    auc_rows = ["| set | n | real | fake | errors | accuracy | AUC | AP |", "|---|---|---|---|---|---|---|---|"]
    for n, v in summary["sets"].items():
        auc_rows.append(f"| {n} | {v['n']} | {v['real']} | {v['fake']} | {v['errors']} | {pct(v['accuracy'])} "
                        f"| {pct(v['auc'])} | {pct(v['ap'])} |")
    o = summary["overall"]
    cm = o["confusion"]
    row = PaperRow.from_summary(method, summary, train_set=train_set, params=params)
    return "\n".join([
        f"# Evaluation: {method}", "", f"Decision threshold on P(fake): {summary['threshold']:.4f}", "",
        "## Accuracy (%) per set", "", paper_table([row])[1], "",
        "## Per set (AUC/AP: the set's fakes against all real samples)", "", *auc_rows, "",
        f"Overall: accuracy {pct(o['accuracy'])}, AUC {pct(o['auc'])}, AP {pct(o['ap'])} over {o['n']} images.", "",
        "Confusion matrix (rows = true, columns = predicted):", "",
        "| | pred real | pred fake |", "|---|---|---|",
        f"| real | {cm[0][0]} | {cm[0][1]} |", f"| fake | {cm[1][0]} | {cm[1][1]} |", ""])


def _jsonable(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def check_plotting() -> None:
    """Raise ImportError with the fix when matplotlib (the `eval` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plots need matplotlib (a core dependency): pip install matplotlib (or pass --no-plots)") from None


def write_plots(results: list[SetScores], summary: dict, out_dir: Path, method: str) -> list[Path]:
    """accuracy.png (per-set bars) and roc.png (each fake set against all real samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["sets"])
    accs = [100 * (summary["sets"][n]["accuracy"] if not math.isnan(summary["sets"][n]["accuracy"]) else 0)
            for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    ax.bar(names, accs, color="tab:blue")
    ax.axhline(100 * summary["average_accuracy"] if not math.isnan(summary["average_accuracy"]) else 0,
               color="tab:red", ls="--", label="average")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(method)
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    paths = [out_dir / "accuracy.png", out_dir / "roc.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    real = np.concatenate([r.score_array[r.label_array == 0] for r in results] or [np.zeros(0)])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for r in results:
        fake = r.score_array[r.label_array == 1]
        if fake.size and real.size:
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(real.size, int), np.ones(fake.size, int)], np.r_[real, fake])
            ax.plot(fpr, tpr, label=f"{r.name} (AUC {pct(summary['sets'][r.name]['auc'])})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title("ROC per fake set")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def write_reports(results: list[SetScores], summary: dict, out_dir: str | Path, method: str = "AntifakePrompt",
                  plots: bool = True, extra: dict | None = None) -> list[Path]:
    """results.md, results.csv, results.json, scores.csv (+ accuracy.png and roc.png) under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    md.write_text(markdown_table(summary, method, train_set=(extra or {}).get("train_set", ""),
                                 params=(extra or {}).get("trainable_parameters")))
    table = out_dir / "results.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "n", "real", "fake", "errors", "accuracy", "auc", "ap"])
        for n, v in summary["sets"].items():
            w.writerow([n, v["n"], v["real"], v["fake"], v["errors"], v["accuracy"], v["auc"], v["ap"]])
        w.writerow(["Avg", "", "", "", "", summary["average_accuracy"], "", ""])
    js = out_dir / "results.json"
    errors = {r.name: [{"key": k, "error": e} for k, e in r.errors] for r in results if r.errors}
    js.write_text(json.dumps(_jsonable({"method": method, **summary, "errors": errors, **(extra or {})}), indent=2))
    per_sample = out_dir / "scores.csv"
    with per_sample.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "key", "label", "p_fake", "prediction"])
        for r in results:
            for k, y, s in zip(r.keys, r.labels, r.scores):
                w.writerow([r.name, k, LABEL_NAMES[y], f"{s:.6f}", LABEL_NAMES[int(s >= summary["threshold"])]])
    paths = [md, table, js, per_sample]
    if plots:
        paths += write_plots(results, summary, out_dir, method)
    return paths
