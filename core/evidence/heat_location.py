"""Where the heat sits: on the film's border band or on burnt-in marks, rather than on the lungs.

A classifier can learn a shortcut: the laterality letter ("R"/"L"), burnt-in text, the collimator
edge, all of which differ between hospitals and so between the classes of a pooled data set
(Zech et al., 2018, *PLoS Medicine* 15:e1002683, and DeGrave et al., 2021, *Nature Machine
Intelligence* 3:610-619, showed chest X-ray models using such marks). Without lesion masks the lungs' outline is unknown, but these shortcuts have a known place: the
border of the film, and small, very bright marks. This module measures how much of a heatmap's
heat falls there, and turns the per-image shares into a plain warning for a run.

Conventions: a heatmap is (h, w) in [0, 1] at the feature-map resolution, stretched bilinearly to
the mask's (H, W) (:func:`core.evidence.heatmap_grid.stretch`); masks are bool (H, W), True =
inside. Every threshold is a named constant below with its reason. Pure; no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from core.evidence.heatmap_grid import stretch

__all__ = [
    "BORDER_BAND",
    "BORDER_HEAT_SHARE",
    "MARK_DILATION_FRACTION",
    "MARK_LEVEL",
    "MARK_MAX_AREA_SHARE",
    "MARK_MIN_PIXELS",
    "MARK_PERCENTILE",
    "WARNING_IMAGE_SHARE",
    "border_mask",
    "border_warning",
    "bright_marks",
    "heat_share",
    "looks_at_border",
]

# The border band is this fraction of each side: the band covers 1 - 0.8 ** 2 = 36 % of the image.
# Laterality letters, burnt-in text and collimator edges sit there; the lungs of a frontal film
# hardly reach into it.
BORDER_BAND = 0.1

# An image "looks at the border" when more than this share of its heat is in the band. Uniform heat
# puts 36 % there and a map on the lungs far less, so a majority is a map drawn to the border.
BORDER_HEAT_SHARE = 0.5

# A run gets the warning when at least this share of its images look at the border. A shortcut on a
# marker only shows on the films that carry one at the learnt place, so it need not be most of the
# images; but a quarter is far more than the odd image whose heat drifts to the edge by chance (a
# map on the lungs rarely puts half its heat in the band), so it is not noise either.
WARNING_IMAGE_SHARE = 0.25

# Bright marks: regions at or above an absolute level (burnt-in letters are drawn at or near
# white; bone and soft tissue rarely reach 230 after windowing) that hold at least one pixel at or
# above the image's own 99.5th percentile too (its brightest half percent), so a dim film's
# brightest bone is not called a letter. The region's size is judged at the absolute level, so the
# noise peaks of a big bright patch (a saturated collimator band) are part of the patch, not marks.
MARK_PERCENTILE = 99.5
MARK_LEVEL = 230

# A mark is a small connected bright region: under 1 % of the image. The lungs, the spine, the
# shoulders and the collimator edges are bigger; a letter on a film is a fraction of a percent.
MARK_MAX_AREA_SHARE = 0.01

# A bright region of fewer pixels than this is noise or a speck of dust, not a letter.
MARK_MIN_PIXELS = 4

# The mark is widened by this fraction of the image's longer side (at least 2 pixels), so that the
# heat a coarse map puts around the letter counts as heat on the letter.
MARK_DILATION_FRACTION = 0.02


def border_mask(width: int, height: int, band: float = BORDER_BAND) -> np.ndarray:
    """Bool (height, width): True in the band of ``band`` x each side along the four edges.

    The band's widths are rounded to whole pixels (``round(band * width)`` on the left and right,
    ``round(band * height)`` at top and bottom); with the default band it covers 36 % of the image.
    """
    if not 0.0 <= band < 0.5:
        raise ValueError(f"band must be in [0, 0.5), got {band}")
    bx, by = round(band * width), round(band * height)
    x = np.arange(width)
    y = np.arange(height)
    in_x = (x < bx) | (x >= width - bx)
    in_y = (y < by) | (y >= height - by)
    return in_y[:, None] | in_x[None, :]


def heat_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the stretched heatmap's total heat that lies inside ``mask``, in [0, 1].

    NaN for a heatmap with no heat at all (all zero): nothing is anywhere, so the share is
    undefined, not 0. Callers drop such images and say how many.
    """
    inside = np.asarray(mask, bool)
    if inside.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {inside.shape}")
    heat = np.clip(stretch(heatmap, inside.shape[1], inside.shape[0]).astype(np.float64), 0.0, None)
    total = heat.sum()
    return float(heat[inside].sum() / total) if total > 0 else math.nan


def bright_marks(gray: np.ndarray) -> np.ndarray:
    """Bool (H, W): text-like marks (laterality letters, burnt-in text) on a uint8 grayscale film.

    Regions of pixels at or above ``MARK_LEVEL`` (8-connected) that contain a pixel at or above
    ``max(MARK_PERCENTILE-th percentile, MARK_LEVEL)``, kept only when they have ``MARK_MIN_PIXELS``
    pixels up to ``MARK_MAX_AREA_SHARE`` of the image, then widened by ``MARK_DILATION_FRACTION``
    of the longer side. A film without marks usually gives an empty mask. Limits: a letter that
    touches a big bright region merges with it and is missed; a small bright bone fragment or an
    electrode can pass for a mark, so the share of heat on marks is a hint, not proof.
    """
    image = np.asarray(gray)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    labels, n = ndimage.label(image >= MARK_LEVEL, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(image.shape, bool)
    # >=: a letter at 255 can itself be the 99.5th percentile.
    seeds = image >= max(float(np.percentile(image, MARK_PERCENTILE)), MARK_LEVEL)
    has_seed = np.bincount(labels[seeds], minlength=n + 1) > 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = has_seed & (sizes >= MARK_MIN_PIXELS) & (sizes < MARK_MAX_AREA_SHARE * image.size)
    keep[0] = False  # label 0 is everything below the level
    marks = keep[labels]
    if not marks.any():
        return marks
    radius = max(2, round(MARK_DILATION_FRACTION * max(image.shape)))
    disc = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    return ndimage.binary_dilation(marks, structure=disc)


def looks_at_border(share: float) -> bool:
    """Whether one image's heat is mostly in the border band (more than ``BORDER_HEAT_SHARE``); NaN: no."""
    return bool(share > BORDER_HEAT_SHARE)


def border_warning(shares: Sequence[float]) -> str:
    """"" or a warning when at least ``WARNING_IMAGE_SHARE`` of the images look at the border.

    ``shares`` are the images' border shares (:func:`heat_share` with :func:`border_mask`); NaN
    shares (maps with no heat) are left out of both counts. The warning gives the figures: how many
    images look at the border, and the median border share against the 36 % uniform heat would give.
    """
    values = np.asarray(list(shares), np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ""
    looking = int(sum(looks_at_border(s) for s in values))
    if looking < WARNING_IMAGE_SHARE * values.size:
        return ""
    band_area = 1.0 - (1.0 - 2.0 * BORDER_BAND) ** 2
    return (
        f"looks at markers, not lungs: on {looking} of {values.size} images "
        f"({looking / values.size:.0%}) more than {BORDER_HEAT_SHARE:.0%} of the heat is in the border band "
        f"({BORDER_BAND:.0%} of each side, {band_area:.0%} of the film); "
        f"the median border share is {float(np.median(values)):.0%}"
    )
