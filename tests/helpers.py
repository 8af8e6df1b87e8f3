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


# A tiny recipe (tests/conftest.py's `cooked`): its search 2 trials of 1 epoch at 32 px, random weights, one cached view.
TINY_RECIPE = ["--image-size", "32", "--weights", "none", "--trials", "2", "--epochs", "1", "--augment-views", "1"]


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
    McNemar p ~ 0.007 at threshold 0.6); by patient the evidence is weak (p ~ 0.12 and ~ 0.24, McNemar's exact sign-flip over patients).
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


def make_trials_run(artifacts_dir: Path, name: str, n_trials: int = 20, tuner: str = "random", state: str = "completed",
                    history: bool = True, epochs: int = 6, seed: int = 0) -> Path:
    """A synthetic run folder as a search leaves it (settings, progress, trials.json, trial_history.csv).

    Its validation AUC depends mostly on the learning rate (best near 1e-3), a little on dropout,
    and not at all on the other hyperparameters. `state="running"` leaves the last trial training,
    owned by this process (alive); `history=False` is a run saved before histories were kept.
    """
    import json
    import socket

    import pandas as pd

    rng = np.random.default_rng(seed)
    folder = Path(artifacts_dir) / name
    folder.mkdir(parents=True)
    rows, epochs_rows = [], []
    for i in range(n_trials):
        hp = {
            "learning_rate": float(10 ** rng.uniform(-4, -2)), "dropout": round(float(rng.choice([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])), 1),
            "dense_units": int(rng.choice([32, 64, 128, 256])), "batch_norm": bool(rng.integers(2)),
            "filters": int(rng.choice([16, 32, 64])),
        }
        peak = 0.95 - 0.12 * (np.log10(hp["learning_rate"]) + 3) ** 2 - 0.05 * hp["dropout"]
        budget = epochs if tuner != "hyperband" else int(rng.choice([2, epochs // 2 or 2, epochs]))
        running = state == "running" and i == n_trials - 1
        ran = max(1, budget // 2) if running else budget
        curve = [peak - (peak - 0.5) * np.exp(-e) + rng.normal(0, 0.005) for e in range(ran)]
        for e, val_auc in enumerate(curve):
            epochs_rows.append({
                "trial_id": f"{i:02d}", "epoch": e + 1, "loss": 0.7 * np.exp(-0.3 * e), "auc": min(0.999, val_auc + 0.03),
                "accuracy": val_auc - 0.05, "val_loss": 0.75 * np.exp(-0.25 * e), "val_auc": val_auc,
                "val_accuracy": val_auc - 0.08, "epoch_s": 1.5,
            })
        best = int(np.argmax(curve))
        rows.append({
            "trial_id": f"{i:02d}", "status": "RUNNING" if running else "COMPLETED", "score": None if running else float(curve[best]),
            "best_step": None if running else best, "hyperparameters": hp, "message": None,
            **({"epochs_budget": budget} if tuner == "hyperband" else {}),
            **({"started_at": "2024-01-01T00:00:00+00:00", "duration_s": 1.5 * ran + 0.4, "epochs_run": ran, "stopped_early": False}
               if history else {}),
        })
    settings = {"data_dir": "/nowhere", "family": "custom_cnn", "tuner": tuner, "trials": n_trials, "epochs": epochs,
                "image_size": 32, "mode": "scratch", "weights": "none", "name": name, "patience": 0}
    done = sum(r["status"] == "COMPLETED" for r in rows)
    progress = {"state": state, "phase": "searching" if state == "running" else "done", "trial": n_trials, "trials_total": n_trials,
                "trials_done": done, "epoch": 1, "epochs": epochs, "best_val_auc": max(r["score"] or 0 for r in rows),
                "elapsed_s": 10.0, "started_at": "2024-01-01T00:00:00+00:00", "pid": os.getpid(),
                "host": socket.gethostname()}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "progress.json").write_text(json.dumps(progress))
    (folder / "trials.json").write_text(json.dumps(rows))
    (folder / "log.txt").write_text(f"trial {n_trials}/{n_trials}\n")
    if history:
        pd.DataFrame(epochs_rows).to_csv(folder / "trial_history.csv", index=False)
    return folder


def model_run(artifacts_dir: Path, name: str, data: Path, task: str = "pneumonia", size: int = 32, seed: int = 0, **settings) -> Path:
    """A finished run folder with a tiny untrained CNN of the task's shape (a sigmoid for two classes,
    a softmax for more), in seconds: no training, but evaluated as a search evaluates its best model.

    `data` is a folder as `make_dataset` writes it: its train/ images are split into training and
    validation (alternately, so both hold every class), its test/ images are the test split. The
    model, `splits.csv`, both prediction tables and `metrics.json` (threshold chosen on validation)
    are real; `settings` are added to `settings.json` (e.g. `repeat={...}`).
    """
    import json

    import keras

    from core import files
    from core.data import folders, loading
    from core.data import tasks as task_names
    from core.inference import evaluation
    from core.runs import artifacts

    the_task = task_names.task_for(task)
    table = the_task.select(folders.scan_folder(data).table)
    in_train = (table["folder_split"] == "train").to_numpy()
    split = np.where(in_train, np.where(np.cumsum(in_train) % 2 == 0, "val", "train"), "test")
    part = {"val": split == "val", "test": split == "test"}
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    centred = keras.layers.Rescaling(1 / 64, offset=-1.0)(inputs)  # the dark background near 0: a blob stands out
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(centred))
    spread = keras.initializers.RandomNormal(stddev=10.0, seed=seed)  # probabilities apart, not all within 1e-4 of 0.5
    outputs = keras.layers.Dense(1 if the_task.is_binary else the_task.n_classes, kernel_initializer=spread,
                                 activation="sigmoid" if the_task.is_binary else "softmax")(pooled)
    model = keras.Model(inputs, outputs)
    pixels, _ = loading.load_images(list(table["path"]), size)
    result = evaluation.evaluate_model(model, pixels, the_task.labels(table), table, part, engine="keras", task=the_task)

    folder = artifacts.run_dir(artifacts_dir, name)
    folder.mkdir(parents=True)
    files.save_model(folder / artifacts.MODEL, model)
    files.write_csv(folder / artifacts.SPLITS, table.assign(split=split))
    files.write_json(folder / artifacts.DATA_SUMMARY, {"notes": []})
    evaluation.write_result(folder, {**result, "trials_completed": 1})
    progress = {"state": "completed", "phase": "done", "started_at": "2026-01-01T00:00:00+00:00"}
    (folder / artifacts.PROGRESS).write_text(json.dumps(progress))
    (folder / artifacts.SETTINGS).write_text(json.dumps(
        {"name": name, "family": "custom_cnn", "task": the_task.name, "image_size": size, "seed": seed, "mode": "scratch",
         "weights": "none", "data_dir": str(data), **settings}))
    return folder


OPACITY_SIZE = 32  # the opacity detector's input


def opacity_images(n: int, rng: np.random.Generator, size: int = OPACITY_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark images (n, size, size, 3) float; the positive half has a bright 8x8 square anywhere."""
    x = rng.normal(50, 15, (n, size, size))
    y = np.arange(n) % 2
    for i in np.flatnonzero(y):
        top, left = rng.integers(0, size - 8, 2)
        x[i, top : top + 8, left : left + 8] += 150
    return np.clip(x, 0, 255).astype(np.float32)[..., None].repeat(3, axis=-1), y


def with_square(top: int, left: int, seed: int, size: int = OPACITY_SIZE) -> np.ndarray:
    """One noisy dark image (size, size, 3) float with a bright 8x8 square at (top, left)."""
    x = np.random.default_rng(seed).normal(50, 15, (size, size))
    x[top : top + 8, left : left + 8] += 150
    return np.clip(x, 0, 255).astype(np.float32)[..., None].repeat(3, axis=-1)


def train_opacity_detector():
    """A tiny custom CNN (32 px, sigmoid) trained in seconds to find the bright square of `opacity_images`:
    a model whose evidence is known, for explanation methods to find."""
    import keras
    import keras_tuner

    from core.models import builders

    keras.utils.set_random_seed(42)
    x, y = opacity_images(384, np.random.default_rng(42))
    hp = keras_tuner.HyperParameters()
    for name, value in dict(conv_blocks=2, filters=16, kernel_size=3, batch_norm=False, dropout=0.0, dense_units=32,
                            learning_rate=3e-3).items():
        hp.Fixed(name, value)
    model = builders.build_custom_cnn(hp, OPACITY_SIZE)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0, shuffle=True)
    accuracy = float(((model.predict(x, verbose=0)[:, 0] >= 0.5) == y).mean())
    assert accuracy > 0.9, f"the detector did not learn (training accuracy {accuracy:.2f})"
    return model


def predictions_shown(at):
    """The Predict page's "All predictions" tables (the calls, how each was decided, the class
    probabilities) joined back into one row per image and run, as the page's CSV has them."""
    import pandas as pd

    tables = [d.value for d in at.dataframe if {"image", "run"} <= set(d.value.columns)]
    joined = tables[0]
    for table in tables[1:]:
        joined = joined.merge(table, on=["image", "run"], how="left")
    return pd.DataFrame(joined)
