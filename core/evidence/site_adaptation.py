"""Site adaptation: a run's operating point re-chosen, and optionally recalibrated, on a few labelled site images.

A run's threshold was chosen on its validation split, carved from the training images. At another
site (other machines, another population) the same probabilities can mean something else: the
official test split of the public data set, from another period, already calls many more healthy
children pneumonia. A few labelled images from the site (20-100, NORMAL and PNEUMONIA) are enough
to move the threshold; this module owns how, how sure the result is, and how many images it takes.

Conventions are those of ``core.evidence.statistics``: ``y_true`` is 0/1 (1 = the positive class),
``y_score`` the run's probability of it, an image is positive when ``score >= threshold``, and
``groups`` (optional) names each image's patient. Everything is pure and seeded.

* **Rules** (`RULES`): ``"youden"`` (the default) is Youden's J on the site images, the rule every
  run already uses on its validation split (`statistics.youden_threshold`). ``"sensitivity"`` keeps
  the run's validation sensitivity at the site: among the thresholds whose site sensitivity is at
  least that target, the one with the best specificity (`statistics.operating_points`' spec@sens).
* **Intervals**: Wilson's interval with the patients' design effect (`statistics.wilson_cluster_ci`)
  on the site images at the chosen threshold, although the threshold was chosen on those same
  images. Chosen on validation (sites of 50 images drawn from the 746 validation images of three
  runs, `coverage`): these held the whole split's sensitivity and specificity in 96.8-99.7 % of draws
  each, while intervals made from leave-one-patient-out calls (the threshold re-chosen without each
  patient) held them in 72.5-93.8 % only (docs/measurements.md, "Site adaptation").
* **Calibration** (`CALIBRATIONS`): Platt's ``σ(a·logit(p) + b)`` or temperature ``σ(logit(p) / T)``,
  each fitted by maximum likelihood on the site images with Platt's (1999) smoothed targets
  ``(n₊ + 1) / (n₊ + 2)`` and ``1 / (n₋ + 2)``: with a few well separated images the plain fit
  would run off to a step (a → ∞, T → 0). Both are increasing, so they never change a decision:
  they change the probability shown, and the threshold is also given on that scale.
* **How many images** (`sample_size_curve`): the site's labelled images stand for the site; n of
  them drawn with replacement many times (seeded), the rule chooses a threshold on each draw and
  the sensitivity and specificity it gives are measured on all of them; the median and the 5-95 %
  range per n say how much labelling more images narrows them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from core.evidence import statistics

YOUDEN = "youden"
SENSITIVITY = "sensitivity"
RULES = {
    YOUDEN: "Youden's J on the site images",
    SENSITIVITY: "the best specificity on the site images that keeps the run's validation sensitivity",
}
DEFAULT_RULE = YOUDEN
NO_CALIBRATION = "none"
PLATT = "platt"
TEMPERATURE = "temperature"
CALIBRATIONS = (NO_CALIBRATION, PLATT, TEMPERATURE)
CONFIDENCE = 0.95
# Fewer labelled images than this of either class and the intervals say next to nothing.
MIN_PER_CLASS = 5
CURVE_STEP = 10  # the curve's sizes: 10, 20, ... images
CURVE_DRAWS = 200
CURVE_QUANTILES = (0.05, 0.95)
_LOGIT_CLIP = 1e-7  # saved probabilities have 6 decimals: 0 and 1 occur, and keep their order after clipping
SEED = 0


class SiteError(ValueError):
    """Site images that cannot choose an operating point; the message says what to add or change."""


# --------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------


def _check_site(y: np.ndarray, what: str = "the site images") -> None:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise SiteError(
            f"{what} hold {n_neg} normal and {n_pos} positive images: label at least {MIN_PER_CLASS} of each class "
            "(20-100 images in all; 50 is what docs/measurements.md measured)"
        )


def choose_threshold(y_true: Any, y_score: Any, rule: str = DEFAULT_RULE, target_sensitivity: float | None = None) -> float:
    """The threshold `rule` (a key of `RULES`) chooses on site images; ``"sensitivity"`` needs the target."""
    if rule == YOUDEN:
        return float(statistics.youden_threshold(y_true, y_score))
    if rule == SENSITIVITY:
        if target_sensitivity is None or not 0.0 <= target_sensitivity <= 1.0:
            raise SiteError(f"the sensitivity rule needs the run's validation sensitivity (0 to 1), got {target_sensitivity!r}")
        points = statistics.operating_points(y_true, y_score, targets=(float(target_sensitivity),))
        return float(next(p.threshold for p in points if p.name.startswith("spec@sens")))
    raise SiteError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")


def _rates(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) at `threshold`, NaN where a class is absent (no AUC: cheap in loops)."""
    called = s >= threshold
    pos = y == 1
    sens = float(called[pos].mean()) if pos.any() else math.nan
    spec = float((~called[~pos]).mean()) if (~pos).any() else math.nan
    return sens, spec


