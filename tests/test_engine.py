"""Agreement and behaviour tests for core.models.engine (TF Lite and tf.function engines vs model.predict)."""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.models import engine as eng

TOL = 1e-4
N = 7  # with batch_size 4: one full batch and a partial one
BATCH = 4


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    found = [layer]
    for sub in getattr(layer, "layers", []):
        found += _all_layers(sub)
    return found


def calibrate_batchnorm(model: keras.Model, x: np.ndarray) -> None:
    """Give a randomly initialised model realistic, well-conditioned activations.

    With weights=None, MobileNetV2 / InceptionV3 shrink their signal layer after layer (random
    MobileNetV2 features are ~1e-11), so any absolute tolerance would pass trivially. One training
    pass with momentum 0 sets every BatchNormalization's moving statistics from this batch, so in
    inference mode each layer outputs unit scale and the comparison means something.

    The moments are taken about zero (moving mean 0, moving variance = mean square) rather than
    centred: centring a random network's activations cancels large terms and makes it chaotic
    (random InceptionV3 moves by 2e-2 when its input moves by float32 rounding), and then no
    float32 implementation, model.predict included, could agree with another to 1e-4.
    Run it on a backbone before wrapping it: a wrapper calling `base(x, training=False)` keeps
    the backbone in inference mode.
    """
    bns = [la for la in _all_layers(model) if isinstance(la, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
        # BatchNormalization._moments(inputs, mask) -> (mean, variance), overridden per instance.
        bn._moments = functools.partial(_uncentred_moments, bn)
    try:
        model(x, training=True)
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
            del bn._moments
    assert all(not np.any(bn.moving_mean.numpy()) for bn in bns), "calibration did not take effect"


def _uncentred_moments(bn: keras.layers.BatchNormalization, inputs, mask=None):
    square = keras.ops.mean(keras.ops.square(inputs), axis=bn._reduction_axes)
    return keras.ops.zeros_like(square), square


def _mobilenet_features() -> tuple[keras.Model, np.ndarray]:
    m = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg", input_shape=(96, 96, 3))
    x = np.random.default_rng(1).uniform(-1, 1, (N, 96, 96, 3)).astype(np.float32)
    calibrate_batchnorm(m, x)
    m.trainable = False  # used as a frozen feature extractor
    return m, x


def _mobilenet_classifier() -> tuple[keras.Model, np.ndarray]:
    base = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg", input_shape=(96, 96, 3))
    images = np.random.default_rng(2).uniform(0, 255, (N, 96, 96, 3)).astype(np.float32)
    calibrate_batchnorm(base, images / 127.5 - 1)
    base.trainable = False
    inp = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x, training=False)
    x = keras.layers.Dropout(0.3)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out), images


def _inception() -> dict[str, tuple[keras.Model, np.ndarray]]:
    base = keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg", input_shape=(75, 75, 3))
    # Even with uncentred batch norms, random sign-mixed kernels leave InceptionV3 chaotic: a 1e-6
    # relative change of the input moves model.predict's own features by ~1e-3, beyond any 1e-4
    # comparison. Non-negative kernels (past the first convolution) make it well-conditioned
    # (the same change moves it by ~2e-7) while every op of the graph is still exercised.
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer is not base.layers[1]:
            layer.kernel.assign(np.abs(keras.ops.convert_to_numpy(layer.kernel)))
    x = np.random.default_rng(3).uniform(-1, 1, (N, 75, 75, 3)).astype(np.float32)
    calibrate_batchnorm(base, x)
    inp = keras.Input((75, 75, 3))
    # A head with larger weights, centred on these samples, so the sigmoid outputs spread out
    # (with the default initialiser they all sit within 1e-3 of each other).
    head = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=0.5))
    out = head(base(inp, training=False))
    kernel, _ = head.get_weights()
    head.set_weights([kernel, -np.mean(base.predict(x, verbose=0) @ kernel, axis=0)])
    # The sigmoid outputs of this backbone vary little between samples, so its 2048 features are
    # compared as well (one backbone, two converted models).
    return {"inception_classifier": (keras.Model(inp, out), x), "inception_features": (base, x)}


