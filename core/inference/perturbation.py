"""Occlusion sensitivity: where hiding part of the image lowers the explained class's probability.

Model-agnostic (Zeiler & Fergus, 2014): it needs only predictions, so it explains any model, or
anything that scores images. A square patch slides over the image; each position is filled with a
heavily blurred copy of the image rather than black, because a black square on an X-ray is itself
a strong feature (a pacemaker, a marker) and would measure the model's reaction to it instead of
the loss of what was there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from core.inference.explanation import normalised

ROUND_OFF = 1e-6  # a probability change this small is float32 noise, not evidence

Predict = Callable[[np.ndarray], np.ndarray]  # (n, S, S, 3) float 0..255 -> the explained class's probability (n,)


def default_patch(size: int) -> int:
    """About a seventh of the side: large enough to hide an opacity, small enough to place it."""
    return max(2, round(size / 7))


def blurred(pixels: np.ndarray) -> np.ndarray:
    """The image with its detail gone (Gaussian, sigma a sixth of the side), each colour on its own."""
    sigma = max(1.0, pixels.shape[0] / 6)
    return ndimage.gaussian_filter(np.asarray(pixels, np.float32), sigma=(sigma, sigma, 0), mode="nearest")


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one side; the last one flush with the edge so every pixel is covered."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion(
    predict: Predict, pixels: np.ndarray, patch: int | None = None, stride: int | None = None, batch_size: int = 64
) -> np.ndarray:
    """Occlusion heatmap of one (S, S, 3) image in 0..255, at the image's own S x S resolution.

    Each patch (`patch` pixels square, default `default_patch(S)`; `stride` default half the patch)
    is replaced by the blurred image (`blurred`) and the drop in `predict`'s probability from the
    unchanged image's is credited to every pixel it covers. A pixel's heat is the mean drop over
    the patches covering it, its positive part (a patch whose removal raises the probability held
    evidence against the class; under `ROUND_OFF` is none), divided by the maximum: (S, S) float32 in [0, 1], all zeros when no
    patch lowers the probability. Costs one prediction per patch position, in batches.
    """
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"expected a square (S, S, channels) image, got shape {pixels.shape}")
    size = pixels.shape[0]
    patch = int(patch or default_patch(size))
    stride = int(stride or max(1, patch // 2))
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(f"patch must be 1..{size} pixels and stride at least 1, got {patch} and {stride}")
    filler = blurred(pixels)
    corners = [(top, left) for top in _starts(size, patch, stride) for left in _starts(size, patch, stride)]
    base = float(np.asarray(predict(pixels[None]), np.float64).reshape(-1)[0])
    drops = np.empty(len(corners), np.float64)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        batch = np.repeat(pixels[None], len(chunk), axis=0)
        for i, (top, left) in enumerate(chunk):
            batch[i, top : top + patch, left : left + patch] = filler[top : top + patch, left : left + patch]
        drops[first : first + len(chunk)] = base - np.asarray(predict(batch), np.float64).reshape(-1)
    total = np.zeros((size, size), np.float64)
    covered = np.zeros((size, size), np.float64)
    for (top, left), drop in zip(corners, drops, strict=True):
        total[top : top + patch, left : left + patch] += drop
        covered[top : top + patch, left : left + patch] += 1
    heat = total / covered
    return normalised(np.where(heat > ROUND_OFF, heat, 0.0))
