"""Statistical evidence for comparing binary classifiers.

This module owns the numbers behind every "model A is better than model B"
claim the tool makes: threshold metrics, bootstrap and DeLong confidence
intervals, paired significance tests (DeLong for AUC, McNemar for
accuracy, each also clustered by patient), Holm's adjustment for several
comparisons, precision-recall, calibration, clinically framed operating
points and per-kind error breakdowns.

Conventions shared by every function:

* ``y_true`` holds 0/1 labels, 1 = pneumonia = the positive class.
* ``y_score`` is the predicted probability of the positive class.
* ``threshold``: an image is predicted positive when ``score >= threshold``.
* ``groups`` (optional) is a patient id per image; images of one patient are
  not independent, so resampling is done per patient when it is given.

Everything is pure (no I/O, no global state) and returns plain Python or
NumPy values, or small frozen dataclasses whose ``to_dict()`` gives values
that ``json.dumps(..., allow_nan=False)`` accepts (undefined numbers become
``None``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from core.files import json_safe

__all__ = [
    "BOOTSTRAP_METRICS",
    "ClusteredMcNemarResult",
    "DeLongCI",
    "DeLongResult",
    "Interval",
    "McNemarResult",
    "OperatingPoint",
    "PairedPredictions",
    "align_paired",
    "binary_metrics",
    "bootstrap_ci",
    "brier_score",
    "check_paired",
    "clustered_delong_test",
    "clustered_mcnemar_test",
    "delong_ci",
    "delong_test",
    "error_breakdown",
    "expected_calibration_error",
    "holm_adjust",
    "mcnemar_test",
    "metric_intervals",
    "newcombe_auc_interval",
    "operating_points",
    "precision_recall",
    "reliability_curve",
    "wilson_cluster_ci",
    "youden_threshold",
]

#: Metrics for which :func:`bootstrap_ci` and :func:`metric_intervals` return an interval;
#: every list of interval metrics (evidence, export, pages) takes it from here.
BOOTSTRAP_METRICS: tuple[str, ...] = ("auc", "sensitivity", "specificity", "accuracy")

# McNemar switches from the exact test to a chi-square once there are this
# many discordant independent units (images for mcnemar_test, patients for
# clustered_mcnemar_test); below it the chi-square approximation is poor.
_MCNEMAR_EXACT_BELOW = 25

# Upper bound on the size of the (resamples x images) weight matrix built at
# once by the bootstrap, so memory stays small for large test sets.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


class _DictMixin:
    """``to_dict()`` for the frozen result dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-serialisable values (NaN -> None)."""
        return json_safe(asdict(self))


# --------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------


def _labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    """Return labels/predictions as a 1-D int array, insisting on 0/1 values."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 (normal) and 1 (pneumonia)")
    return y.astype(np.int64)


def _scores(y_score: Any, n: int, name: str = "y_score") -> np.ndarray:
    """Return a score vector as 1-D float, checking length and finiteness."""
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.size != n:
        raise ValueError(f"{name} has {s.size} values but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def _probabilities(y_score: Any, n: int) -> np.ndarray:
    """Scores that must be probabilities (calibration only makes sense then)."""
    s = _scores(y_score, n)
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("y_score must be probabilities in [0, 1] for calibration")
    return s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    """AUC-type quantities are undefined unless both classes are present."""
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"{what} needs both classes in y_true; got {n_pos} positive and {y.size - n_pos} negative images"
        )


def _ratio(num: float, den: float) -> float:
    """num / den, or NaN when the denominator is zero (undefined metric)."""
    return float(num) / float(den) if den else math.nan


# --------------------------------------------------------------------------
# 1. Threshold metrics
# --------------------------------------------------------------------------


def binary_metrics(y_true: Any, y_score: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Confusion-matrix metrics at ``threshold`` plus the threshold-free AUC.

    Returns a dict with ``accuracy, auc, sensitivity, specificity, precision,
    npv, f1`` (floats; NaN where the denominator is zero, e.g. precision when
    nothing is predicted positive, and AUC when ``y_true`` has one class) and
    the counts ``tp, fp, tn, fn, n`` (ints).
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    tn = int(np.sum(~pred & ~pos))
    fn = int(np.sum(~pred & pos))

    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    # F1 from counts (2TP / (2TP+FP+FN)) avoids a 0/0 when precision and
    # recall are both zero but defined.
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    n_pos = tp + fn
    auc = float(roc_auc_score(y, s)) if 0 < n_pos < y.size else math.nan

    return {
        "accuracy": _ratio(tp + tn, y.size),
        "auc": auc,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(y.size),
    }


# --------------------------------------------------------------------------
# 2. Bootstrap confidence intervals
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval(_DictMixin):
    """A point estimate with its confidence interval.

    ``method`` says how the interval was made: ``"percentile_bootstrap"``
    (:func:`bootstrap_ci`; ``n_resamples`` is the number of resamples actually
    used, ``n_skipped`` those discarded because a resample lacked one of the
    classes), ``"wilson_design_effect"`` (:func:`wilson_cluster_ci`; no
    resamples, ``n_resamples = 0``) or ``"newcombe_score"``
    (:func:`newcombe_auc_interval`, the AUC where every resample gives the same
    value; ``n_resamples = 0``).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_skipped: int = 0
    method: str = "percentile_bootstrap"


def _tie_bounds(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position in a sorted score vector, first/last index of its tie run."""
    n = sorted_scores.size
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    new_run[1:] = sorted_scores[1:] != sorted_scores[:-1]
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:] - 1, n - 1)
    run_id = np.cumsum(new_run) - 1
    return starts[run_id], ends[run_id]


