"""Where a model looks through its feature maps: Grad-CAM, Grad-CAM++, and overlays.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by how much
the pneumonia score grows with it (the spatially averaged gradient) and keeps the positive part of
the weighted sum: the regions that push the model towards "pneumonia". Grad-CAM++ (Chattopadhay et
al., 2018) weighs each position's gradient instead of averaging them. Both read the same
activations and gradients (`feature_map_gradients`); the other methods, and which one a run is
explained with, are `core.inference.methods`.

The saved models nest graphs inside graphs (a keras.applications base inside a backbone inside a
classifier), so a sub-model from the input to an inner layer cannot be built. Instead the chosen
layer's `call` is wrapped for one forward pass: its output is captured and watched by a
`tf.GradientTape`, which works the same for flat, nested and reloaded models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data import loading
from core.evidence.heatmap_grid import stretch

if TYPE_CHECKING:
    import keras


COLORMAPS = ("jet", "turbo")

# Explanations swap a method on layers of a model that other threads (dashboard sessions sharing a
# cached model) may use at the same time; one explanation at a time keeps the swaps from nesting.
# Every module that wraps a layer's call (gradients, attention) holds this one lock.
LOCK = threading.Lock()


# --------------------------------------------------------------------------
# The feature map
# --------------------------------------------------------------------------


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _nodes_in_order(model) -> list:
    """The graph's nodes from input to output, keeping only cut points.

    A cut point is a node every path from the input to the output goes through: the output of a
    whole block (an Add, a Concatenate, a block's final activation), never a layer inside one
    branch of an Inception or residual block, whose gradients would tell only part of the story.
    A Functional graph knows each node's depth (the longest path to the output), and edges run
    from deeper to shallower nodes, so a node is a cut point when it is alone at its depth and no
    edge jumps over that depth.
    """
    by_depth = getattr(model, "_nodes_by_depth", None)
    if not by_depth:
        return []
    depth_of = {id(node): depth for depth, nodes in by_depth.items() for node in nodes}
    jumped: set[int] = set()
    for depth, nodes in by_depth.items():
        for node in nodes:
            for parent in node.parent_nodes:
                if id(parent) in depth_of:
                    jumped.update(range(depth + 1, depth_of[id(parent)]))
    return [
        by_depth[depth][0]
        for depth in sorted(by_depth, reverse=True)
        if len(by_depth[depth]) == 1 and depth not in jumped
    ]


def _candidates(model) -> Iterator[tuple[object, tuple]]:
    """(layer, output shape) of every cut point, nested models searched in place, in graph order."""
    nodes = _nodes_in_order(model)
    if not nodes:  # not a Functional graph (a subclassed model): its layers in their own order
        for layer in model.layers:
            if _is_model(layer):
                yield from _candidates(layer)
            else:
                try:
                    yield layer, tuple(layer.output.shape)
                except (AttributeError, ValueError):
                    continue  # never called symbolically: no known output shape
        return
    for node in nodes:
        layer = node.operation
        if layer is None or node.is_input:
            continue  # an Input is not a feature map, and its call never runs
        if _is_model(layer):
            # Search inside instead of taking the nested model: its last feature map is usually
            # hidden behind the GlobalAveragePooling that ends a keras.applications base.
            yield from _candidates(layer)
        elif len(node.outputs) == 1:
            yield layer, tuple(node.outputs[0].shape)


def find_last_feature_map(model: keras.Model) -> keras.layers.Layer:
    """The last layer whose output is a spatial feature map (batch, h, w, channels) with h, w > 1.

    Nested models are searched recursively, in graph order, and only layers that all paths from
    input to output go through count (see `_nodes_in_order`). The global pooling at the end of a
    base has a 2-D output, so the search lands on the layer before it (e.g. MobileNetV2's
    `out_relu`, InceptionV3's `mixed10`); when the last blocks are 1x1 (InceptionV3 at 75 px) it
    falls back to the last block that still has a spatial extent.
    """
    last = None
    for layer, shape in _candidates(model):
        if len(shape) == 4 and all(d is not None and d > 1 for d in shape[1:3]):
            last = layer
    if last is None:
        raise ValueError(f"model {model.name!r} has no spatial feature map with height and width > 1")
    return last


def output_dense(model):
    """The Dense layer that makes the model's output, or None when the output is something else."""
    import keras

    layer = model
    while _is_model(layer):
        history = getattr(layer.outputs[0], "_keras_history", None)
        layer = history[0] if history else layer.layers[-1]
    return layer if isinstance(layer, keras.layers.Dense) else None


# --------------------------------------------------------------------------
# Grad-CAM and Grad-CAM++
# --------------------------------------------------------------------------


@contextmanager
def swapped_call(layer, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """While open, `layer.call` is `wrap(original)` for calls made by this thread; other threads
    running the model meanwhile pass straight through to the original.

    The instance attribute shadows the class's method only until the block ends (attention
    rollout swaps a MultiHeadAttention's call the same way).
    """
    original = layer.call
    had_own = "call" in vars(layer)
    thread = threading.get_ident()
    wrapped = wrap(original)

    def call(*args, **kwargs):
        return wrapped(*args, **kwargs) if threading.get_ident() == thread else original(*args, **kwargs)

    # object.__setattr__: Keras' attribute tracking has no business with a temporary method.
    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        if had_own:
            object.__setattr__(layer, "call", original)
        else:
            object.__delattr__(layer, "call")


def _intercept(layer, on_output: Callable[[tuple, object], None]):
    """Wrap `layer.call` so that `on_output(args, output)` sees every call made by this thread."""

    def wrap(original: Callable) -> Callable:
        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            on_output(args, output)
            return output

        return call

    return swapped_call(layer, wrap)


def network_input(image: np.ndarray, model) -> np.ndarray:
    """One image as a batch of one (1, S, S, 3) float32 in 0..255, checked against the model."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (S, S, 3) or (S, S, 1) image, got shape {pixels.shape}")
    if pixels.shape[-1] == 1:  # grayscale X-ray: repeated to RGB as the networks expect
        pixels = np.repeat(pixels, 3, axis=-1)
    expected = tuple(model.input_shape[1:3])
    if all(d is not None for d in expected) and pixels.shape[:2] != expected:
        raise ValueError(f"image is {pixels.shape[0]}x{pixels.shape[1]} but the model takes {expected[0]}x{expected[1]}")
    return pixels.astype(np.float32)[None]


def class_score(model: keras.Model, x, class_index: int | None = None, column: int | None = None):
    """The explained class's score for each image of the batch `x`, recorded by the tape in use.

    Call inside a `tf.GradientTape` while holding `LOCK`. The class is the positive one of a
    sigmoid model (pneumonia; viral for bacterial vs viral); for a softmax model it is
    `class_index`, by default the predicted class of the first image (the argmax of its output).
    `column` fixes the output column instead (a batch of noisy copies explains the clean image's).
    Returns (score (n,), the output column explained).

    The score is the logit (pre-sigmoid value) of that class whenever the output layer is a Dense
    layer, computed from that layer's own inputs, kernel and bias. The probability would give the
    same normalised maps (its gradient is the logit's times p(1 - p), one positive factor) except
    that a confident model saturates the sigmoid: p(1 - p) rounds to 0 in float32 and every
    gradient vanishes. Other output layers fall back to the probability.
    """
    import tensorflow as tf

    dense = output_dense(model)
    dense_inputs: list = []
    if dense is None:
        probabilities = model(x, training=False)
    else:
        with _intercept(dense, lambda args, _output: dense_inputs.append(args[0])):
            probabilities = model(x, training=False)
    column = explained_column(probabilities, class_index) if column is None else column
    if dense_inputs:
        logits = tf.matmul(dense_inputs[-1], dense.kernel)
        if dense.use_bias:
            logits = logits + dense.bias
        return logits[:, column], column
    return probabilities[:, column], column


def feature_map_gradients(
    model: keras.Model, image: np.ndarray, layer: keras.layers.Layer | None = None, class_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(activations A, gradients d score / d A) of one image at `layer`, both (h, w, channels) float64.

    `layer` defaults to `find_last_feature_map(model)`; the score is `class_score`'s. What Grad-CAM
    and Grad-CAM++ weigh differently.
    """
    import tensorflow as tf

    x = tf.constant(network_input(image, model))
    layer = layer or find_last_feature_map(model)
    feature_maps: list = []

    with LOCK, tf.GradientTape() as tape:

        def capture(_args, output):
            tape.watch(output)  # the tape then records everything computed from it
            feature_maps.append(output)

        with _intercept(layer, capture):
            score, _ = class_score(model, x, class_index)
        if not feature_maps:
            raise ValueError(f"layer {layer.name!r} did not run in the forward pass of {model.name!r}")
    feature_map = feature_maps[-1]  # a shared layer runs more than once: the last call feeds the output
    gradients = tape.gradient(score, feature_map)
    if gradients is None:
        raise ValueError(f"the output of {model.name!r} does not depend on layer {layer.name!r}")
    return feature_map.numpy()[0].astype(np.float64), gradients.numpy()[0].astype(np.float64)


def normalised(heat: np.ndarray) -> np.ndarray:
    """ReLU(heat) divided by its maximum, float32; all zeros when nothing is positive (or not finite)."""
    heat = np.maximum(np.nan_to_num(np.asarray(heat, np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    peak = heat.max() if heat.size else 0.0
    if peak <= 0:  # vanished gradients or no positive evidence
        return np.zeros(heat.shape, np.float32)
    return (heat / peak).astype(np.float32)


def grad_cam(
    model: keras.Model, image: np.ndarray, layer: keras.layers.Layer | None = None, class_index: int | None = None
) -> np.ndarray:
    """Grad-CAM heatmap of one class: (h, w) in [0, 1] at the feature map's resolution.

    The class is `class_score`'s. `image` is (S, S, 3) float in 0..255 or (S, S, 1) uint8; `layer`
    defaults to `find_last_feature_map(model)`. The map is ReLU(sum_k alpha_k A_k), with alpha_k
    the mean over positions of d score / d A_k, divided by its maximum; all zeros when nothing in
    the image speaks for the class.
    """
    activations, gradients = feature_map_gradients(model, image, layer, class_index)
    weights = gradients.mean(axis=(0, 1))  # alpha_k: one weight per channel
    return normalised(activations @ weights)


def grad_cam_plus_plus(
    model: keras.Model, image: np.ndarray, layer: keras.layers.Layer | None = None, class_index: int | None = None
) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al., 2018) of one class: (h, w) in [0, 1], as `grad_cam`.

    Each position's gradient is weighted by alpha = g^2 / (2 g^2 + sum_ab(A) g^3) (0 where the
    denominator is 0) before the channel weights w_k = sum_ij alpha relu(g) are summed, so several
    separate regions of one class all count, where Grad-CAM's plain mean favours the largest. The
    closed form assumes an exponential score: on a logit it is the usual approximation.
    """
    activations, gradients = feature_map_gradients(model, image, layer, class_index)
    g2, g3 = gradients**2, gradients**3
    denominator = 2.0 * g2 + activations.sum(axis=(0, 1)) * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
    weights = (alpha * np.maximum(gradients, 0.0)).sum(axis=(0, 1))
    return normalised(activations @ weights)


def explained_column(probabilities, class_index: int | None) -> int:
    """The output column explained: a sigmoid's only one; for a softmax the chosen class, else the first image's predicted one."""
    width = int(probabilities.shape[-1])
    if width == 1:
        return 0
    if class_index is None:
        return int(np.argmax(np.asarray(probabilities)[0]))
    if not 0 <= int(class_index) < width:
        raise ValueError(f"class {class_index} does not exist: the model has {width} classes")
    return int(class_index)


# --------------------------------------------------------------------------
# Originals, ensembles
# --------------------------------------------------------------------------


def load_original(path: str | Path) -> Image.Image:
    """An X-ray at its own size as grayscale ("L"), decoded as the network's input is (`loading.decode_image`)."""
    return loading.decode_image(path)


def combine_heatmaps(heatmaps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """An ensemble's Grad-CAM: the weighted mean of its members' heatmaps, divided by its maximum.

    Members see different input sizes, so their maps differ in size: each is resized (bilinear)
    to the largest one first. Like every Grad-CAM here the result is in [0, 1] with 1 at its
    hottest point, and all zeros when no member finds anything pointing to pneumonia.
    """
    if not heatmaps or len(heatmaps) != len(weights):
        raise ValueError("combining heatmaps needs one weight per heatmap, and at least one")
    height = max(np.asarray(h).shape[0] for h in heatmaps)
    width = max(np.asarray(h).shape[1] for h in heatmaps)
    total = np.zeros((height, width), np.float64)
    for heatmap, weight in zip(heatmaps, weights, strict=True):
        total += float(weight) * stretch(heatmap, width, height).astype(np.float64)
    total = np.maximum(total, 0.0)
    peak = total.max()
    return (total / peak).astype(np.float32) if np.isfinite(peak) and peak > 0 else np.zeros((height, width), np.float32)


# --------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3), with a small built-in colormap (no matplotlib)."""
    x = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0)
    if colormap == "jet":
        # Piecewise-linear jet: blue -> cyan -> yellow -> red, each channel a clipped tent.
        rgb = np.stack([1.5 - np.abs(4 * x - c) for c in (3.0, 2.0, 1.0)], axis=-1)
    elif colormap == "turbo":
        # Polynomial fit of Google's Turbo (A. Mikhailov, 2019): jet-like but perceptually smoother.
        coefficients = (
            (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
            (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
            (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
        )
        rgb = np.stack([np.polynomial.polynomial.polyval(x, c) for c in coefficients], axis=-1)
    else:
        raise ValueError(f"unknown colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _as_rgb(original: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(original, Image.Image):
        return np.asarray(original.convert("RGB"), dtype=np.uint8)
    pixels = np.asarray(original)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels.astype(np.float64)), 0, 255).astype(np.uint8)
    return pixels


def overlay(
    original: Image.Image | np.ndarray, heatmap: np.ndarray, opacity: float = 0.4, colormap: str = "jet"
) -> Image.Image:
    """The coloured heatmap blended over the original image, as an RGB image of the original's size.

    The heatmap is stretched to the original's own width and height (not the square network
    input), which undoes the squashing `loading.load_image` applied before the network saw it.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = _as_rgb(original)
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {heat.shape}")
    height, width = base.shape[:2]
    resized = stretch(heat, width, height)  # the same stretch the region outlines and the evidence use
    colours = colorize(resized, colormap).astype(np.float64)
    blended = (1.0 - opacity) * base.astype(np.float64) + opacity * colours
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), mode="RGB")
