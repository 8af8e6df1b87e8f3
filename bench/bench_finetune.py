"""Benchmark: one fine-tuning epoch, whole backbone every step against cut-point on cached activations.

Run by hand from the repository root: `python bench/bench_finetune.py [--images 5216] [--size 224]`.
Both train the same layers of MobileNetV2 (ImageNet weights from `../shared/keras_home`, else
random): everything above a cut plus the same head, batch 32, on the real training images; by
default at the default cut (`block_12_add`), at `block_13_project_BN` (the depth `finetune`
trained by default before the cut-point cache: its top 20 weighted layers, block 14 up) and at
`block_15_add` (`--cuts` for others), since the speed-up grows as fewer layers train (the frozen
bottom's share of the work grows). The slow path is today's `--no-activation-cache` finetune (every step runs
the frozen bottom too); the fast path trains on activations cached once (`core.search.activations`). The
one-off cost of filling the cache (the bottom pass) is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
KERAS_HOME = Path(__file__).resolve().parents[2] / "shared" / "keras_home"
if KERAS_HOME.exists():
    os.environ.setdefault("KERAS_HOME", str(KERAS_HOME))

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

from core.data import augmentation, folders, loading, tasks  # noqa: E402
from core.models import backbone_cut, backbones, builders  # noqa: E402
from core.search import activations  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def timed_epoch(model: keras.Model, dataset, repeats: int = 2) -> float:
    """The fastest of `repeats` epochs: the first epochs of a process pay one-off costs (memory,
    oneDNN kernels) that a long training does not, and a shared machine adds noise."""
    model.fit(dataset.take(2), epochs=1, verbose=0)  # trace and warm up outside the clock
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(spec: backbones.BackboneSpec, cut_name: str, pixels: np.ndarray, paths: list[str], labels: np.ndarray, cache: str) -> dict:
    """One epoch both ways at the depth `cut_name` sets: the layers above it and the head train."""
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dense_units", 0)
    cut = backbone_cut.split_backbone(backbones.build_backbone(spec), cut_name)
    depth = len([layer for layer in cut.top.layers if layer.weights])
    hp.Fixed("unfreeze_layers", depth)
    whole = builders.build_finetune(hp, spec)
    slow = timed_epoch(whole, loading.make_tf_dataset(pixels, labels, 32, shuffle=True))
    start = time.perf_counter()
    cached = activations.cached_activations(
        cut, spec, paths, np.ones(len(paths), bool), cache, augmentation.preset("off"), 0, log=lambda _: None
    )
    fill = time.perf_counter() - start
    top = builders.build_cut_finetune(hp, cut)
    fast = timed_epoch(top, activations.training_dataset(None, cached.clean, labels, 32, 0))
    trainable = sum(int(np.prod(w.shape)) for w in top.trainable_weights)
    assert trainable == sum(int(np.prod(w.shape)) for w in whole.trainable_weights), "both paths must train the same layers"
    return {"cut": cut_name, "depth": depth, "parameters": trainable, "slow": slow, "fast": fast, "fill": fill}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5216)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cuts", nargs="+", default=None,
                        help="cut layers to measure at (default: the architecture's default cut, the former finetune default depth, block_15_add)")
    args = parser.parse_args()
    table = folders.scan_folder(DATA).table
    table = table[table["folder_split"] == "train"].sample(frac=1.0, random_state=0).head(args.images)
    paths, labels = list(table["path"]), tasks.PNEUMONIA.labels(table)
    weights = "imagenet" if (KERAS_HOME / "models").exists() and args.size == 224 else "none"
    spec = backbones.BackboneSpec("mobilenet_v2", args.size, weights)
    # block_13_project_BN: the former finetune default (unfreeze_layers=20, block_14 up) trains exactly the layers above it
    cuts = args.cuts or [spec.arch.default_cut, "block_13_project_BN", "block_15_add"]

    with tempfile.TemporaryDirectory() as cache:
        pixels, _ = loading.load_images(paths, args.size, Path(cache) / "pixels")
        rows = [measure(spec, cut_name, pixels, paths, labels, cache) for cut_name in cuts]

    print(f"MobileNetV2 {args.size} px ({weights} weights), {len(paths)} training images, {os.cpu_count()} cores, batch 32")
    print("one epoch (the faster of two), seconds: the whole backbone every step (--no-activation-cache) against cut-point")
    print("on cached activations,", end=" ")
    print("training the same layers (those above the cut) and the same head; the cache fill is paid once per cut")
    print(f"{'cut':<21}{'layers':>8}{'parameters':>12}{'whole':>9}{'cut-point':>11}{'fill':>8}{'ratio':>8}{'5 epochs':>10}")
    for r in rows:
        five = 5 * r["slow"] / (r["fill"] + 5 * r["fast"])
        print(f"{r['cut']:<21}{r['depth']:>8}{r['parameters']:>12,}{r['slow']:>9.1f}{r['fast']:>11.1f}{r['fill']:>8.1f}"
              f"{r['slow'] / r['fast']:>7.1f}x{five:>9.1f}x")


if __name__ == "__main__":
    main()
