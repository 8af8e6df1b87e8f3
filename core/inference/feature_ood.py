"""Say when an image is unusual in the run's own feature space: the Mahalanobis distance of its pooled features.

The image statistics of `core.inference.ood` see brightness, contrast and colour, so a greyscale
photograph with an X-ray's histogram passes them. This detector looks where the model looks: the
pooled feature vector its backbone hands to the classification head (the input of the head's first
layer, `head_entry`), read during one batched forward pass of the run's own Keras model.

Reference (Lee et al., 2018, without the class split): the mean and the covariance of the features of
the run's training images (at most `MAX_TRAIN`, a seeded sample), the covariance shrunk by Ledoit and
Wolf (2004) so that it is well conditioned with fewer images than dimensions. To keep it small it is
stored by its top `COMPONENTS` eigenvectors and eigenvalues plus the mean of the other eigenvalues
(the rest of the space counted as one isotropic block). An image's score is its Mahalanobis distance
divided by the square root of the number of dimensions (about 1 for a typical training image). The
cut-off is the `QUANTILE`th percentile of the scores of the run's validation images (at most
`MAX_VAL`), never its test images. The reference is saved in the run folder (`REFERENCE`,
written atomically) the first time it is needed, so older runs get one lazily.

An ensemble scores each member with the member's own reference and averages the members' scores,
each divided by its cut-off; it flags an image when that mean exceeds 1. An imported model without
layers (a TF Lite, ONNX or SavedModel file) has no features to read: `head_entry` is None and only
the statistics apply (`core.inference.unusual` says so); an imported Keras model is read behind the
layer that adapts its output.
"""

from __future__ import annotations

import io
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core import files
from core.data import loading
from core.inference import explanation, ood
from core.runs import artifacts

REFERENCE = "ood_features.npz"
VERSION = 1
MAX_TRAIN = 600
MAX_VAL = 400
COMPONENTS = 32
QUANTILE = 99.5
BATCH = 32
KEYS = {"version", "mean", "components", "variances", "rest", "cutoff", "n_train", "n_val"}  # what `fit` saves
METHOD = (
    "Mahalanobis distance of the pooled features (the head's input) to the training images' mean, Ledoit-Wolf "
    f"covariance (top {COMPONENTS} directions kept, the rest as one), over the square root of the dimensions; "
    f"cut-off: the {QUANTILE}th percentile of the validation images' distances"
)


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


def _output_dense(model):
    """The Dense layer making the output (`explanation.output_dense`), also behind one last layer that
    only adapts it (an imported Keras model's `ImportedOutput`); None when there is none."""
    import keras

    if not hasattr(model, "layers"):
        return None
    if (dense := explanation.output_dense(model)) is not None:
        return dense
    try:
        inner = model.outputs[0]._keras_history[0].input._keras_history[0]
    except (AttributeError, IndexError, ValueError):
        return None
    if hasattr(inner, "layers"):
        return explanation.output_dense(inner)
    return inner if isinstance(inner, keras.layers.Dense) else None


def head_entry(model):
    """The first layer of the model's head (the Dropout and Dense layers that end in its output Dense
    layer, searched through nested models), whose input is the pooled feature vector; None when the
    model does not end in a Dense layer or has no layers (an imported TF Lite or ONNX file)."""
    import keras

    layer = _output_dense(model)
    while layer is not None:
        try:
            previous = layer.input._keras_history[0]
        except (AttributeError, ValueError, IndexError):
            break
        if not isinstance(previous, (keras.layers.Dense, keras.layers.Dropout)) or len(previous.input.shape) != 2:
            break
        layer = previous
    return layer


_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _feature_pass(model, layer) -> Callable:
    """The model's forward pass as a compiled function of a batch that returns what `layer` receives,
    made once per model object and process (it lives as long as the model; tracing costs about a
    second, then a batch runs about twice as fast as calling the Keras model). The layer's call is
    swapped only while the function is traced: the captured tensor becomes the graph's output."""
    import tensorflow as tf

    if model in _PASSES:
        return _PASSES[model]
    held = weakref.ref(model)  # the function must not keep the model alive
    captured: list = []

    def wrap(original: Callable) -> Callable:
        def call(*args, **kwargs):
            captured.append(args[0])
            return original(*args, **kwargs)

        return call

    @tf.function(reduce_retracing=True)
    def features(x):
        captured.clear()
        with explanation.swapped_call(layer, wrap):
            held()(x, training=False)
        if not captured:
            raise ValueError(f"layer {layer.name!r} did not run in the forward pass of {held().name!r}")
        return captured[-1]

    _PASSES[model] = features
    return features


