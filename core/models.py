"""Model families: each builds a compiled Keras model from a `keras_tuner.HyperParameters` object.

A family is one small build function plus its defaults, registered in `FAMILIES`:
- `mobilenet`: MobileNet V1/V2/V3 transfer learning (V2, alpha 1.0, 224 px by default);
- `inception_v3`: InceptionV3 transfer learning, 299 px (the paper's backbone);
- `xception`: Xception transfer learning, 299 px;
- `custom_cnn`: a small CNN trained from scratch.

Transfer-learning families share one backbone builder. In `frozen` mode (the paper's protocol) the
backbone turns each image into a pooled feature vector once, and the search only trains a head on
those features; `attach_head` joins the two into the model that is saved. In `finetune` mode the
top layers of the backbone train too. Every model takes RGB images with values 0..255 and does its
own backbone-specific preprocessing inside, so a saved model needs nothing but pixels.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import search_space
from core.data import BINARY, Task

if TYPE_CHECKING:  # Keras (and TensorFlow) load on first use: pages that only list runs stay light
    import keras
    import keras_tuner

MODES = ("frozen", "finetune")


class WeightsError(ValueError):
    """Backbone weights that cannot be had; the message names the file and where to put it."""


# ---------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class Architecture:
    """A Keras application: how to build it, how to preprocess, and its ImageNet weights file."""

    name: str
    constructor: str  # attribute of keras.applications
    preprocessing: str  # "tf": scale 0..255 to -1..1; "none": the model does it itself
    weights_module: str  # keras.src.applications module holding the download address
    weights_sizes: tuple[int, ...] = ()  # sizes with their own weight files; others use 224
    # Where fine-tuning cuts the backbone by default: the last few blocks above it train (see
    # core.activations). A layer whose output alone feeds everything above it.
    default_cut: str | None = None

    def weights_file(self, image_size: int, alpha: float) -> str:
        """The file name Keras looks for in `$KERAS_HOME/models` for no-top ImageNet weights."""
        rows = image_size if image_size in self.weights_sizes else 224
        if self.name == "mobilenet_v1":
            alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
            return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"
        if self.name == "mobilenet_v2":
            return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"
        if self.name.startswith("mobilenet_v3"):
            kind = self.name.removeprefix("mobilenet_v3_")
            return f"weights_mobilenet_v3_{kind}_224_{alpha}_float_no_top_v2.h5"
        if self.name == "inception_v3":
            return "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return f"{self.name}_weights_tf_dim_ordering_tf_kernels_notop.h5"

    def weights_url(self, image_size: int, alpha: float) -> str:
        import importlib

        module = importlib.import_module(f"keras.src.applications.{self.weights_module}")
        base = getattr(module, "BASE_WEIGHT_PATH", None)
        if base is None:  # InceptionV3 and Xception keep full URLs instead of a base
            return module.WEIGHTS_PATH_NO_TOP
        return base + self.weights_file(image_size, alpha)


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("mobilenet_v1", "MobileNet", "tf", "mobilenet", (128, 160, 192, 224), "conv_pw_11_relu"),
        Architecture("mobilenet_v2", "MobileNetV2", "tf", "mobilenet_v2", (96, 128, 160, 192, 224), "block_12_add"),
        Architecture("mobilenet_v3_large", "MobileNetV3Large", "none", "mobilenet_v3", (), "expanded_conv_12_project_bn"),
        Architecture("mobilenet_v3_small", "MobileNetV3Small", "none", "mobilenet_v3", (), "expanded_conv_8_project_bn"),
        Architecture("inception_v3", "InceptionV3", "tf", "inception_v3", (), "mixed8"),
        Architecture("xception", "Xception", "tf", "xception", (), "block14_sepconv1_act"),
    )
}
MOBILENET_VERSIONS = {"v1": "mobilenet_v1", "v2": "mobilenet_v2", "v3": "mobilenet_v3_large", "v3_small": "mobilenet_v3_small"}
# The width multipliers each version has (Keras refuses others, and only these have ImageNet weights).
MOBILENET_WIDTHS = {"v1": (0.25, 0.5, 0.75, 1.0), "v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), "v3": (0.75, 1.0), "v3_small": (0.75, 1.0)}


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that fixes a backbone's features: architecture, width, input size, weights."""

    architecture: str
    image_size: int
    weights: str = "imagenet"  # "imagenet", "none", or a path to a weights file
    alpha: float = 1.0

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.architecture]