def _weighted_metrics(weights: np.ndarray, y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics for many resamples at once, each given as a row of image weights.

    A bootstrap resample is fully described by how often each image was drawn,
    so every metric becomes a weighted sum over the original images. That
    turns 1000 resamples into a handful of matrix operations instead of 1000
    calls to scikit-learn. AUC is the weighted Mann-Whitney statistic with
    ties counted as 1/2, computed from cumulative negative weight along the
    score order in O(resamples x images).
    """
    weights = np.asarray(weights, dtype=np.float64)
    pos = y == 1
    pred = s >= threshold

    w_pos = weights[:, pos].sum(axis=1)
    w_neg = weights[:, ~pos].sum(axis=1)
    tp = weights @ (pos & pred).astype(np.float64)
    tn = weights @ (~pos & ~pred).astype(np.float64)

    order = np.argsort(s, kind="mergesort")
    first, last = _tie_bounds(s[order])
    w_sorted = weights[:, order]
    neg_w = w_sorted * (~pos[order])
    cum_neg = np.cumsum(neg_w, axis=1)
    neg_below = cum_neg[:, first] - neg_w[:, first]  # strictly lower scores
    neg_tied = cum_neg[:, last] - neg_below  # negatives with an equal score
    pos_w = w_sorted * pos[order]
    wins = np.sum(pos_w * (neg_below + 0.5 * neg_tied), axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "auc": wins / (w_pos * w_neg),
            "sensitivity": tp / w_pos,
            "specificity": tn / w_neg,
            "accuracy": (tp + tn) / (w_pos + w_neg),
        }


def resample_weights(n_images: int, groups: Any = None, n_resamples: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap's resamples as rows of image weights, a chunk of rows at a time.

    With ``groups`` (a patient id per image) whole patients are drawn with replacement and each
    image weighs as often as its patient was drawn; without, images are drawn. Every interval
    made by patient bootstrap here (:func:`bootstrap_ci`, ``core.evidence.multiclass``,
    ``core.evidence.faithfulness.mean_interval``) draws through this, so the same ``seed`` draws
    the same patients.
    """
    if groups is None:
        codes = np.arange(n_images)
    else:
        g = np.asarray(groups)
        if g.shape != (n_images,):
            raise ValueError(f"groups has {g.size} values but y_true has {n_images}")
        _, codes = np.unique(g, return_inverse=True)
        codes = codes.ravel()
    n_units = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // max(n_images, n_units))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_units, size=(b, n_units))
        # counts[r, u] = how often unit u was drawn in resample r.
        counts = np.bincount((draws + n_units * np.arange(b)[:, None]).ravel(), minlength=b * n_units).reshape(b, n_units)
        yield counts[:, codes]  # each image inherits its patient's count


def weighted_auc(weights: np.ndarray, y_true: Any, y_score: Any) -> np.ndarray:
    """The AUC of each resample (a row of image weights), ties counting 1/2; NaN where a class is absent."""
    y = _labels(y_true)
    return _weighted_metrics(np.atleast_2d(weights), y, _scores(y_score, y.size), 0.5)["auc"]


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_skipped_fraction: float = 0.5,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals for AUC, sensitivity, specificity, accuracy.

    With ``groups`` (a patient id per image) whole patients are drawn with
    replacement and every image of a drawn patient is included: images of
    one patient are correlated, and treating them as independent would give
    intervals that are too narrow. Without ``groups`` images are resampled.

    Resamples that contain only one class are skipped (AUC, sensitivity or
    specificity would be undefined) and counted in ``Interval.n_skipped``.
    If more than ``max_skipped_fraction`` of them are skipped the data are
    too unbalanced for a meaningful interval and ``ValueError`` is raised.
    The estimate is the metric on the full data; the same resamples are used
    for every metric so the intervals are mutually consistent.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    _require_both_classes(y, "bootstrap_ci")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")

    collected: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_METRICS}
    n_skipped = 0
    for weights in resample_weights(y.size, groups, n_resamples, seed):
        b = weights.shape[0]
        values = _weighted_metrics(weights, y, s, threshold)
        w_pos = weights[:, y == 1].sum(axis=1)
        valid = (w_pos > 0) & (w_pos < weights.sum(axis=1))
        n_skipped += int(b - valid.sum())
        for m in BOOTSTRAP_METRICS:
            collected[m].append(values[m][valid])

    if n_skipped > max_skipped_fraction * n_resamples:
        raise ValueError(
            f"bootstrap skipped {n_skipped} of {n_resamples} resamples because "
            "they contained only one class; the test set (or number of patients) "
            "is too small or unbalanced for a bootstrap interval"
        )

    point = binary_metrics(y, s, threshold)
    alpha = 1.0 - confidence
    out: dict[str, Interval] = {}
    for m in BOOTSTRAP_METRICS:
        vals = np.concatenate(collected[m])
        low, high = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[m] = Interval(
            estimate=float(point[m]),
            low=float(low),
            high=float(high),
            confidence=float(confidence),
            n_resamples=int(vals.size),
            n_skipped=n_skipped,
        )
    return out


