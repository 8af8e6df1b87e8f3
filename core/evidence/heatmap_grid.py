"""A heatmap on an image's pixel grid: the one bilinear stretch every explanation check uses.

Conventions: a heatmap is an (h, w) float array at the model's feature-map resolution, in [0, 1]
with 1 at its hottest point; an image is (H, W) pixels. Stretching is bilinear on the float map (PIL
"F" mode), as the overlays draw it, so a check measures the map the user sees. Pure; no model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["stretch"]


def stretch(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """The heatmap resized bilinearly to (height, width), float32; NaN reads as 0 (no heat)."""
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {heat.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot stretch to {width} x {height} pixels")
    image = Image.fromarray(np.nan_to_num(heat), mode="F")
    return np.asarray(image.resize((int(width), int(height)), Image.Resampling.BILINEAR), np.float32)
