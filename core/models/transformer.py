"""A transformer encoder over a grid of feature vectors (Dosovitskiy et al., 2021), as Keras layers.

The hybrid family (`core.models.families`) feeds it a CNN's activations at a cut, one token per
position; a plain ViT would feed it patch embeddings. Each position is projected to width d, a
class token is prepended when pooling reads it, learned position embeddings are added, then pre-norm
blocks run (LayerNorm, self-attention, dropout, stochastic depth, residual; LayerNorm, GELU MLP,
dropout, stochastic depth, residual) and a final LayerNorm. The attention layers are plain
`keras.layers.MultiHeadAttention`, so attention rollout (`core.inference.attention`) finds them.

The two layers with weights of their own (`PositionEmbedding`, `ClassToken`) are registered with
Keras under the package "cxr": a saved model reloads wherever this module was imported
(`core.inference.evaluation.load_model` imports it). Stochastic depth is Keras's `Dropout` with one
draw per example (noise shape (batch, 1, 1)): the whole residual branch is dropped, and in
inference mode it does nothing, like every dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

POOLINGS = ("token", "average")


@keras.saving.register_keras_serializable(package="cxr")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector to each token, by its position: (batch, n, d) -> (batch, n, d)."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]), initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="embedding"
        )

    def call(self, tokens):
        return tokens + keras.ops.cast(self.embedding, tokens.dtype)


@keras.saving.register_keras_serializable(package="cxr")
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to every sequence: (batch, n, d) -> (batch, n + 1, d)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="token")

    def call(self, tokens):
        token = keras.ops.broadcast_to(keras.ops.cast(self.token, tokens.dtype), (keras.ops.shape(tokens)[0], 1, tokens.shape[-1]))
        return keras.ops.concatenate([token, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None if input_shape[1] is None else input_shape[1] + 1, input_shape[2])


@dataclass(frozen=True)
class Encoder:
    """The encoder's shape: `depth` blocks of width `width` with `heads` attention heads."""

    depth: int = 2
    heads: int = 4
    width: int = 128
    mlp_ratio: int = 2
    dropout: float = 0.1
    stochastic_depth: float = 0.1  # the last block's drop rate; earlier blocks drop less (see `__call__`)
    pooling: str = "token"  # "token": the class token's output; "average": the mean over the tokens

    def __call__(self, grid, name: str = "encoder"):
        """(batch, h, w, c) feature grid -> (batch, width) pooled, normalised token."""
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} does not split into {self.heads} heads")
        h, w, c = grid.shape[1:]
        x = keras.layers.Reshape((h * w, c), name=f"{name}_tokens")(grid)
        x = keras.layers.Dense(self.width, name=f"{name}_projection")(x)
        if self.pooling == "token":
            x = ClassToken(name=f"{name}_class_token")(x)
        x = PositionEmbedding(name=f"{name}_positions")(x)
        x = keras.layers.Dropout(self.dropout, name=f"{name}_embedding_dropout")(x)
        for i in range(self.depth):
            # Deeper blocks drop more often, linearly up to `stochastic_depth` (Huang et al., 2016; DeiT)
            rate = self.stochastic_depth * i / max(1, self.depth - 1)
            x = self._block(x, rate, f"{name}_block{i + 1}")
        x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(x)
        if self.pooling == "average":
            return keras.layers.GlobalAveragePooling1D(name=f"{name}_pool")(x)
        # The class token is the first: crop the others away (built-in layers, so nothing to register)
        first = keras.layers.Cropping1D((0, x.shape[1] - 1), name=f"{name}_take_class_token")(x)
        return keras.layers.Flatten(name=f"{name}_pool")(first)

    def _block(self, x, drop_rate: float, name: str):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
        y = keras.layers.MultiHeadAttention(self.heads, self.width // self.heads, name=f"{name}_attention")(y, y)
        y = _drop_path(drop_rate, f"{name}_drop_path1")(keras.layers.Dropout(self.dropout, name=f"{name}_dropout1")(y))
        x = keras.layers.Add(name=f"{name}_residual1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
        y = keras.layers.Dense(self.width * self.mlp_ratio, activation="gelu", name=f"{name}_mlp1")(y)
        y = keras.layers.Dense(self.width, name=f"{name}_mlp2")(y)
        y = _drop_path(drop_rate, f"{name}_drop_path2")(keras.layers.Dropout(self.dropout, name=f"{name}_dropout2")(y))
        return keras.layers.Add(name=f"{name}_residual2")([x, y])


def _drop_path(rate: float, name: str) -> keras.layers.Layer:
    """Stochastic depth: while training, drop a block's whole branch for an example with probability
    `rate` (one draw per example), scaling the kept ones by 1 / (1 - rate); identity at inference."""
    return keras.layers.Dropout(rate, noise_shape=(None, 1, 1), name=name)
