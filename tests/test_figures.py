"""core.reporting.figures: the ROC and precision-recall curves show each point's threshold on hover.

The curves come from `core.evidence.run_evidence` on synthetic predictions with ties, as on the
Compare page and in the report; every number in a trace's hover data is checked against
scikit-learn and `core.evidence.statistics`, computed here independently.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_curve, roc_curve

from core.evidence import run_evidence, statistics
from core.reporting import figures


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    """120 images, scores rounded to 2 decimals so that several images share a score (ties)."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    probability = np.clip(np.round(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, y.size), 2), 0, 1)
    probability[0], y[0] = 1.0, 1  # a probability of exactly 1: "nothing positive" must lie above it
    return pd.DataFrame(
        {
            "path": [f"/x/{i}.jpeg" for i in range(y.size)],
            "patient": [f"p{i // 2}" for i in range(y.size)],
            "kind": np.where(y == 1, "bacteria", "normal"),
            "class_name": np.where(y == 1, "PNEUMONIA", "NORMAL"),
            "y_true": y,
            "probability": probability,
        }
    )


def _curve_trace(fig, name: str):
    """The trace of run `name`'s curve (not the chance line, not the operating point)."""
    return next(t for t in fig.data if t.legendgroup == name and t.mode == "lines")


def test_roc_points_carry_their_threshold_sensitivity_and_specificity(predictions):
    ev = run_evidence.run_evidence("run-a", predictions, 0.5, n_resamples=100)
    fig = figures.roc_figure([{"name": "run-a", **ev.roc, "auc": ev.metrics["auc"]}])
    trace = _curve_trace(fig, "run-a")
    data = np.asarray(trace.customdata, dtype=np.float64)
    y, s = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    fpr, tpr, thresholds = roc_curve(y, s)

    assert data.shape == (len(thresholds), 3)
    np.testing.assert_array_equal(data[1:, 0], thresholds[1:])  # the finite ones: exactly scikit-learn's
    assert thresholds[0] == np.inf and 1.0 < data[0, 0] < 1.0 + 1e-12  # "nothing positive": just above the top score
    np.testing.assert_allclose(data[:, 1], tpr, atol=1e-6)
    np.testing.assert_allclose(data[:, 2], 1 - fpr, atol=1e-6)
    for threshold, sensitivity, specificity in data[1:]:  # what the hover says is what the threshold gives
        at = statistics.binary_metrics(y, s, threshold)
        assert (sensitivity, specificity) == pytest.approx((at["sensitivity"], at["specificity"]), abs=1e-6)
    for word in ("threshold %{customdata[0]", "sensitivity %{customdata[1]", "specificity %{customdata[2]"):
        assert word in trace.hovertemplate
    json.loads(fig.to_json())  # still plain JSON (no infinity) for the page and the HTML report


def test_precision_recall_points_carry_their_threshold_sensitivity_and_specificity(predictions):
    ev = run_evidence.run_evidence("run-a", predictions, 0.5, n_resamples=100)
    fig = figures.precision_recall_figure([{"name": "run-a", **ev.pr}])
    trace = _curve_trace(fig, "run-a")
    data = np.asarray(trace.customdata, dtype=np.float64)
    y, s = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    precision, recall, thresholds = precision_recall_curve(y, s)

    assert data.shape == (len(recall), 3)
    np.testing.assert_array_equal(data[:-1, 0], thresholds)
    assert data[-1, 0] > s.max()  # recall 0: the point where nothing is called positive
    np.testing.assert_allclose(data[:, 1], recall, atol=1e-6)
    for threshold, sensitivity, specificity in data:
        at = statistics.binary_metrics(y, s, threshold)
        assert (sensitivity, specificity) == pytest.approx((at["sensitivity"], at["specificity"]), abs=1e-6)
    assert "threshold %{customdata[0]" in trace.hovertemplate and "specificity %{customdata[2]" in trace.hovertemplate


def test_curves_without_thresholds_keep_the_plain_hover():
    roc = figures.roc_figure([{"name": "old", "fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "auc": 0.7}])
    pr = figures.precision_recall_figure([{"name": "old", "precision": [0.5, 1.0], "recall": [1.0, 0.0], "average_precision": 0.6}])
    for fig in (roc, pr):
        trace = _curve_trace(fig, "old")
        assert trace.customdata is None
        assert "threshold" not in trace.hovertemplate


def test_a_small_split_in_the_kinds_figure_gets_its_counts_above_its_stack():
    # The Data page's test split (117 normal, 116 bacteria, 79 virus) beside a 5,216-image train/: its
    # segments are too thin for their numbers, which are written above the stack instead.
    kinds = {"train": {"normal": 1341, "bacteria": 2530, "virus": 1345}, "test": {"normal": 117, "bacteria": 116, "virus": 79}}
    fig = figures.kinds_figure(kinds)
    assert all(text == "" for trace in fig.data for x, text in zip(trace.x, trace.text, strict=True) if x == "test")
    assert {trace.name: trace.text[0] for trace in fig.data} == {"normal": "1,341", "bacteria": "2,530", "virus": "1,345"}
    (note,) = fig.layout.annotations
    assert note.x == "test" and note.text == "virus 79<br>bacteria 116<br>normal 117"
    assert fig.layout.yaxis.title.text == "Images (count)" and fig.layout.yaxis.range[1] > 5216
