"""A backbone cut in two at a layer: the frozen bottom (pixels -> activations at the cut) and the top
above it (activations -> pooled features), and the two joined again into one model.

Cut-point fine-tuning (`core.search.activations`) trains a fresh top on cached activations of the
bottom; the saved model joins bottom, top and head, so it takes pixels like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


class CutError(ValueError):
    """A cut layer that does not exist or does not split the backbone in two."""


@dataclass
class CutBackbone:
    """A backbone split at `cut`: `bottom` (pixels 0..255 -> activations) and `top` (-> pooled features)."""

    cut: str
    bottom: keras.Model
    top: keras.Model
    initial_weights: list | None = None

    @property
    def activation_shape(self) -> tuple[int, ...]:
        return tuple(self.bottom.output.shape[1:])


def split_backbone(backbone: keras.Model, cut: str) -> CutBackbone:
    """Split a `models.build_backbone` model after layer `cut` of its ImageNet base.

    The top must depend on the cut alone: a residual branch that skips over the cut cannot be
    split there, and the message says so.
    """
    base = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    names = [layer.name for layer in base.layers]
    if cut not in names:
        raise CutError(f"{base.name} has no layer {cut!r}: pick one of its layer names (e.g. {', '.join(names[-12:-8])})")
    cut_tensor = base.get_layer(cut).output
    try:
        top = keras.Model(cut_tensor, base.output, name="top")
    except Exception as error:  # Keras: "graph disconnected" when a branch skips the cut
        raise CutError(f"{base.name} cannot be cut after {cut!r}: a later layer also reads an earlier one ({str(error)[:120]})") from None
    inputs = backbone.input
    preprocess = [layer for layer in backbone.layers if layer.name == "preprocess"]
    x = preprocess[0](inputs) if preprocess else inputs
    bottom = keras.Model(inputs, keras.Model(base.input, cut_tensor, name="bottom_base")(x, training=False), name="bottom")
    bottom.trainable = False
    return CutBackbone(cut, bottom, top)


def fresh_top(cut: CutBackbone) -> keras.Model:
    """A new copy of the top with the backbone's own weights: every trial starts from ImageNet."""
    if cut.initial_weights is None:
        cut.initial_weights = [np.array(w) for w in cut.top.get_weights()]
    top = keras.models.clone_model(cut.top)
    top.set_weights(cut.initial_weights)
    return top


def trainable_top(cut: CutBackbone) -> keras.Model:
    """A fresh top (see `fresh_top`) ready to train: every layer but the batch norms."""
    top = fresh_top(cut)
    top.trainable = True
    for layer in top.layers:  # each layer: a model's flag does not reach layers a clone froze
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return top


def trainable_top_grid(cut: CutBackbone) -> keras.Model:
    """A trainable top (see `trainable_top`) that stops at its last spatial feature map (batch, h, w,
    c), before the global pooling: the tokens of a transformer on the fine-tuned blocks."""
    top = trainable_top(cut)
    last = [layer for layer in top.layers if len(layer.output.shape) == 4][-1]
    return keras.Model(top.input, last.output, name="top_grid")


def join(cut: CutBackbone, trained: keras.Model) -> keras.Model:
    """The saved model: pixels -> frozen bottom -> trained top and head."""
    return keras.Model(cut.bottom.input, trained(cut.bottom.output), name="classifier")
