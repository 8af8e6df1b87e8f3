"""Metrics of a run with more than two classes (the three-class task: normal / bacterial / viral).

The decision rule has two steps (`TWO_STEP_RULE`), as a reader of the X-ray takes them: first
pneumonia or not, by the run's binary view (P(bacterial) + P(viral)) at its threshold chosen on
validation, the same call the pneumonia-vs-normal figures make; then, for an image called
pneumonia, the kind of larger probability. So the three-class call never contradicts the binary
one, and it inherits the threshold's robustness (the stress-pooled rule) that the plain argmax,
which has no threshold, lacks (docs/measurements.md, "Three classes"). Without the binary calls
(`called_positive` None) the rule is the argmax. From the class probabilities and the true
classes this module makes what ``metrics.json`` keeps under ``multiclass`` and what Compare and
the report show: the confusion matrix (counts; rows are the true classes), accuracy, per-class
sensitivity and specificity (one class against the rest), one-vs-rest ROC curves and AUC per
class, their macro average and the micro AUC (every image × class pair pooled), with 95 %
intervals by the same patient bootstrap as the binary AUC (``statistics.resample_weights``).

The run's binary view (pneumonia vs normal, P(bacterial) + P(viral)) is not made here: it goes
through the binary code like any two-class run (``core.inference.evaluation``). Pure: numpy, pandas and
scikit-learn's ROC curve; no TensorFlow, no Streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.data.tasks import Task, probability_column
from core.evidence import statistics

ARGMAX_RULE = "argmax: the class of largest probability (no threshold)"
TWO_STEP_RULE = (
    "two steps: normal when the binary view (P(bacterial) + P(viral)) is below the run's threshold chosen on "
    "validation, otherwise the pneumonia kind of larger probability"
)
INTERVAL_METRICS = ("accuracy", "macro_auc", "micro_auc")


def _checked(y_class: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_class, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"expected one row of class probabilities per image: {y.size} labels, probabilities of shape {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be class indices 0..{p.shape[1] - 1}")
    return y, p


def predicted_classes(probabilities: Any, called_positive: Any = None) -> np.ndarray:
    """Each row's class index by `TWO_STEP_RULE`: the first class (normal) where the binary view did
    not call the image positive (`called_positive`, one bool per row, from the saved threshold), else
    the largest of the other classes. With `called_positive` None: the argmax over all classes."""
    p = np.asarray(probabilities)
    if called_positive is None:
        return p.argmax(axis=1)
    called = np.asarray(called_positive, dtype=bool)
    if called.shape != (p.shape[0],):
        raise ValueError(f"expected one binary call per image: {p.shape[0]} images, calls of shape {called.shape}")
    return np.where(called, 1 + p[:, 1:].argmax(axis=1), 0)


def class_of(task: Task, probabilities: Any, called_positive: bool) -> str:
    """One image's class (its name in `task.classes`) by `predicted_classes`, from its class
    probabilities and the binary view's call on it."""
    return task.classes[int(predicted_classes(np.asarray(probabilities)[None], [called_positive])[0])]


def decision_rule(called_positive: Any = None) -> str:
    """The words of the rule `predicted_classes` applies with these calls."""
    return ARGMAX_RULE if called_positive is None else TWO_STEP_RULE