def wilson_cluster_ci(successes: Any, groups: Any = None, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion, widened by the patients' design effect.

    ``successes`` is a 0/1 (or bool) outcome per image (e.g. "called
    positive" for the positive images: sensitivity); ``groups`` a patient id
    per image. The percentile bootstrap covers badly near 0 % and 100 % (for a
    true sensitivity of 99 % on 180 images about 80 % of the time); Wilson's
    interval holds there, and the design effect keeps patients together:

    * ``p = x / n``; per patient k, x_k successes of n_k images.
    * The cluster (ratio-estimator) variance ``sum_k (x_k - p n_k)^2 / n^2``
      over the binomial ``p (1 - p) / n`` is the design effect ``deff``,
      kept at least 1 (conservative: never narrower than Wilson on images).
      At p = 0 or 1 it cannot be estimated and the effective sample size is
      the number of patients (as if a patient's images were copies).
    * Wilson's interval with ``n_eff = n / deff``: centre
      ``(p + z^2 / 2n_eff) / (1 + z^2 / n_eff)``, half-width
      ``z / (1 + z^2 / n_eff) * sqrt(p (1 - p) / n_eff + z^2 / 4n_eff^2)``.

    With one image per patient (or no ``groups``) this is Wilson's interval;
    with k identical copies of each patient's image it is Wilson's interval on
    the patients. The estimate is NaN (and the interval too) when n = 0.
    """
    x = _labels(np.asarray(successes).astype(np.int64), "successes")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, float(confidence), 0, 0, "wilson_design_effect")
    codes = np.arange(n) if groups is None else _cluster_codes(groups, n)
    x_k = np.bincount(codes, weights=x).astype(np.float64)
    n_k = np.bincount(codes).astype(np.float64)
    n_k, x_k = n_k[n_k > 0], x_k[n_k > 0]
    p = float(x.sum()) / n
    binomial = p * (1.0 - p) / n
    if binomial > 0:
        cluster = float(np.sum((x_k - p * n_k) ** 2)) / n**2
        n_eff = n / max(1.0, cluster / binomial)
    else:
        n_eff = float(n_k.size)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    z2 = z * z
    centre = (p + z2 / (2 * n_eff)) / (1 + z2 / n_eff)
    half = z / (1 + z2 / n_eff) * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff**2))
    return Interval(
        # At p = 0 or 1 the bound is exactly 0 or 1, not a rounding error away from it.
        estimate=p, low=0.0 if p == 0 else max(0.0, centre - half), high=1.0 if p == 1 else min(1.0, centre + half),
        confidence=float(confidence), n_resamples=0, n_skipped=0, method="wilson_design_effect",
    )


def metric_intervals(
    y_true: Any,
    y_score: Any,
    threshold: float = 0.5,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """The intervals the tool reports: AUC by patient bootstrap, proportions by clustered Wilson.

    AUC gets :func:`bootstrap_ci`'s percentile interval (patients resampled);
    sensitivity, specificity and accuracy, proportions that are often near
    100 %, get :func:`wilson_cluster_ci` with the same ``groups``. Raises
    ``ValueError`` like :func:`bootstrap_ci` (one class, too few patients).

    Where every resample gives the same AUC (perfect separation, AUC 1 or 0,
    or one score for all images) the bootstrap interval has zero width, which
    no finite sample justifies: the AUC then gets :func:`newcombe_auc_interval`
    on the patients with a positive and with a negative image (as if a
    patient's images were copies, the convention of :func:`wilson_cluster_ci`
    at 0 % and 100 %).
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    boot = bootstrap_ci(y, s, threshold, groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed)
    g = np.arange(y.size) if groups is None else np.asarray(groups)
    pred = (s >= threshold).astype(np.int64)
    pos = y == 1
    auc = boot["auc"]
    if auc.low == auc.high:
        low, high = newcombe_auc_interval(auc.estimate, len(set(g[pos].tolist())), len(set(g[~pos].tolist())), confidence)
        auc = Interval(auc.estimate, low, high, float(confidence), 0, 0, "newcombe_score")
    return {
        "auc": auc,
        "sensitivity": wilson_cluster_ci(pred[pos], g[pos], confidence),
        "specificity": wilson_cluster_ci(1 - pred[~pos], g[~pos], confidence),
        "accuracy": wilson_cluster_ci((pred == y).astype(np.int64), g, confidence),
    }


# --------------------------------------------------------------------------
# 3. DeLong's test
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeLongResult(_DictMixin):
    """DeLong's test of two correlated AUCs measured on the same images."""

    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float  # standard error of the difference
    z: float
    p_value: float  # two-sided
    ci_low: float  # confidence interval of the difference
    ci_high: float
    confidence: float
    n_positive: int
    n_negative: int
    # Why the test is undefined ("" when it is defined); then se, z, p and the interval are NaN.
    problem: str = ""
    # "delong": every image independent; "clustered_delong": Obuchowski (1997), patients as clusters.
    method: str = "delong"
    n_clusters: int = 0  # independent units: images for "delong", patients for "clustered_delong"

    @property
    def defined(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class DeLongCI(_DictMixin):
    """A single AUC with its DeLong standard error and interval.

    ``method`` is ``"delong"`` (normal-theory interval ``auc +/- z se``) or
    ``"newcombe_score"`` (DeLong's se is 0; bounds from :func:`newcombe_auc_interval`).
    """

    auc: float
    se: float
    low: float
    high: float
    confidence: float
    method: str = "delong"


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first, last = _tie_bounds(xs)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = (first + last) / 2.0 + 1.0
    return ranks


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance matrix (Sun & Xu 2014 fast DeLong).

    ``scores`` has one row per classifier. Placement values come from
    midranks within positives, within negatives and overall, which is
    O(n log n) instead of DeLong's O(m n) pairwise comparisons.
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = _midrank(pos[r])
        ty[r] = _midrank(neg[r])
        tz[r] = _midrank(np.concatenate([pos[r], neg[r]]))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    # v10: for each positive, the fraction of negatives it outscores;
    # v01: for each negative, the fraction of positives that outscore it.
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def _two_sided_p(z: float) -> float:
    return float(2.0 * stats.norm.sf(abs(z)))


def delong_test(y_true: Any, score_a: Any, score_b: Any, confidence: float = 0.95) -> DeLongResult:
    """Compare the AUCs of two classifiers scored on the same images.

    Uses DeLong, DeLong & Clarke-Pearson (1988) with the fast midrank
    algorithm of Sun & Xu (2014). The two AUCs are correlated because they
    share images, which is why an unpaired comparison would be too
    conservative. Every image counts as independent: when patients have
    several images use :func:`clustered_delong_test`.

    The variance needs at least two positive and two negative images. With
    fewer, or when it is zero while the AUCs differ (both classifiers' placement
    values are constant, e.g. perfect separation), there is no basis for a
    p-value: the result is *undefined*, with NaN ``se``, ``z``, ``p_value`` and
    interval and the reason in ``problem``. Identical placements (zero variance,
    equal AUCs) give z = 0, p = 1.
    """
    y = _labels(y_true)
    a = _scores(score_a, y.size, "score_a")
    b = _scores(score_b, y.size, "score_b")
    _require_both_classes(y, "delong_test")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) < 2:
        aucs = np.array([roc_auc_score(y, a), roc_auc_score(y, b)])
        problem = (
            f"the variance needs at least 2 positive and 2 negative images; there are {n_pos} positive and {n_neg} negative"
        )
        return _delong_result(aucs, math.nan, confidence, n_pos, n_neg, problem=problem)
    aucs, cov = _delong_components(y, np.vstack([a, b]))
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return _delong_result(aucs, var, confidence, n_pos, n_neg)


def _delong_result(
    aucs: np.ndarray,
    var: float,
    confidence: float,
    n_pos: int,
    n_neg: int,
    problem: str = "",
    method: str = "delong",
    n_clusters: int | None = None,
) -> DeLongResult:
    """A DeLongResult from the two AUCs and the variance of their difference.

    A NaN variance, or a zero variance with different AUCs, makes the result
    undefined (NaN statistics and ``problem`` set) instead of z = inf, p = 0.
    """
    diff = float(aucs[0] - aucs[1])
    se = z = p = math.nan
    if not problem:
        if not math.isfinite(var):
            problem = "the variance of the AUC difference is undefined"
        else:
            se = math.sqrt(max(var, 0.0))  # guard tiny negative rounding
            if se > 0:
                z = diff / se
                p = _two_sided_p(z)
            elif diff == 0:
                z, p = 0.0, 1.0
            else:
                se = math.nan
                problem = "the variance of the AUC difference is zero although the AUCs differ (constant placements)"
    q = float(stats.norm.ppf(0.5 + confidence / 2.0))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=diff,
        se=se,
        z=float(z),
        p_value=float(p),
        ci_low=diff - q * se,
        ci_high=diff + q * se,
        confidence=float(confidence),
        n_positive=int(n_pos),
        n_negative=int(n_neg),
        problem=problem,
        method=method,
        n_clusters=int(n_pos + n_neg if n_clusters is None else n_clusters),
    )


def newcombe_auc_interval(auc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's score interval of an AUC from ``n_pos`` positive and ``n_neg`` negative units.

    Newcombe (2006), "Confidence intervals for an effect size measure based on
    the Mann-Whitney statistic. Part 2: Asymptotic methods and evaluation",
    Stat Med 25:559-573, method 5: all theta with
    ``|auc - theta| <= z * sqrt(V(theta))``, where V is Hanley & McNeil's (1982)
    variance at theta (Q1 = theta / (2 - theta), Q2 = 2 theta^2 / (1 + theta))
    with both n_pos - 1 and n_neg - 1 replaced by N - 1, N = (n_pos + n_neg) / 2::

        V(theta) = theta (1 - theta) / (n_pos n_neg) * (2N - 1 - 3 (N - 1) / ((2 - theta)(1 + theta)))

    The variance is taken at theta, not at the estimate, so the interval keeps
    a positive width at AUC 1 (perfect separation), where DeLong's and Hanley
    & McNeil's variance at the estimate are 0; like Wilson's interval for a
    proportion it is never wider than [0, 1] and narrows as n grows.
    """
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    big_n = (n_pos + n_neg) / 2.0

    def excess(theta: float, side: float) -> float:
        # (distance beyond the estimate in standard errors at theta) - z; the factor
        # theta (1 - theta) is divided out so that the trivial root at auc = 0 or 1 goes.
        spread = (2 * big_n - 1 - 3 * (big_n - 1) / ((2 - theta) * (1 + theta))) / (n_pos * n_neg)
        return side * (theta - auc) / math.sqrt(theta * (1 - theta)) - z * math.sqrt(spread)

    tiny = 1e-12  # also absorbs rounding: an AUC of 1 - 1e-16 is an AUC of 1
    low = 0.0 if auc <= tiny else float(optimize.brentq(excess, tiny, min(auc, 1 - tiny), args=(-1.0,), xtol=1e-14))
    high = 1.0 if auc >= 1 - tiny else float(optimize.brentq(excess, max(auc, tiny), 1 - tiny, args=(1.0,), xtol=1e-14))
    return low, high


def delong_ci(y_true: Any, score: Any, confidence: float = 0.95) -> DeLongCI:
    """AUC with a normal-theory interval from DeLong's variance estimate.

    The interval is ``auc +/- z * se`` clipped to [0, 1]; it needs no
    resampling, so it is a quick cross-check of :func:`bootstrap_ci`. Where
    DeLong's variance is 0 (perfect separation, AUC 1 or 0, or one score for
    all images) that interval would have zero width whatever the sample size:
    the bounds then come from :func:`newcombe_auc_interval` (``method =
    "newcombe_score"``) while ``se`` stays DeLong's 0.
    """
    y = _labels(y_true)
    s = _scores(score, y.size)
    _require_both_classes(y, "delong_ci")
    n_pos = int(y.sum())
    if min(n_pos, y.size - n_pos) < 2:  # no variance (NaN interval), not a zero-width one
        auc, se = float(roc_auc_score(y, s)), math.nan
    else:
        aucs, cov = _delong_components(y, s[None, :])
        auc = float(aucs[0])
        se = math.sqrt(max(float(cov[0, 0]), 0.0))
    q = float(stats.norm.ppf(0.5 + confidence / 2.0))
    if se == 0:
        low, high = newcombe_auc_interval(auc, n_pos, y.size - n_pos, confidence)
        return DeLongCI(auc=auc, se=se, low=low, high=high, confidence=float(confidence), method="newcombe_score")
    return DeLongCI(
        auc=auc,
        se=se,
        low=max(0.0, auc - q * se),
        high=min(1.0, auc + q * se),
        confidence=float(confidence),
    )


def _cluster_codes(groups: Any, n: int) -> np.ndarray:
    """Integer cluster code per image (0..k-1) from a patient id per image."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != n:
        raise ValueError(f"groups has {g.size} values but y_true has {n}")
    return np.unique(g, return_inverse=True)[1].ravel()


def clustered_delong_test(
    y_true: Any, score_a: Any, score_b: Any, groups: Any, confidence: float = 0.95
) -> DeLongResult:
    """DeLong's paired test of two AUCs with the images of a patient kept together.

    Obuchowski (1997), "Nonparametric analysis of clustered ROC curve data",
    Biometrics 53:567-578. The placement values of DeLong's test are summed
    per patient (cluster i, with m_i positive and n_i negative images):
    V10_i = sum of its positives' placements, V01_i likewise for negatives.
    With M positive and N negative images in all, I10 / I01 patients with at
    least one positive / negative image and I patients::

        S10 = I10 / ((I10 - 1) M) * sum_i (V10_i^A - m_i AUC_A) (V10_i^B - m_i AUC_B)
        S01 = I01 / ((I01 - 1) N) * sum_i (V01_i^A - n_i AUC_A) (V01_i^B - n_i AUC_B)
        S11 = I / (I - 1) * sum_i (V10_i^A - m_i AUC_A) (V01_i^B - n_i AUC_B)
        Cov(AUC_A, AUC_B) = S10 / M + S01 / N + (S11^AB + S11^BA) / (M N)

    With one image per patient this is exactly :func:`delong_test`; with k
    identical copies of every patient's image it equals DeLong's test on the
    patients. The result is undefined (``problem`` set) unless at least two
    patients have a positive and two a negative image.
    """
    y = _labels(y_true)
    a = _scores(score_a, y.size, "score_a")
    b = _scores(score_b, y.size, "score_b")
    _require_both_classes(y, "clustered_delong_test")
    codes = _cluster_codes(groups, y.size)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int(y.size - pos.sum())
    n_clusters = int(codes.max()) + 1
    m_i = np.bincount(codes[pos], minlength=n_clusters).astype(np.float64)
    n_i = np.bincount(codes[~pos], minlength=n_clusters).astype(np.float64)
    i10, i01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    kwargs = {"method": "clustered_delong", "n_clusters": n_clusters}
    if min(i10, i01) < 2:
        aucs = np.array([roc_auc_score(y, a), roc_auc_score(y, b)])
        problem = (
            "the clustered variance needs at least 2 patients with a positive image and 2 with a negative one; "
            f"there are {i10} and {i01}"
        )
        return _delong_result(aucs, math.nan, confidence, n_pos, n_neg, problem=problem, **kwargs)

    scores = np.vstack([a, b])
    aucs, _ = _delong_components(y, scores)
    # Placement values per image (as in _delong_components), summed per patient.
    v10 = np.empty((2, n_pos))
    v01 = np.empty((2, n_neg))
    for r in range(2):
        x, z = scores[r, pos], scores[r, ~pos]
        tz = _midrank(np.concatenate([x, z]))
        v10[r] = (tz[:n_pos] - _midrank(x)) / n_neg
        v01[r] = 1.0 - (tz[n_pos:] - _midrank(z)) / n_pos
    d10 = np.vstack([np.bincount(codes[pos], weights=v10[r], minlength=n_clusters) for r in range(2)])
    d10 -= aucs[:, None] * m_i[None, :]
    d01 = np.vstack([np.bincount(codes[~pos], weights=v01[r], minlength=n_clusters) for r in range(2)])
    d01 -= aucs[:, None] * n_i[None, :]
    s10 = i10 / ((i10 - 1) * n_pos) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * n_neg) * (d01 @ d01.T)
    s11 = n_clusters / (n_clusters - 1) * (d10 @ d01.T)
    cov = s10 / n_pos + s01 / n_neg + (s11 + s11.T) / (n_pos * n_neg)
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return _delong_result(aucs, var, confidence, n_pos, n_neg, **kwargs)


# --------------------------------------------------------------------------
# 4. McNemar's test
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemarResult(_DictMixin):
    """McNemar's test on paired correct/incorrect outcomes.

    ``b``: images A got right and B got wrong; ``c``: A wrong, B right.
    ``method`` is ``"exact"`` (two-sided binomial, ``statistic = min(b, c)``)
    or ``"chi2_cc"`` (chi-square with continuity correction,
    ``statistic = max(|b - c| - 1, 0)^2 / (b + c)``: the correction never
    pushes ``|b - c|`` below zero, so b = c gives p = 1).
    """

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


def mcnemar_test(y_true: Any, pred_a: Any, pred_b: Any) -> McNemarResult:
    """Test whether two classifiers' error rates differ on the same images.

    Only discordant images (one right, one wrong) carry information. With
    fewer than 25 of them the chi-square approximation is unreliable, so the
    exact binomial test is used instead.
    """
    y = _labels(y_true)
    pa = _labels(pred_a, "pred_a")
    pb = _labels(pred_b, "pred_b")
    if not (pa.size == pb.size == y.size):
        raise ValueError(f"lengths differ: y_true {y.size}, pred_a {pa.size}, pred_b {pb.size}")
    right_a = pa == y
    right_b = pb == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    n_disc = b + c
    if n_disc < _MCNEMAR_EXACT_BELOW:
        statistic = float(min(b, c))
        p = 1.0 if n_disc == 0 else float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n_disc, 0.5)))
        method = "exact"
    else:
        statistic = max(abs(b - c) - 1.0, 0.0) ** 2 / n_disc
        p = float(stats.chi2.sf(statistic, df=1))
        method = "chi2_cc"
    return McNemarResult(b=b, c=c, statistic=float(statistic), p_value=p, method=method)


