"""Model builders: each builds a compiled Keras model from a `keras_tuner.HyperParameters` object.

In `frozen` mode (the paper's protocol) the backbone turns each image into a pooled feature vector
once, and the search only trains a head on those features; `attach_head` joins the two into the
model that is saved. In `finetune` mode the top layers of the backbone train too, either on pixels
(`build_finetune`) or on activations cached at a cut (`build_cut_finetune`). Every model takes RGB
images with values 0..255 and does its own preprocessing inside.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from core.data import augmentation
from core.data.tasks import PNEUMONIA, Task
from core.models import search_space
from core.models.backbones import BackboneSpec, build_backbone

if TYPE_CHECKING:  # Keras (and TensorFlow) load on first use: pages that only list runs stay light
    import keras
    import keras_tuner


def _output_and_loss(task: Task, x):
    import keras

    if len(task.classes) == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="probability")(x), "binary_crossentropy"
    # One-hot targets (`Task.targets`): Keras' AUC metric then is the micro one-vs-rest AUC.
    return keras.layers.Dense(len(task.classes), activation="softmax", name="probability")(x), "categorical_crossentropy"


def _compile(model: keras.Model, loss: str, learning_rate: float, steps_per_execution: int = 1,
             weight_decay: float | None = None) -> keras.Model:
    """Adam, or AdamW when a `weight_decay` is given."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate) if weight_decay is None else keras.optimizers.AdamW(learning_rate, weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.CategoricalAccuracy(name="accuracy") if loss == "categorical_crossentropy" else keras.metrics.BinaryAccuracy(name="accuracy"),
        ],
        steps_per_execution=steps_per_execution,
    )
    return model


def _augmented(hp: keras_tuner.HyperParameters, augment: str, x, seed: int = 0):
    """Augmentation layers in front of a pixel model: off at inference. `search` makes the preset
    a hyperparameter."""
    if augment == augmentation.SEARCH:
        augment = search_space.draw(hp, search_space.AUGMENT)
    for layer in augmentation.augmentation_layers(augmentation.preset(augment), seed):
        x = layer(x)
    return x


def _head_layers(hp: keras_tuner.HyperParameters, x):
    import keras

    dropout = search_space.draw(hp, search_space.HEAD_DROPOUT)
    x = keras.layers.Dropout(dropout)(x)
    units = search_space.draw(hp, search_space.HEAD_DENSE_UNITS)
    if units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
    return x


def build_head(hp: keras_tuner.HyperParameters, n_features: int, task: Task = PNEUMONIA) -> keras.Model:
    """The frozen-mode model: pooled features -> (dropout, optional dense layer) -> class output."""
    import keras

    inputs = keras.Input((n_features,), name="features")
    outputs, loss = _output_and_loss(task, _head_layers(hp, inputs))
    learning_rate = search_space.draw(hp, search_space.HEAD_LEARNING_RATE)
    # A head's step on cached features is tiny, so per-step Python overhead dominates: run several
    # steps per call (the saving is in docs/measurements.md, "Benchmarks").
    return _compile(keras.Model(inputs, outputs, name="head"), loss, learning_rate, steps_per_execution=16)


