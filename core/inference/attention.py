"""Attention rollout (Abnar & Zuidema, 2020): which image patches a transformer's tokens draw from.

Each `keras.layers.MultiHeadAttention` layer's attention scores are captured in one forward pass
(its `call` wrapped as `explanation` wraps a feature map's, asking for the scores and passing only
the output on). Per layer, the heads are averaged, the identity is added (the residual connection
carries each token's own value forward) and the rows are renormalised; the layers' matrices are
multiplied in the order they ran. What a token ends up drawn from is then read on the patch grid.

Rollout follows the flow of information, not the class: it is the same for every class, and it
says where the model looks, not what there speaks for pneumonia.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np

from core.inference import explanation

if TYPE_CHECKING:
    import keras

NO_ATTENTION = "no attention layers: attention rollout explains transformer models"


def attention_layers(model) -> list:
    """Every MultiHeadAttention layer of `model`, nested models searched too, in the models' layer order."""
    import keras

    found, stack = [], [model]
    while stack:
        layer = stack.pop(0)
        for inner in getattr(layer, "layers", []):
            if isinstance(inner, keras.layers.MultiHeadAttention):
                found.append(inner)
            elif hasattr(inner, "layers"):
                stack.append(inner)
    return found


def _scores_of(layer, into: list):
    """While open, each call of `layer` by this thread appends its attention scores (batch, heads, T, S) to `into`."""

    def wrap(original):
        def call(*args, **kwargs):
            asked = kwargs.get("return_attention_scores", False)  # the graph itself may want the scores
            output, scores = original(*args, **{**kwargs, "return_attention_scores": True})
            into.append(scores)
            return (output, scores) if asked else output

        return call

    return explanation.swapped_call(layer, wrap)


def rollout_matrix(attentions: list[np.ndarray]) -> np.ndarray:
    """The rollout of per-layer attentions (heads, N, N), in the order the layers ran: (N, N), rows summing to 1."""
    result = None
    for scores in attentions:
        scores = np.asarray(scores, np.float64)
        if scores.ndim != 3 or scores.shape[1] != scores.shape[2]:
            raise ValueError(f"attention rollout needs self-attention (heads, N, N), got scores of shape {scores.shape}")
        mixed = scores.mean(axis=0) + np.eye(scores.shape[1])
        mixed /= mixed.sum(axis=1, keepdims=True)
        if result is not None and result.shape != mixed.shape:
            raise ValueError(f"the attention layers see different numbers of tokens ({result.shape[0]} and {mixed.shape[0]})")
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError(NO_ATTENTION)
    return result


def token_grid(rollout: np.ndarray) -> np.ndarray:
    """What the tokens draw from, on the (g, g) patch grid.

    N tokens with N a square: no class token, the mean over all query rows. N - 1 a square: the
    first token is a class token (as in ViT), its row over the others. Anything else has no grid.
    """
    n = rollout.shape[0]
    side = math.isqrt(n)
    if side * side == n:
        return rollout.mean(axis=0).reshape(side, side)
    side = math.isqrt(n - 1)
    if n > 1 and side * side == n - 1:
        return rollout[0, 1:].reshape(side, side)
    raise ValueError(f"{n} tokens are neither a square grid of patches nor one class token and a square grid")


def attention_rollout(model: keras.Model, image: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """Attention rollout of one image: (g, g) float32 in [0, 1] on the model's patch grid.

    The floor every token keeps (the identity: its own value) is taken off, min to max, so the map
    shows where attention gathers: all zeros when it is spread evenly. `class_index` is accepted for
    the common signature and ignored (rollout is class-blind). ValueError for a model without
    attention layers (`NO_ATTENTION`).
    """
    del class_index
    layers = attention_layers(model)
    if not layers:
        raise ValueError(NO_ATTENTION)
    captured: list = []
    with explanation.LOCK, ExitStack() as stack:
        for layer in layers:
            stack.enter_context(_scores_of(layer, captured))
        model(explanation.network_input(image, model), training=False)
    grid = token_grid(rollout_matrix([np.asarray(scores)[0] for scores in captured]))
    return explanation.normalised(grid - grid.min())
