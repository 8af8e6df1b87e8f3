"""Validation against test: how each run's metrics move between the split its threshold was chosen
on and the split it is judged on.

Owns the shift table that the Compare page and the report both show: AUC, sensitivity,
specificity and calibration (ECE) on validation and on test side by side, with the change
(test − validation), and where the test images come from: the download's own `test/` folder
(external: other patients, other time) or a split carved out of `train/` (internal). A run whose
0.99 validation AUC turned into 50 % specificity on test is flagged in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.evidence import statistics
from core.files import read_csv
from core.runs.artifacts import SPLITS, Run

CALIBRATION_BINS = 10  # as core.evidence's calibration curves
FLAG_AT = 0.10  # a change this large (worse) is spelled out
# metric key -> its name in tables; for ECE lower is better, for the others higher.
METRICS = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "ece": "ECE"}
LOWER_IS_BETTER = frozenset({"ece"})

EXTERNAL, INTERNAL, MIXED, UNKNOWN = "external", "internal", "mixed", "unknown"
SOURCE_TEXT = {
    EXTERNAL: "external: the download's own test/ folder",
    INTERNAL: "internal: carved from train/",
    MIXED: "mixed: partly test/, partly train/",
    UNKNOWN: "unknown (no splits.csv)",
}
NOTE = (
    "Each run's metrics on the validation split (where its threshold was chosen) and on the test split, at the "
    "threshold in use, with the change test − validation: negative is worse for AUC, sensitivity and specificity, "
    "positive is worse for ECE (expected calibration error). An external test split (the download's own test/ "
    "folder) holds other patients from another collection than train/; an internal one is carved from train/ and "
    "tends to flatter the model."
)


def test_source(splits: pd.DataFrame | None) -> str:
    """EXTERNAL when every test image lies in the download's test/ folder, INTERNAL when all come from
    elsewhere (train/ or val/), MIXED when both, UNKNOWN without a split table."""
    if splits is None or "split" not in splits.columns or "folder_split" not in splits.columns:
        return UNKNOWN
    folders = splits.loc[splits["split"] == "test", "folder_split"].astype(str)
    if folders.empty:
        return UNKNOWN
    in_test = folders == "test"
    return EXTERNAL if in_test.all() else INTERNAL if not in_test.any() else MIXED


def split_metrics(predictions: pd.DataFrame, threshold: float) -> dict[str, float]:
    """AUC, sensitivity, specificity at `threshold` and ECE of one split's predictions, and its size."""
    y = predictions["y_true"].to_numpy(dtype=np.int64)
    s = predictions["probability"].to_numpy(dtype=np.float64)
    metrics = statistics.binary_metrics(y, s, threshold)
    return {
        "auc": float(metrics["auc"]),
        "sensitivity": float(metrics["sensitivity"]),
        "specificity": float(metrics["specificity"]),
        "ece": float(statistics.expected_calibration_error(y, s, n_bins=CALIBRATION_BINS)) if y.size else math.nan,
        "n": int(y.size),
    }


@dataclass(frozen=True)
class Shift:
    """One run's metrics on validation and on test at one threshold, and where its test images come from."""

    name: str
    threshold: float
    source: str  # EXTERNAL, INTERNAL, MIXED or UNKNOWN
    val: dict[str, float] | None  # None for runs saved without validation predictions
    test: dict[str, float]

    def change(self, metric: str) -> float:
        """test − validation (NaN without validation predictions)."""
        if self.val is None:
            return math.nan
        return float(self.test[metric]) - float(self.val[metric])

    def worse_by(self, metric: str) -> float:
        """How much worse test is than validation (positive: worse), whichever way the metric points."""
        change = self.change(metric)
        return change if metric in LOWER_IS_BETTER else -change


def run_shift(
    name: str, validation: pd.DataFrame | None, test: pd.DataFrame, threshold: float, splits: pd.DataFrame | None = None
) -> Shift:
    """The shift of one run: its validation and test predictions at `threshold`, its split table."""
    val = split_metrics(validation, threshold) if validation is not None and len(validation) else None
    return Shift(name, float(threshold), test_source(splits), val, split_metrics(test, threshold))


def for_run(run: Run, threshold: float | None = None, test: pd.DataFrame | None = None) -> Shift:
    """`run_shift` of a saved run: its validation and test predictions (or `test`) and its splits.csv,
    at `threshold` (default: its validation-chosen one)."""
    path = run.folder / SPLITS
    splits = read_csv(path, usecols=["split", "folder_split"]) if path.exists() else None
    chosen = run.threshold if threshold is None else float(threshold)
    return run_shift(run.name, run.val_predictions(), run.predictions() if test is None else test, chosen, splits)


def figure_rows(shifts: Sequence[Shift]) -> list[dict]:
    """The input of `core.reporting.figures.shift_figure`."""
    return [{"name": s.name, "val": s.val, "test": s.test, "metrics": METRICS} for s in shifts]


# the columns of `shift_table`: one row per run and metric, so the key figures fit a narrow screen
SHIFT_COLUMNS = ("run", "metric", "validation", "test", "test − validation")


def shift_table(shifts: Sequence[Shift]) -> pd.DataFrame:
    """One row per run and metric: the metric on validation, on test, and the change (test − validation)."""
    rows = [
        {
            "run": shift.name, "metric": title,
            "validation": math.nan if shift.val is None else shift.val[metric],
            "test": shift.test[metric], "test − validation": shift.change(metric),
        }
        for shift in shifts
        for metric, title in METRICS.items()
    ]
    return pd.DataFrame(rows, columns=list(SHIFT_COLUMNS))


def shift_runs_table(shifts: Sequence[Shift]) -> pd.DataFrame:
    """One row per run: its threshold, how many images each split has, and where its test split comes from
    (a word: `source_note` says what it means)."""
    return pd.DataFrame(
        [
            {
                "run": shift.name, "threshold": shift.threshold,
                "validation images": 0 if shift.val is None else int(shift.val["n"]), "test images": int(shift.test["n"]),
                "test split": shift.source,
            }
            for shift in shifts
        ],
        columns=["run", "threshold", "validation images", "test images", "test split"],
    )


def source_note(shifts: Sequence[Shift]) -> str:
    """What the test-split words of `shift_runs_table` mean, once for the sources present, e.g.
    "Test split: external = the download's own test/ folder."."""
    present = [source for source in SOURCE_TEXT if any(shift.source == source for shift in shifts)]
    return "Test split: " + "; ".join(SOURCE_TEXT[source].replace(": ", " = ", 1) for source in present) + "." if present else ""


def _signed(value: float) -> str:
    """+0.012 or −0.450 (a true minus sign)."""
    return f"{value:+.3f}".replace("-", "\u2212")


def shift_warnings(shifts: Sequence[Shift], flag_at: float = FLAG_AT) -> list[str]:
    """A sentence per run whose test is worse than validation by `flag_at` or more in some metric,
    e.g. "cnn: specificity 0.950 on validation → 0.500 on test (−0.450; test split external: ...)"."""
    sentences = []
    for shift in shifts:
        worse = [m for m in METRICS if math.isfinite(shift.worse_by(m)) and shift.worse_by(m) >= flag_at]
        if not worse:
            continue
        parts = [
            f"{METRICS[m]} {shift.val[m]:.3f} on validation → {shift.test[m]:.3f} on test ({_signed(shift.change(m))})"
            for m in worse
        ]
        sentences.append(f"{shift.name}: " + "; ".join(parts) + f" · test split {SOURCE_TEXT[shift.source]}")
    return sentences
