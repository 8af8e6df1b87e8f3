"""A run's predictions turned into the evidence a clinical reader needs, and two runs compared.

Glue between saved runs (``predictions.csv``, ``metrics.json``) and ``core.evidence.statistics``: metrics at a
threshold with patient-aware intervals, ROC, precision-recall and calibration curves,
operating points and errors per pneumonia kind, and the paired tests of two runs scored on the
same test images (DeLong and McNemar, clustered by patient; Holm-adjusted when several pairs are
compared). Numbers only: ``core.reporting.wording`` says them in words, once for the page and the report.
No Streamlit here: the Compare page caches these results and ``core.reporting.report`` writes them into an
HTML file.

Operating points (sensitivity at 90 % specificity, ...) are chosen on the run's validation
predictions (``val_predictions.csv``) and then measured on test, like the saved threshold. Runs saved
before validation predictions were kept fall back to points found on the test images themselves,
marked as descriptive: they describe the test set rather than a choice made before seeing it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from core.data import tasks
from core.evidence import statistics

CONFIDENCE = 0.95
N_RESAMPLES = 1000
SEED = 0
CALIBRATION_BINS = 10
INTERVAL_METRICS = statistics.BOOTSTRAP_METRICS  # auc, sensitivity, specificity, accuracy

VALIDATION_CHOICE = "validation"
CUSTOM_CHOICE = "custom"
# A run's named operating point chosen on a site's labelled images (core.workflows.site) is the menu
# entry "site:<name>", measured on test like the others.
SITE_CHOICE_PREFIX = "site:"
OUT_OF_FOLD_CHOICE_PREFIX = "oof:"  # a saved point chosen on out-of-fold predictions (core.workflows.cross_fit)
# The operating points offered beside the validation-chosen threshold, in the order shown
# (names of `statistics.operating_points`; `core.reporting.wording.POINT_LABELS` says them in words).
OPERATING_POINTS = ("youden", "sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95")
# A point chosen on validation to meet a target (specificity >= 90 %, ...) "misses" it on test when the
# test figure falls more than this below the target: the run's box then says so, with the figures.
TARGET_MISS = 0.05
_TARGET_METRICS = {"sens": "sensitivity", "spec": "specificity"}


def point_target(key: str) -> tuple[str, float] | None:
    """(metric, target) an operating point promises, e.g. ("specificity", 0.90) for "sens@spec90"; None for
    points without a target (the saved threshold, Youden's J, a site's point)."""
    _, at, target = key.partition("@")
    if not at or target[:4] not in _TARGET_METRICS or not target[4:].replace(".", "", 1).isdigit():
        return None
    return _TARGET_METRICS[target[:4]], float(target[4:]) / 100


def target_shortfall(choice: ThresholdChoice) -> tuple[str, float, float] | None:
    """(metric, target, test value) when a validation-chosen point misses its target on test by more than
    `TARGET_MISS`; None when it keeps it, has no target, or was chosen on test (where it holds by construction)."""
    target = point_target(choice.key)
    if target is None or choice.on_test:
        return None
    metric, wanted = target
    value = getattr(choice, metric)
    return (metric, wanted, value) if wanted - value > TARGET_MISS + 1e-9 else None


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChoice:
    """One entry of the threshold control: an operating point and what it gives on test."""

    key: str  # "validation", "youden", "sens@spec90", ... ("custom" is the page's own)
    threshold: float
    sensitivity: float  # sensitivity and specificity on test, at `threshold`
    specificity: float
    on_test: bool  # True: chosen on the test images (descriptive only); False: chosen on validation


@dataclass(frozen=True)
class RunEvidence:
    """Everything the Compare page and the report show about one run at one threshold."""

    name: str
    threshold: float  # the threshold in use
    saved_threshold: float  # chosen on validation by the search
    n_images: int
    n_patients: int
    n_positive: int
    metrics: dict[str, Any]  # statistics.binary_metrics at `threshold`
    intervals: dict[str, statistics.Interval] | None  # None when the test set is too small for intervals
    interval_problem: str  # why there are no intervals ("" when there are)
    n_resamples: int
    seed: int
    confidence: float
    roc: dict[str, list[float]]  # fpr, tpr, thresholds (one per point)
    pr: dict[str, Any]  # precision, recall, thresholds, specificity (one per point), average_precision, prevalence
    reliability: dict[str, list[float]]  # mean_predicted, fraction_positive, count
    brier: float
    ece: float
    choices: list[ThresholdChoice] = field(default_factory=list)
    errors: pd.DataFrame = field(default_factory=pd.DataFrame)

    def interval(self, metric: str) -> statistics.Interval | None:
        return (self.intervals or {}).get(metric)

    def choice(self, key: str) -> ThresholdChoice | None:
        return next((c for c in self.choices if c.key == key), None)

    @property
    def points_on_test(self) -> bool:
        """True when the operating points were found on the test images (no validation predictions)."""
        return any(c.on_test for c in self.choices)

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """[[TN, FP], [FN, TP]] at the threshold in use: rows are the true classes, negative first."""
        m = self.metrics
        return [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]

    @property
    def choice_keys(self) -> list[str]:
        """The operating-point menu: every choice, then "custom" (a threshold set by hand)."""
        return [c.key for c in self.choices] + [CUSTOM_CHOICE]

    @property
    def highest_threshold(self) -> float:
        """The top of the threshold control: 1.0, or a choice above it.

        "Nothing positive" lies just above the top score, so above 1.0 when a probability is exactly 1.0.
        """
        return max(1.0, self.saved_threshold, *(c.threshold for c in self.choices))

    def choice_after_move(self, key: str | None, threshold: float) -> str:
        """The menu entry once the threshold was moved by hand to `threshold`: `key` when it landed on
        that choice's threshold, else "custom"."""
        current = self.choice(key) if key is not None else None
        if current is None or abs(current.threshold - threshold) > 1e-9:
            return CUSTOM_CHOICE
        return current.key


