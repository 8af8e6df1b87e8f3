"""Inference engine: fast inference for trained or frozen Keras models.

Used wherever images (or cached features) go through a network without training: the
frozen-backbone pass that fills a feature cache, test-set evaluation and predictions.

`model.predict` keeps only a small share of a CPU busy (per-batch Python and callback overhead,
TensorFlow's generic kernels). Two faster paths:

- ``tflite``: the model is converted once to a float32 TensorFlow Lite flatbuffer (no quantisation,
  no float16, dynamic batch dimension) and run by the TF Lite interpreter, whose default CPU
  delegate, XNNPACK, runs convolutions several times faster than `model.predict` on a small x86
  CPU (docs/measurements.md, "Benchmarks").
  Images go through the interpreter a few at a time (twice the thread count), which keeps the
  activations in the CPU caches.
- ``keras``: the model wrapped in a `tf.function` with a fixed ``[None, ...]`` input signature, so it
  is traced once and every batch, the last partial one included, reuses that graph.

``auto`` (the default) tries ``tflite`` and falls back to ``keras`` when conversion or interpreter
creation fails, recording why in ``fallback_reason``.

``int8`` runs a full-integer quantised ONNX model made beforehand (``core.models.quantize``: it needs
calibration images, so it is never made here) with ONNX Runtime, stored with `store_converted`; it is refused
(ValueError) when there is none for these weights, never silently replaced by fp32. Its input and
output stay float32, so callers feed and read the same arrays. The engine logs nothing; the caller records
``engine.name`` (and ``fallback_reason``) in its run files.

Both engines return float32 arrays shaped like `model.predict`'s output. Only single-input,
single-output models with a fixed per-sample shape are supported: 4-D images ``(N, H, W, C)`` or
2-D features ``(N, D)``.
"""

from __future__ import annotations

import hashlib
import json
import queue
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core import files
from core.data import loading

INT8 = "int8"
BUILT_ENGINES = ("auto", "tflite", "keras")  # made from the model alone (what a search may use)
ENGINES = (*BUILT_ENGINES, INT8)

# Bump when the conversion recipe changes, so cached flatbuffers from an older recipe are rebuilt.
_CACHE_FORMAT = 1

# TF 2.21 still ships tf.lite.Interpreter but warns on every construction that it will move to the
# ai_edge_litert package (not installed here). The warning is pure noise for this project.
_INTERPRETER_DEPRECATION = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


def _sample_shape(model: keras.Model) -> tuple[int, ...]:
    """The per-sample input shape (without the batch dimension), checked to be fully known."""
    inputs = model.inputs
    if inputs is None or len(inputs) != 1:
        raise ValueError("the inference engine supports single-input models only")
    if len(model.outputs) != 1:
        raise ValueError("the inference engine supports single-output models only")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"the model's per-sample input shape must be fully known, got {shape}")
    return tuple(int(d) for d in shape)


def _output_sample_shape(model: keras.Model) -> tuple[int | None, ...]:
    return tuple(model.outputs[0].shape[1:])