@dataclass(frozen=True)
class ClusteredMcNemarResult(_DictMixin):
    """McNemar's test of paired errors with the images of a patient kept together.

    ``b`` / ``c`` count images as in :class:`McNemarResult`;
    ``n_discordant_patients`` are the patients with b_k != c_k, the only ones
    that carry information, and the count that picks the method:
    ``"exact_sign_flip"`` under 25 of them (exact permutation test of the
    per-patient differences b_k - c_k, ``statistic = b - c``), else
    ``"durkalski"`` (Durkalski et al. 2003 chi-square,
    ``statistic = (b - c)^2 / sum_k (b_k - c_k)^2``, 1 degree of freedom).
    """

    b: int
    c: int
    n_patients: int
    n_discordant_patients: int
    statistic: float
    p_value: float
    method: str


def _sign_flip_p(d: np.ndarray) -> float:
    """Exact two-sided p of the sum of ``d`` under independent random signs of its entries.

    P(|sum_k e_k |d_k|| >= |sum_k d_k|) with e_k = +/-1, each with probability
    1/2; the null distribution is built by convolution over the integer
    support [-sum|d|, sum|d|].
    """
    observed = abs(int(np.sum(d)))
    size = np.abs(d[d != 0]).astype(np.int64)
    if size.size == 0:
        return 1.0
    total = int(size.sum())
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for k in size:
        dist = 0.5 * (np.roll(dist, k) + np.roll(dist, -k))  # never wraps: |sum| <= total
    support = np.abs(np.arange(-total, total + 1))
    return float(min(1.0, dist[support >= observed].sum()))


