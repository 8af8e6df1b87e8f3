"""Stress test on validation: how a run's decisions change when its images change as they do between sites.

An external test split (another period, other machines) differs from the training images in how the
chest is framed, how sharp the image is and its contrast. A model that leans on such things fails
there while scoring 0.99 on a validation split carved from training. This test needs no external
data: it changes the *validation* images in those ways, one at a time, and measures sensitivity and
specificity at the run's own threshold. A large drop warns before any test image is seen, and a
recipe can be compared on it without looking at test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from core import statistics

NOTE = (
    "Each run's validation images changed one way at a time, as X-rays from another site differ (framing, sharpness, "
    "contrast), scored at the run's saved threshold (chosen on validation). Large drops warn, before any test image is "
    "seen, that the model leans on how images look rather than on the lungs."
)


def _per_image(pixels: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        out[i, ..., 0] = np.asarray(change(Image.fromarray(image[..., 0])), dtype=np.uint8)
    return out


def zoom_in(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """Show the central (1 - fraction) of each side, enlarged back: a tighter framing of the chest."""
    size = pixels.shape[1]
    margin = round(size * fraction / 2)

    def crop(image: Image.Image) -> Image.Image:
        return image.crop((margin, margin, size - margin, size - margin)).resize((size, size), Image.Resampling.BILINEAR)

    return _per_image(pixels, crop)


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's contrast around its own mean."""
    x = pixels.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(np.rint(mean + (x - mean) * factor), 0, 255).astype(np.uint8)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "framed 15 % tighter": lambda p: zoom_in(p, 0.15),
    "framed 30 % tighter": lambda p: zoom_in(p, 0.30),
    "sharpened": lambda p: _per_image(p, lambda im: im.filter(ImageFilter.SHARPEN)),
    "blurred (σ 1 px)": lambda p: _per_image(p, lambda im: im.filter(ImageFilter.GaussianBlur(1.0))),
    "contrast −30 %": lambda p: contrast(p, 0.7),
    "contrast +30 %": lambda p: contrast(p, 1.3),
}


def stress_test(score: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, y_true: np.ndarray, threshold: float) -> list[dict]:
    """Sensitivity and specificity of `score` (pixels -> probabilities) at `threshold`, on the
    images as they are and under each perturbation, with the change from as-is.

    One row per condition: condition, sensitivity, specificity, auc, sensitivity_change,
    specificity_change. The first row is the images as they are.
    """
    y = np.asarray(y_true).astype(int)
    rows = []
    for name, change in [("as is", None), *PERTURBATIONS.items()]:
        probabilities = np.asarray(score(pixels if change is None else change(pixels)), dtype=float)
        metrics = statistics.binary_metrics(y, probabilities, threshold)
        rows.append({"condition": name, "sensitivity": float(metrics["sensitivity"]), "specificity": float(metrics["specificity"]),
                     "auc": float(metrics["auc"])})
    for row in rows:
        row["sensitivity_change"] = row["sensitivity"] - rows[0]["sensitivity"]
        row["specificity_change"] = row["specificity"] - rows[0]["specificity"]
    return rows


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
