"""Image variation: training augmentation and the fixed views of test-time augmentation.

Augmentation makes a model see each X-ray slightly rotated, zoomed, shifted, and with another
contrast and brightness, so that it learns what does not change with the machine, the child's
position or the exposure. That is what an external test split (another period, other machines)
varies. A preset names each strength; the same preset drives the Keras preprocessing layers put in
front of a model (active only while training) and the augmented views cached for cut-point
fine-tuning (`core.search.activations`).

Test-time augmentation (TTA) averages a model's probability over a few fixed, mild views of each
image (the image itself, a small zoom, small shifts). It is off unless a run asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from core.data import acquisition


@dataclass(frozen=True)
class Augmentation:
    """How strongly training images vary; zero everywhere means off."""

    rotation_deg: float = 0.0  # up to this many degrees either way
    zoom: float = 0.0  # zoom in or out by up to this fraction
    # zoom in by up to this fraction (when larger than `zoom`): sites frame the chest differently,
    # and a model that saw only loosely framed X-rays calls a tightly framed healthy chest
    # pneumonia (on validation, a 30 % zoom turned a model's 2 % false alarms into 59 %)
    zoom_in: float = 0.0
    shift: float = 0.0  # move by up to this fraction of the side
    contrast: float = 0.0  # scale contrast by 1 ± this
    brightness: float = 0.0  # add up to ± this fraction of the 0..255 range
    # blur or sharpen by up to this much (0..0.5): X-ray machines, detectors and the resizing of
    # the original files differ in sharpness, and a loss of edges is also what an opacity looks
    # like, so a model must not learn "less sharp = pneumonia"
    sharpness: float = 0.0
    # the share of views whose border band (4-15 % of each side, drawn per side) is blacked out:
    # laterality markers, burnt-in text and collimator edges sit there, and a model that finds its
    # evidence for pneumonia there has learnt the site, not the lungs (DeGrave et al., 2021;
    # docs/measurements.md, "Where the models look"). Cached augmented views only (cut-point
    # fine-tuning): it is not a Keras layer, so no saved model carries it. Not in the repr, so the
    # cache keys of the presets without it stay as they were (`core.search.activations.views_key`).
    border_erase: float = field(default=0.0, repr=False)
    # Gaussian sensor noise of a standard deviation up to this fraction of the 0..255 range, drawn per
    # view (`add_noise`). Cached augmented views only (Keras' GaussianNoise takes a deviation of at
    # most 1, for inputs in 0..1). Not in the repr: `core.search.activations.views_key` adds it when set.
    noise: float = field(default=0.0, repr=False)
    # the share of views given one acquisition difference no Keras layer makes, drawn at random
    # (`ACQUISITION_CHANGES`: JPEG compression, gamma, exposure, a lower resolution): sites compress,
    # expose and digitise differently, and the stress test found models' thresholds break there
    # (docs/measurements.md, "Acquisition shifts"). Cached augmented views only, as `border_erase`.
    acquisition: float = field(default=0.0, repr=False)

    @property
    def zoom_range_text(self) -> str:
        if self.zoom_in > self.zoom:
            return f"-{self.zoom:.0%} to +{self.zoom_in:.0%}"
        return f"±{self.zoom:.0%}"

    @property
    def is_off(self) -> bool:
        return not any(asdict(self).values())

    def describe(self) -> str:
        if self.is_off:
            return "off"
        text = (
            f"rotation ±{self.rotation_deg:g}°, zoom {self.zoom_range_text}, shift ±{self.shift:.0%}, "
            f"contrast ±{self.contrast:.0%}, brightness ±{self.brightness:.0%}"
        )
        text += f", sharpness ±{self.sharpness:.0%}" if self.sharpness else ""
        text += f", noise σ up to {self.noise:.0%}" if self.noise else ""
        text += f", JPEG/gamma/exposure/resolution changed on {self.acquisition:.0%} of views" if self.acquisition else ""
        return text + (f", border blacked out on {self.border_erase:.0%} of views" if self.border_erase else "")


AUGMENTATIONS = {
    "off": Augmentation(),
    "light": Augmentation(rotation_deg=5, zoom=0.05, shift=0.03, contrast=0.1, brightness=0.05),
    "medium": Augmentation(rotation_deg=10, zoom=0.1, zoom_in=0.25, shift=0.06, contrast=0.25, brightness=0.1, sharpness=0.25),
    "strong": Augmentation(rotation_deg=15, zoom=0.15, zoom_in=0.35, shift=0.1, contrast=0.4, brightness=0.15, sharpness=0.4),
    "strong-border": Augmentation(rotation_deg=15, zoom=0.15, zoom_in=0.35, shift=0.1, contrast=0.4, brightness=0.15, sharpness=0.4,
                                  border_erase=0.5),
    # strong, plus a wider zoom out (the chest smaller inside a black border), sensor noise and the
    # acquisition changes: for cut-point fine-tuning with the activation cache
    "strong-site": Augmentation(rotation_deg=15, zoom=0.2, zoom_in=0.35, shift=0.1, contrast=0.4, brightness=0.15, sharpness=0.4,
                                noise=0.04, acquisition=0.5),
}
BORDER_BAND_RANGE = (0.04, 0.15)  # the blacked-out band's width, a fraction of the side, drawn per side


def in_model(name: str) -> bool:
    """Whether preset `name` can run as Keras layers inside a model (every one but those that erase
    borders or make acquisition changes: cached augmented views only)."""
    return not cached_only(preset(name))


def cached_only(augmentation: Augmentation) -> bool:
    """Whether `augmentation` needs the cached augmented views (no Keras layer does all it asks)."""
    return bool(augmentation.border_erase or augmentation.acquisition or augmentation.noise)
SEARCH = "search"  # the augmentation preset is a hyperparameter of the search (in-model augmentation only)


def preset(name: str) -> Augmentation:
    """The named preset; the message lists the names when it does not exist."""
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}") from None


def augmentation_layers(augmentation: Augmentation, seed: int = 0) -> list:
    """Keras preprocessing layers for `augmentation`, for images of 0..255 values.

    They change images only while training; at inference they pass images through unchanged,
    so a saved model needs nothing but pixels.
    """
    import keras

    if cached_only(augmentation):
        raise ValueError("border erasing, acquisition changes and noise work on cached augmented views only (cut-point fine-tuning "
                         "with the activation cache), not as Keras layers: pick another augmentation for this search")
    if augmentation.is_off:
        return []
    a = augmentation
    layers = []
    if a.rotation_deg:
        layers.append(keras.layers.RandomRotation(a.rotation_deg / 360.0, fill_mode="constant", seed=seed))
    if a.zoom or a.zoom_in:
        # Keras: a negative factor zooms in, a positive one out.
        factor = (-max(a.zoom, a.zoom_in), a.zoom)
        layers.append(keras.layers.RandomZoom(factor, factor, fill_mode="constant", seed=seed + 1))
    if a.shift:
        layers.append(keras.layers.RandomTranslation(a.shift, a.shift, fill_mode="constant", seed=seed + 2))
    if a.contrast:
        layers.append(keras.layers.RandomContrast(a.contrast, value_range=(0, 255), seed=seed + 3))
    if a.brightness:
        layers.append(keras.layers.RandomBrightness(a.brightness, value_range=(0, 255), seed=seed + 4))
    if a.sharpness:
        factor = (0.5 - a.sharpness, 0.5 + a.sharpness)  # 0 = blurred, 0.5 = unchanged, 1 = sharpened
        layers.append(keras.layers.RandomSharpness(factor, value_range=(0, 255), seed=seed + 5))
    return layers


def augmented_views(pixels: np.ndarray, augmentation: Augmentation, views: int, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """`views` random variations of each image: uint8 (n, s, s, 1) -> uint8 (views, n, s, s, 1).

    Deterministic for a seed, so a cache of augmented views can be rebuilt identically.
    """
    import keras

    pixels = np.asarray(pixels)
    out = np.empty((views, *pixels.shape), np.uint8)
    if augmentation.is_off:
        out[:] = pixels[None]
        return out
    keras.utils.set_random_seed(seed)
    layers = augmentation_layers(replace(augmentation, border_erase=0.0, acquisition=0.0, noise=0.0), seed)
    rng = np.random.default_rng(seed)  # the border erasing's own draws: the Keras layers' stay as they were
    site_rng = np.random.default_rng([seed, 1])  # the acquisition changes' own draws
    for view in range(views):
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].astype(np.float32)
            for layer in layers:
                x = layer(x, training=True)
            batch = np.clip(np.rint(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8)
            if augmentation.acquisition:
                batch = change_acquisition(batch, augmentation.acquisition, site_rng)
            if augmentation.noise:
                batch = add_noise(batch, augmentation.noise, site_rng)
            out[view, start : start + batch_size] = erase_borders(batch, augmentation.border_erase, rng) if augmentation.border_erase else batch
    return out


def erase_borders(pixels: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of (n, s, s, c) images where each, with `probability`, has a black band along every
    side, each side's width drawn from `BORDER_BAND_RANGE`."""
    out = np.array(pixels, copy=True)
    size_y, size_x = out.shape[1:3]
    for i in np.flatnonzero(rng.random(len(out)) < probability):
        top, bottom, left, right = (rng.uniform(*BORDER_BAND_RANGE, size=4) * np.array([size_y, size_y, size_x, size_x])).round().astype(int)
        out[i, :top] = 0
        out[i, size_y - bottom :] = 0
        out[i, :, :left] = 0
        out[i, :, size_x - right :] = 0
    return out


