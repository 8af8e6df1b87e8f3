"""Is a heatmap faithful to the model? Deletion and insertion curves (Petsiuk et al., 2018, RISE).

Deletion removes the image's pixels hottest first and scores each step: if the heatmap shows what
the model uses, the probability falls fast (a low area under the curve). Insertion starts from the
removed image and puts the pixels back hottest first: a faithful map makes it rise fast (a high
area). Neither needs lesion masks, only the model, which is why they are the evidence here.

Conventions:

* ``pixels`` is one square image, (S, S), (S, S, 1) or (S, S, 3), 0..255, as the network takes it.
* ``heatmap`` is (h, w) in [0, 1] at the feature-map resolution; it is stretched to S x S
  bilinearly (:func:`core.evidence.heatmap_grid.stretch`).
* ``score(batch)`` takes an (n, S, S, 3) float32 batch, 0..255, and returns (n,) probabilities of
  the explained class.
* A curve has ``steps + 1`` points, at the fractions 0, 1/steps, ..., 1 of the pixels changed;
  step k changes the ``floor(k * S * S / steps)`` hottest pixels.

Pure apart from calling ``score``; baselines and intervals are seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from core.evidence.heatmap_grid import stretch
from core.evidence.statistics import Interval, resample_weights

__all__ = [
    "BLUR_SIGMA_FRACTION",
    "Score",
    "blurred",
    "centred_blob",
    "curve_area",
    "deletion_curve",
    "insertion_curve",
    "mean_interval",
    "perturbation_batch",
    "pixel_order",
    "random_heatmap",
]

Score = Callable[[np.ndarray], np.ndarray]

# The "removed" canvas is the image under a Gaussian blur of this standard deviation, as a fraction
# of the side (14 px at 224). Not black: a black square on an X-ray is itself a strong feature
# (nothing like it is in the training data), so the score would measure the model's reaction to the
# square rather than to the loss of evidence. A heavy blur keeps the film's overall brightness
# layout (body, mediastinum, lung fields) and wipes out the local detail a heatmap points at:
# consolidation texture, rib edges, burnt-in letters.
BLUR_SIGMA_FRACTION = 1 / 16


def _as_image(pixels: Any) -> np.ndarray:
    """One square image as (S, S, 3) float32, 0..255: grayscale is repeated to three channels."""
    image = np.asarray(pixels, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square (S, S), (S, S, 1) or (S, S, 3) image, got shape {image.shape}")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def pixel_order(heatmap: np.ndarray, size: int) -> np.ndarray:
    """Flat indices of an S x S image's pixels, hottest first after stretching.

    Ties keep row-major order (a stable sort), so the order is the same on every call.
    """
    heat = stretch(heatmap, size, size).ravel()
    return np.argsort(-heat, kind="stable")


def blurred(pixels: Any) -> np.ndarray:
    """The "removed" canvas: the image under a heavy Gaussian blur (``BLUR_SIGMA_FRACTION`` of the side).

    Returns (S, S, 3) float32. Channels are blurred separately, never mixed.
    """
    image = _as_image(pixels)
    sigma = BLUR_SIGMA_FRACTION * image.shape[0]
    # Reflecting at the edges keeps the film's border brightness instead of fading it to a constant.
    return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect").astype(np.float32)


def _changed_counts(n_pixels: int, steps: int) -> np.ndarray:
    """How many pixels step k changes: floor(k * n / steps), 0 at step 0 and all at the last."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return (np.arange(steps + 1) * n_pixels) // steps