def keras_models_dir() -> Path:
    """Where Keras looks for downloaded weights: `$KERAS_HOME/models`, else `~/.keras/models`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(spec: BackboneSpec) -> str | None:
    """Turn the weights setting into what keras.applications takes: None or a local file path.

    `imagenet` uses the file from `$KERAS_HOME/models` when it is there and otherwise tries the
    download; when that fails (no network, a firewall) we stop with the file name and folder,
    never fall back to random weights silently.
    """
    import keras

    if spec.weights == "none":
        return None
    if spec.weights != "imagenet":
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist: pass an existing .h5 file, 'imagenet' or 'none'")
        return str(path)
    file_name = spec.arch.weights_file(spec.image_size, spec.alpha)
    local = keras_models_dir().resolve() / file_name
    if local.is_file():
        return str(local)
    url = spec.arch.weights_url(spec.image_size, spec.alpha)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a firewall that drops packets must not hang the search
    try:
        return keras.utils.get_file(file_name, url, cache_subdir="models")
    except Exception as error:
        reason = str(error).split(" -- ")[-1][:120]
        raise WeightsError(
            f"ImageNet weights for {spec.architecture} could not be downloaded ({reason}). "
            f"Download {url} and save it as {local} (or set KERAS_HOME to the folder above 'models/' that "
            "holds it), or pass the file with --weights PATH, or train from random weights with --weights none"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def build_backbone(spec: BackboneSpec) -> keras.Model:
    """Images (0..255) -> pooled feature vector, with the architecture's own preprocessing inside.

    The base runs with `training=False`, so its batch norms stay in inference mode even when its
    layers are unfrozen for fine-tuning (the standard Keras transfer-learning recipe).
    """
    import keras

    arch = spec.arch
    weights = resolve_weights(spec)
    constructor = getattr(keras.applications, arch.constructor)
    options = {"include_top": False, "weights": None, "input_shape": (spec.image_size, spec.image_size, 3), "pooling": "avg"}
    if arch.name.startswith("mobilenet"):
        options["alpha"] = spec.alpha
    base = constructor(**options)
    if weights:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                base.load_weights(weights)
            # Keras 3 skips parts of a file that do not match with only a warning: refuse instead,
            # or some layers would silently keep random weights.
            skipped = [str(w.message) for w in caught if "Skipping" in str(w.message) or "mismatch" in str(w.message)]
            if skipped:
                raise ValueError(skipped[0])
        except Exception as error:
            raise WeightsError(
                f"weights file {weights} does not fit {arch.name} (alpha {spec.alpha}) at {spec.image_size} px: "
                f"{str(error)[:160]}. Pass a no-top weights file made for this architecture"
            ) from None
    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inputs) if arch.preprocessing == "tf" else inputs
    features = base(x, training=False)
    backbone = keras.Model(inputs, features, name="backbone")
    backbone.trainable = False
    return backbone


# ---------------------------------------------------------------------------- heads and outputs


def _output_and_loss(task: Task, x):
    import keras

    if len(task.classes) == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="probability")(x), "binary_crossentropy"
    return keras.layers.Dense(len(task.classes), activation="softmax", name="probability")(x), "sparse_categorical_crossentropy"


def _compile(model: keras.Model, loss: str, learning_rate: float, steps_per_execution: int = 1) -> keras.Model:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss,
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    return model


def _augmented(hp: keras_tuner.HyperParameters, augment: str, x, seed: int = 0):
    """Augmentation layers in front of a pixel model: off at inference. `search` makes the preset
    a hyperparameter."""
    from core import augmentation

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


def build_head(hp: keras_tuner.HyperParameters, n_features: int, task: Task = BINARY) -> keras.Model:
    """The frozen-mode model: pooled features -> (dropout, optional dense layer) -> class output."""
    import keras

    inputs = keras.Input((n_features,), name="features")
    outputs, loss = _output_and_loss(task, _head_layers(hp, inputs))
    learning_rate = search_space.draw(hp, search_space.HEAD_LEARNING_RATE)
    # A head's step on cached features is tiny, so per-step Python overhead dominates: run several
    # steps per call (measured about 25% less time per trial on 2 cores).
    return _compile(keras.Model(inputs, outputs, name="head"), loss, learning_rate, steps_per_execution=16)


def attach_head(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """Join a frozen backbone and a head trained on its features into one image model."""
    import keras

    return keras.Model(backbone.input, head(backbone.output), name="classifier")


def build_finetune(
    hp: keras_tuner.HyperParameters, spec: BackboneSpec, task: Task = BINARY, unfreeze: int | None = None, augment: str = "off"
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


def build_cut_finetune(hp: keras_tuner.HyperParameters, cut, task: Task = BINARY) -> keras.Model:
    """The finetune-mode model on cached activations: the top above the cut (batch norms in
    inference mode) and a head."""
    import keras

    from core import activations

    inputs = keras.Input(cut.activation_shape, name="activations")
    features = activations.trainable_top(cut)(inputs, training=False)
    outputs, loss = _output_and_loss(task, _head_layers(hp, features))
    learning_rate = search_space.draw(hp, search_space.FINETUNE_LEARNING_RATE)
    return _compile(keras.Model(inputs, outputs, name="top_and_head"), loss, learning_rate)


def max_conv_blocks(image_size: int) -> int:
    """Each block halves the image; stop while at least 4x4 pixels are left."""
    return max(1, min(5, int(math.log2(image_size)) - 2))


def build_custom_cnn(hp: keras_tuner.HyperParameters, image_size: int, task: Task = BINARY, augment: str = "off") -> keras.Model:
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


# ---------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """A searchable model family: its default input size and how to name its backbone."""

    name: str
    default_image_size: int
    description: str
    transfer: bool = True  # False: trained from scratch on pixels, no backbone, no modes

    def backbone(self, image_size: int, weights: str, version: str = "v2", alpha: float = 1.0) -> BackboneSpec | None:
        if not self.transfer:
            return None
        architecture = MOBILENET_VERSIONS[version] if self.name == "mobilenet" else self.name
        return BackboneSpec(architecture, image_size, weights, alpha if self.name == "mobilenet" else 1.0)


FAMILIES = {
    f.name: f
    for f in (
        Family("mobilenet", 224, "MobileNet (V2 by default): light ImageNet backbone"),
        Family("inception_v3", 299, "InceptionV3: the backbone of Kermany et al. (2018)"),
        Family("xception", 299, "Xception: a deeper Inception-style ImageNet backbone"),
        Family("custom_cnn", 150, "A small CNN trained from scratch", transfer=False),
    )
}


def positive_probability(outputs) -> object:
    """The probability of the positive class from a model's output array."""
    return outputs[:, 0] if outputs.shape[-1] == 1 else outputs[:, -1]


def count_parameters(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights))


def __getattr__(name: str):
    # `models.SearchSpace` subclasses Keras Tuner's HyperModel, so it lives in core.hypermodel and
    # loads (with TensorFlow) only when asked for.
    if name == "SearchSpace":
        from core.hypermodel import SearchSpace

        return SearchSpace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
