"""Benchmark: what the frozen-feature cache buys, on the real training images.

Run by hand from the repository root (reads ../shared in place):

    KERAS_HOME=../shared/keras_home python bench/bench_search.py [--epochs 2] [--trials 10]

1. Backbone pass: MobileNetV2 (ImageNet weights when $KERAS_HOME has them) at 224 px over every
   training image, through `model.predict` and through the inference engine. The images are
   decoded beforehand, so only the network is timed.
2. Search cost: the same frozen-mode random search (trials x epochs) with the feature cache (one
   backbone pass, then heads on cached vectors) and without it (the backbone runs inside every
   training step). Both start from an empty cache.
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

import numpy as np  # noqa: E402

from core.data import (
    folders,  # noqa: E402
    loading,
)
from core.models import backbones
from core.models.engine import make_engine  # noqa: E402
from core.search import loop
from core.search.settings import SearchSettings  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def weights() -> str:
    spec = backbones.BackboneSpec("mobilenet_v2", 224, "imagenet")
    return "imagenet" if (backbones.keras_models_dir() / spec.arch.weights_file(224, 1.0)).exists() else "none"


def backbone_pass(paths: list[str], chunk: int = 256) -> dict[str, float]:
    spec = backbones.BackboneSpec("mobilenet_v2", 224, weights())
    backbone = backbones.build_backbone(spec)
    with tempfile.TemporaryDirectory() as cache:
        pixels, _ = loading.load_images(paths, 224, cache)
        timings = {}
        for name, run in (
            ("model.predict", lambda x: backbone.predict(x, batch_size=32, verbose=0)),
            ("engine", make_engine(backbone, "auto", cache_path=Path(cache) / "engine.tflite").predict),
        ):
            run(loading.to_network_input(pixels[:32]))  # warm-up: tracing, conversion, allocation
            start = time.perf_counter()
            for i in range(0, len(paths), chunk):
                run(loading.to_network_input(pixels[i : i + chunk]))
            timings[name] = time.perf_counter() - start
    return timings


def search(feature_cache: bool, trials: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as store:
        os.environ["CXR_CACHE_DIR"] = str(Path(store) / "cache")  # an empty cache for each side
        settings = SearchSettings(
            data_dir=str(DATA), family="mobilenet", weights=weights(), image_size=224, trials=trials, epochs=epochs,
            feature_cache=feature_cache, artifacts_dir=store, name="bench", tuner="random",
        )
        start = time.perf_counter()
        loop.run_search(settings, log=None)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    paths = list(folders.scan_folder(DATA).table["path"])
    print(f"{len(paths)} images, MobileNetV2 224 px, weights {weights()}, {os.cpu_count()} cores")

    timings = backbone_pass(paths)
    print("\nbackbone pass over every image (decoded beforehand)")
    print(f"{'path':<16}{'seconds':>10}{'images/s':>12}")
    for name, seconds in timings.items():
        print(f"{name:<16}{seconds:>10.1f}{len(paths) / seconds:>12.1f}")
    print(f"engine speed-up: {timings['model.predict'] / timings['engine']:.2f}x")

    if args.skip_search:
        return
    cached = search(True, args.trials, args.epochs)
    uncached = search(False, args.trials, args.epochs)
    print(f"\n{args.trials}-trial frozen search, {args.epochs} epochs per trial, all images, from an empty cache")
    print(f"{'feature cache':<16}{'seconds':>10}")
    print(f"{'on':<16}{cached:>10.1f}\n{'off':<16}{uncached:>10.1f}")
    print(f"cache speed-up: {uncached / cached:.1f}x")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