def _as_batch(x: Any, sample_shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous float32 batch, shape-checked so a wrong input fails loudly, not silently."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.shape[1:] != sample_shape:
        raise ValueError(f"expected inputs shaped (N, {', '.join(map(str, sample_shape))}), got {arr.shape}")
    return arr


class InferenceEngine:
    """Batched inference over a Keras model. Subclasses implement `_run` for one batch."""

    name: str = "?"

    def __init__(self, model: keras.Model) -> None:
        self.sample_shape = _sample_shape(model)
        self.output_sample_shape = _output_sample_shape(model)
        # Set by make_engine("auto") when TF Lite could not be used.
        self.fallback_reason: str | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_one(self, sample_batch: np.ndarray) -> np.ndarray:
        return self._run(sample_batch)

    def _empty(self) -> np.ndarray:
        shape = tuple(0 if d is None else d for d in self.output_sample_shape)
        return np.zeros((0, *shape), dtype=np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Outputs for every sample of ``x`` (N, ...), run ``batch_size`` at a time, as float32."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        arr = _as_batch(x, self.sample_shape)
        if len(arr) == 0:
            return self._empty()
        outs = [self._run(arr[i : i + batch_size]) for i in range(0, len(arr), batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """The output for one sample (no batch dimension), without `model.predict`'s overhead."""
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.shape != self.sample_shape:
            raise ValueError(f"expected one sample shaped {self.sample_shape}, got {arr.shape}")
        return self._run_one(arr[None])[0]

    def predict_dataset(self, batches: Iterable[Any], prefetch: int = 2) -> np.ndarray:
        """Outputs for an iterable of input batches (numpy arrays or eager tensors), concatenated.

        A background thread pulls up to ``prefetch`` batches ahead, so Python-side decoding or a
        tf.data pipeline keeps working while the interpreter (which releases the GIL) runs a batch.
        Each batch runs whole: keep batches to a sensible size (e.g. 32). ``prefetch=0`` iterates
        in the calling thread.
        """
        outs = [self._run(_as_batch(b, self.sample_shape)) for b in _prefetched(batches, prefetch) if len(b)]
        if not outs:
            return self._empty()
        return np.concatenate(outs, axis=0)

    def __repr__(self) -> str:
        reason = f", fallback_reason={self.fallback_reason!r}" if self.fallback_reason else ""
        return f"{type(self).__name__}(name={self.name!r}, sample_shape={self.sample_shape}{reason})"


_DONE = object()


def _prefetched(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` from a daemon thread, ``depth`` items ahead; errors re-raise here."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        # Poll so the producer notices a consumer that stopped early instead of blocking forever.
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="engine-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# keras engine


class KerasEngine(InferenceEngine):
    """`model(x, training=False)` in one `tf.function` traced for ``[None, *sample_shape]``."""

    name = "keras"

    def __init__(self, model: keras.Model) -> None:
        super().__init__(model)
        self.model = model
        spec = tf.TensorSpec((None, *self.sample_shape), tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=False)
        # Trace now: the cost is paid once here, and a model that cannot be traced fails at creation.
        self._fn.get_concrete_function()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # np.array copies: a view of the eager tensor's buffer would be read-only.
        return np.array(self._fn(tf.constant(batch)), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# tflite engine


def convert_to_tflite(model: keras.Model) -> bytes:
    """Convert ``model`` (inference mode) to a float32 TF Lite flatbuffer with a dynamic batch size:
    only TFLITE_BUILTINS ops (no Flex/Select TF ops, so the whole graph can run in XNNPACK) and no
    optimisation flags, so weights stay float32.

    The model's call is traced as a `tf.function` over ``[None, *sample_shape]`` and its variables
    are frozen into constants before conversion: in TF 2.21 with Keras 3,
    `from_concrete_functions(..., trackable_obj=model)` produces a flatbuffer with uninitialised
    weights (NaN outputs), and `from_keras_model` goes through a SavedModel export on disk, several
    times slower.
    """
    spec = tf.TensorSpec((None, *_sample_shape(model)), tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=False)
    concrete = fn.get_concrete_function()
    # No public TensorFlow API freezes a concrete function's variables into constants (the public
    # routes are the SavedModel export below, much slower: docs/measurements.md, "Benchmarks"; or the model as
    # trackable: NaN outputs), so this one private import stays; tests/test_engine.py fails if it
    # moves, and here it only costs speed.
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError:
        return _convert_via_saved_model(model, spec)
    frozen = convert_variables_to_constants_v2(concrete)
    # The frozen function holds no variables, so an empty module is a complete trackable object
    # (and passing one avoids the converter's deprecated no-trackable path and its warning).
    return _float32(tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module()))


def _convert_via_saved_model(model: keras.Model, spec: tf.TensorSpec) -> bytes:
    with tempfile.TemporaryDirectory() as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
        archive.write_out(saved, verbose=False)
        return _float32(tf.lite.TFLiteConverter.from_saved_model(saved))


def _float32(converter: tf.lite.TFLiteConverter) -> bytes:
    """The converter's flatbuffer with builtin ops only and weights left float32."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = []
    return bytes(converter.convert())


def _weights_digest(model: keras.Model) -> str:
    """A digest of the model's weights (values and shapes, not names: Keras's auto-generated names
    change from one process to the next), so a cache file from other weights is never reused."""
    h = hashlib.blake2b(digest_size=16)
    for w in model.weights:
        arr = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _sidecar_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def _cache_meta(model: keras.Model, precision: str = "float32") -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "precision": precision,
        "input_shape": [None, *_sample_shape(model)],
        "output_shape": [None, *_output_sample_shape(model)],
        "weights_digest": _weights_digest(model),
    }


def _load_cached(cache_path: Path, meta: dict[str, Any]) -> bytes | None:
    """The cached flatbuffer if its sidecar matches this model and the file is intact, else None."""
    try:
        stored = json.loads(_sidecar_path(cache_path).read_text())
        data = cache_path.read_bytes()
    except (OSError, ValueError):
        return None
    # Sidecars written before int8 models existed name no precision: theirs is float32.
    if any(stored.get(k, "float32" if k == "precision" else None) != v for k, v in meta.items()):
        return None
    if stored.get("tflite_digest") != _bytes_digest(data):
        return None
    return data


def _store_cached(cache_path: Path, meta: dict[str, Any], data: bytes) -> None:
    files.write_bytes(cache_path, data)
    sidecar = {**meta, "tflite_digest": _bytes_digest(data), "tflite_bytes": len(data), "tensorflow": tf.__version__}
    files.write_json(_sidecar_path(cache_path), sidecar)


def store_converted(path: str | Path, model: keras.Model, data: bytes, precision: str) -> None:
    """Write a model file converted from ``model`` (e.g. an int8 one, ``core.models.quantize``) to ``path``
    atomically, with the sidecar that ties it to the model's shapes and weights and to ``precision``."""
    _store_cached(Path(path), _cache_meta(model, precision), data)


def load_converted(path: str | Path, model: keras.Model, precision: str) -> bytes | None:
    """The converted model file at ``path`` if its sidecar says it was made from these weights at ``precision``
    and the file is intact; None otherwise (missing, stale or damaged)."""
    return _load_cached(Path(path), _cache_meta(model, precision))


def remove_converted(path: str | Path) -> None:
    """Delete a stored converted model file and its sidecar, if there."""
    for file in (Path(path), _sidecar_path(Path(path))):
        file.unlink(missing_ok=True)


def _make_interpreter(model_content: bytes, threads: int) -> tf.lite.Interpreter:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATION)
        # XNNPACK is the interpreter's default CPU delegate: nothing to request explicitly.
        return tf.lite.Interpreter(model_content=model_content, num_threads=threads)


class _Runner:
    """One interpreter plus a lock: TF Lite interpreters must not be used from two threads at once."""

    def __init__(self, model_content: bytes, threads: int, batch: int, sample_shape: tuple[int, ...]) -> None:
        self.interpreter = _make_interpreter(model_content, threads)
        self.lock = threading.Lock()
        self.sample_shape = sample_shape
        (inp,) = self.interpreter.get_input_details()
        (out,) = self.interpreter.get_output_details()
        self.input_index = inp["index"]
        self.output_index = out["index"]
        self.dynamic_batch = int(inp["shape_signature"][0]) == -1
        self.batch = -1
        self._resize(batch)

    def _resize(self, n: int) -> None:
        # Re-planning tensors costs time, so only when the batch size actually changes (in practice
        # at the last, partial batch of a predict call and back).
        if n != self.batch:
            self.interpreter.resize_tensor_input(self.input_index, [n, *self.sample_shape], strict=self.dynamic_batch)
            self.interpreter.allocate_tensors()
            self.batch = n

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self._resize(len(batch))
            self.interpreter.set_tensor(self.input_index, batch)
            self.interpreter.invoke()
            # get_tensor copies, so the result survives the next invoke / resize.
            return self.interpreter.get_tensor(self.output_index).astype(np.float32, copy=False)


class TFLiteEngine(InferenceEngine):
    """A converted float32 TF Lite model run by the interpreter (XNNPACK delegate)."""

    name = "tflite"

    def __init__(self, model: keras.Model, model_content: bytes, threads: int | None = None) -> None:
        super().__init__(model)
        self.model_content = model_content
        self.threads = threads or loading.usable_cores()
        # Batches and single samples use separate interpreters, so predict_one never re-plans the
        # batch interpreter (or vice versa). The single-sample one is created on first use.
        self._batch_runner = _Runner(model_content, self.threads, 1, self.sample_shape)
        # XNNPACK is faster per image on a few images per invoke than on 32: the activations of a
        # small batch stay in the CPU caches (docs/measurements.md, "Benchmarks"; no model measured was slower).
        # Caller batches of images are therefore run a few images at a time; feature vectors (2-D
        # inputs) are cheap and run whole.
        self.invoke_batch: int | None = 2 * self.threads if len(self.sample_shape) == 3 else None
        self._one_runner: _Runner | None = None
        self._one_lock = threading.Lock()
        out_shape = tuple(int(d) for d in self._batch_runner.interpreter.get_output_details()[0]["shape"][1:])
        expected = self.output_sample_shape
        if len(out_shape) != len(expected) or any(
            e is not None and e != o for o, e in zip(out_shape, expected, strict=True)
        ):
            raise ValueError(f"converted model outputs {out_shape} per sample, the Keras model {expected}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        step = self.invoke_batch or len(batch)
        if len(batch) <= step:
            return self._batch_runner.run(batch)
        return np.concatenate([self._batch_runner.run(batch[i : i + step]) for i in range(0, len(batch), step)])

    def _run_one(self, sample_batch: np.ndarray) -> np.ndarray:
        if self._one_runner is None:
            with self._one_lock:
                if self._one_runner is None:
                    self._one_runner = _Runner(self.model_content, self.threads, 1, self.sample_shape)
        return self._one_runner.run(sample_batch)


class Int8Engine(InferenceEngine):
    """A full-integer quantised ONNX model (``core.models.quantize``): float32 in and out, int8
    inside, run by ONNX Runtime's integer kernels on the CPU."""

    name = INT8

    def __init__(self, model: keras.Model, model_content: bytes, threads: int | None = None) -> None:
        import onnxruntime

        super().__init__(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or loading.usable_cores()
        options.inter_op_num_threads = 1  # one op at a time: the graph is a chain
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(model_content, options, providers=["CPUExecutionProvider"])
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inp.name
        if tuple(inp.shape[1:]) != self.sample_shape or len(out.shape) != 1 + len(self.output_sample_shape):
            raise ValueError(f"the int8 model takes {inp.shape} and gives {out.shape}; the Keras model takes "
                             f"{self.sample_shape} per sample and gives {self.output_sample_shape}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # A session may run from several threads at once (unlike a TF Lite interpreter).
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def _int8_engine(model: keras.Model, path: str | Path | None, threads: int | None) -> Int8Engine:
    if path is None:
        raise ValueError("the int8 engine reads a quantised model made beforehand: pass its file as cache_path")
    data = load_converted(path, model, INT8)
    if data is None:
        raise ValueError(f"no int8 model of these weights at {path}: quantise the model first (core.models.quantize)")
    return Int8Engine(model, data, threads)


def _tflite_engine(model: keras.Model, cache_path: str | Path | None, threads: int | None) -> TFLiteEngine:
    if cache_path is None:
        return TFLiteEngine(model, convert_to_tflite(model), threads)
    path = Path(cache_path)
    meta = _cache_meta(model)
    cached = _load_cached(path, meta)
    if cached is not None:
        try:
            return TFLiteEngine(model, cached, threads)
        except Exception:  # an unusable cache file is rebuilt below
            pass
    data = convert_to_tflite(model)
    engine = TFLiteEngine(model, data, threads)  # only cache a flatbuffer that loads
    _store_cached(path, meta, data)
    return engine


def make_engine(
    model: keras.Model,
    engine: str = "auto",
    cache_path: str | Path | None = None,
    threads: int | None = None,
) -> InferenceEngine:
    """An inference engine for ``model``: ``"tflite"``, ``"keras"``, ``"auto"`` or ``"int8"`` (see module doc).

    ``cache_path``: where to keep the converted .tflite file (plus a ``.json`` sidecar that ties it
    to the model's shapes and weights); reused when it matches, rebuilt otherwise. The caller makes
    it unique per model. For ``"int8"``: the quantised model's file, read, never made. ``threads``:
    interpreter threads, default all cores this process may use. A model that is already an engine
    (an imported TF Lite, ONNX or SavedModel file, `core.models.imported.ForeignModel`) runs itself,
    whatever ``engine`` asks for.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(model, InferenceEngine):
        return model
    if threads is not None and threads < 1:
        raise ValueError("threads must be >= 1")
    if engine == "keras":
        return KerasEngine(model)
    if engine == "tflite":
        return _tflite_engine(model, cache_path, threads)
    if engine == INT8:
        return _int8_engine(model, cache_path, threads)
    try:
        return _tflite_engine(model, cache_path, threads)
    except Exception as exc:  # any TF Lite failure means: use the Keras path
        fallback = KerasEngine(model)
        fallback.fallback_reason = f"tflite unavailable: {type(exc).__name__}: {exc}"[:500]
        return fallback
