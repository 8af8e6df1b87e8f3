"""core.reporting.curves: the ROC, precision-recall and calibration inputs are each run's evidence, nothing else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.evidence import run_evidence, statistics
from core.reporting import curves


def predictions(seed: int, n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    probability = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.2, n), 0, 1), 6)
    return pd.DataFrame({"path": [f"/x/{i}.jpeg" for i in range(n)], "patient": [f"p{i // 2}" for i in range(n)], "y_true": y, "probability": probability})


def test_roc_curve_is_the_evidence_with_its_interval_and_operating_point():
    table = predictions(1)
    ev = run_evidence.run_evidence("a", table, 0.4, 0.5, n_resamples=50, seed=2)
    (curve,) = curves.roc_curves([ev])
    interval = ev.interval("auc")
    assert (curve["name"], curve["fpr"], curve["tpr"]) == ("a", ev.roc["fpr"], ev.roc["tpr"])
    assert (curve["auc"], curve["auc_low"], curve["auc_high"], curve["confidence"]) == (ev.metrics["auc"], interval.low, interval.high, 0.95)
    at = statistics.binary_metrics(table["y_true"], table["probability"], 0.4)  # the threshold in use, not the saved one
    assert curve["point"] == {"fpr": pytest.approx(1 - at["specificity"]), "tpr": pytest.approx(at["sensitivity"]), "threshold": 0.4}


def test_a_run_with_one_class_has_no_interval_and_no_point():
    normals = predictions(3).assign(y_true=0)
    (curve,) = curves.roc_curves([run_evidence.run_evidence("normals", normals, 0.5, n_resamples=20)])
    assert curve["auc_low"] is None and curve["auc_high"] is None and curve["point"] is None
    assert curve["fpr"] == [] and curve["tpr"] == []


def test_every_curve_keeps_the_order_of_the_runs_and_their_numbers():
    items = [run_evidence.run_evidence(name, predictions(seed), 0.5, n_resamples=20) for name, seed in (("b", 4), ("a", 5))]
    assert [c["name"] for c in curves.roc_curves(items)] == ["b", "a"]
    pr = curves.precision_recall_curves(items)
    assert [c["name"] for c in pr] == ["b", "a"]
    assert pr[1]["average_precision"] == items[1].pr["average_precision"] and pr[1]["precision"] == items[1].pr["precision"]
    calibration = curves.calibration_curves(items)
    assert (calibration[0]["brier"], calibration[0]["ece"]) == (items[0].brier, items[0].ece)
    assert calibration[0]["count"] == items[0].reliability["count"]
