"""Stress test on validation: how a run's decisions change when its images change as they do between sites.

An external test split (another period, other machines) differs from the training images in how the
chest is framed (tighter or wider, inside a black border), how sharp the image is, its contrast,
exposure and gamma, its compression, resolution and noise, and how straight the child lies. A model
that leans on such things fails there while scoring 0.99 on a validation split carved from training.
This test needs no external data: it changes the *validation* images in those ways, one at a time
(`core.data.acquisition`), and measures sensitivity and specificity at the run's own threshold. A large drop warns before any test image is seen, and a
recipe can be compared on it without looking at test.

The same changed images also choose the decision threshold (`robust_threshold`): Youden's J on
the validation images as they are *and* as changed, pooled. A model's ranking survives these
changes (validation AUC stays about 0.99) while its probabilities drift upward, so the plain
Youden threshold, fitted to the images as they are, calls many healthy X-rays from another site
pneumonia; the pooled one sits where the changed images are separated too, but only where the
unchanged images keep their sensitivity and specificity within `CLEAN_MARGIN` of their own
Youden point (`clean_range`). Each run keeps the
changed images' probabilities (`val_stress_predictions.csv`, `scores_table`) so that an ensemble
can choose its own threshold the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from core.data import acquisition
from core.data.acquisition import contrast, zoom_in
from core.evidence import statistics

NOTE = (
    "Each run's validation images changed one way at a time, as X-rays from another site differ (framing, sharpness, "
    "contrast, exposure, gamma, JPEG compression, resolution, rotation, noise), scored at the run's saved threshold (chosen on validation: on these changed images and the originals "
    "pooled, for runs saved since the stress test chooses it). Large drops warn, before any test image is seen, that the "
    "model leans on how images look rather than on the lungs."
)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "framed 15 % tighter": lambda p: zoom_in(p, 0.15),
    "framed 30 % tighter": lambda p: zoom_in(p, 0.30),
    "sharpened": acquisition.sharpen,
    "blurred (σ 1 px)": lambda p: acquisition.blur(p, 1.0),
    "contrast −30 %": lambda p: contrast(p, 0.7),
    "contrast +30 %": lambda p: contrast(p, 1.3),
    # Acquisition differences (issue 25): each at the strongest level of a site-sized range (JPEG
    # quality >= 10, gamma 0.6-1.6, exposure x0.7-x1.3, rotation <= 10 deg, resolution down <= 4x, wider
    # framing <= 30 %, noise sigma <= 12) at which the unusual-image flag (core.inference.ood) still lets
    # at least half the validation images through: the changes a model must survive unwarned
    # (docs/measurements.md, "Acquisition shifts").
    "JPEG quality 10": lambda p: acquisition.jpeg(p, 10),
    "gamma 1.6 (darker)": lambda p: acquisition.gamma(p, 1.6),
    "gamma 0.6 (lighter)": lambda p: acquisition.gamma(p, 0.6),
    "exposure ×0.7 (darker)": lambda p: acquisition.exposure(p, 0.7),
    "exposure ×1.2 (brighter)": lambda p: acquisition.exposure(p, 1.2),
    "rotated ±10°": lambda p: acquisition.rotate(p, 10),
    "resolution ÷4 and back": lambda p: acquisition.down_up(p, 4),
    "framed 15 % wider (black border)": lambda p: acquisition.zoom_out(p, 0.15),
    "noise σ 12": lambda p: acquisition.noise(p, 12),
}


AS_IS = "as is"
# How far (in sensitivity or specificity, each) the pooled threshold may move the unchanged validation
# images from their own Youden point. The real runs' pooled thresholds cost them at most 3.1 points
# (docs/measurements.md); a weak model's could cost 60, calling nearly every image normal.
CLEAN_MARGIN = 0.05
ROBUST_THRESHOLD_RULE = (
    "Youden's J on the validation split pooled with its stressed copies (framed tighter and wider, sharpened, blurred, "
    "contrast, exposure and gamma changed, JPEG-compressed, lower resolution, rotated, noisy), among "
    f"the thresholds that keep the unchanged validation images' "
    f"sensitivity and specificity each within {100 * CLEAN_MARGIN:g} points of their own Youden point"
)


def stressed_scores(score: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> dict[str, np.ndarray]:
    """`score` (pixels -> probabilities) of the images under each perturbation, by condition."""
    return {name: np.asarray(score(change(pixels)), dtype=float) for name, change in PERTURBATIONS.items()}


def clean_point(y_true: np.ndarray, as_is: np.ndarray) -> dict[str, float]:
    """The unchanged validation images' own operating point: Youden's J on them alone
    (`statistics.youden_threshold`), with its sensitivity and specificity."""
    threshold = float(statistics.youden_threshold(y_true, as_is))
    metrics = statistics.binary_metrics(y_true, as_is, threshold)
    return {"threshold": threshold, "sensitivity": float(metrics["sensitivity"]), "specificity": float(metrics["specificity"])}


def clean_range(y_true: np.ndarray, as_is: np.ndarray, margin: float = CLEAN_MARGIN) -> tuple[float, float]:
    """The thresholds (low, high) at which the unchanged images keep sensitivity and specificity
    each at least their `clean_point` value minus `margin`.

    Sensitivity falls and specificity rises with the threshold, so the set is one range: at most
    `high` (the k-th highest positive score, k = the positives needed) and above `low` (the j-th
    lowest negative score, j = the negatives needed; `low` is the next float above it). It holds
    the clean Youden threshold, so it is never empty.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(as_is, dtype=float)
    point = clean_point(y, s)
    pos, neg = np.sort(s[y == 1])[::-1], np.sort(s[y == 0])
    eps = 1e-9  # 9/10 meets a floor of 0.9 despite rounding
    k = math.ceil(max(point["sensitivity"] - margin, 0.0) * pos.size - eps)
    j = math.ceil(max(point["specificity"] - margin, 0.0) * neg.size - eps)
    high = float(pos[k - 1]) if k > 0 else math.inf
    low = float(np.nextafter(neg[j - 1], math.inf)) if j > 0 else -math.inf
    return low, high


