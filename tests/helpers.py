"""Builders of small data folders for tests: the public download's layout, with learnable images.

Pneumonia images get a bright blob (an "opacity") on a dark chest-like background, normal images
do not, so a tiny model can learn the difference in one epoch and metrics mean something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "chest_xray"


def xray(rng: np.random.Generator, pneumonia: bool, size: int = 48) -> Image.Image:
    pixels = rng.normal(60, 12, (size, size))
    if pneumonia:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        yy, xx = np.mgrid[:size, :size]
        pixels += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def make_dataset(root: Path, patients: dict[str, int], images_per_patient: int = 2, seed: int = 0, size: int = 48) -> Path:
    """Write `<root>/<split>/<CLASS>/<file>` with public-download file names.

    `patients` maps split -> patients per class in that split.
    """
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in patients.items():
        for class_name in ("NORMAL", "PNEUMONIA"):
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                number += 1
                for image in range(images_per_patient):
                    if class_name == "NORMAL":
                        name = f"IM-{number:04d}-{image + 1:04d}.jpeg"
                    else:
                        kind = "bacteria" if number % 2 else "virus"
                        name = f"person{number}_{kind}_{number * 10 + image}.jpeg"
                    xray(rng, class_name == "PNEUMONIA", size).save(folder / name, quality=90)
    return root


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m core ...` as a user would, from the repository root."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def wait_for(predicate, timeout: float = 120, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def clustered_pair(seed: int = 2, n_patients: int = 40, images_per_patient: int = 6):
    """Two runs' predictions on 40 patients with 6 near-identical images each (240 images).

    Each run has its own per-patient error, shared by all that patient's images. Treating the
    images as independent makes the runs look different (for seed 2: image-level DeLong p ~ 1e-4,
    McNemar p ~ 0.007 at threshold 0.6); by patient the evidence is weak (p ~ 0.12 and ~ 0.21).
    Returns the two prediction tables (the columns of predictions.csv that the tests need).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    y_patient = np.r_[np.zeros(n_patients // 2, int), np.ones(n_patients // 2, int)]
    base = 1.2 * y_patient + rng.normal(0, 1, n_patients)
    a_patient = base + rng.normal(0, 0.8, n_patients)
    b_patient = base + rng.normal(0, 0.8, n_patients)
    y = np.repeat(y_patient, images_per_patient)
    patients = np.repeat([f"person{i}_bacteria" if y_patient[i] else f"IM-{i:04d}" for i in range(n_patients)], images_per_patient)

    def table(per_patient: np.ndarray):
        logit = np.repeat(per_patient, images_per_patient) + rng.normal(0, 0.05, y.size)
        probability = np.round(1 / (1 + np.exp(-logit)), 6)
        return pd.DataFrame(
            {
                "path": [f"/x/img{i:04d}.jpeg" for i in range(y.size)],
                "patient": patients,
                "kind": np.where(y == 1, "bacteria", "normal"),
                "class_name": np.where(y == 1, "PNEUMONIA", "NORMAL"),
                "y_true": y,
                "probability": probability,
                "prediction": np.where(probability >= 0.6, "PNEUMONIA", "NORMAL"),
                "correct": (probability >= 0.6) == (y == 1),
            }
        )

    return table(a_patient), table(b_patient)
