"""An imported model: a model file made elsewhere (`core.models.model_files`) adapted to take and give
what this project's models do.

Every model here takes square RGB images, float32 in 0..255, channels last, and gives class
probabilities: one column (the binary view's positive class) or one per class of a multi-class task.
An `Adapter` says what the imported model wants instead, and is saved beside the copied model file
(`adapter.json` in the run's `imported_model/` folder, the "bundle"):

- its input size and channels (one: the grey value; three: the grey value repeated, as for every
  model here) and layout (NHWC or NCHW);
- its pixel scaling (`SCALINGS`): 0-1, -1-1, ImageNet "caffe" (BGR, mean subtracted) or "torch"
  (mean/std), or 0-255 for a model that scales inside (this project's own exports);
- which output column is the positive class (a two-column softmax, or one column of a multi-label
  head such as a pathology model's), and whether the outputs are logits (sigmoid or softmax is
  applied).

The input and output mappings are written once, with `keras.ops` (`model_input`, `model_output`): a
Keras model is wrapped into one Keras model with them as layers (`wrap_keras`), so the inference
engine converts it to TF Lite and Grad-CAM reads its layers; a TF Lite, ONNX or SavedModel file
runs as a `ForeignModel`, an inference engine of its own, through the same functions on numpy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core import files
from core.models import model_files
from core.models.engine import InferenceEngine
from core.models.model_files import NCHW, NHWC, ModelFileError
from core.models.pixel_scaling import SCALINGS

ADAPTER = "adapter.json"


@dataclass(frozen=True)
class Adapter:
    """What an imported model takes and gives (see the module docstring). `outputs` is the model's
    output width; `positive` the column of the binary view's positive class when it has more than one
    (None for a multi-class task, whose columns are its classes in order); `n_classes` what the
    adapted model gives (1 for a two-class task)."""

    format: str
    file: str
    size: int
    channels: int
    layout: str
    scaling: str
    outputs: int
    n_classes: int
    positive: int | None = None
    logits: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Adapter:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        """One line for a settings table or a model card."""
        head = f"column {self.positive}" if self.positive is not None and self.n_classes == 1 else f"{self.outputs} column(s)"
        return (f"{self.format}, input {self.size}x{self.size}x{self.channels} {self.layout}, scaling {self.scaling}, "
                f"output {head}{' (logits)' if self.logits else ''}")


# --------------------------------------------------------------------------
# The two mappings, in keras.ops: on numpy arrays and inside a Keras model alike
# --------------------------------------------------------------------------


def model_input(pixels, adapter: Adapter):
    """Images (n, S, S, 3) float 0..255 RGB at the adapter's size -> the model's input batch."""
    ops = keras.ops
    scaling = SCALINGS[adapter.scaling]
    x = ops.cast(pixels, "float32")
    if adapter.channels == 1:  # the grey value: the mean of the three equal channels
        x = ops.mean(x, axis=-1, keepdims=True)
        x = x * scaling.multiply[0] + scaling.add[0]
    else:
        if scaling.order == "BGR":
            x = ops.flip(x, axis=-1)
        x = x * ops.convert_to_tensor(scaling.multiply, "float32") + ops.convert_to_tensor(scaling.add, "float32")
    if adapter.layout == NCHW:
        x = ops.transpose(x, (0, 3, 1, 2))
    return x


def model_output(raw, adapter: Adapter):
    """The model's raw output rows -> probabilities as this project's models give them: (n, 1) of the
    positive class, or (n, k) of a multi-class task's classes."""
    ops = keras.ops
    raw = ops.cast(raw, "float32")
    if adapter.n_classes > 1:
        return ops.softmax(raw, axis=-1) if adapter.logits else raw
    if adapter.outputs == 1:
        return ops.sigmoid(raw) if adapter.logits else raw
    if adapter.outputs == 2 and adapter.logits:  # a two-class softmax over logits
        return ops.softmax(raw, axis=-1)[:, adapter.positive : adapter.positive + 1]
    column = raw[:, adapter.positive : adapter.positive + 1]  # a softmax's column, or one head of a multi-label model
    return ops.sigmoid(column) if adapter.logits else column


# --------------------------------------------------------------------------
# Choosing the adapter from the file and the options
# --------------------------------------------------------------------------