def saved_clean_point(metrics: Mapping | None, validation: pd.DataFrame | None) -> dict[str, float] | None:
    """A run's `clean_point`: from metrics.json (`clean_threshold`, `clean_val`), else, for runs saved
    before it was kept, from its validation predictions; None when neither gives one."""
    metrics = metrics or {}
    clean = metrics.get("clean_val")
    if isinstance(clean, Mapping) and "clean_threshold" in metrics:
        return {"threshold": float(metrics["clean_threshold"]), "sensitivity": float(clean["sensitivity"]),
                "specificity": float(clean["specificity"])}
    if validation is None or not {"y_true", "probability"} <= set(validation.columns):
        return None
    try:
        return clean_point(validation["y_true"].to_numpy(), validation["probability"].to_numpy())
    except ValueError:  # one class only: no Youden point
        return None


def clean_shortfall(at_threshold: Mapping[str, float], clean: Mapping[str, float]) -> float:
    """How much the unchanged validation images lose at a threshold against their own Youden point:
    the larger drop of sensitivity or specificity (0 or less when neither drops). Above
    `CLEAN_MARGIN` the threshold gives them up (runs saved before `robust_threshold` kept them)."""
    return max(clean["sensitivity"] - at_threshold["sensitivity"], clean["specificity"] - at_threshold["specificity"])