def _custom_cnn() -> tuple[keras.Model, np.ndarray]:
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inp, out)
    x = np.random.default_rng(4).uniform(0, 255, (N, 64, 64, 3)).astype(np.float32)
    calibrate_batchnorm(model, x)
    return model, x


def _dense_head() -> tuple[keras.Model, np.ndarray]:
    inp = keras.Input((1280,))
    x = keras.layers.Dense(64, activation="relu")(inp)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    # Cached MobileNetV2 features are non-negative (ReLU6 then average pooling).
    return keras.Model(inp, out), np.random.default_rng(5).uniform(0, 6, (N, 1280)).astype(np.float32)


MODEL_NAMES = (
    "mobilenet_features",
    "mobilenet_classifier",
    "inception_classifier",
    "inception_features",
    "custom_cnn",
    "dense_head",
)


def build_models() -> dict[str, tuple[keras.Model, np.ndarray]]:
    """name -> (model, float32 inputs in the model's real input range)."""
    keras.utils.set_random_seed(0)
    return {
        "mobilenet_features": _mobilenet_features(),
        "mobilenet_classifier": _mobilenet_classifier(),
        **_inception(),
        "custom_cnn": _custom_cnn(),
        "dense_head": _dense_head(),
    }


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[keras.Model, np.ndarray, np.ndarray]]:
    """name -> (model, float32 inputs, model.predict outputs); built once for the module."""
    # Batch norms are calibrated in the builders (see calibrate_batchnorm).
    built = build_models()
    assert set(built) == set(MODEL_NAMES)
    return {name: (model, x, model.predict(x, verbose=0)) for name, (model, x) in built.items()}


