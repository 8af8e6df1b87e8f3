"""ImageNet backbones: the Keras applications we build on, their preprocessing and weight files, and
the backbone builder (pixels 0..255 in, pooled features out).

A new Keras backbone is one `Architecture` entry in `ARCHITECTURES`; the family that uses it is an
entry in `core.models.families`. The backbone does its own preprocessing inside, so a saved model
needs nothing but pixels.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Keras (and TensorFlow) load on first use: pages that only list runs stay light
    import keras


class WeightsError(ValueError):
    """Backbone weights that cannot be had; the message names the file and where to put it."""


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
    # core.search.activations). A layer whose output alone feeds everything above it.
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