def pooled_features(model, pixels: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """The pooled features (n, d) float64 of images (n, S, S, 1 or 3) uint8 at the model's input size:
    what `head_entry` receives in the model's own forward pass, batch by batch. ValueError without one."""
    layer = head_entry(model)
    if layer is None:
        raise ValueError(f"model {getattr(model, 'name', model)!r} has no Dense head to read pooled features from")
    rows = []
    with explanation.LOCK:  # tracing swaps a layer's call, as explanations do
        features = _feature_pass(model, layer)
        for start in range(0, len(pixels), batch_size):
            batch = loading.to_network_input(pixels[start : start + batch_size])
            rows.append(np.asarray(features(batch), np.float64).reshape(len(batch), -1))
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def file_features(model, paths: list[str], size: int) -> tuple[np.ndarray, list[int]]:
    """(pooled features of the readable files, their indices in `paths`)."""
    pixels, readable = [], []
    for i, path in enumerate(paths):
        try:
            pixels.append(loading.load_image(path, size))
            readable.append(i)
        except Exception:  # an unreadable file is left out (the caller says so)
            continue
    if not pixels:
        return np.zeros((0, 0)), []
    return pooled_features(model, np.stack(pixels)), readable


# --------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------


def fit(train: np.ndarray, val: np.ndarray, components: int = COMPONENTS) -> dict:
    """A reference from training features (mean, shrunk covariance) and validation features (cut-off)."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train, np.float64)
    if len(train) < 5:
        raise ValueError(f"too few training images for a feature reference ({len(train)})")
    mean = train.mean(axis=0)
    covariance = LedoitWolf(assume_centered=False).fit(train).covariance_
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    k = min(components, len(eigenvalues) - 1) if len(eigenvalues) > 1 else 1
    rest = eigenvalues[:-k]
    reference = {
        "version": VERSION, "mean": mean, "components": eigenvectors[:, -k:].T.copy(), "variances": np.maximum(eigenvalues[-k:], 1e-12),
        "rest": float(max(rest.mean() if len(rest) else eigenvalues.min(), 1e-12)),
    }
    held_out = val if len(val) else train
    reference.update(cutoff=float(np.percentile(distances(reference, held_out), QUANTILE)), n_train=len(train), n_val=len(val))
    return reference


def distances(reference: dict, features: np.ndarray) -> np.ndarray:
    """Each row's Mahalanobis distance to the training mean, over the square root of the dimensions."""
    centred = np.atleast_2d(np.asarray(features, np.float64)) - reference["mean"]
    projected = centred @ reference["components"].T
    inside = (projected**2 / reference["variances"]).sum(axis=1)
    outside = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0) / reference["rest"]
    return np.sqrt((inside + outside) / centred.shape[1])


def _sample(paths: list[str], limit: int, seed: int) -> list[str]:
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]


def build_reference(model, size: int, train_paths: list[str], val_paths: list[str]) -> dict:
    train, _ = file_features(model, _sample(train_paths, MAX_TRAIN, seed=0), size)
    val, _ = file_features(model, _sample(val_paths, MAX_VAL, seed=1), size)
    return fit(train, val)


def save(path: str | Path, reference: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{key: np.asarray(value) for key, value in reference.items()})

    files.atomic_write(path, write)


def load(path: str | Path) -> dict | None:
    """The saved reference, or None when there is none, it is unreadable or of another version."""
    try:
        with np.load(io.BytesIO(Path(path).read_bytes())) as stored:
            reference = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if int(reference.get("version", -1)) != VERSION or not KEYS <= set(reference):
        return None
    return {key: (value if value.ndim else value.item()) for key, value in reference.items()}


def reference_for(run: artifacts.Run, model) -> dict | None:
    """The run's feature reference: read from its folder, else computed with `model` from its training
    and validation images and saved. None when the model has no head to read features from, the run
    has no `splits.csv`, or its training images are gone."""
    path = run.folder / REFERENCE
    if (stored := load(path)) is not None:
        return stored
    if head_entry(model) is None:
        return None
    if (images := ood.reference_images(run)) is None:
        return None
    try:
        reference = build_reference(model, int(model.input_shape[1]), *images)
    except ValueError:
        return None
    try:
        save(path, reference)
    except OSError:  # a read-only artifacts folder: use it without saving it
        pass
    return reference
