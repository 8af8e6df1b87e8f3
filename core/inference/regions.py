"""Where the heat is, as a region: the smallest set of pixels holding a share of a heatmap's heat.

Owns turning any heatmap (of any method, at any resolution) into something to draw, save and
compare with an annotation: a mask at the original image's own size, the bounding box of its
hottest connected part, and how much of the heat they hold. Pure numpy, PIL and scipy: no model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from core import files
from core.evidence.heatmap_grid import stretch


@dataclass(frozen=True)
class Region:
    """A heatmap's region on an image of `mask.shape` (height, width).

    `box` is (x0, y0, x1, y1) in pixels, x1 and y1 exclusive, or None when the heatmap has no heat
    (the mask is then empty). `share` is the share of heat asked for, `heat_share` the share the
    mask actually holds (at least `share`, more when pixels tie), `area_fraction` the mask's area
    over the image's.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    share: float
    area_fraction: float
    heat_share: float

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])


def region_of(heatmap: np.ndarray, width: int, height: int, share: float = 0.5) -> Region:
    """The smallest set of pixels (hottest first) holding `share` of the heat, on a `width` x `height` image.

    The heatmap is stretched to the image (`core.evidence.heatmap_grid.stretch`, as overlays are); negative values count as no heat. The box
    bounds the 8-connected component of the mask holding the most heat, not the whole mask, so two
    separate blobs give the box of the hotter one. An all-zero heatmap gives an empty mask and
    box None: there is no region to show, rather than an arbitrary one.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    heat = np.maximum(stretch(heatmap, width, height).astype(np.float64), 0.0)
    total = heat.sum()
    mask = np.zeros(heat.shape, bool)
    if not np.isfinite(total) or total <= 0:
        return Region(mask, None, float(share), 0.0, 0.0)
    order = np.argsort(-heat, axis=None, kind="stable")
    cumulative = np.cumsum(heat.ravel()[order])
    # The first count whose heat reaches the share (a hair of tolerance: share 1 must not miss by rounding).
    count = min(int(np.searchsorted(cumulative, share * total * (1 - 1e-9))) + 1, order.size)
    mask.ravel()[order[:count]] = True
    return Region(mask, _hottest_box(mask, heat), float(share), float(mask.mean()), float(heat[mask].sum() / total))


def _hottest_box(mask: np.ndarray, heat: np.ndarray) -> tuple[int, int, int, int]:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    heat_per_component = ndimage.sum_labels(heat, labels, index=np.arange(1, count + 1))
    hottest = labels == int(np.argmax(heat_per_component)) + 1
    rows, cols = np.flatnonzero(hottest.any(axis=1)), np.flatnonzero(hottest.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def draw_region(picture: Image.Image, region: Region, colour: tuple[int, int, int] = (0, 255, 0), width: int = 2) -> Image.Image:
    """A copy of `picture` (RGB, the region's size) with the mask's outline (the mask minus its
    erosion) and the box drawn in `colour`; the picture as it is when the region is empty."""
    if picture.size != (region.width, region.height):
        raise ValueError(f"the picture is {picture.size[0]}x{picture.size[1]} but the region is {region.width}x{region.height}")
    pixels = np.array(picture.convert("RGB"))
    outline = region.mask & ~ndimage.binary_erosion(region.mask, iterations=max(1, width // 2))
    pixels[outline] = colour
    drawn = Image.fromarray(pixels, mode="RGB")
    if region.box is not None:
        x0, y0, x1, y1 = region.box
        ImageDraw.Draw(drawn).rectangle((x0, y0, x1 - 1, y1 - 1), outline=tuple(colour), width=width)  # PIL's corners are inclusive
    return drawn


def mask_png(region: Region) -> bytes:
    """The mask as an 8-bit grayscale PNG ("L"): 255 inside, 0 outside, at the image's size."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(region.mask, 255, 0).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def region_record(region: Region, **about) -> dict:
    """The region as JSON-able values: box {x0, y0, x1, y1} (or None), share, heat_share,
    area_fraction, the image's width and height, and `about` (e.g. run, method, image)."""
    box = None if region.box is None else dict(zip(("x0", "y0", "x1", "y1"), region.box, strict=True))
    return {
        "box": box,
        "share": round(region.share, 6),
        "heat_share": round(region.heat_share, 6),
        "area_fraction": round(region.area_fraction, 6),
        "width": region.width,
        "height": region.height,
        **about,
    }


def region_files(region: Region, picture: Image.Image, **about) -> dict[str, bytes]:
    """What `explain` and Predict's download save for one image and run, by file suffix: the overlay
    with the region drawn ("overlay.png", from `picture`), the mask ("mask.png") and the box with
    what it is of ("box.json", `region_record` with `about`)."""
    buffer = io.BytesIO()
    draw_region(picture, region).save(buffer, format="PNG")
    record = files.json_safe(region_record(region, **about))
    return {"overlay.png": buffer.getvalue(), "mask.png": mask_png(region),
            "box.json": (json.dumps(record, indent=2) + "\n").encode()}
