"""Model families: each builds a compiled Keras model from a `keras_tuner.HyperParameters` object.

A family is one entry in `FAMILIES`: its default and smallest input size, its backbone (an entry
in `ARCHITECTURES`: constructor, preprocessing, widths, ImageNet weight file and address, default
cut), its cost per image and the hint the Tune page shows. The command line, the Tune page, the
cost estimate (`core.jobs`), the settings check (`core.settings`) and the tests read that entry, so
a new family is one entry here (README, "Where to add things").

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
from dataclasses import dataclass, field
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


# --------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------


# Where keras.applications downloads its ImageNet weights. Keras keeps these addresses only in
# private modules (`keras/src/applications/<model>.py`: BASE_WEIGHT_PATH, WEIGHTS_PATH_NO_TOP), so
# each architecture below copies its folder and file name from there; tests/test_models.py checks
# that they still agree with the module of the installed Keras.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone wants done to 0..255 pixels: `(x - mean) / std` per RGB channel.

    The same arithmetic as keras.applications' `preprocess_input`, written as data so that it
    becomes a plain layer inside the saved model (loadable with `safe_mode=True`).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def layer(self) -> keras.layers.Layer:
        import keras

        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:  # one affine map for all channels
            return keras.layers.Rescaling(1 / self.std[0], offset=-self.mean[0] / self.std[0], name="preprocess")
        return keras.layers.Normalization(mean=list(self.mean), variance=[s * s for s in self.std], name="preprocess")


# keras.applications.imagenet_utils' modes: "tf" scales to -1..1; "torch" scales to 0..1, then
# standardises each channel with ImageNet's mean and standard deviation.
TF_PREPROCESSING = Preprocessing((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
TORCH_PREPROCESSING = Preprocessing((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))


@dataclass(frozen=True)
class Architecture:
    """A Keras application: how to build it, how to preprocess, and its ImageNet weights file."""

    name: str
    constructor: str  # attribute of keras.applications
    preprocessing: Preprocessing | None  # None: the model does it itself
    weights_folder: str  # under KERAS_WEIGHTS_URL
    # The no-top weights file name; {rows} is the input size, {width} the width's spelling
    weights_template: str
    weights_sizes: tuple[int, ...] = ()  # sizes with their own weight files; others use 224
    # Width multipliers (alpha) Keras builds, each spelled as in its weight file name; empty: no alpha
    widths: dict[float, str] = field(default_factory=dict, hash=False)
    min_image_size: int = 32  # Keras refuses smaller inputs
    # Where fine-tuning cuts the backbone by default: the last few blocks above it train (see
    # core.activations). A layer whose output alone feeds everything above it.
    default_cut: str | None = None

    def weights_file(self, image_size: int, alpha: float = 1.0) -> str:
        """The file name Keras looks for in `$KERAS_HOME/models` for no-top ImageNet weights."""
        if self.widths and alpha not in self.widths:
            raise ValueError(f"Keras publishes no ImageNet weights for {self.name} at width {alpha}: "
                             f"pick one of {', '.join(map(str, self.widths))}")
        rows = image_size if image_size in self.weights_sizes else 224
        return self.weights_template.format(rows=rows, width=self.widths.get(alpha, ""))

    def weights_url(self, image_size: int, alpha: float = 1.0) -> str:
        """Where keras.applications downloads that file from."""
        return f"{KERAS_WEIGHTS_URL}{self.weights_folder}/{self.weights_file(image_size, alpha)}"


_V2_WIDTHS = {a: str(a) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
_V3_WIDTHS = {a: str(a) for a in (0.75, 1.0)}
ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("mobilenet_v1", "MobileNet", TF_PREPROCESSING, "mobilenet", "mobilenet_{width}_{rows}_tf_no_top.h5",
                     (128, 160, 192, 224), {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}, default_cut="conv_pw_11_relu"),
        Architecture("mobilenet_v2", "MobileNetV2", TF_PREPROCESSING, "mobilenet_v2",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{width}_{rows}_no_top.h5",
                     (96, 128, 160, 192, 224), _V2_WIDTHS, default_cut="block_12_add"),
        Architecture("mobilenet_v3_large", "MobileNetV3Large", None, "mobilenet_v3",
                     "weights_mobilenet_v3_large_224_{width}_float_no_top_v2.h5", (), _V3_WIDTHS,
                     default_cut="expanded_conv_12_project_bn"),
        Architecture("mobilenet_v3_small", "MobileNetV3Small", None, "mobilenet_v3",
                     "weights_mobilenet_v3_small_224_{width}_float_no_top_v2.h5", (), _V3_WIDTHS,
                     default_cut="expanded_conv_8_project_bn"),
        Architecture("inception_v3", "InceptionV3", TF_PREPROCESSING, "inception_v3",
                     "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", min_image_size=75, default_cut="mixed8"),
        Architecture("xception", "Xception", TF_PREPROCESSING, "xception",
                     "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", min_image_size=71,
                     default_cut="block14_sepconv1_act"),
        # Inside a dense block each `_concat` output holds every earlier feature map, so the top
        # above one depends on it alone: the last 8 of block 5's 16 layers train.
        Architecture("densenet121", "DenseNet121", TORCH_PREPROCESSING, "densenet",
                     "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", default_cut="conv5_block8_concat"),
    )
}
MOBILENET_VERSIONS = {"v1": "mobilenet_v1", "v2": "mobilenet_v2", "v3": "mobilenet_v3_large", "v3_small": "mobilenet_v3_small"}


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


WEIGHTS_CHOICES = ("imagenet", "none")  # besides a path to a weights file


def weights_problem(weights: str) -> str | None:
    """What is wrong with a weights setting (`imagenet`, `none` or a file), or None when nothing is.

    The one check of a weights file: settings, the Tune page and the backbone builder all ask here.
    """
    if weights in WEIGHTS_CHOICES or (weights.strip() and Path(weights).expanduser().is_file()):
        return None
    return f"weights file {weights or '(empty)'} does not exist: pass an existing .h5 file, 'imagenet' or 'none'"


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
        if problem := weights_problem(spec.weights):
            raise WeightsError(problem)
        return str(Path(spec.weights).expanduser())
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
    if arch.widths:
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
    x = arch.preprocessing.layer()(inputs) if arch.preprocessing else inputs
    features = base(x, training=False)
    backbone = keras.Model(inputs, features, name="backbone")
    backbone.trainable = False
    return backbone


# --------------------------------------------------------------------------
# Heads and outputs
# --------------------------------------------------------------------------


def _output_and_loss(task: Task, x):
    import keras

    if len(task.classes) == 2:
        return keras.layers.Dense(1, activation="sigmoid", name="probability")(x), "binary_crossentropy"
    # One-hot targets (`Task.targets`): Keras' AUC metric then is the micro one-vs-rest AUC.
    return keras.layers.Dense(len(task.classes), activation="softmax", name="probability")(x), "categorical_crossentropy"


def _compile(model: keras.Model, loss: str, learning_rate: float, steps_per_execution: int = 1) -> keras.Model:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
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
    # steps per call (the saving is in the README, "Benchmarks").
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


# --------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """What a search on a family costs, per image at the family's default input size.

    Milliseconds on the reference machine (2 x86-64 cores; README, "Benchmarks" and "Measured
    here"); `core.jobs.estimate_search_s` turns them into a time estimate before a search starts.
    """

    frozen_pass_ms: float = 0.0  # backbone pass through the inference engine, decode included
    # Keras train step of the whole backbone with its top layers unfrozen (no activation cache),
    # rounded up since the search also tries deeper unfreezing
    finetune_step_ms: float = 0.0
    bottom_pass_ms: float = 0.0  # cut-point fine-tuning: one pass below the default cut
    top_step_ms: float = 0.0  # cut-point fine-tuning: a train step of the top on cached activations
    scratch_step_ms: float = 0.0  # trained from scratch: a train step, mid-size hyperparameters


@dataclass(frozen=True)
class Family:
    """A searchable model family: everything the search, the Tune page and the cost estimate need.

    A transfer family names its backbone `architecture` (with `versions` to choose from, if any,
    `architecture` being the default one); a family without one is trained from scratch on pixels:
    no backbone, no modes, no weights. The Tune page's version and width lists and the settings
    check read `versions` and `widths` from here.
    """

    name: str
    default_image_size: int
    description: str  # one line, shown in the family list
    hint: str  # what it costs and when to pick it, shown under the family on the Tune page
    cost: Cost
    architecture: str | None = None  # in ARCHITECTURES; None: trained from scratch
    versions: dict[str, str] = field(default_factory=dict, hash=False)  # version -> architecture
    label: str = ""  # the family's name in messages and widget labels ("MobileNet"); default: `name`

    @property
    def transfer(self) -> bool:
        return self.architecture is not None

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def default_version(self) -> str | None:
        """The version whose architecture is `architecture`; None for a family without versions."""
        return next((v for v, name in self.versions.items() if name == self.architecture), None)

    def widths(self, version: str | None = None) -> tuple[float, ...]:
        """The width multipliers (alpha) the version's backbone comes in; () when it has no width choice.

        Keras refuses other widths, and only these have ImageNet weights.
        """
        if not self.transfer:
            return ()
        name = self.versions.get(version or self.default_version, "") if self.versions else self.architecture
        return tuple(ARCHITECTURES[name].widths) if name in ARCHITECTURES else ()

    @property
    def all_widths(self) -> tuple[float, ...]:
        """Every width any version of the family comes in, smallest first (the Tune page's list)."""
        versions = self.versions or {None: self.architecture}
        return tuple(sorted({width for version in versions for width in self.widths(version)}))

    @property
    def min_image_size(self) -> int:
        """The smallest input every architecture of the family accepts."""
        names = [*self.versions.values(), self.architecture] if self.transfer else []
        return max([32, *(ARCHITECTURES[name].min_image_size for name in names)])

    def backbone(self, image_size: int, weights: str, version: str | None = None, alpha: float = 1.0) -> BackboneSpec | None:
        if not self.transfer:
            return None
        name = self.versions[version or self.default_version] if self.versions else self.architecture
        return BackboneSpec(name, image_size, weights, alpha if ARCHITECTURES[name].widths else 1.0)


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "mobilenet", 224, "MobileNet (V2 by default): light ImageNet backbone",
            "Light ImageNet backbone (a few ms per image at 224 px through the inference engine). Frozen: "
            "features are computed once per image and cached, then each trial trains a small head in seconds. "
            "Fine-tuning trains the blocks above a cut on activations cached once per image (with augmented "
            "copies): tens of seconds per epoch on all images at 224 px.",
            Cost(frozen_pass_ms=2.6, finetune_step_ms=12.0, bottom_pass_ms=2.5, top_step_ms=5.0),
            "mobilenet_v2", MOBILENET_VERSIONS, label="MobileNet",
        ),
        Family(
            "inception_v3", 299, "InceptionV3: the backbone of Kermany et al. (2018)",
            "The paper's backbone, at 299 px about 10× MobileNet's cost per image. Frozen mode is "
            "practical on a CPU (features once, cached); fine-tuning all images takes hours.",
            Cost(frozen_pass_ms=27.0, finetune_step_ms=50.0, bottom_pass_ms=24.0, top_step_ms=12.0),
            "inception_v3",
        ),
        Family(
            "xception", 299, "Xception: a deeper Inception-style ImageNet backbone",
            "Deeper Inception-style backbone at 299 px, similar cost to InceptionV3. Frozen mode is "
            "practical on a CPU; fine-tuning is for a GPU.",
            Cost(frozen_pass_ms=45.0, finetune_step_ms=95.0, bottom_pass_ms=42.0, top_step_ms=10.0),
            "xception",
        ),
        Family(
            "densenet121", 224, "DenseNet121: the CheXNet backbone (Rajpurkar et al., 2017)",
            "The backbone of CheXNet, the usual starting point of chest X-ray work. At 224 px it costs more per "
            "image than InceptionV3 and less than Xception. Frozen mode is practical on a CPU (features once, "
            "cached); fine-tuning the top of its last block works on cached activations, all images take long.",
            # Not measured here yet: placed between InceptionV3 and Xception, where Keras's own CPU
            # timings of the three put it (README, "Benchmarks")
            Cost(frozen_pass_ms=36.0, finetune_step_ms=75.0, bottom_pass_ms=33.0, top_step_ms=8.0),
            "densenet121",
        ),
        Family(
            "custom_cnn", 150, "A small CNN trained from scratch",
            "Trains every weight from scratch, so every epoch passes over all training images; "
            "cheap per image, and the cost grows with the square of the input size. No ImageNet weights needed.",
            Cost(scratch_step_ms=8.0),
        ),
    )
}


def positive_probability(outputs) -> object:
    """The probability of the run's binary view from a model's output array.

    A sigmoid's one column; for a softmax, 1 − P(first class): a three-class run's derived
    probability of pneumonia, P(bacterial) + P(viral) (`core.tasks`), so every binary view (the
    threshold, ROC, stress test, paired tests with pneumonia runs) works on it.
    """
    return outputs[:, 0] if outputs.shape[-1] == 1 else 1.0 - outputs[:, 0]


def count_parameters(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights))


def __getattr__(name: str):
    # `models.SearchSpace` subclasses Keras Tuner's HyperModel, so it lives in core.hypermodel and
    # loads (with TensorFlow) only when asked for.
    if name == "SearchSpace":
        from core.hypermodel import SearchSpace

        return SearchSpace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