def resolve_adapter(
    model: model_files.ModelFile, n_classes: int, scaling: str, size: int | None = None, channels: int | None = None,
    layout: str | None = None, positive: int | None = None, logits: bool = False,
) -> Adapter:
    """The adapter of `model` for a task of `n_classes` (1 for two classes): what the file declares,
    completed by the options, which must agree with it. ModelFileError naming the option to pass or
    change when the file and the options leave something open or contradict each other."""
    if scaling not in SCALINGS:
        raise ModelFileError(f"unknown pixel scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")
    if len(model.input_shape) != 3:
        raise ModelFileError(
            f"the model takes inputs shaped {_shape_text(model.input_shape)} per image: only image inputs "
            "(height, width, channels) or (channels, height, width) can be imported"
        )
    layout = _agreed("layout", layout, model.layout, "--layout NHWC or NCHW")
    sides = model.input_shape[:2] if layout == NHWC else model.input_shape[1:]
    declared_channels = model.input_shape[2] if layout == NHWC else model.input_shape[0]
    if sides[0] is not None and sides[1] is not None and sides[0] != sides[1]:
        raise ModelFileError(f"the model takes {sides[0]}x{sides[1]} images: only square inputs can be imported")
    side = sides[0] or sides[1]
    size = _agreed("input size", size, side, "--input-size (the side in pixels the model was trained at)")
    channels = _agreed("channels", channels, declared_channels, "--channels 1 or 3")
    if channels not in (1, 3):
        raise ModelFileError(f"the model takes {channels} channels: only 1 (grey) or 3 (RGB) can be imported")
    width = model.output_width
    return _with_outputs(Adapter(model.format, "", int(size), int(channels), layout, scaling, width or 0, n_classes,
                                 positive, bool(logits)), width)


def _with_outputs(adapter: Adapter, width: int | None) -> Adapter:
    """The adapter with its output width checked against the task (`width` None: read on a probe later)."""
    if width is None:
        return adapter
    if adapter.n_classes > 1:
        if width != adapter.n_classes:
            raise ModelFileError(
                f"the model gives {width} outputs per image but the task has {adapter.n_classes} classes: import it "
                "with the task it was trained for"
            )
        return replace(adapter, outputs=width, positive=None)
    if width == 1:
        if adapter.positive not in (None, 0):
            raise ModelFileError(f"the model gives one output, so there is no output {adapter.positive}: leave out --positive-output")
        return replace(adapter, outputs=1, positive=0)
    if adapter.positive is None:
        if width != 2:
            raise ModelFileError(
                f"the model gives {width} outputs per image: say which one is the positive class's probability "
                f"with --positive-output (0..{width - 1})"
            )
        return replace(adapter, outputs=2, positive=1)  # a two-class softmax: column 1 is the positive class
    if not 0 <= adapter.positive < width:
        raise ModelFileError(f"--positive-output {adapter.positive} is outside the model's {width} outputs (0..{width - 1})")
    return replace(adapter, outputs=width)


def with_output_width(adapter: Adapter, width: int) -> Adapter:
    """The adapter of a model whose output width was dynamic in the file, now seen on a probe batch."""
    return _with_outputs(adapter, width)