# --------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """An increasing map of a run's probability p: ``σ(a·logit(p) + b)``; temperature T is a = 1/T, b = 0."""

    method: str
    a: float
    b: float

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.a if self.method == TEMPERATURE else None

    def apply(self, probability: Any) -> np.ndarray:
        """The calibrated probability of each input probability."""
        return _sigmoid(self.a * _logit(probability) + self.b)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "temperature": self.temperature}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Calibration:
        return cls(str(stored["method"]), float(stored["a"]), float(stored["b"]))


def _logit(p: Any) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def platt_targets(y_true: Any) -> np.ndarray:
    """Platt's smoothed targets: (n₊ + 1) / (n₊ + 2) for each positive image, 1 / (n₋ + 2) for each negative."""
    y = np.asarray(y_true).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _negative_log_likelihood(z: np.ndarray, t: np.ndarray, a: float, b: float) -> float:
    u = a * z + b
    # -[t log σ(u) + (1 - t) log(1 - σ(u))] = log(1 + e^u) - t u, summed
    return float(np.sum(np.logaddexp(0.0, u) - t * u))


def fit_calibration(y_true: Any, y_score: Any, method: str) -> Calibration | None:
    """Platt or temperature scaling fitted on site images (None for ``"none"``); see the module's docstring.

    Raises `SiteError` when the fitted map would decrease (the run ranks this site's positive
    images below its negative ones: no calibration mends that).
    """
    if method == NO_CALIBRATION:
        return None
    if method not in CALIBRATIONS:
        raise SiteError(f"unknown calibration {method!r}: choose one of {', '.join(CALIBRATIONS)}")
    z = _logit(y_score)
    t = platt_targets(y_true)
    if method == PLATT:
        result = optimize.minimize(lambda v: _negative_log_likelihood(z, t, v[0], v[1]), x0=np.array([1.0, 0.0]), method="BFGS")
        a, b = (float(v) for v in result.x)
    else:  # fit log(1/T), so that T stays positive
        result = optimize.minimize_scalar(lambda v: _negative_log_likelihood(z, t, math.exp(v), 0.0), bounds=(-10.0, 10.0), method="bounded")
        a, b = math.exp(float(result.x)), 0.0
    if not a > 0:
        raise SiteError(
            "the run's probabilities rank this site's pneumonia images below its normal ones: a calibration cannot mend "
            "that; check the site folder's labels (NORMAL/ and PNEUMONIA/), or do not use this run here"
        )
    return Calibration(method, a, b)