def robust_threshold(y_true: np.ndarray, as_is: np.ndarray, stressed: Mapping[str, np.ndarray]) -> float:
    """Youden's J over the images as they are and under every perturbation, pooled (each image and
    condition counts once), among the thresholds of `clean_range`: a threshold that still separates
    the classes when images change as they do between sites, and never gives up the unchanged images.

    Pooled, the changed copies outweigh the originals (fifteen to one). For a strong model that is the
    point (its changed healthy X-rays drift up, and the threshold follows at a cost of a few points
    on the originals); for a weak one with probabilities near 0.5 it could pull the threshold to
    where nearly every unchanged image is called normal. The range keeps the unchanged images'
    sensitivity and specificity each within `CLEAN_MARGIN` of their own Youden point. Needs both
    classes, like `statistics.youden_threshold`."""
    y = np.asarray(y_true).astype(int)
    scores = [np.asarray(as_is, dtype=float), *(np.asarray(stressed[name], dtype=float) for name in stressed)]
    within = clean_range(y, scores[0])
    return float(statistics.youden_threshold(np.tile(y, len(scores)), np.concatenate(scores), within=within))


def stress_rows(y_true: np.ndarray, as_is: np.ndarray, stressed: Mapping[str, np.ndarray], threshold: float) -> list[dict]:
    """Sensitivity, specificity and AUC at `threshold` on the images as they are and under each
    perturbation, with the change from as-is.

    One row per condition: condition, sensitivity, specificity, auc, sensitivity_change,
    specificity_change. The first row is the images as they are.
    """
    y = np.asarray(y_true).astype(int)
    rows = []
    for name, probabilities in [(AS_IS, as_is), *stressed.items()]:
        metrics = statistics.binary_metrics(y, np.asarray(probabilities, dtype=float), threshold)
        rows.append({"condition": name, "sensitivity": float(metrics["sensitivity"]), "specificity": float(metrics["specificity"]),
                     "auc": float(metrics["auc"])})
    for row in rows:
        row["sensitivity_change"] = row["sensitivity"] - rows[0]["sensitivity"]
        row["specificity_change"] = row["specificity"] - rows[0]["specificity"]
    return rows


def scores_table(paths: Sequence[str], stressed: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """What `val_stress_predictions.csv` holds: one row per validation image, a probability column per condition."""
    return pd.DataFrame({"path": list(paths), **{name: np.asarray(v, dtype=float) for name, v in stressed.items()}})


def saved_scores(table: pd.DataFrame | None, paths: Sequence[str]) -> dict[str, np.ndarray] | None:
    """A run's saved stressed probabilities (`scores_table`) in the order of `paths`, by condition;
    None when the run kept none (saved before it, or `--no-stress-test`) or they miss an image."""
    if table is None or "path" not in table or not table["path"].is_unique:
        return None
    indexed = table.set_index("path")
    if not set(paths) <= set(indexed.index):
        return None
    conditions = [name for name in PERTURBATIONS if name in indexed.columns]
    if not conditions:
        return None
    return {name: indexed.loc[list(paths), name].to_numpy(dtype=float) for name in conditions}


def worst(rows: list[dict]) -> dict | None:
    """The condition that costs the most specificity or sensitivity (None for an empty test)."""
    changed = rows[1:]
    if not changed:
        return None
    return min(changed, key=lambda r: min(r["specificity_change"], r["sensitivity_change"]))


def stress_table(by_run: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per run and condition: sensitivity, specificity and their change from the images as they are."""
    rows = [
        {"run": name, "condition": r["condition"], "sensitivity": r["sensitivity"], "specificity": r["specificity"],
         "sensitivity change": r["sensitivity_change"], "specificity change": r["specificity_change"]}
        for name, results in by_run.items() for r in results
    ]
    return pd.DataFrame(rows, columns=["run", "condition", "sensitivity", "specificity", "sensitivity change", "specificity change"])


def saved_results(runs) -> dict[str, list[dict]]:
    """The stress tests saved with runs (`metrics.json`'s `stress`); runs saved before it have none."""
    return {run.name: run.metrics["stress"] for run in runs if (run.metrics or {}).get("stress")}
