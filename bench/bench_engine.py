"""Benchmark of core.models.engine: model.predict vs a tf.function vs the engine (TF Lite when it converts).

Run by hand from the repository root:

    python bench/bench_engine.py            # 256 images per family, batch 32
    python bench/bench_engine.py --quick    # 64 images, fewer passes

For each model family of the registry (`core.models.families.FAMILIES`, at its default input size;
the transformer families at their default encoder) it
prints images/s over a batched pass and the median latency of one image, for `model.predict`, the
`keras` engine (a tf.function) and the `auto` engine, with the speed-up over `model.predict`.
A backbone uses ImageNet weights when $KERAS_HOME holds them (e.g. KERAS_HOME=../shared/keras_home),
random weights otherwise; the custom CNN uses random weights. Random-weight models get their batch
norms set from one batch, so activations have a realistic scale (a random network's signal
otherwise shrinks towards denormal floats, which are slow on x86 and would distort the timings).
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
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

from core.data.loading import usable_cores  # noqa: E402
from core.models import (
    backbones,  # noqa: E402
    builders,
    families,
)
from core.models.engine import make_engine  # noqa: E402


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


def family_model(name: str) -> tuple[keras.Model, str]:
    """The family's inference model at its default input size, as a search would save it.

    A transfer family: its backbone (with its own preprocessing) and a sigmoid head, on ImageNet
    weights when `$KERAS_HOME/models` holds the file, random weights otherwise. The custom CNN:
    `build_custom_cnn` at its default hyperparameters, random weights.
    """
    family = families.FAMILIES[name]
    size = family.default_image_size
    sample = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
    if family.transformer:  # the hybrid's stem and encoder, or the ViT, at the default hyperparameters
        from core.search import hypermodel

        spec = None
        if family.transfer:
            arch = backbones.ARCHITECTURES[family.architecture]
            imagenet = (backbones.keras_models_dir() / arch.weights_file(size)).is_file()
            spec = backbones.BackboneSpec(arch.name, size, "imagenet" if imagenet else "none")
        model = hypermodel.SearchSpace(name, family.default_mode, size, spec).build(keras_tuner.HyperParameters())
        _calibrate_batchnorm(model, sample)
        return model, f"{name} {size} (default encoder)"
    if not family.transfer:
        model = builders.build_custom_cnn(keras_tuner.HyperParameters(), size)
        _calibrate_batchnorm(model, sample)
        return model, f"{name} {size} (random)"
    arch = backbones.ARCHITECTURES[family.architecture]
    imagenet = (backbones.keras_models_dir() / arch.weights_file(size)).is_file()
    backbone = backbones.build_backbone(backbones.BackboneSpec(arch.name, size, "imagenet" if imagenet else "none"))
    if not imagenet:
        _calibrate_batchnorm(backbone, sample)
    x = keras.layers.Dropout(0.2)(backbone.output)
    model = keras.Model(backbone.input, keras.layers.Dense(1, activation="sigmoid")(x))
    return model, f"{arch.name} {size} ({'imagenet' if imagenet else 'random'})"


def images_per_s(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    """Images per second of one batched pass of `run` over `x` (bench_int8.py times its engines with it too)."""
    start = time.perf_counter()
    run(x)
    return len(x) / (time.perf_counter() - start)


def latency_ms(run_one: Callable[[np.ndarray], np.ndarray], sample: np.ndarray, calls: int) -> float:
    """Median milliseconds of `calls` single-image calls, after 3 warm-up calls."""
    for _ in range(3):
        run_one(sample)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run_one(sample)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_model(name: str, n_images: int, batch: int, calls: int, repeats: int, threads: int | None) -> list[dict]:
    model, label = family_model(name)
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
            best[method] = max(best[method], images_per_s(run, x))
    rows = []
    for method, (setup, _, run_one) in methods.items():
        ms = latency_ms(run_one, x[0], calls)
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
    parser.add_argument("--models", nargs="+", choices=list(families.FAMILIES), default=list(families.FAMILIES))
    args = parser.parse_args(argv)
    n_images = args.images or (64 if args.quick else 256)
    calls = 10 if args.quick else 20
    repeats = args.repeats or (1 if args.quick else 2)
    import tensorflow as tf

    load_before = os.getloadavg()[0]
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {usable_cores()} usable cores, "
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