@pytest.fixture(scope="module")
def engines(models) -> Callable[[str, str], eng.InferenceEngine]:
    """get(model_name, kind): engines are built (converted) once per module, on demand."""
    cache: dict[tuple[str, str], eng.InferenceEngine] = {}

    def get(name: str, kind: str) -> eng.InferenceEngine:
        if (name, kind) not in cache:
            cache[name, kind] = eng.make_engine(models[name][0], kind, threads=2)
        return cache[name, kind]

    return get


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.mark.parametrize("kind", ["tflite", "keras"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_agrees_with_model_predict(models, engines, name: str, kind: str) -> None:
    model, x, ref = models[name]
    # The outputs differ between samples by far more than the tolerance, so it means something.
    assert float(np.ptp(ref)) > 10 * TOL
    e = engines(name, kind)
    assert e.name == kind and e.fallback_reason is None
    out = e.predict(x, batch_size=BATCH)  # 7 samples: a full batch of 4 and a partial one of 3
    assert out.dtype == np.float32 and out.shape == ref.shape and out.flags.writeable
    assert _max_diff(out, ref) <= TOL, f"{name}/{kind}: max |diff| {_max_diff(out, ref):.2e}"
    # The same with everything in one batch, and sample by sample through predict_one.
    assert _max_diff(e.predict(x, batch_size=32), ref) <= TOL
    one = e.predict_one(x[-1])
    assert one.shape == ref.shape[1:] and one.dtype == np.float32 and one.flags.writeable
    assert _max_diff(one, ref[-1]) <= TOL
    assert _max_diff(e.predict_one(x[0]), ref[0]) <= TOL


def test_tflite_has_dynamic_batch_and_float32(engines) -> None:
    e = engines("mobilenet_features", "tflite")
    assert isinstance(e, eng.TFLiteEngine)
    interp = eng._make_interpreter(e.model_content, 1)
    (inp,) = interp.get_input_details()
    assert list(inp["shape_signature"]) == [-1, 96, 96, 3] and inp["dtype"] == np.float32
    # No quantised or float16 tensors anywhere in the graph.
    assert {d["dtype"] for d in interp.get_tensor_details()} <= {np.float32, np.int32}


def test_tflite_runs_images_a_few_per_invoke_and_features_whole(models) -> None:
    model, x, ref = models["custom_cnn"]
    e = eng.make_engine(model, "tflite", threads=1)
    assert e.invoke_batch == 2
    sizes: list[int] = []
    run = e._batch_runner.run
    e._batch_runner.run = lambda b: sizes.append(len(b)) or run(b)
    out = e.predict(x, batch_size=32)  # 7 images: invokes of 2, 2, 2 and 1
    assert sizes == [2, 2, 2, 1] and _max_diff(out, ref) <= TOL
    head, features, head_ref = models["dense_head"]
    h = eng.make_engine(head, "tflite", threads=1)
    assert h.invoke_batch is None and _max_diff(h.predict(features, batch_size=32), head_ref) <= TOL


def test_predict_dataset_and_inputs(models, engines) -> None:
    _, x, ref = models["custom_cnn"]
    e = engines("custom_cnn", "tflite")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    assert _max_diff(e.predict_dataset(ds.as_numpy_iterator()), ref) <= TOL
    assert _max_diff(e.predict_dataset(ds, prefetch=0), ref) <= TOL  # eager tensors, no thread
    assert _max_diff(e.predict_dataset(iter([x[:5], x[5:]])), ref) <= TOL
    assert e.predict_dataset([]).shape == (0, 1)
    assert e.predict(x[:0]).shape == (0, 1)
    # float64 / uint8 inputs are converted, not rejected
    assert _max_diff(e.predict(x.astype(np.float64)), ref) <= TOL
    pixels = x.astype(np.uint8)
    assert _max_diff(e.predict(pixels), e.predict(pixels.astype(np.float32))) == 0.0
    with pytest.raises(ValueError):
        e.predict(x[:, :32])
    with pytest.raises(ValueError):
        e.predict_one(x)


def test_predict_dataset_reraises_producer_errors(models, engines) -> None:
    _, x, _ = models["dense_head"]
    e = engines("dense_head", "tflite")

    def batches():
        yield x[:3]
        raise OSError("bad image file")

    with pytest.raises(OSError, match="bad image file"):
        e.predict_dataset(batches())


@pytest.mark.parametrize("kind", ["tflite", "keras"])
def test_concurrent_use_is_safe(models, engines, kind: str) -> None:
    _, x, ref = models["dense_head"]
    e = engines("dense_head", kind)
    xs = np.concatenate([x] * 20)  # 140 rows
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = e.predict(xs, batch_size=3 + i) if i % 2 else np.stack([e.predict_one(r) for r in xs[:14]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():
        assert _max_diff(out, np.concatenate([ref] * (20 if i % 2 else 2))) <= TOL


def _count_conversions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = eng.convert_to_tflite

    def counting(model):
        calls.append(1)
        return real(model)

    monkeypatch.setattr(eng, "convert_to_tflite", counting)
    return calls


def test_cache_is_written_atomically_and_reused(models, tmp_path: Path, monkeypatch) -> None:
    model, x, ref = models["custom_cnn"]
    path = tmp_path / "cache" / "custom_cnn.tflite"  # the folder does not exist yet
    calls = _count_conversions(monkeypatch)
    first = eng.make_engine(model, "tflite", cache_path=path)
    assert calls == [1] and path.is_file() and Path(f"{path}.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["custom_cnn.tflite", "custom_cnn.tflite.json"]
    mtime = path.stat().st_mtime_ns

    def no_conversion(model):
        raise AssertionError("converted again despite a valid cache file")

    monkeypatch.setattr(eng, "convert_to_tflite", no_conversion)
    again = eng.make_engine(model, "tflite", cache_path=str(path))
    assert again.name == "tflite" and path.stat().st_mtime_ns == mtime
    assert _max_diff(again.predict(x, batch_size=BATCH), first.predict(x)) == 0.0
    assert _max_diff(again.predict(x), ref) <= TOL


def test_cache_is_rebuilt_for_other_weights_or_a_damaged_file(models, tmp_path: Path, monkeypatch) -> None:
    model, x, _ = models["dense_head"]
    other = keras.models.clone_model(model)  # same architecture, fresh random weights
    path = tmp_path / "head.tflite"
    calls = _count_conversions(monkeypatch)
    eng.make_engine(model, "tflite", cache_path=path)
    e = eng.make_engine(other, "tflite", cache_path=path)
    assert len(calls) == 2
    assert _max_diff(e.predict(x), other.predict(x, verbose=0)) <= TOL
    path.write_bytes(path.read_bytes()[:100])  # truncated file: digest mismatch
    e = eng.make_engine(other, "tflite", cache_path=path)
    assert len(calls) == 3 and e.name == "tflite"
    eng.make_engine(other, "tflite", cache_path=path)
    assert len(calls) == 3


def test_conversion_freezes_variables_without_a_saved_model(models, monkeypatch) -> None:
    """The fast route imports `convert_variables_to_constants_v2` from `tensorflow.python`; when a
    TensorFlow release moves it, conversion quietly takes the SavedModel route and this fails."""
    model, x, ref = models["dense_head"]

    def no_saved_model(*args):
        raise AssertionError("took the SavedModel route: tensorflow.python moved convert_variables_to_constants_v2")

    monkeypatch.setattr(eng, "_convert_via_saved_model", no_saved_model)
    e = eng.TFLiteEngine(model, eng.convert_to_tflite(model), threads=1)
    assert _max_diff(e.predict(x), ref) <= TOL


def test_conversion_falls_back_to_a_saved_model_without_the_private_import(models, monkeypatch) -> None:
    model, x, ref = models["dense_head"]
    monkeypatch.setitem(sys.modules, "tensorflow.python.framework.convert_to_constants", None)  # import fails
    route: list[str] = []
    real = eng._convert_via_saved_model
    monkeypatch.setattr(eng, "_convert_via_saved_model", lambda *args: route.append("saved model") or real(*args))
    e = eng.TFLiteEngine(model, eng.convert_to_tflite(model), threads=1)
    assert route == ["saved model"]
    assert _max_diff(e.predict(x), ref) <= TOL


def test_auto_prefers_tflite(models) -> None:
    model, x, ref = models["dense_head"]
    e = eng.make_engine(model)
    assert e.name == "tflite" and e.fallback_reason is None
    assert e.threads == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_auto_falls_back_to_keras_when_conversion_fails(models, tmp_path: Path, monkeypatch) -> None:
    model, x, ref = models["custom_cnn"]

    def broken(model):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(eng, "convert_to_tflite", broken)
    e = eng.make_engine(model, "auto", cache_path=tmp_path / "m.tflite")
    assert e.name == "keras" and "converter exploded" in e.fallback_reason
    assert _max_diff(e.predict(x, batch_size=BATCH), ref) <= TOL
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(RuntimeError, match="converter exploded"):
        eng.make_engine(model, "tflite")


def test_auto_falls_back_when_the_interpreter_fails(models, monkeypatch) -> None:
    model, x, ref = models["dense_head"]
    monkeypatch.setattr(eng, "convert_to_tflite", lambda model: b"not a flatbuffer")
    e = eng.make_engine(model, "auto")
    assert e.name == "keras" and e.fallback_reason
    assert _max_diff(e.predict(x), ref) <= TOL


def test_bad_arguments(models) -> None:
    model = models["dense_head"][0]
    with pytest.raises(ValueError):
        eng.make_engine(model, "onnx")
    with pytest.raises(ValueError):
        eng.make_engine(model, "keras").predict(np.zeros((2, 1280)), batch_size=0)