def clustered_mcnemar_test(y_true: Any, pred_a: Any, pred_b: Any, groups: Any) -> ClusteredMcNemarResult:
    """Test whether two classifiers' error rates differ, patients kept together.

    Per patient k, b_k counts its images A got right and B wrong, c_k the
    reverse. Under the null the patient differences d_k = b_k - c_k are
    symmetric about zero. The independent units are the patients, so the
    method is chosen by the number of discordant patients (d_k != 0), not of
    discordant images: four patients with 7 discordant images each are 4
    units, and no test on them can give p below 2 / 2^4 = 0.125. With fewer
    than 25 discordant patients the exact sign-flip (permutation) test of
    sum d_k over the 2^k sign patterns of those patients is used: for one
    image per patient it is exactly McNemar's exact binomial test. Otherwise Durkalski, Palesch,
    Lipsitz & Rust (2003), "Analysis of clustered matched-pair data", Stat Med
    22:2417-2428: ``X^2 = (sum_k d_k)^2 / sum_k d_k^2`` on 1 degree of
    freedom, which for one image per patient is McNemar's chi-square without
    continuity correction. b = c gives p = 1 in both.
    """
    y = _labels(y_true)
    pa = _labels(pred_a, "pred_a")
    pb = _labels(pred_b, "pred_b")
    if not (pa.size == pb.size == y.size):
        raise ValueError(f"lengths differ: y_true {y.size}, pred_a {pa.size}, pred_b {pb.size}")
    codes = _cluster_codes(groups, y.size)
    n_clusters = int(codes.max()) + 1 if y.size else 0
    right_a, right_b = pa == y, pb == y
    b_img = (right_a & ~right_b).astype(np.int64)
    c_img = (~right_a & right_b).astype(np.int64)
    b, c = int(b_img.sum()), int(c_img.sum())
    d = np.bincount(codes, weights=b_img - c_img, minlength=n_clusters).astype(np.int64)
    n_disc_patients = int(np.sum(d != 0))
    if n_disc_patients < _MCNEMAR_EXACT_BELOW:
        p = _sign_flip_p(d)
        statistic, method = float(b - c), "exact_sign_flip"
    else:
        denominator = float(np.sum(d.astype(np.float64) ** 2))
        statistic = (b - c) ** 2 / denominator if denominator else 0.0
        p = float(stats.chi2.sf(statistic, df=1)) if statistic else 1.0
        method = "durkalski"
    return ClusteredMcNemarResult(
        b=b, c=c, n_patients=n_clusters, n_discordant_patients=n_disc_patients,
        statistic=float(statistic), p_value=p, method=method,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjustment of a family of p-values.

    Sorted ascending, the j-th smallest of m p-values (j = 1..m) becomes
    ``max over i <= j of min(1, (m - i + 1) p_(i))``. Rejecting adjusted p
    below alpha controls the family-wise error rate at alpha. NaN entries
    (undefined tests) stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="mergesort")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in out]


