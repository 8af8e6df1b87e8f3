"""core.evidence.shift: each run's metrics on validation and on test, side by side, and where test comes from."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.evidence import shift, statistics
from core.reporting import figures


def predictions(y: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"y_true": y, "probability": probability})


@pytest.fixture
def flattering():
    """Separates validation perfectly; on test half the normal images score above the threshold."""
    y = np.repeat([0, 1], 50)
    val = predictions(y, np.where(y == 1, 0.9, 0.1))
    normal_test = np.r_[np.full(25, 0.1), np.full(25, 0.8)]
    test = predictions(y, np.r_[normal_test, np.full(50, 0.9)])
    return val, test


def test_test_source_reads_the_folder_of_the_test_rows():
    table = pd.DataFrame({"split": ["train", "val", "test", "test"], "folder_split": ["train", "train", "test", "test"]})
    assert shift.test_source(table) == shift.EXTERNAL
    assert shift.test_source(table.assign(folder_split="train")) == shift.INTERNAL
    assert shift.test_source(table.assign(folder_split=["train", "train", "test", "train"])) == shift.MIXED
    assert shift.test_source(None) == shift.UNKNOWN
    assert shift.test_source(table.drop(columns="folder_split")) == shift.UNKNOWN


def test_split_metrics_agree_with_core_statistics(flattering):
    _, test = flattering
    got = shift.split_metrics(test, 0.5)
    expected = statistics.binary_metrics(test["y_true"], test["probability"], 0.5)
    assert got["auc"] == pytest.approx(expected["auc"]) and got["specificity"] == pytest.approx(0.5)
    assert got["sensitivity"] == pytest.approx(1.0) and got["n"] == 100
    assert got["ece"] == pytest.approx(statistics.expected_calibration_error(test["y_true"], test["probability"], n_bins=10))


def test_table_puts_validation_and_test_side_by_side(flattering):
    val, test = flattering
    splits = pd.DataFrame({"split": ["test"], "folder_split": ["test"]})
    runs = [shift.run_shift("flat-run", val, test, 0.5, splits), shift.run_shift("old", None, test, 0.5)]
    table = shift.shift_table(runs).set_index(["run", "metric"])
    assert list(table.columns) == ["validation", "test", "test − validation"]  # five columns in all: fits a narrow screen
    assert table.loc[("flat-run", "AUC"), "validation"] == pytest.approx(1.0)
    spec = table.loc[("flat-run", "specificity")]
    assert spec["validation"] == pytest.approx(1.0) and spec["test"] == pytest.approx(0.5)
    assert spec["test − validation"] == pytest.approx(-0.5)
    ece = table.loc[("flat-run", "ECE")]
    assert ece["test − validation"] == pytest.approx(ece["test"] - ece["validation"])
    assert math.isnan(table.loc[("old", "AUC"), "validation"]) and math.isnan(table.loc[("old", "AUC"), "test − validation"])
    facts = shift.shift_runs_table(runs).set_index("run")
    assert facts.loc["flat-run", "test split"] == "external" and facts.loc["old", "test split"] == "unknown"
    assert facts.loc["flat-run", "validation images"] == len(val) and facts.loc["old", "validation images"] == 0
    # the long words once, in a note, for the sources present only
    note = shift.source_note(runs)
    assert "external = the download's own test/ folder" in note and "unknown" in note and "internal" not in note


def test_warnings_spell_out_a_large_drop(flattering):
    val, test = flattering
    runs = [
        shift.run_shift("flat-run", val, test, 0.5, pd.DataFrame({"split": ["test"], "folder_split": ["train"]})),
        shift.run_shift("steady", val, val, 0.5),
    ]
    sentences = shift.shift_warnings(runs)
    assert len(sentences) == 1
    assert sentences[0].startswith("flat-run: specificity 1.000 on validation → 0.500 on test (−0.500)")
    assert "internal: carved from train/" in sentences[0]
    # ECE counts as worse when it grows
    assert runs[0].worse_by("ece") == pytest.approx(runs[0].change("ece"))


def test_figure_has_a_panel_per_metric_a_dot_per_split_and_titled_axes(flattering):
    val, test = flattering
    item = shift.run_shift("flat-run", val, test, 0.5)
    fig = figures.shift_figure([{"name": item.name, "val": item.val, "test": item.test, "metrics": shift.METRICS}],
                               lower_is_better=shift.LOWER_IS_BETTER)
    assert fig.layout.yaxis.title.text == "Value on the split (0–1)" and fig.layout.xaxis.title.text
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["AUC", "sensitivity", "specificity", "ECE (lower is better)"]
    # The legend sits below the plot, clear of the title; each panel's axis is fitted to its own metric.
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"
    for number, metric in enumerate(shift.METRICS, start=1):
        values = [part[metric] for part in (item.val, item.test) if np.isfinite(part[metric])]
        low, high = fig.layout[f"yaxis{'' if number == 1 else number}"].range
        assert low <= min(values) and high >= max(values)
    names = [t.name for t in fig.data if t.showlegend is not False and t.name]
    assert names == ["flat-run · validation", "flat-run · test"]
    specificity_test = next(t for t in fig.data if t.name == "flat-run · test" and t.yaxis == "y3")
    assert list(specificity_test.y) == [pytest.approx(0.5)]


def test_close_aucs_keep_their_own_axis_beside_a_small_ece():
    # Two runs' AUCs 0.96-0.98 beside ECEs of 0.03-0.06: one shared axis would span 0-1 and squash
    # the AUCs; their own panel spans about 0.06.
    rows = [{"name": name, "val": {"auc": v, "ece": 0.03}, "test": {"auc": t, "ece": 0.06}, "metrics": {"auc": "AUC", "ece": "ECE"}}
            for name, v, t in (("a", 0.98, 0.97), ("b", 0.975, 0.96))]
    fig = figures.shift_figure(rows)
    low, high = fig.layout.yaxis.range
    assert 0.9 < low < 0.96 and high - low < 0.1
    assert 0.0 <= fig.layout.yaxis2.range[0] < 0.03 and fig.layout.yaxis2.range[1] < 0.1


def test_the_validation_to_test_axis_fits_close_aucs():
    # Two runs' AUCs 0.96-0.99: a 0-1 axis squashes them into a sliver; the fitted one spans about 0.1.
    assert figures.value_range([0.96, 0.99, 0.975]) == pytest.approx([0.91, 1.02])
    assert figures.value_range([0.5, 0.9]) == pytest.approx([0.45, 0.95])
    assert figures.value_range([0.0, 1.0]) == [0.0, 1.02] and figures.value_range([]) == [0.0, 1.02]
