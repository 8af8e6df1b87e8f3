"""A run's predictions turned into the evidence a clinical reader needs, and two runs compared.

Glue between saved runs (`predictions.csv`, `metrics.json`) and `core.statistics`: metrics at a
threshold with patient-aware intervals, ROC, precision-recall and calibration curves,
operating points and errors per pneumonia kind, and the paired tests of two runs scored on the
same test images (DeLong and McNemar, clustered by patient; Holm-adjusted when several pairs are
compared), with the sentences that say what they show, written here once for the page and the
report. No Streamlit here: the Compare page caches these results and `core.report` writes them
into an HTML file.

Operating points (sensitivity at 90 % specificity, ...) are chosen on the run's validation
predictions (`val_predictions.csv`) and then measured on test, like the saved threshold. Runs saved
before validation predictions were kept fall back to points found on the test images themselves,
marked as descriptive: they describe the test set rather than a choice made before seeing it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from core import statistics

CONFIDENCE = 0.95
N_RESAMPLES = 1000
SEED = 0
CALIBRATION_BINS = 10
INTERVAL_METRICS = statistics.BOOTSTRAP_METRICS  # auc, sensitivity, specificity, accuracy

VALIDATION_CHOICE = "validation"
CUSTOM_CHOICE = "custom"
# Operating point name in `statistics.operating_points` -> what the reader sees.
POINT_LABELS = {
    "youden": "Youden's J",
    "sens@spec90": "best sensitivity at specificity ≥ 90 %",
    "sens@spec95": "best sensitivity at specificity ≥ 95 %",
    "spec@sens90": "best specificity at sensitivity ≥ 90 %",
    "spec@sens95": "best specificity at sensitivity ≥ 95 %",
}
ON_VALIDATION = "chosen on validation"
ON_TEST = "on test, descriptive"
VALIDATION_NOTE = (
    "Operating points are chosen on the validation split, like the saved threshold, and measured on test: "
    "a target met on validation (e.g. specificity ≥ 90 %) may be missed slightly on test, which is the honest figure."
)
DESCRIPTIVE_NOTE = (
    "Runs saved without validation predictions get their operating points from the test images: those are "
    "descriptive (optimistic for this test set); their validation-chosen threshold is the honest one."
)


# ---------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class ThresholdChoice:
    """One entry of the threshold control: an operating point and what it gives on test."""

    key: str  # "validation", "youden", "sens@spec90", ... ("custom" is the page's own)
    label: str
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
    as `core.evaluation.roc_points` does, so a probability of exactly 1.0 stays below it. The
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

    With `validation` (labels, probabilities of the validation split) the points are chosen there,
    as the saved threshold was (its Youden point is the saved threshold, so it is not repeated);
    without it, or when validation has one class only, they are chosen on test and marked so.
    """
    saved = statistics.binary_metrics(y, s, saved_threshold)
    choices = [
        ThresholdChoice(
            VALIDATION_CHOICE, "validation-chosen (Youden's J on validation)", float(saved_threshold),
            float(saved["sensitivity"]), float(saved["specificity"]), on_test=False,
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
    for name, label in POINT_LABELS.items():
        point = by_name.get(name)
        if point is None or (name == "youden" and not on_test):
            continue
        # "Nothing positive" is the next float above the top score: above 1.0 when a probability is
        # exactly 1.0. It is kept as is (clipped to 1.0 it would call that image positive).
        threshold = float(point.threshold)
        at = statistics.binary_metrics(y, s, threshold)
        where = ON_TEST if on_test else ON_VALIDATION
        choices.append(
            ThresholdChoice(name, f"{label} ({where})", threshold, float(at["sensitivity"]), float(at["specificity"]), on_test=on_test)
        )
    return choices


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
    """The evidence for one run's test predictions at `threshold`.

    Intervals keep the images of one patient together (`statistics.metric_intervals` with
    `groups=patient`): AUC by percentile bootstrap over patients (`seed` makes it reproducible),
    sensitivity, specificity and accuracy by Wilson's interval with the patients' design effect. `validation` (the run's
    validation predictions) is where the operating points are chosen; see `threshold_choices`.
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


# ---------------------------------------------------------------------------- two runs


LEVEL = 0.05  # the significance level of every sentence

PAIRED_NOTE = (
    "Both tests keep each patient's images together, as the intervals do: DeLong's test of the AUCs clustered by "
    "patient (Obuchowski 1997), and McNemar's test of the errors at each run's threshold clustered by patient "
    "(exact sign-flip test of the per-patient differences under 25 discordant images, else Durkalski 2003). "
    "b = images A got right and B wrong, c = the reverse. The image-level tests, which treat every image as "
    "independent, are shown for reference only: with several images per patient their p-values are too small."
)


@dataclass(frozen=True)
class PairedEvidence:
    """Two runs on the same test images: paired tests by patient (the ones to read) and by image.

    `delong` and `mcnemar` are the image-level tests (every image independent), kept for reference;
    `delong_by_patient` and `mcnemar_by_patient` keep each patient's images together and are the
    ones the sentences use. With several pairs compared at once (`n_comparisons` > 1) the
    `*_adjusted` p-values are Holm-adjusted over the pairs and the sentences use them.
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
    """Paired tests of two runs; `ValueError` (from `statistics.align_paired`) when their test images differ."""
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

    One pair is not a family: it is returned unchanged (unadjusted, `n_comparisons` = 1).
    """
    if len(pairs) < 2:
        return list(pairs)
    auc = statistics.holm_adjust([p.delong_by_patient.p_value for p in pairs])
    errors = statistics.holm_adjust([p.mcnemar_by_patient.p_value for p in pairs])
    return [
        replace(p, n_comparisons=len(pairs), p_auc_adjusted=a, p_errors_adjusted=e)
        for p, a, e in zip(pairs, auc, errors, strict=True)
    ]


def pairwise_evidence(
    runs: list[tuple[str, pd.DataFrame, float]], confidence: float = CONFIDENCE
) -> tuple[list[PairedEvidence], list[tuple[str, str, str]]]:
    """Every pair of `runs` (name, predictions, threshold) that can be paired, Holm-adjusted together.

    Returns the tested pairs and the refused ones as (name A, name B, reason).
    """
    tested, refused = [], []
    for (name_a, pred_a, thr_a), (name_b, pred_b, thr_b) in itertools.combinations(runs, 2):
        try:
            tested.append(paired_evidence(name_a, pred_a, thr_a, name_b, pred_b, thr_b, confidence=confidence))
        except ValueError as error:
            refused.append((name_a, name_b, str(error)))
    return holm_family(tested), refused


def adjusted_as_in(paired: PairedEvidence, family: list[PairedEvidence]) -> PairedEvidence:
    """`paired` with the adjusted p-values of the same two runs in `family` (either order; p is symmetric)."""
    for member in family:
        if {member.name_a, member.name_b} == {paired.name_a, paired.name_b}:
            return replace(
                paired, n_comparisons=member.n_comparisons,
                p_auc_adjusted=member.p_auc_adjusted, p_errors_adjusted=member.p_errors_adjusted,
            )
    return paired


def _p_phrase(p: float, paired: PairedEvidence) -> str:
    shown = format_p(p)
    value = shown if shown.startswith("<") else f"= {shown}"
    if paired.adjusted:
        return f"by patient, Holm-adjusted over {paired.n_comparisons} pairs: p {value}"
    return f"by patient: p {value}"


def auc_sentence(paired: PairedEvidence) -> str:
    """What the AUC test says, in words, from the patient-level test (Holm-adjusted when a family)."""
    d = paired.delong_by_patient
    if not d.defined:
        return f"The patient-level test of the AUCs is undefined: {d.problem}."
    phrase = _p_phrase(paired.p_auc, paired)
    if paired.p_auc < LEVEL:
        higher, lower = (paired.name_a, paired.name_b) if d.difference > 0 else (paired.name_b, paired.name_a)
        return f"{higher}'s AUC is higher than {lower}'s ({phrase})."
    return f"No evidence at the 5 % level that the AUCs differ ({phrase}); this does not show that they are equal."


def errors_sentence(paired: PairedEvidence) -> str:
    """What the error test says, in words, at the two thresholds in use."""
    counts = f"{paired.errors_a} vs {paired.errors_b} errors of {paired.n_images} images"
    phrase = _p_phrase(paired.p_errors, paired)
    if paired.p_errors < LEVEL:
        fewer, more = (paired.name_a, paired.name_b) if paired.errors_a < paired.errors_b else (paired.name_b, paired.name_a)
        return f"{fewer} makes fewer errors than {more} at the thresholds in use ({counts}; {phrase})."
    return f"No evidence at the 5 % level that the error rates differ at the thresholds in use ({counts}; {phrase})."


# ---------------------------------------------------------------------------- tables


def format_interval(interval: statistics.Interval | None, digits: int = 3) -> str:
    """'0.932–0.968', or 'n/a' when there is no interval."""
    if interval is None or not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return "n/a"
    return f"{interval.low:.{digits}f}–{interval.high:.{digits}f}"


def format_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def ci_label(confidence: float) -> str:
    return f"{100 * confidence:g}% CI"


def intervals_note(n_resamples: int, seed: int, confidence: float = CONFIDENCE) -> str:
    """How the intervals are made, in one sentence for the page and the report."""
    return (
        f"{ci_label(confidence)}: AUC by percentile bootstrap over patients (all images of a drawn patient together), "
        f"{n_resamples:,} resamples, seed {seed}; sensitivity, specificity and accuracy by Wilson's score interval "
        "widened by the patients' design effect, which holds near 0 % and 100 % where a bootstrap falls short."
    )


def metrics_table(evidence: list[RunEvidence], combined: bool = False) -> pd.DataFrame:
    """One row per run: threshold, point estimates and their intervals, calibration, sizes.

    Each interval metric gets a number column and a text column `"<metric> 95% CI"`
    ("0.932–0.968"); with `combined` one text column `"<metric> (95% CI)"` ("0.951 (0.932–0.968)")
    instead, as a paper's table would print it.
    """
    rows = []
    for ev in evidence:
        label = ci_label(ev.confidence)
        row: dict[str, Any] = {"run": ev.name, "threshold": ev.threshold}
        for metric, title in (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("accuracy", "accuracy")):
            value = float(ev.metrics[metric])
            if combined:
                shown = f"{value:.3f}" if math.isfinite(value) else "n/a"
                row[f"{title} ({label})"] = f"{shown} ({format_interval(ev.interval(metric))})"
            else:
                row[title] = value
                row[f"{title} {label}"] = format_interval(ev.interval(metric))
        row.update(
            {
                "precision": float(ev.metrics["precision"]),
                "F1": float(ev.metrics["f1"]),
                "average precision": ev.pr["average_precision"],
                "Brier": ev.brier,
                "ECE": ev.ece,
                "test images": ev.n_images,
                "test patients": ev.n_patients,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _difference_ci(d: statistics.DeLongResult) -> str:
    return f"{d.ci_low:+.3f} to {d.ci_high:+.3f}" if math.isfinite(d.ci_low) and math.isfinite(d.ci_high) else "n/a"


def paired_row(paired: PairedEvidence, compact: bool = False) -> dict[str, Any]:
    """One table row of a pair's tests; `compact` folds A/B columns together for a printed table.

    The patient-level tests come first; the Holm columns appear when the pair is one of several;
    the image-level p-values come last, labelled as such.
    """
    d, m = paired.delong_by_patient, paired.mcnemar_by_patient
    label = ci_label(d.confidence)
    method = "exact sign-flip" if m.method == "exact_sign_flip" else "Durkalski chi-square"
    holm_auc = {"AUC p, Holm-adjusted": format_p(paired.p_auc_adjusted)} if paired.adjusted else {}
    holm_errors = {"errors p, Holm-adjusted": format_p(paired.p_errors_adjusted)} if paired.adjusted else {}
    image_level = f"{format_p(paired.delong.p_value)} / {format_p(paired.mcnemar.p_value)}"
    if compact:
        return {
            "run A": paired.name_a,
            "run B": paired.name_b,
            "images / patients": f"{paired.n_images:,} / {paired.n_patients:,}",
            "AUC A / B": f"{d.auc_a:.3f} / {d.auc_b:.3f}",
            f"AUC A − B ({label}, by patient)": f"{d.difference:+.3f} ({_difference_ci(d)})",
            "AUC p (by patient)": format_p(d.p_value),
            **holm_auc,
            "thresholds A / B": f"{paired.threshold_a:.3f} / {paired.threshold_b:.3f}",
            "errors A / B": f"{paired.errors_a} / {paired.errors_b}",
            "b / c": f"{m.b} / {m.c}",
            "errors p (by patient)": format_p(m.p_value),
            **holm_errors,
            "errors test": method,
            "image-level p, DeLong / McNemar (images as independent)": image_level,
        }
    return {
        "run A": paired.name_a,
        "run B": paired.name_b,
        "images": paired.n_images,
        "patients": paired.n_patients,
        "AUC A": d.auc_a,
        "AUC B": d.auc_b,
        "AUC difference (A − B)": d.difference,
        f"difference {label} (by patient)": _difference_ci(d),
        "AUC p (by patient)": format_p(d.p_value),
        **holm_auc,
        "threshold A": paired.threshold_a,
        "threshold B": paired.threshold_b,
        "errors A": paired.errors_a,
        "errors B": paired.errors_b,
        "b (A right, B wrong)": m.b,
        "c (A wrong, B right)": m.c,
        "errors p (by patient)": format_p(m.p_value),
        **holm_errors,
        "errors test": method,
        "DeLong p (image-level)": format_p(paired.delong.p_value),
        "McNemar p (image-level)": format_p(paired.mcnemar.p_value),
    }


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


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.1f} %)" if total else "–"


def errors_by_kind_wide(evidence: list[RunEvidence]) -> pd.DataFrame:
    """Errors per kind and class, one column per run: "wrong/of (rate)".

    Rows: normal images (false alarms), each pneumonia kind (missed cases), all pneumonia images
    (the class), and all images.
    """
    columns: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for ev in evidence:
        if ev.errors.empty:
            continue
        cells: dict[str, str] = {}
        for row in ev.errors.itertuples():
            if row.kind == "all":
                continue
            what = "false alarms" if row.n_negative and not row.n_positive else "missed"
            label = f"{row.kind} ({what})"
            cells[label] = _share(int(row.errors), int(row.n))
            if label not in order:
                order.append(label)
        total = ev.errors[ev.errors["kind"] == "all"].iloc[0]
        cells["pneumonia, all kinds (missed)"] = _share(int(total["false_negatives"]), int(total["n_positive"]))
        cells["all images"] = _share(int(total["errors"]), int(total["n"]))
        columns[ev.name] = cells
    order.sort(key=lambda label: (not label.startswith("normal"), label))
    order += ["pneumonia, all kinds (missed)", "all images"]
    table = pd.DataFrame({"images": order})
    for name, cells in columns.items():
        table[name] = [cells.get(label, "–") for label in order]
    return table