def attach_head(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """Join a frozen backbone and a head trained on its features into one image model."""
    import keras

    return keras.Model(backbone.input, head(backbone.output), name="classifier")


def build_finetune(
    hp: keras_tuner.HyperParameters, spec: BackboneSpec, task: Task = PNEUMONIA, unfreeze: int | None = None, augment: str = "off"
) -> keras.Model:
    """The finetune-mode model: the backbone with its top `unfreeze_layers` layers trainable.

    `unfreeze=0` gives the frozen classifier trained on pixels (frozen mode without the cache).
    """
    import keras

    backbone = build_backbone(spec)
    base = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    weighted = [layer for layer in base.layers if layer.weights]
    # The learning rate's range follows the mode, not the drawn depth: one search, one range.
    learning_rate_range = search_space.HEAD_LEARNING_RATE if unfreeze == 0 else search_space.FINETUNE_LEARNING_RATE
    if unfreeze is None:
        unfreeze = search_space.draw(hp, search_space.UNFREEZE_LAYERS)
    backbone.trainable = True
    for i, layer in enumerate(weighted):
        # Batch norms stay frozen: their statistics come from ImageNet-sized batches.
        layer.trainable = i >= len(weighted) - unfreeze and not isinstance(layer, keras.layers.BatchNormalization)
    if augment == "off":
        inputs, features = backbone.input, backbone.output
    else:  # augmentation layers go in front of the whole backbone, preprocessing included
        inputs = keras.Input(backbone.input.shape[1:], name="image")
        features = backbone(_augmented(hp, augment, inputs))
    outputs, loss = _output_and_loss(task, _head_layers(hp, features))
    learning_rate = search_space.draw(hp, learning_rate_range)
    return _compile(keras.Model(inputs, outputs, name="classifier"), loss, learning_rate)


def build_cut_finetune(hp: keras_tuner.HyperParameters, cut, task: Task = PNEUMONIA) -> keras.Model:
    """The finetune-mode model on cached activations: the top above the cut (batch norms in
    inference mode) and a head."""
    import keras

    from core.models import backbone_cut

    inputs = keras.Input(cut.activation_shape, name="activations")
    features = backbone_cut.trainable_top(cut)(inputs, training=False)
    outputs, loss = _output_and_loss(task, _head_layers(hp, features))
    learning_rate = search_space.draw(hp, search_space.FINETUNE_LEARNING_RATE)
    return _compile(keras.Model(inputs, outputs, name="top_and_head"), loss, learning_rate)


def build_hybrid(hp: keras_tuner.HyperParameters, cut, task: Task = PNEUMONIA, joined: bool = False) -> keras.Model:
    """The hybrid CNN-transformer (Dosovitskiy et al., 2021): a backbone's feature map, one token per
    position, through a transformer encoder (`core.models.transformer`) to the class output.

    The tokens are the activations at `cut` (`tokens="cut"`) or the last feature map of the blocks
    above it, which then fine-tune with the encoder (`tokens="top"`, batch norms frozen as in
    cut-point fine-tuning). It trains on the cut's cached activations; the saved model joins the
    frozen stem below (`backbone_cut.join`). `joined=True` builds that pixel model to train directly.
    """
    import keras

    from core.models import backbone_cut

    tokens = search_space.draw(hp, search_space.HYBRID_TOKENS)
    encoder = _encoder(hp)
    inputs = keras.Input(cut.activation_shape, name="activations")
    grid = inputs if tokens == "cut" else backbone_cut.trainable_top_grid(cut)(inputs, training=False)
    outputs, loss = _output_and_loss(task, encoder(grid))
    model = keras.Model(inputs, outputs, name="encoder_and_head")
    if joined:
        model = backbone_cut.join(cut, model)
    learning_rate = search_space.draw(hp, search_space.HYBRID_LEARNING_RATE)
    return _compile(model, loss, learning_rate, weight_decay=search_space.draw(hp, search_space.HYBRID_WEIGHT_DECAY))


def _encoder(hp: keras_tuner.HyperParameters):
    """The transformer encoder the drawn hyperparameters describe (the hybrid's and the ViT's)."""
    from core.models import transformer

    return transformer.Encoder(
        depth=search_space.draw(hp, search_space.HYBRID_DEPTH),
        heads=search_space.draw(hp, search_space.HYBRID_HEADS),
        width=search_space.draw(hp, search_space.HYBRID_WIDTH),
        mlp_ratio=search_space.draw(hp, search_space.HYBRID_MLP_RATIO),
        dropout=search_space.draw(hp, search_space.HYBRID_DROPOUT),
        stochastic_depth=search_space.draw(hp, search_space.HYBRID_STOCHASTIC_DEPTH),
        pooling=search_space.draw(hp, search_space.HYBRID_POOLING),
    )


def build_vit(hp: keras_tuner.HyperParameters, image_size: int, task: Task = PNEUMONIA, augment: str = "off",
              weights: str = "none") -> keras.Model:
    """A plain ViT (Dosovitskiy et al., 2021): non-overlapping square patches of the pixels, each
    linearly embedded (a strided convolution), through the transformer encoder to the class output.

    `weights`: "none" trains from scratch; a file path loads a `.weights.h5` saved from a ViT of
    this shape (image size, patch and encoder), refused with what differs when it does not fit.
    """
    import keras

    patch = search_space.draw(hp, search_space.VIT_PATCH)
    if image_size % patch:
        raise ValueError(f"a {image_size} px image does not split into {patch} px patches: pick a patch that divides it")
    encoder = _encoder(hp)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(_augmented(hp, augment, inputs))
    x = keras.layers.Conv2D(encoder.width, patch, strides=patch, name="patch_embedding")(x)
    outputs, loss = _output_and_loss(task, encoder(x))
    model = keras.Model(inputs, outputs, name="vit")
    if weights not in ("none", "imagenet"):
        try:
            model.load_weights(weights)
        except (ValueError, KeyError) as error:
            raise ValueError(f"weights file {weights} does not fit this ViT ({image_size} px, patch {patch}, "
                             f"{encoder.depth} blocks of width {encoder.width}): save it from a ViT of the same shape "
                             f"({type(error).__name__}: {error})") from None
    learning_rate = search_space.draw(hp, search_space.HYBRID_LEARNING_RATE)
    return _compile(model, loss, learning_rate, weight_decay=search_space.draw(hp, search_space.HYBRID_WEIGHT_DECAY))


def build_custom_cnn(hp: keras_tuner.HyperParameters, image_size: int, task: Task = PNEUMONIA, augment: str = "off") -> keras.Model:
    """A plain CNN trained from scratch: conv blocks (conv, optional batch norm, ReLU, pooling)."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(_augmented(hp, augment, inputs))
    blocks = search_space.draw(hp, search_space.cnn_conv_blocks(image_size))
    filters = search_space.draw(hp, search_space.CNN_FILTERS)
    kernel_size = search_space.draw(hp, search_space.CNN_KERNEL_SIZE)
    batch_norm = search_space.draw(hp, search_space.CNN_BATCH_NORM)
    for block in range(blocks):
        x = keras.layers.Conv2D(min(256, filters * 2**block), kernel_size, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(search_space.draw(hp, search_space.CNN_DROPOUT))(x)
    x = keras.layers.Dense(search_space.draw(hp, search_space.CNN_DENSE_UNITS), activation="relu")(x)
    outputs, loss = _output_and_loss(task, x)
    learning_rate = search_space.draw(hp, search_space.HEAD_LEARNING_RATE)
    return _compile(keras.Model(inputs, outputs, name="custom_cnn"), loss, learning_rate)


def positive_probability(outputs) -> object:
    """The probability of the run's binary view from a model's output array.

    A sigmoid's one column; for a softmax, 1 − P(first class): a three-class run's derived
    probability of pneumonia, P(bacterial) + P(viral) (`core.data.tasks`), so every binary view (the
    threshold, ROC, stress test, paired tests with pneumonia runs) works on it.
    """
    return outputs[:, 0] if outputs.shape[-1] == 1 else 1.0 - outputs[:, 0]


def count_parameters(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights))
