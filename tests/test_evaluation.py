"""core.inference.evaluation: the saved threshold, metrics and per-image rows agree, edge cases have clear messages."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core import files
from core.data import folders
from core.evidence import statistics
from core.inference import evaluation


def _table(n: int, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/x/img{i}.jpeg" for i in range(n)],
            "patient": [f"person{i}_bacteria" if y[i] else f"IM-{i:04d}" for i in range(n)],
            "kind": np.where(y == 1, "bacteria", "normal"),
            "class_name": np.where(y == 1, "PNEUMONIA", "NORMAL"),
        }
    )


def test_saved_metrics_are_what_the_saved_predictions_give(monkeypatch, tmp_path):
    # Validation: Youden's J picks the positive scored 0.30000021 (0.3 in predictions.csv). A test
    # image scored 0.3000004 (also 0.3 as saved) was positive against the unrounded threshold but
    # negative when the page re-reads 0.3 from predictions.csv: metrics.json and the page disagreed.
    y_val = np.array([0, 0, 1, 1])
    val = np.array([0.1, 0.2, 0.30000021, 0.9])
    y_test = np.array([1, 0, 1, 0])
    test = np.array([0.3000004, 0.1, 0.95, 0.2])
    labels = np.r_[y_val, y_test]
    part = {"val": np.r_[np.ones(4, bool), np.zeros(4, bool)], "test": np.r_[np.zeros(4, bool), np.ones(4, bool)]}
    inputs = np.r_[val, test][:, None]  # the fake model returns its input
    monkeypatch.setattr(evaluation, "probabilities", lambda model, x, *a, **k: (x[:, 0].copy(), "fake"))
    result = evaluation.evaluate_model(None, inputs, labels, _table(8, labels), part)

    files.write_csv(tmp_path / "predictions.csv", result["predictions"])
    saved = files.read_csv(tmp_path / "predictions.csv")
    threshold = json.loads(json.dumps({"threshold": result["threshold"]}))["threshold"]
    again = statistics.binary_metrics(saved["y_true"], saved["probability"], threshold)
    for key in ("tp", "fp", "tn", "fn"):
        assert again[key] == result["test"][key], key
    assert (result["test"]["tp"], result["test"]["fn"]) == (2, 0)  # 0.3000004 -> 0.3 >= 0.3
    assert threshold == 0.3
    assert saved["correct"].tolist() == [bool(c) for c in (saved["probability"] >= threshold) == saved["y_true"].astype(bool)]


def test_a_one_class_validation_split_says_what_to_do():
    with pytest.raises(folders.DataError, match=r"validation split has no NORMAL images \(0 NORMAL, 3 PNEUMONIA\).*raise --max-per-class"):
        evaluation.choose_threshold(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9]))
    with pytest.raises(folders.DataError, match="no PNEUMONIA images"):
        evaluation.choose_threshold(np.array([0, 0]), np.array([0.2, 0.5]))
    assert evaluation.choose_threshold(np.array([0, 1]), np.array([0.2, 0.5])) == 0.5


def test_roc_nothing_positive_threshold_stays_above_a_probability_of_one():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([1.0, 1.0, 0.8, 0.3, 0.6])
    roc = evaluation.roc_points(y, s)
    roc = json.loads(json.dumps(roc, allow_nan=False))  # as metrics.json keeps it
    assert roc["thresholds"][0] > 1.0
    for fpr, tpr, threshold in zip(roc["fpr"], roc["tpr"], roc["thresholds"], strict=True):
        at = statistics.binary_metrics(y, s, threshold)  # every point is what its threshold gives
        assert (1 - at["specificity"], at["sensitivity"]) == pytest.approx((fpr, tpr), abs=1e-5)