# --------------------------------------------------------------------------
# 5. Pairing runs
# --------------------------------------------------------------------------


def check_paired(ids_a: Sequence[Any], ids_b: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless both runs were evaluated on the same images.

    Paired tests (DeLong, McNemar) are only valid when both classifiers saw
    exactly the same test images; comparing runs from different splits would
    silently mix sampling noise into the comparison.
    """
    set_a, set_b = set(ids_a), set(ids_b)
    only_a, only_b = len(set_a - set_b), len(set_b - set_a)
    if only_a or only_b:
        raise ValueError(
            f"runs were evaluated on different test images: {only_a} only in A, "
            f"{only_b} only in B; pair runs evaluated on the same test split"
        )


@dataclass(frozen=True)
class PairedPredictions(_DictMixin):
    """Two runs' predictions aligned image by image (in run A's row order).

    ``groups`` is a patient (cluster) code per image when both tables have a
    ``patient`` column, else None.
    """

    ids: np.ndarray
    y_true: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    groups: np.ndarray | None = None


def _common_clusters(groups_a: np.ndarray, groups_b: np.ndarray) -> np.ndarray:
    """Finest clustering that keeps together what either labelling keeps together.

    Two runs normally agree on every image's patient; a run saved with an
    older patient key may not (e.g. one patient id for a person's bacterial
    and viral images). Images are linked when they share a patient in A or in
    B, and the connected components are the clusters.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    codes_a = np.unique(groups_a, return_inverse=True)[1].ravel()
    codes_b = np.unique(groups_b, return_inverse=True)[1].ravel()
    n_a = int(codes_a.max()) + 1 if codes_a.size else 0
    n_b = int(codes_b.max()) + 1 if codes_b.size else 0
    # Bipartite graph: A-patients 0..n_a-1, B-patients n_a..n_a+n_b-1, an edge per image.
    graph = coo_matrix((np.ones(codes_a.size), (codes_a, n_a + codes_b)), shape=(n_a + n_b, n_a + n_b))
    _, component = connected_components(graph, directed=False)
    return np.unique(component[codes_a], return_inverse=True)[1].ravel()


_PAIRED_COLUMNS = ("y_true", "probability")


