"""Benchmark: one fine-tuning epoch, whole backbone every step against cut-point on cached activations.

Run by hand from the repository root: `python bench/bench_finetune.py [--images 5216] [--size 224]`.
Both train the same layers of MobileNetV2 (ImageNet weights from `../shared/keras_home`, else
random): everything above the default cut (`block_12_add`) plus the same head, batch 32, on the
real training images. The slow path is today's `--no-activation-cache` finetune (every step runs
the frozen bottom too); the fast path trains on activations cached once (`core.activations`). The
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

from core import activations, augmentation, data, models  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def timed_epoch(model: keras.Model, dataset) -> float:
    model.fit(dataset.take(2), epochs=1, verbose=0)  # trace and warm up outside the clock
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5216)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    table = data.scan_folder(DATA).table
    table = table[table["folder_split"] == "train"].sample(frac=1.0, random_state=0).head(args.images)
    paths, labels = list(table["path"]), data.BINARY.labels(table)
    weights = "imagenet" if (KERAS_HOME / "models").exists() and args.size == 224 else "none"
    spec = models.BackboneSpec("mobilenet_v2", args.size, weights)
    cut_name = spec.arch.default_cut
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dense_units", 0)

    with tempfile.TemporaryDirectory() as cache:
        pixels, _ = data.load_images(paths, args.size, Path(cache) / "pixels")
        cut = activations.split_backbone(models.build_backbone(spec), cut_name)
        depth = len([layer for layer in cut.top.layers if layer.weights])

        hp.Fixed("unfreeze_layers", depth)
        whole = models.build_finetune(hp, spec)
        slow = timed_epoch(whole, data.make_tf_dataset(pixels, labels, 32, shuffle=True))

        start = time.perf_counter()
        cached = activations.cached_activations(
            cut, spec, paths, np.ones(len(paths), bool), cache, augmentation.preset("off"), 0, log=lambda _: None
        )
        fill = time.perf_counter() - start
        top = models.build_cut_finetune(hp, cut)
        fast = timed_epoch(top, activations.training_dataset(None, cached.clean, labels, 32, 0))
        trainable = (sum(int(np.prod(w.shape)) for w in whole.trainable_weights), sum(int(np.prod(w.shape)) for w in top.trainable_weights))

    print(f"MobileNetV2 {args.size} px ({weights} weights), {len(paths)} training images, {os.cpu_count()} cores")
    print(f"trainable: the {depth} weighted layers above {cut_name} and the head "
          f"({trainable[0]:,} parameters whole, {trainable[1]:,} cut-point)")
    print(f"{'one epoch':<44}{'seconds':>10}{'images/s':>12}")
    print(f"{'whole backbone every step (--no-activation-cache)':<44}{slow:>10.1f}{len(paths) / slow:>12.0f}")
    print(f"{'cut-point, cached activations':<44}{fast:>10.1f}{len(paths) / fast:>12.0f}")
    print(f"{'(once) filling the activation cache':<44}{fill:>10.1f}{len(paths) / fill:>12.0f}")
    print(f"ratio: {slow / fast:.1f}x per epoch; with the cache fill counted, {5 * slow / (fill + 5 * fast):.1f}x over 5 epochs")


if __name__ == "__main__":
    main()
