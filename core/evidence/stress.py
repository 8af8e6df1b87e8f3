"""Stress test on validation: how a run's decisions change when its images change as they do between sites.

An external test split (another period, other machines) differs from the training images in how the
chest is framed, how sharp the image is and its contrast. A model that leans on such things fails
there while scoring 0.99 on a validation split carved from training. This test needs no external
data: it changes the *validation* images in those ways, one at a time, and measures sensitivity and
specificity at the run's own threshold. A large drop warns before any test image is seen, and a
recipe can be compared on it without looking at test.

The same changed images also choose the decision threshold (`robust_threshold`): Youden's J on
the validation images as they are *and* as changed, pooled. A model's ranking survives these
changes (validation AUC stays about 0.99) while its probabilities drift upward, so the plain
Youden threshold, fitted to the images as they are, calls many healthy X-rays from another site
pneumonia; the pooled one sits where the changed images are separated too. Each run keeps the
changed images' probabilities (`val_stress_predictions.csv`, `scores_table`) so that an ensemble
can choose its own threshold the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from core.evidence import statistics

NOTE = (
    "Each run's validation images changed one way at a time, as X-rays from another site differ (framing, sharpness, "
    "contrast), scored at the run's saved threshold (chosen on validation: on these changed images and the originals "
    "pooled, for runs saved since the stress test chooses it). Large drops warn, before any test image is seen, that the "
    "model leans on how images look rather than on the lungs."
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


AS_IS = "as is"
ROBUST_THRESHOLD_RULE = (
    "Youden's J on the validation split pooled with its stressed copies (framed tighter, sharpened, blurred, "
    "contrast changed: core.evidence.stress)"
)


def stressed_scores(score: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> dict[str, np.ndarray]:
    """`score` (pixels -> probabilities) of the images under each perturbation, by condition."""
    return {name: np.asarray(score(change(pixels)), dtype=float) for name, change in PERTURBATIONS.items()}


def robust_threshold(y_true: np.ndarray, as_is: np.ndarray, stressed: Mapping[str, np.ndarray]) -> float:
    """Youden's J over the images as they are and under every perturbation, pooled (each image and
    condition counts once): a threshold that still separates the classes when images change as
    they do between sites. Needs both classes, like `statistics.youden_threshold`."""
    y = np.asarray(y_true).astype(int)
    scores = [np.asarray(as_is, dtype=float), *(np.asarray(stressed[name], dtype=float) for name in stressed)]
    return float(statistics.youden_threshold(np.tile(y, len(scores)), np.concatenate(scores)))


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