def align_paired(df_a: pd.DataFrame, df_b: pd.DataFrame, key: str = "path") -> PairedPredictions:
    """Align two per-image prediction tables on ``key`` for paired tests.

    Both frames need columns ``key``, ``y_true`` and ``probability``; with a
    ``patient`` column in both, ``groups`` holds the patient clusters (see
    :func:`_common_clusters`). Raises
    ``ValueError`` if a column is missing, an id is duplicated, the id sets
    differ (same message as :func:`check_paired`) or the two runs disagree
    on the label of an image (a sign they used different label files).
    """
    for name, df in (("A", df_a), ("B", df_b)):
        missing = [c for c in (key, *_PAIRED_COLUMNS) if c not in df.columns]
        if missing:
            raise ValueError(f"run {name} predictions lack columns {missing}")
        dup = df[key].duplicated()
        if dup.any():
            raise ValueError(
                f"run {name} has {int(dup.sum())} duplicated {key!r} values; each test image must appear once"
            )
    check_paired(df_a[key].tolist(), df_b[key].tolist())

    b_by_key = df_b.set_index(key).loc[df_a[key]]
    y_a = df_a["y_true"].to_numpy()
    y_b = b_by_key["y_true"].to_numpy()
    mismatch = y_a != y_b
    if mismatch.any():
        raise ValueError(
            f"runs disagree on y_true for {int(mismatch.sum())} images with the "
            f"same {key!r} (e.g. {df_a[key].to_numpy()[mismatch][0]!r}); pair runs "
            "evaluated on the same test split and labels"
        )
    groups = None
    if "patient" in df_a.columns and "patient" in b_by_key.columns:
        groups = _common_clusters(df_a["patient"].astype(str).to_numpy(), b_by_key["patient"].astype(str).to_numpy())
    return PairedPredictions(
        ids=df_a[key].to_numpy(),
        y_true=_labels(y_a),
        score_a=df_a["probability"].to_numpy(dtype=np.float64),
        score_b=b_by_key["probability"].to_numpy(dtype=np.float64),
        groups=groups,
    )


# --------------------------------------------------------------------------
# 6. Precision-recall
# --------------------------------------------------------------------------


def precision_recall(y_true: Any, y_score: Any) -> dict[str, Any]:
    """Precision-recall curve and average precision (scikit-learn).

    Returns ``precision`` and ``recall`` arrays (one longer than
    ``thresholds``, as in scikit-learn) and ``average_precision`` (NaN when
    there are no positives, where it is undefined).
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    if y.sum() == 0:
        return {
            "precision": np.array([]),
            "recall": np.array([]),
            "thresholds": np.array([]),
            "average_precision": math.nan,
        }
    precision, recall, thresholds = precision_recall_curve(y, s)
    return {
        "precision": precision,
        "recall": recall,
        "thresholds": thresholds,
        "average_precision": float(average_precision_score(y, s)),
    }


# --------------------------------------------------------------------------
# 7. Calibration
# --------------------------------------------------------------------------


def _uniform_bins(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per score for [0, 1/k), ..., [(k-1)/k, 1] (1.0 in the last bin)."""
    # arange/k gives correctly rounded edges, so a score of exactly 0.3
    # lands in [0.3, 0.4) as written, unlike linspace's 0.30000000000000004.
    edges = np.arange(n_bins + 1) / n_bins
    return np.digitize(s, edges[1:-1])