# Each draws its level at random within a site-sized range (those of the stress test's conditions:
# core.evidence.stress.PERTURBATIONS), for one (1, s, s, 1) image.
ACQUISITION_CHANGES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "JPEG quality 10-50": lambda p, rng: acquisition.jpeg(p, int(rng.integers(10, 51))),
    "gamma 0.6-1.6": lambda p, rng: acquisition.gamma(p, float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))),
    "exposure ×0.7-×1.3": lambda p, rng: acquisition.exposure(p, float(rng.uniform(0.7, 1.3))),
    "resolution ÷2-÷4 and back": lambda p, rng: acquisition.down_up(p, int(rng.integers(2, 5))),
}


def change_acquisition(pixels: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of (n, s, s, 1) images where each, with `probability`, has one of `ACQUISITION_CHANGES`
    (drawn with its level)."""
    out = np.array(pixels, copy=True)
    changes = list(ACQUISITION_CHANGES.values())
    for i in np.flatnonzero(rng.random(len(out)) < probability):
        out[i : i + 1] = changes[int(rng.integers(len(changes)))](out[i : i + 1], rng)
    return out


def add_noise(pixels: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(n, s, s, 1) images with Gaussian noise added, each with its own standard deviation drawn up
    to `noise` of the 0..255 range (`acquisition.noise`)."""
    out = np.empty_like(pixels)
    for i in range(len(pixels)):
        out[i : i + 1] = acquisition.noise(pixels[i : i + 1], float(rng.uniform(0, noise * 255.0)), seed=int(rng.integers(2**32)))
    return out


# --------------------------------------------------------------------------
# Test-time views
# --------------------------------------------------------------------------


def tta_views(pixels: np.ndarray, views: int) -> list[np.ndarray]:
    """The first `views` fixed views of each image, uint8 (n, s, s, c) each.

    In order: the image itself, a 7 % zoom on the centre, and shifts of 4 % of the side to the
    left, right, up and down (edges repeated). Mild on purpose: every view must still be a
    plausible X-ray of the same child.
    """
    pixels = np.asarray(pixels)
    makers = [lambda p: p, _center_zoom, *(lambda p, d=d: _shift(p, *d) for d in ((0, -1), (0, 1), (-1, 0), (1, 0)))]
    if not 1 <= views <= len(makers):
        raise ValueError(f"test-time augmentation takes 1 to {len(makers)} views, not {views}")
    return [make(pixels) for make in makers[:views]]


TTA_MAX_VIEWS = 6


def _center_zoom(pixels: np.ndarray, fraction: float = 0.07) -> np.ndarray:
    from PIL import Image

    size = pixels.shape[1]
    margin = max(1, round(size * fraction / 2))
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        crop = image[margin : size - margin, margin : size - margin, 0]
        out[i, ..., 0] = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    return out


def _shift(pixels: np.ndarray, dy: int, dx: int, fraction: float = 0.04) -> np.ndarray:
    step = max(1, round(pixels.shape[1] * fraction))
    pad = ((0, 0), (step, step), (step, step), (0, 0))
    padded = np.pad(pixels, pad, mode="edge")
    y0, x0 = step + dy * step, step + dx * step
    return padded[:, y0 : y0 + pixels.shape[1], x0 : x0 + pixels.shape[2]]