def _agreed(what: str, given, declared, option: str):
    if given is not None and declared is not None and given != declared:
        raise ModelFileError(f"the {what} given ({given}) does not match the model's ({declared}): leave out or change {option.split(' ')[0]}")
    value = given if given is not None else declared
    if value is None:
        raise ModelFileError(f"the model file does not say its {what} (a dynamic shape): pass {option}")
    return value


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def output_problem(raw: np.ndarray, adapter: Adapter) -> str:
    """Why the raw outputs of a probe batch are not what the adapter reads ("" when they are): not
    one row per image, not finite, or (without --logits) not probabilities."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
        return (f"the model gives outputs shaped {raw.shape} for {len(raw)} images: expected one probability or "
                "one class vector per image; export the classifier's output, not a feature map")
    if not np.all(np.isfinite(raw)):
        return "the model gives NaN or infinite outputs on these images: check the pixel scaling (--scaling)"
    if adapter.logits:
        return ""
    low, high = float(raw.min()), float(raw.max())
    if low < -1e-6 or high > 1 + 1e-6:
        return (f"the model's outputs run from {low:.3g} to {high:.3g}, so they are not probabilities: if they are "
                "logits (no sigmoid or softmax at the end), pass --logits")
    if adapter.n_classes > 1 and not np.allclose(raw.sum(axis=1), 1.0, atol=1e-3):
        return "the model's output rows do not sum to 1, so they are not class probabilities: if they are logits, pass --logits"
    return ""


# --------------------------------------------------------------------------
# Running it: a wrapped Keras model, or an engine of its own
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="cxr")
class ImportedInput(keras.layers.Layer):
    """`model_input` as a layer: this project's pixels to an imported Keras model's input."""

    def __init__(self, adapter: dict, **kwargs):
        super().__init__(**kwargs)
        self.adapter = Adapter.from_dict(adapter)

    def call(self, pixels):
        return model_input(pixels, self.adapter)

    def get_config(self):
        return {**super().get_config(), "adapter": self.adapter.to_dict()}


@keras.saving.register_keras_serializable(package="cxr")
class ImportedOutput(keras.layers.Layer):
    """`model_output` as a layer: an imported Keras model's outputs to this project's probabilities."""

    def __init__(self, adapter: dict, **kwargs):
        super().__init__(**kwargs)
        self.adapter = Adapter.from_dict(adapter)

    def call(self, raw):
        return model_output(raw, self.adapter)

    def get_config(self):
        return {**super().get_config(), "adapter": self.adapter.to_dict()}


def wrap_keras(model: keras.Model, adapter: Adapter) -> keras.Model:
    """One Keras model taking this project's pixels: adapter input layer, the imported model, adapter output layer."""
    pixels = keras.Input((adapter.size, adapter.size, 3), name="pixels")
    raw = model(ImportedInput(adapter.to_dict(), name="imported_input")(pixels))
    return keras.Model(pixels, ImportedOutput(adapter.to_dict(), name="imported_output")(raw), name="imported")


class ForeignModel(InferenceEngine):
    """A TF Lite, ONNX or SavedModel file as a model of this project and its own inference engine:
    `input_shape` (None, S, S, 3), `output_shape` (None, k), `predict` on 0..255 RGB batches, and
    calling it like a Keras model (what occlusion does). It has no layers or gradients: the
    explanation methods that need them say so (`core.inference.methods`)."""

    def __init__(self, model: model_files.ModelFile, adapter: Adapter) -> None:  # noqa: D107 - no Keras model to read shapes from
        self.model_file = model
        self.adapter = adapter
        self.name = {"onnx": "onnxruntime", "tflite": "tflite (imported file)", "savedmodel": "savedmodel"}.get(adapter.format, adapter.format)
        self.sample_shape = (adapter.size, adapter.size, 3)
        self.output_sample_shape = (adapter.n_classes,)
        self.input_shape = (None, *self.sample_shape)
        self.output_shape = (None, adapter.n_classes)
        self.fallback_reason = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raw = self.model_file.run(np.ascontiguousarray(keras.ops.convert_to_numpy(model_input(batch, self.adapter)), np.float32))
        return np.asarray(keras.ops.convert_to_numpy(model_output(raw, self.adapter)), np.float32)

    def __call__(self, batch, training: bool = False) -> np.ndarray:
        return self.predict(np.asarray(batch, np.float32), batch_size=32)


def adapted(model: model_files.ModelFile, adapter: Adapter) -> Any:
    """The model as this project runs it: a wrapped Keras model for the Keras formats, else a `ForeignModel`."""
    if model.keras_model is not None:
        return wrap_keras(model.keras_model, adapter)
    return ForeignModel(model, adapter)


# --------------------------------------------------------------------------
# The bundle: the copied model file and its adapter, one folder
# --------------------------------------------------------------------------


def save_bundle(source: str | os.PathLike, adapter: Adapter, folder: Path) -> Adapter:
    """Copy the model into `folder` (made here) with its `adapter.json`; returns the adapter naming the copy."""
    folder.mkdir(parents=True)
    adapter = replace(adapter, file=model_files.copy_model(source, folder))
    files.write_json(folder / ADAPTER, adapter.to_dict())
    return adapter


def is_bundle(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / ADAPTER).exists()


def read_adapter(folder: str | os.PathLike) -> Adapter:
    values = files.read_json(Path(folder) / ADAPTER)
    if not isinstance(values, dict):
        raise ModelFileError(f"{Path(folder) / ADAPTER} is missing or unreadable: import the model again")
    return Adapter.from_dict(values)


def load_bundle(folder: str | os.PathLike) -> Any:
    """The imported model saved in `folder`, adapted (`adapted`)."""
    adapter = read_adapter(folder)
    return adapted(model_files.open_model(Path(folder) / adapter.file), adapter)
