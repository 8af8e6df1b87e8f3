"""The frozen-backbone feature cache: each image goes through a frozen backbone once, ever.

In frozen mode the backbone never changes, so its pooled features are computed once per image and
stored on disk, keyed by what fixes them (architecture, width, input size, weights) and by each
image's identity (path, size, modification time). Every trial and epoch of every search then
trains a small head on these vectors. A file lock lets two processes share one cache safely.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import files
from core.data import folders, loading
from core.models.backbones import BackboneSpec

if TYPE_CHECKING:
    import keras

CHUNK = 256  # images decoded and pushed through the backbone at a time: bounded memory, steady progress


def weights_identity(spec: BackboneSpec) -> str:
    """What the weights setting means for the features: a file's identity, or the setting itself."""
    if spec.weights in ("imagenet", "none"):
        return spec.weights
    stat = os.stat(spec.weights)
    return f"{os.path.abspath(spec.weights)}|{stat.st_size}|{stat.st_mtime_ns}"


def backbone_key(spec: BackboneSpec, seed: int = 0) -> str:
    import keras

    # Random ("none") weights depend on the seed; real weights do not.
    seed_part = f"|seed{seed}" if spec.weights == "none" else ""
    text = f"features-v1|{spec.architecture}|{spec.alpha}|{spec.image_size}|{weights_identity(spec)}{seed_part}|keras{keras.__version__}"
    return f"{spec.architecture}-{spec.image_size}px-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def image_key(path: str) -> str:
    try:
        stat = os.stat(path)
        identity = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = f"{os.path.abspath(path)}|missing"
    return hashlib.sha1(identity.encode()).hexdigest()[:20]


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return stored["keys"], stored["features"]
    except (OSError, ValueError, KeyError):
        return np.array([], dtype="U20"), np.zeros((0, 0), np.float32)


def _write_cache(path: Path, keys: np.ndarray, values: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, keys=keys, features=values)

    files.atomic_write(path, write)


def cached_features(
    backbone: keras.Model,
    spec: BackboneSpec,
    paths: list[str],
    image_size: int,
    cache_dir: str | os.PathLike,
    engine: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
    stop: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[folders.UnreadableFile]]:
    """Pooled backbone features for `paths`, computing only the ones not cached yet.

    Returns (features in the order of `paths`, files that could not be decoded); the rows of
    undecodable files are zeros and are not cached, so a fixed file is picked up next time.
    """
    from core.models.engine import make_engine

    key = backbone_key(spec, seed)
    cache_dir = Path(cache_dir)
    cache_file = cache_dir / "features" / f"{key}.npz"
    wanted = [image_key(p) for p in paths]
    with files.file_lock(cache_file.with_suffix(".lock")):  # waits while another process fills the same cache
        keys, values = _read_cache(cache_file)
        known = {k: i for i, k in enumerate(keys)}
        missing = [i for i, k in enumerate(wanted) if k not in known]
        errors: list[folders.UnreadableFile] = []
        if missing:
            runner = make_engine(backbone, engine, cache_path=cache_dir / "engines" / f"{key}.tflite")
            log(f"backbone pass: {len(missing)} of {len(paths)} images ({len(paths) - len(missing)} cached), engine {runner.name}")
            new_values, errors = _compute(runner, [paths[i] for i in missing], image_size, progress, stop)
            ok = [j for j, i in enumerate(missing) if paths[i] not in {e.path for e in errors}]
            new_keys = np.array([wanted[missing[j]] for j in ok], dtype="U20")
            if len(values):
                keys, values = np.concatenate([keys, new_keys]), np.concatenate([values, new_values[ok]])
            else:
                keys, values = new_keys, new_values[ok]
            _write_cache(cache_file, keys, values)
            known = {k: i for i, k in enumerate(keys)}
        else:
            log(f"backbone pass skipped: all {len(paths)} images are in the feature cache")
    width = values.shape[1] if len(values) else backbone.output_shape[-1]
    out = np.zeros((len(paths), width), np.float32)
    for row, k in enumerate(wanted):
        if k in known:
            out[row] = values[known[k]]
    return out, errors


def _compute(runner, paths: list[str], image_size: int, progress, stop) -> tuple[np.ndarray, list]:
    """Decode chunk i+1 in a thread while the backbone runs on chunk i."""
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    outputs, errors = [], []
    with ThreadPoolExecutor(max_workers=1) as decoder:
        pending = decoder.submit(loading.load_images, chunks[0], image_size) if chunks else None
        for n, _ in enumerate(chunks):
            pixels, chunk_errors = pending.result()
            if n + 1 < len(chunks):
                pending = decoder.submit(loading.load_images, chunks[n + 1], image_size)
            if stop:
                stop()
            outputs.append(runner.predict(loading.to_network_input(pixels), batch_size=32))
            errors += chunk_errors
            if progress:
                progress(min(len(paths), (n + 1) * CHUNK), len(paths))
    return np.concatenate(outputs).astype(np.float32), errors