def arrays(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, patients) of a predictions table, checked."""
    missing = [c for c in ("y_true", "probability", "patient") if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}")
    y = predictions["y_true"].to_numpy(dtype=np.int64)
    s = predictions["probability"].to_numpy(dtype=np.float64)
    groups = predictions["patient"].astype(str).to_numpy()
    return y, s, groups


def _plain(values) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values, dtype=np.float64)]


def curve_thresholds(thresholds, y_score) -> list[float]:
    """A curve's thresholds as plain floats, "nothing positive" included.

    scikit-learn marks the point where no image is called positive with +inf (ROC) or with no
    threshold at all (precision-recall); it is written as the next float above the top score,
    as `core.inference.evaluation.roc_points` does, so a probability of exactly 1.0 stays below it. The
    others are kept unrounded: they are the probabilities themselves.
    """
    values = np.asarray(thresholds, dtype=np.float64).copy()
    values[~np.isfinite(values)] = np.nextafter(float(np.max(y_score)), np.inf)
    return [float(v) for v in values]


def specificity_at(y: np.ndarray, s: np.ndarray, thresholds) -> list[float]:
    """Specificity at each threshold (an image is positive when its score is at least the threshold)."""
    negatives = np.sort(s[y == 0])
    if negatives.size == 0:
        return [math.nan] * len(thresholds)
    false_alarms = negatives.size - np.searchsorted(negatives, np.asarray(thresholds, dtype=np.float64), side="left")
    return _plain(1.0 - false_alarms / negatives.size)


def threshold_choices(
    y: np.ndarray, s: np.ndarray, saved_threshold: float, validation: tuple[np.ndarray, np.ndarray] | None = None
) -> list[ThresholdChoice]:
    """The validation-chosen threshold first, then the operating points, each measured on test.

    With ``validation`` (labels, probabilities of the validation split) the points are chosen there,
    as the saved threshold was (its Youden point is not repeated when it is the saved threshold:
    it differs when the run chose its threshold with the stress test's changed images too); without
    it, or when validation has one class only, they are chosen on test and marked so.
    """
    saved = statistics.binary_metrics(y, s, saved_threshold)
    choices = [
        ThresholdChoice(
            VALIDATION_CHOICE, float(saved_threshold), float(saved["sensitivity"]), float(saved["specificity"]), on_test=False
        )
    ]
    chosen_on = (y, s)
    on_test = True
    if validation is not None and len(np.unique(validation[0])) == 2:
        chosen_on, on_test = validation, False
    try:
        points = statistics.operating_points(*chosen_on)
    except ValueError:  # one class only: no operating points
        return choices
    by_name = {p.name: p for p in points}
    for name in OPERATING_POINTS:
        point = by_name.get(name)
        if point is None or (name == "youden" and not on_test and math.isclose(point.threshold, saved_threshold, abs_tol=1e-9)):
            continue
        # "Nothing positive" is the next float above the top score: above 1.0 when a probability is
        # exactly 1.0. It is kept as is (clipped to 1.0 it would call that image positive).
        threshold = float(point.threshold)
        at = statistics.binary_metrics(y, s, threshold)
        choices.append(ThresholdChoice(name, threshold, float(at["sensitivity"]), float(at["specificity"]), on_test=on_test))
    return choices


def site_choice_key(point_name: str, out_of_fold: bool = False) -> str:
    return f"{OUT_OF_FOLD_CHOICE_PREFIX if out_of_fold else SITE_CHOICE_PREFIX}{point_name}"


def with_site_points(evidence: RunEvidence, predictions: pd.DataFrame, points: Mapping[str, float],
                     out_of_fold: Collection[str] = ()) -> RunEvidence:
    """`evidence` with a menu entry per saved operating point ({name: threshold}; those named in
    `out_of_fold` were chosen on out-of-fold predictions, the others on site images), each measured
    on the test predictions, after the validation-chosen points (none for a run without points)."""
    if not points or not evidence.choices:
        return evidence
    y, s, _ = arrays(predictions)
    extra = []
    for point_name, threshold in points.items():
        at = statistics.binary_metrics(y, s, float(threshold))
        extra.append(ThresholdChoice(site_choice_key(point_name, point_name in out_of_fold), float(threshold),
                                     float(at["sensitivity"]), float(at["specificity"]), on_test=False))
    return replace(evidence, choices=[*evidence.choices, *extra])


def run_evidence(
    name: str,
    predictions: pd.DataFrame,
    threshold: float,
    saved_threshold: float | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    n_bins: int = CALIBRATION_BINS,
    validation: pd.DataFrame | None = None,
) -> RunEvidence:
    """The evidence for one run's test predictions at ``threshold``.

    Intervals keep the images of one patient together (``statistics.metric_intervals`` with
    ``groups=patient``): AUC by percentile bootstrap over patients (``seed`` makes it reproducible),
    sensitivity, specificity and accuracy by Wilson's interval with the patients' design effect. ``validation`` (the run's
    validation predictions) is where the operating points are chosen; see ``threshold_choices``.
    """
    y, s, groups = arrays(predictions)
    val = arrays(validation)[:2] if validation is not None and len(validation) else None
    saved_threshold = float(threshold if saved_threshold is None else saved_threshold)
    metrics = statistics.binary_metrics(y, s, threshold)
    intervals, problem = None, ""
    try:
        intervals = statistics.metric_intervals(y, s, threshold, groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed)
    except ValueError as error:
        problem = str(error)

    n_pos = int(y.sum())
    both = 0 < n_pos < y.size
    if both:
        from sklearn.metrics import roc_curve

        fpr, tpr, roc_thresholds = roc_curve(y, s)
        roc = {"fpr": _plain(fpr), "tpr": _plain(tpr), "thresholds": curve_thresholds(roc_thresholds, s)}
    else:
        roc = {"fpr": [], "tpr": [], "thresholds": []}
    pr_raw = statistics.precision_recall(y, s)
    # scikit-learn's last precision-recall point (recall 0) has no threshold: it is "nothing positive".
    pr_thresholds = curve_thresholds([*pr_raw["thresholds"], np.inf], s) if len(pr_raw["recall"]) else []
    pr = {
        "precision": _plain(pr_raw["precision"]),
        "recall": _plain(pr_raw["recall"]),
        "thresholds": pr_thresholds,  # one per point, for the figure's hover
        "specificity": specificity_at(y, s, pr_thresholds),
        "average_precision": float(pr_raw["average_precision"]),
        "prevalence": n_pos / y.size if y.size else math.nan,
    }
    curve = statistics.reliability_curve(y, s, n_bins=n_bins)
    reliability = {
        "mean_predicted": _plain(curve["mean_predicted"]),
        "fraction_positive": _plain(curve["fraction_positive"]),
        "count": [int(c) for c in curve["count"]],
    }
    return RunEvidence(
        name=name,
        threshold=float(threshold),
        saved_threshold=saved_threshold,
        n_images=int(y.size),
        n_patients=int(len(set(groups))),
        n_positive=n_pos,
        metrics=metrics,
        intervals=intervals,
        interval_problem=problem,
        n_resamples=int(n_resamples),
        seed=int(seed),
        confidence=float(confidence),
        roc=roc,
        pr=pr,
        reliability=reliability,
        brier=statistics.brier_score(y, s),
        ece=statistics.expected_calibration_error(y, s, n_bins=n_bins),
        choices=threshold_choices(y, s, saved_threshold, val) if both else [],
        errors=statistics.error_breakdown(predictions, threshold) if "kind" in predictions.columns else pd.DataFrame(),
    )


# --------------------------------------------------------------------------
# Two runs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedEvidence:
    """Two runs on the same test images: paired tests by patient (the ones to read) and by image.

    ``delong`` and ``mcnemar`` are the image-level tests (every image independent), kept for reference;
    ``delong_by_patient`` and ``mcnemar_by_patient`` keep each patient's images together and are the
    ones the sentences use. With several pairs compared at once (``n_comparisons`` > 1) the
    ``*_adjusted`` p-values are Holm-adjusted over the pairs and the sentences use them.
    """

    name_a: str
    name_b: str
    threshold_a: float
    threshold_b: float
    n_images: int
    delong: statistics.DeLongResult
    mcnemar: statistics.McNemarResult
    n_patients: int
    errors_a: int
    errors_b: int
    delong_by_patient: statistics.DeLongResult
    mcnemar_by_patient: statistics.ClusteredMcNemarResult
    n_comparisons: int = 1
    p_auc_adjusted: float = math.nan
    p_errors_adjusted: float = math.nan

    @property
    def adjusted(self) -> bool:
        return self.n_comparisons > 1

    @property
    def p_auc(self) -> float:
        """The p-value the AUC sentence uses: by patient, Holm-adjusted when several pairs are compared."""
        return self.p_auc_adjusted if self.adjusted else self.delong_by_patient.p_value

    @property
    def p_errors(self) -> float:
        return self.p_errors_adjusted if self.adjusted else self.mcnemar_by_patient.p_value


def paired_evidence(
    name_a: str, predictions_a: pd.DataFrame, threshold_a: float,
    name_b: str, predictions_b: pd.DataFrame, threshold_b: float,
    confidence: float = CONFIDENCE,
) -> PairedEvidence:
    """Paired tests of two runs; ``ValueError`` (from ``statistics.align_paired``) when their test images differ."""
    paired = statistics.align_paired(predictions_a, predictions_b)
    y = paired.y_true
    groups = paired.groups if paired.groups is not None else np.arange(y.size)  # no patient ids: images
    pred_a = (paired.score_a >= threshold_a).astype(int)
    pred_b = (paired.score_b >= threshold_b).astype(int)
    return PairedEvidence(
        name_a, name_b, float(threshold_a), float(threshold_b), int(y.size),
        delong=statistics.delong_test(y, paired.score_a, paired.score_b, confidence=confidence),
        mcnemar=statistics.mcnemar_test(y, pred_a, pred_b),
        n_patients=int(len(np.unique(groups))),
        errors_a=int(np.sum(pred_a != y)),
        errors_b=int(np.sum(pred_b != y)),
        delong_by_patient=statistics.clustered_delong_test(y, paired.score_a, paired.score_b, groups, confidence=confidence),
        mcnemar_by_patient=statistics.clustered_mcnemar_test(y, pred_a, pred_b, groups),
    )


def holm_family(pairs: list[PairedEvidence]) -> list[PairedEvidence]:
    """The pairs with Holm-adjusted p-values over the family (AUC tests and error tests separately).

    One pair is not a family: it is returned unchanged (unadjusted, ``n_comparisons`` = 1).
    """
    if len(pairs) < 2:
        return list(pairs)
    auc = statistics.holm_adjust([p.delong_by_patient.p_value for p in pairs])
    errors = statistics.holm_adjust([p.mcnemar_by_patient.p_value for p in pairs])
    return [
        replace(p, n_comparisons=len(pairs), p_auc_adjusted=a, p_errors_adjusted=e)
        for p, a, e in zip(pairs, auc, errors, strict=True)
    ]


def pairing_problem(name_a: str, name_b: str, run_tasks: Mapping[str, tasks.Task] | None) -> str:
    """Why two runs answer different questions and so cannot be paired ("" when they can, or when
    ``run_tasks`` (run name -> task) is not given)."""
    if not run_tasks or name_a not in run_tasks or name_b not in run_tasks:
        return ""
    return tasks.comparability_problem(run_tasks[name_a], run_tasks[name_b])


def pairwise_evidence(
    runs: list[tuple[str, pd.DataFrame, float]], confidence: float = CONFIDENCE,
    run_tasks: Mapping[str, tasks.Task] | None = None,
) -> tuple[list[PairedEvidence], list[tuple[str, str, str]]]:
    """Every pair of ``runs`` (name, predictions, threshold) that can be paired, Holm-adjusted together.

    Returns the tested pairs and the refused ones as (name A, name B, reason). With ``run_tasks``,
    runs answering different questions (``tasks.comparability_problem``) are refused, saying why.
    """
    tested, refused = [], []
    for (name_a, pred_a, thr_a), (name_b, pred_b, thr_b) in itertools.combinations(runs, 2):
        if problem := pairing_problem(name_a, name_b, run_tasks):
            refused.append((name_a, name_b, problem))
            continue
        try:
            tested.append(paired_evidence(name_a, pred_a, thr_a, name_b, pred_b, thr_b, confidence=confidence))
        except ValueError as error:
            refused.append((name_a, name_b, str(error)))
    return holm_family(tested), refused


def paired_among(
    name_a: str, name_b: str, runs: list[tuple[str, pd.DataFrame, float]], confidence: float = CONFIDENCE,
    run_tasks: Mapping[str, tasks.Task] | None = None,
) -> PairedEvidence:
    """Runs ``name_a`` and ``name_b`` of ``runs`` (name, predictions, threshold) tested against each other.

    With more than two runs the pair is one of a family: its p-values are Holm-adjusted over every
    pair of ``runs`` that can be paired, as the report's are. ``ValueError`` when the two runs' test
    images differ, when they answer different questions (with ``run_tasks``), or when a name is
    not among ``runs``.
    """
    by_name = {name: (table, threshold) for name, table, threshold in runs}
    unknown = [name for name in (name_a, name_b) if name not in by_name]
    if unknown:
        raise ValueError(f"{unknown} not among the runs {list(by_name)}")
    if problem := pairing_problem(name_a, name_b, run_tasks):
        raise ValueError(problem)
    paired = paired_evidence(name_a, *by_name[name_a], name_b, *by_name[name_b], confidence=confidence)
    if len(runs) > 2:
        family, _ = pairwise_evidence(runs, confidence=confidence, run_tasks=run_tasks)
        paired = adjusted_as_in(paired, family)
    return paired


def adjusted_as_in(paired: PairedEvidence, family: list[PairedEvidence]) -> PairedEvidence:
    """``paired`` with the adjusted p-values of the same two runs in ``family`` (either order; p is symmetric)."""
    for member in family:
        if {member.name_a, member.name_b} == {paired.name_a, paired.name_b}:
            return replace(
                paired, n_comparisons=member.n_comparisons,
                p_auc_adjusted=member.p_auc_adjusted, p_errors_adjusted=member.p_errors_adjusted,
            )
    return paired


def errors_table(evidence: list[RunEvidence]) -> pd.DataFrame:
    """Errors per pneumonia kind (normal, bacteria, virus, all) of every run, one row per run and kind."""
    parts = []
    for ev in evidence:
        if ev.errors.empty:
            continue
        part = ev.errors.copy()
        part.insert(0, "run", ev.name)
        part.insert(1, "threshold", ev.threshold)
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
