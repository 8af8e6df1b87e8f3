"""Pixels: an image file decoded to the RGB array a network takes, the per-size pixel cache, and
TensorFlow datasets of them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from core.data.folders import UnreadableFile
from core.files import read_csv, write_csv, write_npy


def decode_image(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Decode one X-ray file to a grayscale ("L") PIL image at its own size: the one decoder.

    Handles what real folders hold: EXIF rotation, 16-bit PNGs (rescaled to the image's own range,
    not clipped), CMYK, and alpha (flattened on black). A decompression bomb is refused. With
    `size` (the square the caller will resize to), a big JPEG is decoded at a reduced scale no
    smaller than that: much faster, and what every model here was trained on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if size is not None and image.format == "JPEG":
                image.draft("L", (size, size))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float32)
                low, high = float(pixels.min()), float(pixels.max())
                pixels = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
                return Image.fromarray(pixels.astype(np.uint8), mode="L")
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            return image.convert("L")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one X-ray (`decode_image`) to a (size, size, 1) uint8 grayscale array.

    Images are squashed to a square, as the backbones were trained on; X-rays are grayscale, so one
    channel is stored and repeated to three only when fed to a network.
    """
    image = decode_image(path, size).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)[..., None]


def _fingerprint(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(f"pixels-v1|{size}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"|{path}|missing".encode())
    return digest.hexdigest()[:24]


def load_images(
    paths: list[str], size: int, cache_dir: str | os.PathLike | None = None, progress=None
) -> tuple[np.ndarray, list[UnreadableFile]]:
    """Decode `paths` at `size` into an (n, size, size, 1) uint8 array, once per size.

    With `cache_dir`, the array is saved there keyed by the files (path, size, mtime) and the input
    size, so the next run with the same images skips decoding. Files that fail to decode come back
    as all-zero images and in the list of failures; callers drop them.
    """
    cache_file = Path(cache_dir) / f"pixels-{_fingerprint(paths, size)}.npy" if cache_dir else None
    errors_file = cache_file.with_suffix(".errors.csv") if cache_file else None
    if cache_file and cache_file.exists():
        try:
            pixels = np.load(cache_file, mmap_mode="r")
            errors = read_csv(errors_file) if errors_file.exists() else pd.DataFrame(columns=["path", "reason"])
            if pixels.shape == (len(paths), size, size, 1):
                return pixels, [UnreadableFile(p, r) for p, r in zip(errors["path"], errors["reason"], strict=True)]
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below

    pixels = np.zeros((len(paths), size, size, 1), dtype=np.uint8)
    errors: list[UnreadableFile] = []

    def decode(i: int) -> None:
        try:
            pixels[i] = load_image(paths[i], size)
        except Exception as error:  # any decoder failure means "skip this file", never a crash
            errors.append(UnreadableFile(paths[i], f"cannot decode image: {error}"))

    with ThreadPoolExecutor(max_workers=max(2, usable_cores())) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if progress and (done % 200 == 0 or done == len(paths)):
                progress(done, len(paths))
    if cache_file:
        write_csv(errors_file, pd.DataFrame([(e.path, e.reason) for e in errors], columns=["path", "reason"]))
        write_npy(cache_file, pixels)
    return pixels, errors


def usable_cores() -> int:
    """CPU cores this process may use (respects CPU affinity, unlike a bare `os.cpu_count`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not available on macOS / Windows
        return max(1, os.cpu_count() or 1)


def make_tf_dataset(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 32, shuffle: bool = False, seed: int = 42):
    """A tf.data pipeline over decoded pixels or cached features.

    Pixels stay uint8 with one channel in memory; the map step turns them into the float RGB the
    networks take, one image per core at a time, overlapped with training by `prefetch`.
    """
    import tensorflow as tf

    inputs = tf.data.Dataset.from_tensor_slices(x)
    if x.ndim == 4:
        inputs = inputs.map(_to_network_input, num_parallel_calls=usable_cores(), deterministic=True)
    dataset = inputs if y is None else tf.data.Dataset.zip((inputs, tf.data.Dataset.from_tensor_slices(y)))
    if shuffle:
        dataset = dataset.shuffle(min(len(x), 4096), seed=seed, reshuffle_each_iteration=True)
    return without_autotune(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))


PREFETCH_BATCHES = 2  # batches prepared ahead: a pipeline that keeps up with one step keeps up with two


def without_autotune(dataset):
    """`dataset` without tf.data's autotuning thread, the way every training pipeline here runs.

    Keras makes a new iterator over the training and validation datasets every epoch. With autotuning
    on, deleting an iterator waits for its tuning thread to wake from its sleep: measured on 2 cores,
    that cost 0-10 s per epoch (a 3-epoch fine-tuning fit took 54-63 s instead of 38 s) and bought
    nothing, since these pipelines are a gather and a cast. The data and their order are unchanged.
    `tests/test_data.py` checks the option stays set.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _to_network_input(pixels):
    import tensorflow as tf

    rgb = tf.image.grayscale_to_rgb(pixels) if pixels.shape[-1] == 1 else pixels
    return tf.cast(rgb, tf.float32)


def to_network_input(pixels: np.ndarray) -> np.ndarray:
    """Numpy twin of the pipeline's map step: (n, s, s, 1) uint8 -> (n, s, s, 3) float32 in 0..255."""
    pixels = np.asarray(pixels)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels.astype(np.float32)
