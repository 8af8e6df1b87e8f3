"""Model files made elsewhere: which formats are read, what each says of its input and output, and
running one as it is.

`FORMATS` holds one entry per format: a Keras file (`.keras`), a legacy Keras HDF5 file (`.h5`),
a TensorFlow SavedModel folder, a TF Lite flatbuffer (`.tflite`) and an ONNX file (`.onnx`, run by
onnxruntime). `open_model(path)` reads one into a `ModelFile`: the per-sample input shape the file
declares (None where a dimension is dynamic), its layout (channels last or first) and its output
width where the format says them, and `run`, which takes a float32 batch exactly as the model
expects it (its own size, channels, layout and scaling) and gives its raw output rows. How this
project's pixels become that input, and the raw output a probability, is `core.models.imported`.

Keras files are loaded with `safe_mode` (no code stored in the file runs); a model that needs its
own Python code (a Lambda layer, a custom layer) is refused with what to do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NHWC, NCHW = "NHWC", "NCHW"


class ModelFileError(ValueError):
    """A model file that cannot be read or used as it is; the message says why and what to do."""


@dataclass
class ModelFile:
    """A model file read into memory. `input_shape` is per sample (no batch dimension), None where
    the file leaves a dimension dynamic; `layout` is NHWC or NCHW (None when the shape cannot say);
    `output_width` is the last dimension of the output (None when dynamic); `run` maps a float32
    batch in the model's own input format to its raw output rows (n, width); `keras_model` is the
    loaded Keras model for the Keras formats (gradients and layers can be read), else None."""

    format: str
    input_shape: tuple[int | None, ...]
    layout: str | None
    output_width: int | None
    run: Callable[[np.ndarray], np.ndarray]
    keras_model: Any = None
    input_dtype: str = "float32"


@dataclass(frozen=True)
class ModelFormat:
    """One format: `name` is the command line's and settings' id, `label` the pages' name, `matches`
    recognises a path, `load` reads it (ModelFileError when it cannot)."""

    name: str
    label: str
    matches: Callable[[Path], bool]
    load: Callable[[Path], ModelFile]


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------


def _dimension(value) -> int | None:
    """A declared dimension as an int, or None when it is dynamic (None, -1, 0 or a symbolic name)."""
    if isinstance(value, (int, np.integer)) and int(value) > 0:
        return int(value)
    return None


def layout_of(shape: tuple[int | None, ...]) -> str | None:
    """NHWC or NCHW from a per-sample image shape (h, w, c) or (c, h, w): the side of 1 or 3
    channels with the other side not a channel count; None when it cannot tell (or not 3-D)."""
    if len(shape) != 3:
        return None
    first, last = shape[0], shape[-1]
    if last in (1, 3) and first not in (1, 3):
        return NHWC
    if first in (1, 3) and last not in (1, 3):
        return NCHW
    if last in (1, 3):  # e.g. (3, 3, 3): channels last, as Keras and TF Lite save by default
        return NHWC
    return None


def _only_one(kind: str, items: list, path: Path) -> None:
    if len(items) != 1:
        raise ModelFileError(
            f"{path.name} has {len(items)} {kind}s: only models with one image input and one output can be imported "
            "(export the classifier alone)"
        )


# --------------------------------------------------------------------------
# The formats
# --------------------------------------------------------------------------


def _load_keras(path: Path) -> ModelFile:
    import keras

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        text = str(error)
        if "safe_mode" in text or "Lambda" in text or "custom" in text.lower():
            raise ModelFileError(
                f"{path.name} needs Python code of its own to load (a Lambda or custom layer): it is not run, for safety. "
                "Re-save the model without it, or export it to ONNX or TF Lite and import that"
            ) from None
        raise ModelFileError(f"{path.name} is not a Keras model this version can read: {text[:200]}") from None
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"{path.name} holds a {type(model).__name__}, not a Keras model")
    _only_one("input", list(model.inputs), path)
    _only_one("output", list(model.outputs), path)
    shape = tuple(_dimension(d) for d in model.inputs[0].shape[1:])
    output = model.outputs[0].shape

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False), np.float64)

    return ModelFile("", shape, layout_of(shape), _dimension(output[-1]) if len(output) >= 2 else None, run, model)


def _load_saved_model(path: Path) -> ModelFile:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:
        raise ModelFileError(f"{path.name} is not a TensorFlow SavedModel that can be read: {str(error)[:200]}") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    name = next((n for n in ("serving_default", "serve") if n in signatures), None)
    if name is None:
        raise ModelFileError(
            f"{path.name} has no serving signature (serving_default or serve): save it with `model.export(...)` "
            "or `tf.saved_model.save(model, path)` with a signature"
        )
    function = signatures[name]
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    _only_one("input", list(inputs), path)
    _only_one("output", list(outputs), path)
    (input_name, spec), = inputs.items()
    (output_name, output_spec), = outputs.items()
    shape = tuple(_dimension(d) for d in spec.shape[1:])

    def run(batch: np.ndarray) -> np.ndarray:
        result = function(**{input_name: tf.constant(batch, dtype=spec.dtype)})
        return np.asarray(result[output_name], np.float64)

    out_shape = output_spec.shape
    return ModelFile("", shape, layout_of(shape), _dimension(out_shape[-1]) if len(out_shape) >= 2 else None, run, None,
                     spec.dtype.name)


def _load_tflite(path: Path) -> ModelFile:
    import tensorflow as tf

    from core.data.loading import usable_cores

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=path.read_bytes(), num_threads=usable_cores())
    except Exception as error:
        raise ModelFileError(f"{path.name} is not a TF Lite model: {str(error)[:200]}") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    _only_one("input", inputs, path)
    _only_one("output", outputs, path)
    signature = inputs[0].get("shape_signature", inputs[0]["shape"])
    shape = tuple(_dimension(d) for d in signature[1:])
    out = outputs[0].get("shape_signature", outputs[0]["shape"])
    state = {"batch": None}

    def convert(values: np.ndarray, detail: dict, inward: bool) -> np.ndarray:
        scale, zero = detail.get("quantization", (0.0, 0))
        if not np.issubdtype(detail["dtype"], np.integer) or not scale:
            return values.astype(detail["dtype"]) if inward else np.asarray(values, np.float64)
        if inward:  # a quantised input: float values to the integer grid the model was calibrated on
            info = np.iinfo(detail["dtype"])
            return np.clip(np.round(values / scale + zero), info.min, info.max).astype(detail["dtype"])
        return (np.asarray(values, np.float64) - zero) * scale

    def run(batch: np.ndarray) -> np.ndarray:
        if state["batch"] != batch.shape:  # the batch size (and a dynamic side) is fixed per call shape
            interpreter.resize_tensor_input(inputs[0]["index"], list(batch.shape), strict=False)
            interpreter.allocate_tensors()
            state["batch"] = batch.shape
        interpreter.set_tensor(inputs[0]["index"], convert(batch, inputs[0], True))
        interpreter.invoke()
        return convert(interpreter.get_tensor(outputs[0]["index"]), outputs[0], False)

    return ModelFile("", shape, layout_of(shape), _dimension(out[-1]) if len(out) >= 2 else None, run, None,
                     np.dtype(inputs[0]["dtype"]).name)


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(uint8)": np.uint8}


def _load_onnx(path: Path) -> ModelFile:
    try:
        import onnxruntime
    except ImportError:
        raise ModelFileError("reading ONNX files needs onnxruntime: pip install onnxruntime") from None
    from core.data.loading import usable_cores

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelFileError(f"{path.name} is not an ONNX model onnxruntime can run: {str(error)[:200]}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    _only_one("input", inputs, path)
    _only_one("output", outputs, path)
    dtype = _ONNX_TYPES.get(inputs[0].type)
    if dtype is None:
        raise ModelFileError(f"{path.name} takes {inputs[0].type}: only float or uint8 image inputs can be imported")
    shape = tuple(_dimension(d) for d in inputs[0].shape[1:])
    input_name = inputs[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch.astype(dtype)})[0], np.float64)

    out = outputs[0].shape
    return ModelFile("", shape, layout_of(shape), _dimension(out[-1]) if len(out) >= 2 else None, run, None,
                     np.dtype(dtype).name)


def _suffix(*suffixes: str) -> Callable[[Path], bool]:
    return lambda path: path.is_file() and path.suffix.lower() in suffixes


FORMATS: dict[str, ModelFormat] = {
    f.name: f
    for f in (
        ModelFormat("keras", "Keras (.keras)", _suffix(".keras"), _load_keras),
        ModelFormat("h5", "Keras HDF5 (.h5)", _suffix(".h5", ".hdf5"), _load_keras),
        ModelFormat("savedmodel", "TensorFlow SavedModel (folder)", lambda p: p.is_dir() and (p / "saved_model.pb").exists(),
                    _load_saved_model),
        ModelFormat("tflite", "TF Lite (.tflite)", _suffix(".tflite"), _load_tflite),
        ModelFormat("onnx", "ONNX (.onnx)", _suffix(".onnx"), _load_onnx),
    )
}
KERAS_FORMATS = ("keras", "h5")  # read as Keras models: gradient methods (Grad-CAM) can explain them


def format_of(path: str | os.PathLike) -> ModelFormat:
    """The format of the model at `path`; ModelFileError naming the formats when none matches."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist: give the path of a model file or SavedModel folder")
    for model_format in FORMATS.values():
        if model_format.matches(path):
            return model_format
    kinds = ", ".join(f.label for f in FORMATS.values())
    what = "a folder without saved_model.pb" if path.is_dir() else f"a {path.suffix or 'suffix-less'} file"
    raise ModelFileError(f"{path.name} is {what}: import one of {kinds}")


