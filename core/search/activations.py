"""Cut-point fine-tuning: train the top of a backbone on cached activations of its bottom.

Fine-tuning the top blocks of an ImageNet backbone makes its features fit chest X-rays, and that
is what holds up on an external test split. Pushing every image through the whole backbone every
epoch costs minutes per epoch on a CPU, though, while the bottom of the backbone never changes.
So the backbone is cut at a layer (`cut`): the frozen part below runs once per image, its
activations are stored on disk (float16, memory-mapped), and the search trains only the part above
the cut plus a new head on those activations. Augmentation happens before the cut: `views`
augmented copies of each training image are cached too, and each epoch draws one of them per image.

The cache is keyed by everything that fixes the activations: the backbone (architecture, width,
input size, weights), the cut, the images (path, size, modification time) and, for the augmented
views, the augmentation, the number of views and the seed. Batch norms above the cut stay in
inference mode, as in frozen transfer learning. The saved model joins bottom, top and head again,
so it takes pixels like every other model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from core import files
from core.data import augmentation, folders, loading
from core.models.backbone_cut import CutBackbone
from core.models.backbones import BackboneSpec
from core.search.features import image_key, weights_identity

CHUNK = 256  # images decoded and pushed through the bottom at a time


# --------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------


def cache_key(spec: BackboneSpec, cut: str, seed: int = 0) -> str:
    seed_part = f"|seed{seed}" if spec.weights == "none" else ""
    text = f"activations-v1|{spec.architecture}|{spec.alpha}|{spec.image_size}|{weights_identity(spec)}{seed_part}|{cut}|keras{keras.__version__}"
    return f"{spec.architecture}-{spec.image_size}px-{cut}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def views_key(augment: augmentation.Augmentation, views: int, seed: int) -> str:
    text = f"views-v1|{augment}|{views}|{seed}" + (f"|border{augment.border_erase}" if augment.border_erase else "")
    text += (f"|noise{augment.noise}" if augment.noise else "") + (f"|acquisition{augment.acquisition}" if augment.acquisition else "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _images_key(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(image_key(path).encode())
    return digest.hexdigest()[:16]


@dataclass
class CachedActivations:
    """Activations of every image (`clean`, (n, h, w, c)) and of `views` augmented copies of the
    training images (`views`, (k, n_train, h, w, c), or None); float16, memory-mapped."""

    clean: np.ndarray
    views: np.ndarray | None
    errors: list[folders.UnreadableFile]
    files: list[Path]


def cached_activations(
    cut: CutBackbone,
    spec: BackboneSpec,
    paths: list[str],
    train_rows: np.ndarray,
    cache_dir: str | os.PathLike,
    augment: augmentation.Augmentation,
    views: int,
    seed: int = 0,
    engine: str = "auto",
    progress: Callable[[str], None] | None = None,
    log: Callable[[str], None] = print,
    stop: Callable[[], None] | None = None,
    views_seed: int | None = None,
) -> CachedActivations:
    """Activations below the cut for `paths`, and augmented views of the rows in `train_rows`,
    drawn with `views_seed` (default: `seed`, which also draws a random bottom's weights).

    Computed once and then read back memory-mapped; two processes share one cache safely.
    """
    from core.models.engine import make_engine

    views_seed = seed if views_seed is None else views_seed
    key = cache_key(spec, cut.cut, seed)
    folder = Path(cache_dir) / "activations"
    clean_file = folder / f"{key}-{_images_key(paths)}.npy"
    train_paths = [paths[i] for i in np.flatnonzero(train_rows)]
    augmented = not augment.is_off and views > 0
    views_file = folder / f"{key}-{_images_key(train_paths)}-views-{views_key(augment, views, views_seed)}.npy" if augmented else None
    errors_file = clean_file.with_suffix(".errors.csv")
    with files.file_lock(folder / f"{key}.lock"):
        runner = None

        def bottom_pass(pixels: np.ndarray) -> np.ndarray:
            nonlocal runner
            if runner is None:
                runner = make_engine(cut.bottom, engine, cache_path=Path(cache_dir) / "engines" / f"{key}.tflite")
            return runner.predict(loading.to_network_input(pixels), batch_size=32).astype(np.float16)

        if not _usable(clean_file, (len(paths), *cut.activation_shape)):
            log(f"bottom pass below {cut.cut}: {len(paths)} images")
            errors = _fill(clean_file, paths, spec.image_size, cut.activation_shape, bottom_pass, None, progress, stop, "activations")
            files.write_csv(errors_file, _errors_frame(errors))
        else:
            log(f"bottom pass skipped: {len(paths)} images are in the activation cache")
        stored = files.read_csv(errors_file) if errors_file.exists() else _errors_frame([])
        errors = [folders.UnreadableFile(p, r) for p, r in zip(stored["path"], stored["reason"], strict=True)]
        if augmented and not _usable(views_file, (views, len(train_paths), *cut.activation_shape)):
            log(f"caching {views} augmented views of {len(train_paths)} training images ({augment.describe()})")

            def make_views(pixels: np.ndarray, start: int) -> np.ndarray:
                return augmentation.augmented_views(pixels, augment, views, seed=views_seed + start)

            _fill(views_file, train_paths, spec.image_size, cut.activation_shape, bottom_pass, (views, make_views), progress, stop, "augmented views")
    clean = np.load(clean_file, mmap_mode="r")
    view_array = np.load(views_file, mmap_mode="r") if augmented else None
    return CachedActivations(clean, view_array, errors, [f for f in (clean_file, views_file) if f])


def stressed_activations(
    cut: CutBackbone,
    spec: BackboneSpec,
    val_paths: list[str],
    val_pixels: np.ndarray,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    engine: str = "auto",
    log: Callable[[str], None] = print,
    stop: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """Activations below the cut of the validation images under each stress-test change
    (`core.evidence.stress.PERTURBATIONS`), by change; float32, cached, memory-mapped.

    Every cut-point run of one backbone and cut scores the same changed validation images, and the
    bottom below the cut is the same frozen network in each: the first run fills this cache, and
    the later ones (a recipe's next steps) pass only their own top over it. float32, not the
    training cache's float16, so the scores are bit for bit those of the saved model on the changed
    pixels (tests/test_finetune.py).
    """
    from core.evidence import stress
    from core.models.engine import make_engine

    names = list(stress.PERTURBATIONS)
    key = cache_key(spec, cut.cut, seed)
    folder = Path(cache_dir) / "activations"
    changes = hashlib.sha256(("stress-v1|" + "|".join(names)).encode()).hexdigest()[:12]
    path = folder / f"{key}-{_images_key(val_paths)}-stress-{changes}.npy"
    shape = (len(names), len(val_paths), *cut.activation_shape)
    with files.file_lock(folder / f"{key}.lock"):
        if _usable(path, shape):
            log(f"stress test: the bottom pass of {len(val_paths)} changed validation images is cached")
        else:
            log(f"stress test: bottom pass below {cut.cut} of {len(val_paths)} validation images, {len(names)} changes")
            runner = make_engine(cut.bottom, engine, cache_path=Path(cache_dir) / "engines" / f"{key}.tflite")

            def write(tmp: Path) -> None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                for i, change in enumerate(stress.PERTURBATIONS.values()):
                    if stop:
                        stop()
                    out[i] = runner.predict(loading.to_network_input(change(val_pixels)), batch_size=32)
                out.flush()
                del out

            files.atomic_write(path, write)  # the lock above made the folder
    stored = np.load(path, mmap_mode="r")
    return dict(zip(names, stored, strict=True))


def _errors_frame(errors: list[folders.UnreadableFile]):
    import pandas as pd

    return pd.DataFrame([(e.path, e.reason) for e in errors], columns=["path", "reason"])


def _usable(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        return np.load(path, mmap_mode="r").shape == shape
    except (OSError, ValueError):
        return False


def _fill(path: Path, paths, image_size, shape, bottom_pass, views, progress, stop, what) -> list[folders.UnreadableFile]:
    """Write the activations of `paths` (or of their augmented views) into a new .npy, atomically."""
    n_views, make_views = views if views else (None, None)
    full_shape = (n_views, len(paths), *shape) if views else (len(paths), *shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[folders.UnreadableFile] = []

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=full_shape)
        for start in range(0, len(paths), CHUNK):
            if stop:
                stop()
            pixels, chunk_errors = loading.load_images(paths[start : start + CHUNK], image_size)
            errors.extend(chunk_errors)
            end = start + len(pixels)
            if views:
                for v, view in enumerate(make_views(pixels, start)):
                    out[v, start:end] = bottom_pass(view)
            else:
                out[start:end] = bottom_pass(pixels)
            if progress:
                progress(f"{what} {end}/{len(paths)}")
        out.flush()
        del out

    files.atomic_write(path, write)
    return errors


# --------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------


def training_dataset(views: np.ndarray | None, clean: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     view_index: np.ndarray | None = None):
    """A tf.data pipeline over cached activations that draws one augmented view per image per epoch.

    `clean` and `labels` are the training rows; `views` is (k, n, ...) or None (no augmentation), its
    columns the training rows, or with `view_index` any rows: training row i is column view_index[i]
    (a cross-fit's fold trains on part of the rows it cached views of, without copying them).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = len(labels)

    def gather(index: np.ndarray) -> np.ndarray:
        if views is None:
            return np.asarray(clean[index], np.float32)
        view = rng.integers(0, len(views), len(index))
        columns = index if view_index is None else view_index[index]
        return np.stack([views[v, i] for v, i in zip(view, columns, strict=True)]).astype(np.float32)

    shape = clean.shape[1:]
    indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def load(index):
        x = tf.numpy_function(gather, [index], tf.float32)
        x.set_shape((None, *shape))
        y = tf.gather(tf.constant(labels), index)
        return x, y

    return loading.without_autotune(indices.map(load, num_parallel_calls=1).prefetch(loading.PREFETCH_BATCHES))
