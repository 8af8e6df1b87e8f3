"""A localisation check with ground truth by construction: a synthetic opacity pasted into a lung.

The data have no lesion masks, so where a heatmap should point is unknown on real images. Here an
opacity is drawn into a lung field of a real film, so its place is known exactly; a method that
explains the model's reaction to it should put its peak on it (:func:`hit`, the pointing game) and
its hot region over it (:func:`iou`); the pointing game is Zhang et al. (2018), Top-down neural
attention by excitation backprop, *IJCV* 126:1084-1102. This is a synthetic check, not a clinical localisation
benchmark: a blended blob is not pneumonia, and a model may rightly ignore it.

Conventions: images are uint8 grayscale (H, W); points are (x, y) in pixels, x to the right, y
down; boxes are (x0, y0, x1, y1), half-open like PIL's crop. "Right" and "left" are the patient's,
as a frontal film is read: the right lung is on the image's left. The lung fields are fixed
fractions of the film (no segmentation model). Pure; randomness is seeded.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from core.evidence.heatmap_grid import stretch

__all__ = [
    "EDGE_BAND",
    "LUNGS",
    "LUNG_FIELDS",
    "RADIUS_RANGE",
    "TEXTURE_SD",
    "hit",
    "insert_opacity",
    "iou",
    "lung_field_box",
    "opacity_mask",
    "random_opacities",
]

Box = tuple[int, int, int, int]
Point = tuple[float, float]

LUNGS = ("right", "left")

# Each lung field as fractions (x0, y0, x1, y1) of a frontal chest film's width and height: inside
# the ribs' outline and above the diaphragm on a typical PA film, so a blob centred there lies on
# lung, not on the mediastinum (x 0.45-0.55) or the shoulders.
LUNG_FIELDS: dict[str, tuple[float, float, float, float]] = {
    "right": (0.15, 0.25, 0.45, 0.75),
    "left": (0.55, 0.25, 0.85, 0.75),
}

# Opacity radii as fractions of the film's width: a segmental to lobar consolidation, big enough to
# cover a few cells of a 7 x 7 feature map, small enough to sit inside one lung.
RADIUS_RANGE = (0.06, 0.12)

# The soft edge falls from 1 to 0 between (1 - EDGE_BAND) and (1 + EDGE_BAND) radii: a blurred
# margin, as consolidation fades into aerated lung, instead of a pasted disc's sharp rim.
EDGE_BAND = 0.25

# Standard deviation of the smooth multiplicative texture: enough to mottle the opacity like
# air-space disease, too little to break it into spots.
TEXTURE_SD = 0.15


def lung_field_box(width: int, height: int, lung: str) -> Box:
    """The ``lung`` ("right" or "left", the patient's) field of a width x height film, in pixels."""
    if lung not in LUNG_FIELDS:
        raise ValueError(f"lung must be one of {LUNGS}, got {lung!r}")
    fx0, fy0, fx1, fy1 = LUNG_FIELDS[lung]
    return round(fx0 * width), round(fy0 * height), round(fx1 * width), round(fy1 * height)


def opacity_mask(width: int, height: int, centre: Point, radius: float, aspect: float = 1.0) -> np.ndarray:
    """A soft-edged blob, float (height, width) in [0, 1]: 1 inside, a smooth fall-off to 0 at the edge.

    ``radius`` is the horizontal radius in pixels, ``aspect`` the vertical radius over it (an
    ellipse when not 1). The value is 0.5 exactly at the radius, 1 within ``1 - EDGE_BAND`` radii
    and 0 beyond ``1 + EDGE_BAND`` (a smoothstep between).
    """
    if radius <= 0 or aspect <= 0:
        raise ValueError(f"radius and aspect must be positive, got {radius} and {aspect}")
    cx, cy = centre
    x = (np.arange(width) - cx) / radius
    y = (np.arange(height) - cy) / (radius * aspect)
    distance = np.hypot(x[None, :], y[:, None])  # in radii
    t = np.clip((1.0 + EDGE_BAND - distance) / (2.0 * EDGE_BAND), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _texture(shape: tuple[int, int], radius: float, seed: int) -> np.ndarray:
    """Smooth seeded noise, mean 0 and sd ``TEXTURE_SD``, with blotches about a quarter radius across."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma=max(1.0, radius / 8))
    sd = noise.std()
    return noise * (TEXTURE_SD / sd) if sd > 0 else noise


def insert_opacity(
    gray: np.ndarray, centre: Point, radius: float, density: float = 0.35, seed: int = 0, aspect: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The film with an opacity blended in, and its bool mask (soft mask > 0.5).

    Each pixel moves towards white by ``density x soft mask x (1 + texture)``, clipped to [0, 1]:
    dense where the film was dark lung, little where it was already bright bone, as a real opacity
    would. Pixels outside the soft mask's support are returned unchanged.
    """
    image = np.asarray(gray)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) grayscale image, got {image.dtype} {image.shape}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    height, width = image.shape
    soft = opacity_mask(width, height, centre, radius, aspect)
    alpha = np.clip(density * soft * (1.0 + _texture(image.shape, radius, seed)), 0.0, 1.0)
    base = image.astype(np.float64)
    out = np.clip(np.round(base + alpha * (255.0 - base)), 0, 255).astype(np.uint8)
    return out, soft > 0.5


def random_opacities(width: int, height: int, n: int, seed: int = 0) -> list[tuple[Point, float]]:
    """``n`` seeded (centre, radius) pairs: centres uniform in the lung fields, alternating right and left.

    Radii are uniform in ``RADIUS_RANGE`` of the width.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x0, y0, x1, y1 = lung_field_box(width, height, LUNGS[i % 2])
        centre = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)))
        out.append((centre, float(rng.uniform(*RADIUS_RANGE) * width)))
    return out


def hit(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: whether the stretched heatmap's peak lies inside ``mask``.

    The peak is the first maximum in row-major order (so a flat map points at the top-left corner,
    never at a lung, and cannot win by ties). False for a map with no heat (all zero).
    """
    inside = np.asarray(mask, bool)
    if inside.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {inside.shape}")
    heat = stretch(heatmap, inside.shape[1], inside.shape[0])
    if not heat.max() > 0:
        return False
    return bool(inside.ravel()[int(np.argmax(heat))])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of the same shape.

    NaN when both are empty: there is nothing to overlap, so agreement is undefined (as every
    undefined number in ``core.evidence``), neither perfect (1) nor none (0).
    """
    first, second = np.asarray(a, bool), np.asarray(b, bool)
    if first.shape != second.shape:
        raise ValueError(f"masks differ in shape: {first.shape} and {second.shape}")
    union = int(np.sum(first | second))
    return float(np.sum(first & second) / union) if union else math.nan


# A patchy, multifocal pattern (several soft blobs in both lungs), as bronchopneumonia looks: on
# healthy validation X-rays the recipe's runs barely respond to one blob (probability +0.01 at
# density 0.35, +0.06 at 0.6 and 1.6x the radius), but clearly to six at density 0.6 and 1.2x the
# radius (+0.35 on average), and a localisation check needs a finding the model actually sees.
PATCHY_BLOBS = 6
PATCHY_DENSITY = 0.6
PATCHY_SCALE = 1.2


def insert_patchy_opacity(
    gray: np.ndarray, seed: int = 0, blobs: int = PATCHY_BLOBS, density: float = PATCHY_DENSITY, scale: float = PATCHY_SCALE
) -> tuple[np.ndarray, np.ndarray]:
    """The film with `blobs` opacities (`random_opacities`, radii times `scale`) blended in one after
    the other, and the union of their bool masks."""
    image = np.asarray(gray)
    height, width = image.shape[:2]
    mask = np.zeros((height, width), bool)
    for i, (centre, radius) in enumerate(random_opacities(width, height, blobs, seed)):
        image, inside = insert_opacity(image, centre, radius * scale, density=density, seed=seed * 101 + i)
        mask |= inside
    return image, mask
