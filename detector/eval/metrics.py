"""The metrics of every evaluation, in one place: accuracy, confusion matrix, ROC AUC, average precision, the
threshold calibration, the per-set summary of an eval (paper layout), and the balanced accuracy.

Plain numpy (no scikit-learn needed); checked against scikit-learn in the tests.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from detector.eval.evaluate import SetScores


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


def balanced_accuracy(summary: dict) -> float:
    """Mean of the real sets' mean accuracy and the fake sets' mean accuracy (NaN when a class is absent).

    The paper-layout average weighs every set alike, so with more fake sets than real ones a detector
    that calls everything fake scores well; the balanced figure does not reward that. A set counts as real
    (fake) when it holds only real (fake) samples; sets without an accuracy are left out."""
    def accs(kind: str, other: str) -> list[float]:
        return [v["accuracy"] for v in summary["sets"].values() if v.get(kind) and not v.get(other)
                and v.get("accuracy") is not None and not math.isnan(v["accuracy"])]

    real, fake = accs("real", "fake"), accs("fake", "real")
    if not real or not fake:
        return math.nan
    return 0.5 * (sum(real) / len(real) + sum(fake) / len(fake))
