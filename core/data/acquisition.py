"""How an X-ray's pixels change between sites: framing, sharpness, contrast, exposure, gamma,
compression, resolution, rotation and sensor noise.

Each change takes (n, s, s, 1) uint8 images and returns new ones of the same shape, deterministic
(noise is seeded). The stress test (`core.evidence.stress`) scores validation images changed these
ways, and the cached augmented views (`core.data.augmentation`) train on them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def per_image(pixels: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """`change` applied to each image of (n, s, s, 1) uint8 pixels as a PIL grayscale image."""
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        out[i, ..., 0] = np.asarray(change(Image.fromarray(image[..., 0])), dtype=np.uint8)
    return out


def _lookup(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)[pixels]


def zoom_in(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """Show the central (1 - fraction) of each side, enlarged back: a tighter framing of the chest."""
    size = pixels.shape[1]
    margin = round(size * fraction / 2)

    def crop(image: Image.Image) -> Image.Image:
        return image.crop((margin, margin, size - margin, size - margin)).resize((size, size), Image.Resampling.BILINEAR)

    return per_image(pixels, crop)


def zoom_out(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """Shrink each image to (1 - fraction) of its side, centred on black: a wider framing, the chest
    smaller inside a black border."""
    size = pixels.shape[1]
    inner = max(1, round(size * (1 - fraction)))
    offset = (size - inner) // 2

    def shrink(image: Image.Image) -> Image.Image:
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(image.resize((inner, inner), Image.Resampling.BILINEAR), (offset, offset))
        return canvas

    return per_image(pixels, shrink)


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's contrast around its own mean."""
    x = pixels.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(np.rint(mean + (x - mean) * factor), 0, 255).astype(np.uint8)


def gamma(pixels: np.ndarray, power: float) -> np.ndarray:
    """255 · (x / 255) ** power: above 1 darkens the mid-tones, below 1 lightens them; black and white stay."""
    return _lookup(pixels, 255.0 * (np.arange(256) / 255.0) ** power)


def exposure(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Every value times `factor` (clipped to 0..255): below 1 a darker image, above 1 a brighter one."""
    return _lookup(pixels, np.arange(256) * factor)


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Each image saved as a JPEG of `quality` (1-95) and decoded again: blocks and ringing."""

    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("L")

    return per_image(pixels, compress)


def down_up(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Each image reduced to 1/`factor` of its side (area average) and enlarged back (bilinear): a lower resolution."""
    size = pixels.shape[1]
    small = max(1, round(size / factor))
    return per_image(pixels, lambda im: im.resize((small, small), Image.Resampling.BOX).resize((size, size), Image.Resampling.BILINEAR))


def rotate(pixels: np.ndarray, degrees: float) -> np.ndarray:
    """Each image turned by `degrees` about its centre, alternately anticlockwise (even index) and
    clockwise (odd), the corners black."""
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        angle = degrees if i % 2 == 0 else -degrees
        turned = Image.fromarray(image[..., 0]).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
        out[i, ..., 0] = np.asarray(turned, dtype=np.uint8)
    return out


def noise(pixels: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of standard deviation `sigma` grey levels added to every pixel (seeded), clipped."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(pixels + rng.normal(0.0, sigma, pixels.shape)), 0, 255).astype(np.uint8)


def sharpen(pixels: np.ndarray) -> np.ndarray:
    """PIL's sharpening filter on each image."""
    return per_image(pixels, lambda im: im.filter(ImageFilter.SHARPEN))


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of `sigma` pixels on each image."""
    return per_image(pixels, lambda im: im.filter(ImageFilter.GaussianBlur(sigma)))
