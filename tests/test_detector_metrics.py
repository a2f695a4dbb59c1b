"""Metrics and report tables (numpy only; compared with scikit-learn when it is installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detector.eval.evaluate import (
    SetScores,
    accuracy,
    average_precision,
    calibrate_threshold,
    confusion_matrix,
    markdown_table,
    roc_auc,
    summarize,
)


def test_auc_ap_by_hand():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5  # ties count half
    assert average_precision(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(average_precision(np.array([0, 0]), np.array([0.2, 0.3])))


def test_auc_ap_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = np.round(rng.random(200) * 0.5 + 0.3 * y, 2)  # rounded: many ties
        assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
        assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))


def test_confusion_accuracy_and_calibration():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.25, 0.6, 0.7])
    cm = confusion_matrix(y, (s >= 0.5).astype(int))
    assert cm.tolist() == [[3, 0], [1, 2]]
    assert accuracy(y, (s >= 0.5).astype(int)) == pytest.approx(5 / 6)
    t = calibrate_threshold(y, s)
    assert accuracy(y, (s >= t).astype(int)) == pytest.approx(5 / 6)
    separable = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    t = calibrate_threshold(y, separable)
    assert 0.3 < t <= 0.35 and accuracy(y, (separable >= t).astype(int)) == 1.0
    with pytest.raises(ValueError, match="both real and fake"):
        calibrate_threshold(np.array([0, 0]), np.array([0.1, 0.9]))


def test_summary_pools_reals_against_each_fake_set():
    real = SetScores("coco", ["a", "b"], [0, 0], [0.1, 0.6])
    fake = SetScores("sd2", ["c", "d"], [1, 1], [0.7, 0.9], errors=[("e", "broken")])
    hard = SetScores("lama", ["f"], [1], [0.2])
    s = summarize([real, fake, hard])
    assert s["sets"]["coco"]["accuracy"] == 0.5 and s["sets"]["sd2"]["accuracy"] == 1.0
    assert s["sets"]["sd2"]["auc"] == 1.0 and s["sets"]["lama"]["auc"] == 0.5
    assert math.isnan(s["sets"]["coco"]["auc"]) and s["sets"]["sd2"]["errors"] == 1
    assert s["average_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    md = markdown_table(s, "tuned", train_set="coco vs sd2", params=4864)
    assert "| Method | Train set | #params | coco | sd2 | lama | **Avg** |" in md
    assert "| tuned | coco vs sd2 | 4.86K | 50.00 | 100.00 | 0.00 | **50.00** |" in md