# --------------------------------------------------------------------------
# One adaptation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteOperatingPoint:
    """A run's operating point chosen on site images, with what it gives there and how sure that is."""

    rule: str
    threshold: float  # on the run's own probability: what decides
    target_sensitivity: float | None  # the "sensitivity" rule's target (the run's validation sensitivity)
    calibration: Calibration | None
    n_images: int
    n_patients: int
    n_positive: int
    metrics: dict[str, float | int]  # statistics.binary_metrics at `threshold` on the site images
    intervals: dict[str, statistics.Interval]  # sensitivity, specificity, accuracy (Wilson, design effect)
    run_threshold: float  # the run's own (validation-chosen) threshold ...
    at_run_threshold: dict[str, statistics.Interval]  # ... and what it gives on the site images
    brier: float  # on the site images, before calibration
    brier_calibrated: float | None  # after (fitted on the same images: optimistic)
    confidence: float = CONFIDENCE

    @property
    def calibrated_threshold(self) -> float | None:
        """`threshold` on the calibrated scale (the same decision), or None without calibration."""
        return None if self.calibration is None else float(self.calibration.apply(self.threshold))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN -> None), as saved beside the run."""
        from core.files import json_safe

        return json_safe({
            "rule": self.rule, "rule_text": RULES[self.rule], "threshold": self.threshold,
            "target_sensitivity": self.target_sensitivity,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "calibrated_threshold": self.calibrated_threshold,
            "n_images": self.n_images, "n_patients": self.n_patients, "n_positive": self.n_positive,
            "metrics": self.metrics, "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "run_threshold": self.run_threshold,
            "at_run_threshold": {k: v.to_dict() for k, v in self.at_run_threshold.items()},
            "brier": self.brier, "brier_calibrated": self.brier_calibrated, "confidence": self.confidence,
        })


def proportion_intervals(y_true: Any, y_score: Any, threshold: float, groups: Any = None,
                         confidence: float = CONFIDENCE) -> dict[str, statistics.Interval]:
    """Sensitivity, specificity and accuracy at `threshold`, each with Wilson's interval and the patients' design effect."""
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.arange(y.size) if groups is None else np.asarray(groups)
    called = (s >= threshold).astype(np.int64)
    pos = y == 1
    return {
        "sensitivity": statistics.wilson_cluster_ci(called[pos], g[pos], confidence),
        "specificity": statistics.wilson_cluster_ci(1 - called[~pos], g[~pos], confidence),
        "accuracy": statistics.wilson_cluster_ci((called == y).astype(np.int64), g, confidence),
    }


def adapt(
    y_true: Any, y_score: Any, run_threshold: float, groups: Any = None, rule: str = DEFAULT_RULE,
    calibration: str = NO_CALIBRATION, target_sensitivity: float | None = None, confidence: float = CONFIDENCE,
) -> SiteOperatingPoint:
    """The operating point `rule` chooses on the site images (labels, the run's probabilities, patients).

    `SiteError` when a class has fewer than `MIN_PER_CLASS` images, or for an unknown rule or calibration.
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape:
        raise SiteError(f"{y.size} labels but {s.size} probabilities")
    _check_site(y.astype(np.int64))
    y = y.astype(np.int64)
    threshold = choose_threshold(y, s, rule, target_sensitivity)
    fitted = fit_calibration(y, s, calibration)
    g = np.arange(y.size) if groups is None else np.asarray(groups).astype(str)
    return SiteOperatingPoint(
        rule=rule, threshold=threshold, target_sensitivity=None if rule != SENSITIVITY else float(target_sensitivity),
        calibration=fitted, n_images=int(y.size), n_patients=int(len(set(g.tolist()))), n_positive=int(y.sum()),
        metrics=statistics.binary_metrics(y, s, threshold),
        intervals=proportion_intervals(y, s, threshold, g, confidence),
        run_threshold=float(run_threshold), at_run_threshold=proportion_intervals(y, s, run_threshold, g, confidence),
        brier=statistics.brier_score(y, s),
        brier_calibrated=None if fitted is None else statistics.brier_score(y, fitted.apply(s)),
        confidence=float(confidence),
    )


# --------------------------------------------------------------------------
# How many images
# --------------------------------------------------------------------------


def curve_sizes(n_images: int, step: int = CURVE_STEP) -> list[int]:
    """The numbers of site images the curve tries: step, 2·step, ... up to the site's own number."""
    return list(range(step, n_images + 1, step))


def sample_size_curve(
    y_true: Any, y_score: Any, sizes: Sequence[int] | None = None, rule: str = DEFAULT_RULE,
    target_sensitivity: float | None = None, n_draws: int = CURVE_DRAWS, seed: int = SEED,
) -> pd.DataFrame:
    """How the adapted point's sensitivity and specificity vary with the number of site images.

    The site's labelled images stand for the site (the bootstrap's principle): for each n of
    `sizes` (default `curve_sizes`), `n_draws` draws of n of them with replacement (seeded; draws
    with one class only are skipped), the rule chooses a threshold on each draw, and the
    sensitivity and specificity it gives are measured on all the site's images. The spread is then
    the threshold's own, from having n images to choose it on; measured instead on the images not
    drawn, it would also hold the noise of counting on a remainder that shrinks as n grows. One row
    per n and metric: n, metric, median, low, high (the 5 % and 95 % points), draws (used), skipped.
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = []
    for n in curve_sizes(y.size) if sizes is None else sizes:
        if n < 2:
            raise SiteError(f"the curve's sizes must be at least 2 images, got {n}")
        values: dict[str, list[float]] = {"sensitivity": [], "specificity": []}
        skipped = 0
        for _ in range(n_draws):
            chosen = rng.integers(0, y.size, size=int(n))
            if y[chosen].min() == y[chosen].max():
                skipped += 1
                continue
            sens, spec = _rates(y, s, choose_threshold(y[chosen], s[chosen], rule, target_sensitivity))
            values["sensitivity"].append(sens)
            values["specificity"].append(spec)
        for metric, found in values.items():
            v = np.asarray(found, dtype=np.float64)
            low, median, high = np.quantile(v, [CURVE_QUANTILES[0], 0.5, CURVE_QUANTILES[1]]) if v.size else (math.nan,) * 3
            rows.append({"n": int(n), "metric": metric, "median": float(median), "low": float(low), "high": float(high),
                         "draws": int(v.size), "skipped": int(skipped)})
    return pd.DataFrame(rows, columns=["n", "metric", "median", "low", "high", "draws", "skipped"])


def coverage(
    y_true: Any, y_score: Any, groups: Any = None, n_site: int = 50, rule: str = DEFAULT_RULE,
    target_sensitivity: float | None = None, n_draws: int = 1000, seed: int = SEED, confidence: float = CONFIDENCE,
) -> dict[str, float | int]:
    """How often the intervals stated on `n_site` labelled images hold the whole split's figures.

    A whole labelled split plays the site: `n_draws` times (seeded), `n_site` of its images are
    drawn as the labelled ones (draws with fewer than `MIN_PER_CLASS` of a class skipped, as
    `adapt` refuses them), the rule chooses the threshold on them and states the intervals of
    `proportion_intervals`; the sensitivity and specificity that threshold gives on the whole split
    (``full``) and on its patients not drawn (``rest``) are checked against them. Returns the share
    of draws where each lies inside (``<reference>_<metric>`` and ``<reference>_both``), the median
    interval widths, and the draws used and skipped.
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.arange(y.size).astype(str) if groups is None else np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {f"{ref}_{m}": [] for ref in ("full", "rest") for m in ("sensitivity", "specificity", "both")}
    widths: dict[str, list[float]] = {"sensitivity": [], "specificity": []}
    skipped = 0
    for _ in range(n_draws):
        chosen = rng.choice(y.size, size=n_site, replace=False)
        n_pos = int(y[chosen].sum())
        if min(n_pos, n_site - n_pos) < MIN_PER_CLASS:
            skipped += 1
            continue
        threshold = choose_threshold(y[chosen], s[chosen], rule, target_sensitivity)
        stated = proportion_intervals(y[chosen], s[chosen], threshold, g[chosen], confidence)
        rest = ~np.isin(g, g[chosen])
        for ref, (sens, spec) in (("full", _rates(y, s, threshold)), ("rest", _rates(y[rest], s[rest], threshold))):
            inside = {m: stated[m].low <= v <= stated[m].high for m, v in (("sensitivity", sens), ("specificity", spec))}
            hits[f"{ref}_sensitivity"].append(inside["sensitivity"])
            hits[f"{ref}_specificity"].append(inside["specificity"])
            hits[f"{ref}_both"].append(inside["sensitivity"] and inside["specificity"])
        for m in widths:
            widths[m].append(stated[m].high - stated[m].low)
    out: dict[str, float | int] = {key: float(np.mean(v)) if v else math.nan for key, v in hits.items()}
    out.update({f"width_{m}": float(np.median(v)) if v else math.nan for m, v in widths.items()})
    out.update({"draws": n_draws - skipped, "skipped": skipped})
    return out
