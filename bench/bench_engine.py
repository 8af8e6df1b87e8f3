"""Benchmark of core.engine: model.predict vs a tf.function vs the engine (TF Lite when it converts).

Run by hand from the repository root:

    python bench/bench_engine.py            # 256 images per model, batch 32, ~4 min on 2 cores
    python bench/bench_engine.py --quick    # 64 images, ~1 min

For each model it prints images/s over a batched pass and the median latency of one image, for
`model.predict`, the `keras` engine (a tf.function) and the `auto` engine, with the speed-up over
`model.predict`. MobileNetV2 uses ImageNet weights when $KERAS_HOME holds them (e.g.
KERAS_HOME=../shared/keras_home), random weights otherwise; InceptionV3 and the custom CNN use random
weights. Random-weight models get their batch norms set from one batch, so activations have a
realistic scale (a random network's signal otherwise shrinks towards denormal floats, which are
slow on x86 and would distort the timings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info logs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import keras  # noqa: E402
import numpy as np  # noqa: E402

from core.engine import default_threads, make_engine  # noqa: E402

MOBILENET_V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _calibrate_batchnorm(model: keras.Model, x: np.ndarray) -> None:
    """Moving statistics of every batch norm := this batch's (one training pass, momentum 0)."""
    stack, bns = [model], []
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, keras.layers.BatchNormalization):
            bns.append(layer)
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn in bns:
        bn.momentum = 0.99


def _transfer_model(constructor: Callable[..., keras.Model], size: int, weights: str | None) -> keras.Model:
    """Images 0..255 -> Rescaling -> backbone (inference mode) -> Dropout -> Dense sigmoid."""
    base = constructor(include_top=False, weights=weights, pooling="avg", input_shape=(size, size, 3))
    if weights is None:
        _calibrate_batchnorm(base, np.random.default_rng(0).uniform(-1, 1, (8, size, size, 3)).astype(np.float32))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Dropout(0.2)(base(x, training=False))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def mobilenet_v2() -> tuple[keras.Model, str]:
    home = os.environ.get("KERAS_HOME")
    imagenet = bool(home) and (Path(home) / "models" / MOBILENET_V2_FILE).is_file()
    model = _transfer_model(keras.applications.MobileNetV2, 224, "imagenet" if imagenet else None)
    return model, f"MobileNetV2 224 ({'imagenet' if imagenet else 'random'})"


def inception_v3() -> tuple[keras.Model, str]:
    return _transfer_model(keras.applications.InceptionV3, 299, None), "InceptionV3 299 (random)"


def custom_cnn() -> tuple[keras.Model, str]:
    """Like core.models.build_custom_cnn's default: 3 conv blocks (32/64/128), dense 64."""
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    _calibrate_batchnorm(model, np.random.default_rng(0).uniform(0, 255, (8, 224, 224, 3)).astype(np.float32))
    return model, "custom CNN 224 (random)"


MODELS = {"mobilenet_v2": mobilenet_v2, "inception_v3": inception_v3, "custom_cnn": custom_cnn}


def _time_pass(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    start = time.perf_counter()
    run(x)
    return len(x) / (time.perf_counter() - start)


def _latency_ms(run_one: Callable[[np.ndarray], np.ndarray], sample: np.ndarray, calls: int) -> float:
    for _ in range(3):
        run_one(sample)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run_one(sample)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_model(name: str, n_images: int, batch: int, calls: int, repeats: int, threads: int | None) -> list[dict]:
    model, label = MODELS[name]()
    size = model.input_shape[1]
    x = np.random.default_rng(1).uniform(0, 255, (n_images, size, size, 3)).astype(np.float32)

    start = time.perf_counter()
    tf_engine = make_engine(model, "keras")
    tf_setup = time.perf_counter() - start
    start = time.perf_counter()
    engine = make_engine(model, "auto", threads=threads)
    engine_setup = time.perf_counter() - start
    if engine.fallback_reason:
        print(f"  note: {label}: {engine.fallback_reason}", flush=True)

    methods = {
        "model.predict": (
            0.0,
            lambda a: model.predict(a, batch_size=batch, verbose=0),
            lambda s: model.predict(s[None], verbose=0)[0],
        ),
        "tf.function": (tf_setup, lambda a: tf_engine.predict(a, batch), tf_engine.predict_one),
        f"engine:{engine.name}": (engine_setup, lambda a: engine.predict(a, batch), engine.predict_one),
    }
    for _, run, _ in methods.values():
        run(x[:batch])  # warm-up: tracing, allocation, first touch of the weights
    # Passes interleave the methods and the best pass counts: other processes on a shared
    # machine slow some passes down, never speed one up.
    best = dict.fromkeys(methods, 0.0)
    for _ in range(repeats):
        for method, (_, run, _) in methods.items():
            best[method] = max(best[method], _time_pass(run, x))
    rows = []
    for method, (setup, _, run_one) in methods.items():
        ms = _latency_ms(run_one, x[0], calls)
        rows.append({"model": label, "method": method, "setup_s": setup, "ips": best[method], "ms": ms})
        print(f"  {label:28s} {method:14s} {best[method]:8.1f} img/s  {ms:8.1f} ms/img", flush=True)
    # Sanity: the engine computes the same thing as model.predict.
    diff = float(np.max(np.abs(engine.predict(x[:batch], batch) - model.predict(x[:batch], verbose=0))))
    rows[-1]["max_abs_diff"] = diff
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    header = f"| {'model':28s} | {'method':14s} | {'setup s':>7s} | {'images/s':>8s} | {'x predict':>9s} | {'1-image ms':>10s} | {'x predict':>9s} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    base = {}
    for r in rows:
        if r["method"] == "model.predict":
            base = r
        print(
            f"| {r['model']:28s} | {r['method']:14s} | {r['setup_s']:7.1f} | {r['ips']:8.1f} | "
            f"{r['ips'] / base['ips']:8.2f}x | {r['ms']:10.1f} | {base['ms'] / r['ms']:8.2f}x |"
        )
    print("\n'x predict': speed-up over model.predict (throughput ratio; latency ratio predict/method).")
    for r in rows:
        if "max_abs_diff" in r:
            print(f"{r['model']}: engine vs model.predict max |diff| = {r['max_abs_diff']:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, 1 pass and 10 latency calls per model")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per method, best counts (default 2)")
    parser.add_argument("--images", type=int, default=None, help="images per throughput pass (default 256)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="TF Lite threads (default: all usable cores)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    n_images = args.images or (64 if args.quick else 256)
    calls = 10 if args.quick else 20
    repeats = args.repeats or (1 if args.quick else 2)
    import tensorflow as tf

    load_before = os.getloadavg()[0]
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {default_threads()} usable cores, "
        f"{n_images} images x best of {repeats} passes, batch {args.batch}, latency = median of {calls}, "
        f"load average {load_before:.1f}",
        flush=True,
    )
    rows = []
    for name in args.models:
        rows += bench_model(name, n_images, args.batch, calls, repeats, args.threads)
        keras.backend.clear_session()
    print_table(rows)
    if load_before > 0.5:
        # The benchmark itself loads every core, so only the load before it started tells of others.
        print(f"note: load average {load_before:.1f} before the run: other processes shared the CPU, figures may be low")


if __name__ == "__main__":
    main()