def reliability_curve(y_true: Any, y_score: Any, n_bins: int = 10, strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Per-bin mean predicted probability, observed positive fraction and count.

    ``strategy="uniform"`` uses equal-width bins on [0, 1] (1.0 falls in the
    last bin); ``"quantile"`` uses bins with roughly equal counts. Empty bins
    are dropped, so the arrays can be shorter than ``n_bins``.
    """
    y = _labels(y_true)
    s = _probabilities(y_score, y.size)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if strategy == "uniform":
        idx = _uniform_bins(s, n_bins)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1)))
        idx = np.digitize(s, edges[1:-1])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count = np.bincount(idx, minlength=n_bins)
    sum_pred = np.bincount(idx, weights=s, minlength=n_bins)
    sum_true = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    return {
        "mean_predicted": sum_pred[keep] / count[keep],
        "fraction_positive": sum_true[keep] / count[keep],
        "count": count[keep],
    }


def brier_score(y_true: Any, y_score: Any) -> float:
    """Mean squared difference between predicted probability and the 0/1 label."""
    y = _labels(y_true)
    s = _probabilities(y_score, y.size)
    return float(np.mean((s - y) ** 2)) if y.size else math.nan


def expected_calibration_error(y_true: Any, y_score: Any, n_bins: int = 10) -> float:
    """Expected calibration error of the positive-class probability.

    ``ECE = sum_b (n_b / n) * |mean(y_score in b) - mean(y_true in b)|`` over
    ``n_bins`` equal-width bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (for
    the default 10; a score of exactly 1.0 is in the last bin). Empty bins
    contribute nothing. Note this is the binary, positive-class variant: it
    compares the pneumonia probability with the observed pneumonia rate,
    not the "top-label confidence" used for multi-class ECE.
    """
    y = _labels(y_true)
    s = _probabilities(y_score, y.size)
    if y.size == 0:
        return math.nan
    curve = reliability_curve(y, s, n_bins=n_bins, strategy="uniform")
    gaps = np.abs(curve["mean_predicted"] - curve["fraction_positive"])
    return float(np.sum(curve["count"] / y.size * gaps))


# --------------------------------------------------------------------------
# 8. Operating points
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint(_DictMixin):
    """A threshold and the sensitivity/specificity it gives on the data."""

    name: str
    threshold: float
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class _RocCounts:
    """Every distinct threshold, highest first, with its exact confusion counts."""

    threshold: np.ndarray
    tp: np.ndarray  # positives with score >= threshold (ints)
    fp: np.ndarray  # negatives with score >= threshold (ints)
    n_pos: int
    n_neg: int

    @property
    def sensitivity(self) -> np.ndarray:
        return self.tp / self.n_pos

    @property
    def specificity(self) -> np.ndarray:
        return (self.n_neg - self.fp) / self.n_neg


def _roc_counts(y: np.ndarray, s: np.ndarray) -> _RocCounts:
    """All ROC points as exact counts, highest threshold first.

    The thresholds are the distinct scores, as scikit-learn's ``roc_curve``
    with ``drop_intermediate=False`` gives them, preceded by a "nothing
    positive" threshold: scikit-learn's +inf is replaced by the next float
    above the top score, which predicts the same thing but stays a finite,
    JSON-friendly number. It is never clipped to 1.0, where a probability of
    exactly 1.0 would count as positive. Counts stay integers so that ties in
    Youden's J or in a metric are ties, not floating-point noise.
    """
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    run_end = np.r_[ss[1:] != ss[:-1], True]  # last image of each run of equal scores
    tp = np.cumsum(yy)[run_end]
    fp = np.cumsum(1 - yy)[run_end]
    n_pos = int(y.sum())
    return _RocCounts(
        threshold=np.r_[np.nextafter(ss[0], np.inf), ss[run_end]].astype(np.float64),
        tp=np.r_[0, tp].astype(np.int64),
        fp=np.r_[0, fp].astype(np.int64),
        n_pos=n_pos,
        n_neg=int(y.size - n_pos),
    )


def _point(name: str, roc: _RocCounts, i: int) -> OperatingPoint:
    return OperatingPoint(
        name=name,
        threshold=float(roc.threshold[i]),
        sensitivity=float(roc.sensitivity[i]),
        specificity=float(roc.specificity[i]),
    )


def _best_meeting(name: str, target: float, roc: _RocCounts, fix: str) -> OperatingPoint:
    """Among thresholds meeting ``target`` on the fixed metric, maximise the other.

    Ties in the maximised metric go to the threshold with the better fixed
    metric (a tie is never broken towards a dominated point): for
    ``sens@spec`` the higher specificity, for ``spec@sens`` the higher
    sensitivity. Both comparisons use exact counts.
    """
    tn = roc.n_neg - roc.fp
    if fix == "specificity":
        fixed, fixed_count, other_count = roc.specificity, tn, roc.tp
    else:
        fixed, fixed_count, other_count = roc.sensitivity, roc.tp, tn
    # Small tolerance so e.g. 9/10 counts as meeting a 0.9 target despite rounding.
    ok = np.flatnonzero(fixed >= target - 1e-12)
    # lexsort: the last key is the primary one; the last row is the best.
    i = ok[np.lexsort((fixed_count[ok], other_count[ok]))[-1]]
    return _point(name, roc, int(i))


def _youden_index(roc: _RocCounts) -> int:
    """Index of the largest Youden's J, ties to the highest threshold.

    J = tp/P + tn/N - 1 is compared as the integer tp*N - fp*P (J*P*N up to a
    constant), so equal J are found equal whatever the floating-point rounding.
    """
    return int(np.argmax(roc.tp * roc.n_neg - roc.fp * roc.n_pos))


def youden_threshold(y_true: Any, y_score: Any, within: tuple[float, float] | None = None) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Ties (equal J, compared with exact counts) go to the highest threshold
    (the most conservative positive call). With ``within = (low, high)`` only
    the thresholds t with low <= t <= high compete; ``ValueError`` if none of
    the data's thresholds lies there. Needs both classes: raises
    ``ValueError`` saying how many images of each class there are otherwise.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    _require_both_classes(y, "youden_threshold")
    roc = _roc_counts(y, s)
    if within is None:
        return float(roc.threshold[_youden_index(roc)])
    inside = np.flatnonzero((roc.threshold >= within[0]) & (roc.threshold <= within[1]))
    if inside.size == 0:
        raise ValueError(f"no threshold of the data lies within {within}")
    j = roc.tp[inside] * roc.n_neg - roc.fp[inside] * roc.n_pos
    return float(roc.threshold[inside[int(np.argmax(j))]])  # highest first: ties to the highest


def operating_points(y_true: Any, y_score: Any, targets: Sequence[float] = (0.90, 0.95)) -> list[OperatingPoint]:
    """Clinically framed operating points plus the Youden optimum.

    For each target t (default 90% and 95%) returns ``sens@spec{t}`` (the
    best sensitivity among thresholds with specificity >= t; among equal
    sensitivities the best specificity) and ``spec@sens{t}`` (the best
    specificity with sensitivity >= t; among equal specificities the best
    sensitivity), each with the threshold achieving it, then ``youden``.
    Values are measured on the given data, so on a test set they are
    optimistic for that set.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    _require_both_classes(y, "operating_points")
    roc = _roc_counts(y, s)
    points = []
    for t in targets:
        pct = f"{100 * t:g}"
        points.append(_best_meeting(f"sens@spec{pct}", t, roc, "specificity"))
    for t in targets:
        pct = f"{100 * t:g}"
        points.append(_best_meeting(f"spec@sens{pct}", t, roc, "sensitivity"))
    points.append(_point("youden", roc, _youden_index(roc)))
    return points


# --------------------------------------------------------------------------
# 9. Error breakdown
# --------------------------------------------------------------------------


def error_breakdown(df: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Error counts per image kind (e.g. normal / bacteria / virus).

    ``df`` needs columns ``y_true``, ``probability`` and ``kind``. Returns one
    row per kind plus a final ``"all"`` row, with columns ``kind, n, errors,
    error_rate`` and the split by true class: ``n_positive,
    false_negatives, false_negative_rate`` (missed pneumonia) and
    ``n_negative, false_positives, false_positive_rate``. Rates are NaN when
    their denominator is zero.
    """
    missing = [c for c in ("y_true", "probability", "kind") if c not in df.columns]
    if missing:
        raise ValueError(f"error_breakdown needs columns {missing}")
    y = _labels(df["y_true"].to_numpy())
    s = _scores(df["probability"].to_numpy(), y.size, "probability")
    pred = (s >= threshold).astype(np.int64)
    frame = pd.DataFrame(
        {
            "kind": df["kind"].astype(str).to_numpy(),
            "pos": y == 1,
            "neg": y == 0,
            "error": pred != y,
            "fn": (y == 1) & (pred == 0),
            "fp": (y == 0) & (pred == 1),
        }
    )

    def summarise(kind: str, part: pd.DataFrame) -> dict[str, Any]:
        n, n_pos, n_neg = len(part), int(part["pos"].sum()), int(part["neg"].sum())
        errors, fn, fp = int(part["error"].sum()), int(part["fn"].sum()), int(part["fp"].sum())
        return {
            "kind": kind,
            "n": n,
            "errors": errors,
            "error_rate": _ratio(errors, n),
            "n_positive": n_pos,
            "false_negatives": fn,
            "false_negative_rate": _ratio(fn, n_pos),
            "n_negative": n_neg,
            "false_positives": fp,
            "false_positive_rate": _ratio(fp, n_neg),
        }

    rows = [summarise(str(k), part) for k, part in frame.groupby("kind", sort=True)]
    rows.append(summarise("all", frame))
    return pd.DataFrame(rows)
