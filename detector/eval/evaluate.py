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


# --------------------------------------------------------------------------------------------- metrics
def confusion_matrix(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """2x2 counts: rows = true (real, fake), columns = predicted (real, fake)."""
    cm = np.zeros((2, 2), dtype=int)
    for t, p in zip(np.asarray(labels, int), np.asarray(preds, int)):
        cm[t, p] += 1
    return cm


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of correct predictions (NaN when empty)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float((labels == preds).mean()) if labels.size else math.nan


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with fake = positive; ties share one point."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s[last]]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (fake = positive); NaN unless both classes occur."""
    labels = np.asarray(labels, int)
    if labels.size == 0 or labels.min() == labels.max():
        return math.nan
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (fake = positive), the step-wise sum used by scikit-learn; NaN without fakes."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    if labels.sum() == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps, total = np.cumsum(y)[last], last + 1
    precision, recall = tps / total, tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibrate_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold on P(fake) that maximises balanced accuracy on a labelled set with both classes."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("threshold calibration needs both real and fake samples; "
                         f"got {int((labels == 0).sum())} real and {int((labels == 1).sum())} fake")
    uniq = np.unique(scores)
    candidates = np.r_[uniq[0] - 1e-6, (uniq[:-1] + uniq[1:]) / 2, uniq[-1] + 1e-6]
    best, best_t = -1.0, 0.5
    for t in candidates:
        pred = scores >= t
        bal = 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())
        if bal > best + 1e-12 or (abs(bal - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = bal, float(t)
    return best_t


# --------------------------------------------------------------------------------------------- reports
def summarize(results: list[SetScores], threshold: float = 0.5) -> dict:
    """Per-set accuracy (paper layout), AUC/AP of each set's fakes against all real samples, confusion."""
    real_scores = np.concatenate([r.score_array[r.label_array == 0] for r in results] or [np.zeros(0)])
    sets = {}
    for r in results:
        y, s = r.label_array, r.score_array
        pred = (s >= threshold).astype(int)
        fake = s[y == 1]
        entry = {"n": int(y.size), "real": int((y == 0).sum()), "fake": int((y == 1).sum()),
                 "errors": len(r.errors), "accuracy": accuracy(y, pred),
                 "confusion": confusion_matrix(y, pred).tolist(), "auc": math.nan, "ap": math.nan}
        if fake.size and real_scores.size:
            yy = np.r_[np.zeros(real_scores.size, int), np.ones(fake.size, int)]
            ss = np.r_[real_scores, fake]
            entry["auc"], entry["ap"] = roc_auc(yy, ss), average_precision(yy, ss)
        sets[r.name] = entry
    accs = [v["accuracy"] for v in sets.values() if not math.isnan(v["accuracy"])]
    all_y = np.concatenate([r.label_array for r in results] or [np.zeros(0, int)])
    all_s = np.concatenate([r.score_array for r in results] or [np.zeros(0)])
    return {"threshold": threshold, "sets": sets, "average_accuracy": float(np.mean(accs)) if accs else math.nan,
            "overall": {"n": int(all_y.size), "accuracy": accuracy(all_y, (all_s >= threshold).astype(int)),
                        "confusion": confusion_matrix(all_y, (all_s >= threshold).astype(int)).tolist(),
                        "auc": roc_auc(all_y, all_s), "ap": average_precision(all_y, all_s)}}


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def markdown_table(summary: dict, method: str = "AntifakePrompt") -> str:
    """The paper's layout: one row per method, one accuracy column per set, then the average."""
    names = list(summary["sets"])
    head = "| Method | " + " | ".join(names) + " | **Avg** |"
    sep = "|---|" + "---|" * (len(names) + 1)
    row = f"| {method} | " + " | ".join(_pct(summary["sets"][n]["accuracy"]) for n in names) + \
        f" | **{_pct(summary['average_accuracy'])}** |"
    auc_rows = ["| set | n | real | fake | errors | accuracy | AUC | AP |", "|---|---|---|---|---|---|---|---|"]
    for n, v in summary["sets"].items():
        auc_rows.append(f"| {n} | {v['n']} | {v['real']} | {v['fake']} | {v['errors']} | {_pct(v['accuracy'])} "
                        f"| {_pct(v['auc'])} | {_pct(v['ap'])} |")
    o = summary["overall"]
    cm = o["confusion"]
    return "\n".join([
        f"# Evaluation: {method}", "", f"Decision threshold on P(fake): {summary['threshold']:.4f}", "",
        "## Accuracy (%) per set", "", head, sep, row, "",
        "## Per set (AUC/AP: the set's fakes against all real samples)", "", *auc_rows, "",
        f"Overall: accuracy {_pct(o['accuracy'])}, AUC {_pct(o['auc'])}, AP {_pct(o['ap'])} over {o['n']} images.", "",
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
            ax.plot(fpr, tpr, label=f"{r.name} (AUC {_pct(summary['sets'][r.name]['auc'])})")
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
    md.write_text(markdown_table(summary, method))
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