def open_model(path: str | os.PathLike) -> ModelFile:
    """Read the model at `path` in its format (`FORMATS`); ModelFileError when it is not one."""
    model_format = format_of(path)
    model = model_format.load(Path(path))
    model.format = model_format.name
    return model


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a model file, or of a SavedModel folder's files (names and contents, in order)."""
    path = Path(path)
    digest = hashlib.sha256()
    for item in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode())
        with open(item, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def copy_model(path: str | os.PathLike, folder: Path) -> str:
    """Copy a model file (or SavedModel folder) into `folder`; returns its name there."""
    path = Path(path)
    name = "saved_model" if path.is_dir() else f"model{path.suffix.lower()}"
    if path.is_dir():
        shutil.copytree(path, folder / name)
    else:
        shutil.copyfile(path, folder / name)
    return name


# --------------------------------------------------------------------------
# Writing this project's own models for elsewhere
# --------------------------------------------------------------------------


def convert_to_onnx(model, opset: int = 17) -> bytes:
    """A Keras model of this project (one image input, 0..255 RGB NHWC, a dynamic batch) as an ONNX
    file, through tf2onnx from the model's inference call; ModelFileError when tf2onnx is missing or
    cannot convert it (for example a layer it has no ONNX op for)."""
    try:
        import onnx
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise ModelFileError("writing ONNX needs tf2onnx: pip install tf2onnx") from None
    shape = tuple(model.inputs[0].shape[1:])
    function = tf.function(lambda x: model(x, training=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=(tf.TensorSpec((None, *shape), tf.float32, name="pixels"),), opset=opset
            )
    except Exception as error:
        raise ModelFileError(f"tf2onnx cannot convert model {model.name!r}: {str(error)[:200]}") from None
    _erfc_as_erf(proto.graph)
    try:  # a file that ONNX Runtime cannot load is not shipped as if it were the model
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:
        raise ModelFileError(f"tf2onnx made an invalid ONNX model of {model.name!r}: {str(error)[:200]}") from None
    return proto.SerializeToString()


def _erfc_as_erf(graph) -> None:
    """Rewrite each `Erfc` node as 1 - Erf(x), in place. tf2onnx passes TensorFlow's Erfc through
    (Keras's exact GELU, in the transformers' MLPs, is 0.5 x erfc(-x/sqrt 2)), but ONNX has no such
    op, so the file would not load."""
    import onnx
    from onnx import helper

    nodes = []
    for node in graph.node:
        if node.op_type != "Erfc":
            nodes.append(node)
            continue
        one, erf = f"{node.name}/one", f"{node.name}/erf"
        graph.initializer.append(helper.make_tensor(one, onnx.TensorProto.FLOAT, [], [1.0]))
        nodes.append(helper.make_node("Erf", [node.input[0]], [erf], name=erf))
        nodes.append(helper.make_node("Sub", [one, erf], [node.output[0]], name=f"{node.name}/one_minus_erf"))
    del graph.node[:]
    graph.node.extend(nodes)
