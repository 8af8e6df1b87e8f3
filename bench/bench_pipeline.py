"""Benchmark: the input pipeline's first epoch (JPEG decode and resize) against later ones (cache).

Run by hand from the repository root: `python bench/bench_pipeline.py [--size 224]`. It decodes
every training image once into the on-disk pixel cache, then streams the cached pixels through the
tf.data pipeline as an epoch would.
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
    tasks,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def epoch(pixels: np.ndarray, labels: np.ndarray) -> None:
    for _ in loading.make_tf_dataset(pixels, labels, batch_size=32, shuffle=True):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    table = folders.scan_folder(DATA).table
    paths, labels = list(table["path"]), tasks.PNEUMONIA.labels(table)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        pixels, _ = loading.load_images(paths, args.size, cache)
        epoch(pixels, labels)
        first = time.perf_counter() - start
        start = time.perf_counter()
        pixels, _ = loading.load_images(paths, args.size, cache)  # a later run: straight from the cache
        epoch(np.asarray(pixels), labels)
        later = time.perf_counter() - start
    print(f"{len(paths)} images at {args.size} px, {os.cpu_count()} cores")
    print(f"{'epoch':<24}{'seconds':>10}{'images/s':>12}")
    print(f"{'first (decode + cache)':<24}{first:>10.1f}{len(paths) / first:>12.0f}")
    print(f"{'later (from cache)':<24}{later:>10.1f}{len(paths) / later:>12.0f}")
    print(f"ratio: {first / later:.1f}x")


if __name__ == "__main__":
    main()