def perturbation_batch(
    pixels: Any, heatmap: np.ndarray, steps: int = 16, mode: Literal["deletion", "insertion"] = "deletion"
) -> np.ndarray:
    """The ``steps + 1`` images of a deletion or insertion curve, (steps + 1, S, S, 3) float32.

    Deletion: step k is the image with its k/steps hottest fraction replaced by the blurred canvas
    (step 0 is the image, the last is the canvas). Insertion: step k is the canvas with the k/steps
    hottest fraction of the image restored (step 0 is the canvas, the last is the image).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    image = _as_image(pixels)
    size = image.shape[0]
    canvas = blurred(image)
    order = pixel_order(heatmap, size)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)  # rank[p] = how hot pixel p is: 0 = hottest
    changed = rank[None, :] < _changed_counts(order.size, steps)[:, None]  # (steps + 1, S * S)
    changed = changed.reshape(steps + 1, size, size, 1)
    if mode == "deletion":
        return np.where(changed, canvas, image).astype(np.float32)
    return np.where(changed, image, canvas).astype(np.float32)


def _curve(score: Score, batch: np.ndarray) -> np.ndarray:
    """One batched ``score`` call, checked to give one finite probability per image."""
    values = np.asarray(score(batch), np.float64).ravel()
    if values.shape != (batch.shape[0],):
        raise ValueError(f"score returned {values.size} values for a batch of {batch.shape[0]} images")
    if not np.isfinite(values).all():
        raise ValueError("score returned NaN or infinite values")
    return values


def deletion_curve(score: Score, pixels: Any, heatmap: np.ndarray, steps: int = 16) -> np.ndarray:
    """The explained class's probability as the hottest pixels are removed, (steps + 1,)."""
    return _curve(score, perturbation_batch(pixels, heatmap, steps, "deletion"))


def insertion_curve(score: Score, pixels: Any, heatmap: np.ndarray, steps: int = 16) -> np.ndarray:
    """The explained class's probability as the hottest pixels are restored onto the canvas, (steps + 1,)."""
    return _curve(score, perturbation_batch(pixels, heatmap, steps, "insertion"))


def curve_area(curve: Any) -> float:
    """Area under a curve whose points are evenly spaced over the fractions 0..1 (trapezoid rule).

    Lower is more faithful for deletion, higher for insertion.
    """
    values = np.asarray(curve, np.float64).ravel()
    if values.size < 2:
        raise ValueError("a curve needs at least two points")
    return float(np.trapezoid(values, np.linspace(0.0, 1.0, values.size)))


# --------------------------------------------------------------------------
# Baselines: a method is worth something only if it beats these
# --------------------------------------------------------------------------


def random_heatmap(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform noise of the given (h, w), divided by its maximum (1 at the hottest point), seeded."""
    noise = np.random.default_rng(seed).random(shape)
    return (noise / noise.max()).astype(np.float32)


def centred_blob(shape: tuple[int, int]) -> np.ndarray:
    """An isotropic Gaussian at the centre, sd a quarter of the shorter side, 1 at its peak.

    The "the lungs are in the middle" baseline: a method that only ever points at the centre of the
    film gets this map's scores without looking at the image.
    """
    h, w = shape
    sd = min(h, w) / 4
    y = np.arange(h) - (h - 1) / 2
    x = np.arange(w) - (w - 1) / 2
    blob = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sd**2))
    return (blob / blob.max()).astype(np.float32)


# --------------------------------------------------------------------------
# Summary over images
# --------------------------------------------------------------------------


def mean_interval(
    values: Any, patients: Any = None, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """The mean of a per-image value (e.g. a curve area) with a patient-bootstrap percentile interval.

    ``patients`` is a patient id per image (``None``: images are resampled). Resamples are drawn
    through :func:`core.evidence.statistics.resample_weights`, so a seed draws the same patients as
    every other interval here; each resample's mean weighs every image by how often its patient was
    drawn. ``values`` must be finite: drop undefined images before (and say how many).
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values contain NaN or infinite values; drop the undefined images first")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    means = [w @ v / w.sum(axis=1) for w in resample_weights(v.size, patients, n_resamples, seed)]
    alpha = 1.0 - confidence
    low, high = np.percentile(np.concatenate(means), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(
        estimate=float(v.mean()), low=float(low), high=float(high), confidence=float(confidence), n_resamples=int(n_resamples)
    )