def confusion_matrix(y_class: Any, predicted: Any, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    y, pred = np.asarray(y_class, np.int64), np.asarray(predicted, np.int64)
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _auc(y_binary: np.ndarray, score: np.ndarray) -> float:
    """Ties count 1/2 (Mann-Whitney), as every AUC here; NaN when a class is absent."""
    return float(statistics.weighted_auc(np.ones((1, y_binary.size)), y_binary, score)[0]) if 0 < y_binary.sum() < y_binary.size else math.nan


def class_metrics(y_class: Any, probabilities: Any, classes: Sequence[str], called_positive: Any = None) -> dict[str, Any]:
    """Accuracy, the confusion matrix, each class's sensitivity, specificity and one-vs-rest AUC,
    and the macro and micro one-vs-rest AUCs, at the decision of `predicted_classes`."""
    y, p = _checked(y_class, probabilities)
    k = p.shape[1]
    pred = predicted_classes(p, called_positive)
    matrix = confusion_matrix(y, pred, k)
    per_class = {}
    for c, name in enumerate(classes):
        tp = matrix[c, c]
        fn = matrix[c].sum() - tp
        fp = matrix[:, c].sum() - tp
        tn = matrix.sum() - tp - fn - fp
        per_class[name] = {
            "n": int(matrix[c].sum()),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "auc": _auc((y == c).astype(np.int64), p[:, c]),
        }
    aucs = [v["auc"] for v in per_class.values()]
    one_hot = np.eye(k, dtype=np.int64)[y]
    return {
        "n": int(y.size),
        "accuracy": _ratio(np.sum(pred == y), y.size),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if all(math.isfinite(a) for a in aucs) else math.nan,
        "micro_auc": _auc(one_hot.ravel(), p.ravel()),
        "decision_rule": decision_rule(called_positive),
    }


def _argmax_accuracy(y_class: Any, probabilities: Any) -> float:
    y, p = _checked(y_class, probabilities)
    return _ratio(np.sum(predicted_classes(p) == y), y.size)


def class_intervals(
    y_class: Any, probabilities: Any, groups: Any = None, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
    called_positive: Any = None,
) -> dict[str, statistics.Interval]:
    """Percentile intervals of accuracy, macro and micro AUC by patient bootstrap.

    The same resamples as a binary run's AUC interval (``statistics.resample_weights``: whole
    patients drawn with replacement). A resample lacking a class leaves that class's AUC (and so
    the macro AUC) undefined: it is skipped and counted, and ``ValueError`` is raised when more
    than half are, as ``statistics.bootstrap_ci`` does.
    """
    y, p = _checked(y_class, probabilities)
    k = p.shape[1]
    if len(np.unique(y)) < k:
        raise ValueError("intervals need test images of every class")
    pred_right = (predicted_classes(p, called_positive) == y).astype(np.float64)
    one_hot = np.eye(k, dtype=np.int64)[y]
    collected: dict[str, list[np.ndarray]] = {m: [] for m in INTERVAL_METRICS}
    n_skipped = 0
    for weights in statistics.resample_weights(y.size, groups, n_resamples, seed):
        per_class = np.column_stack([statistics.weighted_auc(weights, one_hot[:, c], p[:, c]) for c in range(k)])
        valid = np.isfinite(per_class).all(axis=1)
        n_skipped += int((~valid).sum())
        collected["accuracy"].append((weights @ pred_right / weights.sum(axis=1))[valid])
        collected["macro_auc"].append(per_class.mean(axis=1)[valid])
        # micro: every image × class pair, each pair weighing as its image
        collected["micro_auc"].append(statistics.weighted_auc(np.repeat(weights, k, axis=1), one_hot.ravel(), p.ravel())[valid])
    if n_skipped > 0.5 * n_resamples:
        raise ValueError(
            f"bootstrap skipped {n_skipped} of {n_resamples} resamples that lacked a class: too few patients of some class for an interval"
        )
    point = class_metrics(y, p, [str(c) for c in range(k)], called_positive)
    alpha = 1.0 - confidence
    out = {}
    for metric in INTERVAL_METRICS:
        values = np.concatenate(collected[metric])
        low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[metric] = statistics.Interval(
            estimate=float(point[metric]), low=float(low), high=float(high), confidence=float(confidence),
            n_resamples=int(values.size), n_skipped=n_skipped,
        )
    return out


def summary(
    task: Task, y_val: Any, p_val: Any, y_test: Any, p_test: Any, test_groups: Any = None,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0, val_called: Any = None, test_called: Any = None,
) -> dict[str, Any]:
    """What ``metrics.json`` keeps under ``multiclass``: metrics on validation and test, and the test
    intervals, by the two-step rule given each split's binary calls (`val_called`, `test_called`),
    and the argmax's accuracy beside it."""
    try:
        intervals = {k: v.to_dict() for k, v in class_intervals(
            y_test, p_test, test_groups, n_resamples, confidence, seed, test_called).items()}
        problem = ""
    except ValueError as error:
        intervals, problem = None, str(error)
    return {
        "task": task.name,
        "classes": list(task.classes),
        "names": list(task.names),
        "decision_rule": decision_rule(test_called),
        "val": class_metrics(y_val, p_val, task.classes, val_called),
        "test": class_metrics(y_test, p_test, task.classes, test_called),
        "argmax_accuracy": {"val": _argmax_accuracy(y_val, p_val), "test": _argmax_accuracy(y_test, p_test)},
        "test_intervals": intervals,
        "interval_problem": problem,
    }


# --------------------------------------------------------------------------
# Saved predictions
# --------------------------------------------------------------------------


def prediction_columns(task: Task, y_class: Any, probabilities: Any, called_positive: Any = None) -> pd.DataFrame:
    """The columns a multi-class run adds to its predictions tables: the true and the predicted
    class (`predicted_classes`), and one probability column per class (``tasks.probability_column``)."""
    y, p = _checked(y_class, probabilities)
    columns = {"true_class": [task.classes[i] for i in y],
               "predicted_class": [task.classes[i] for i in predicted_classes(p, called_positive)]}
    for c, name in enumerate(task.classes):
        columns[probability_column(name)] = p[:, c]
    return pd.DataFrame(columns)


def has_classes(predictions: pd.DataFrame, task: Task) -> bool:
    """True when a predictions table carries the task's class probabilities (a multi-class run's)."""
    return not task.is_binary and all(probability_column(c) in predictions.columns for c in task.classes) and "true_class" in predictions.columns


def binary_calls(predictions: pd.DataFrame, task: Task) -> np.ndarray | None:
    """Whether the binary view called each image positive at the run's saved threshold (its
    `prediction` column), or None for a table without one (then the rule is the argmax)."""
    if "prediction" not in predictions.columns:
        return None
    return (predictions["prediction"].astype(str) == task.binary_classes[1]).to_numpy()


def from_predictions(predictions: pd.DataFrame, task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true class index, class probabilities, patient) of a multi-class run's predictions table."""
    if not has_classes(predictions, task):
        raise ValueError(f"these predictions carry no probabilities of the {task.name} classes ({', '.join(task.classes)})")
    index = {name: i for i, name in enumerate(task.classes)}
    y = predictions["true_class"].map(index).to_numpy(dtype=np.int64)
    p = predictions[[probability_column(c) for c in task.classes]].to_numpy(dtype=np.float64)
    return y, p, predictions["patient"].astype(str).to_numpy()


def roc_curves(run_name: str, predictions: pd.DataFrame, task: Task) -> list[dict[str, Any]]:
    """One ``figures.roc_figure`` curve per class, one class against the rest, named "<run> · <class>"."""
    from sklearn.metrics import roc_curve

    y, p, _ = from_predictions(predictions, task)
    curves = []
    for c, name in enumerate(task.names):
        truth = (y == c).astype(np.int64)
        if not 0 < truth.sum() < truth.size:
            continue
        fpr, tpr, thresholds = roc_curve(truth, p[:, c])
        thresholds = np.where(np.isfinite(thresholds), thresholds, np.nextafter(float(p[:, c].max()), np.inf))
        curves.append(
            {
                "name": f"{run_name} · {name}", "fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(),
                "thresholds": thresholds.tolist(), "auc": _auc(truth, p[:, c]),
                "auc_low": None, "auc_high": None, "confidence": 0.95, "point": None,
            }
        )
    return curves


def per_class_table(run_name: str, metrics: dict[str, Any], names: Sequence[str]) -> pd.DataFrame:
    """One row per class: images, sensitivity, specificity and one-vs-rest AUC (from `class_metrics`)."""
    rows = []
    for values, shown in zip(metrics["per_class"].values(), names, strict=True):
        rows.append({"run": run_name, "class": shown, "images": values["n"], "sensitivity": values["sensitivity"],
                     "specificity": values["specificity"], "AUC (one vs rest)": values["auc"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# One run's three-class evidence, for Compare and the report
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassEvidence:
    """A multi-class run's test predictions by `predicted_classes`: metrics, intervals and one-vs-rest curves."""

    name: str
    task: Task
    metrics: dict[str, Any]  # class_metrics
    intervals: dict[str, statistics.Interval] | None
    interval_problem: str
    curves: list[dict[str, Any]]  # roc_curves
    n_resamples: int
    seed: int
    confidence: float

    @property
    def matrix(self) -> list[list[int]]:
        return self.metrics["confusion_matrix"]


def class_evidence(
    name: str, predictions: pd.DataFrame, task: Task, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> ClassEvidence:
    """The three-class evidence of one run from its saved predictions (``ValueError`` when they carry no class probabilities)."""
    y, p, groups = from_predictions(predictions, task)
    called = binary_calls(predictions, task)
    try:
        intervals, problem = class_intervals(y, p, groups, n_resamples, confidence, seed, called), ""
    except ValueError as error:
        intervals, problem = None, str(error)
    return ClassEvidence(
        name=name, task=task, metrics=class_metrics(y, p, task.classes, called), intervals=intervals, interval_problem=problem,
        curves=roc_curves(name, predictions, task), n_resamples=int(n_resamples), seed=int(seed), confidence=float(confidence),
    )
