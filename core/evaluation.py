"""Evaluation and prediction: probabilities from a model, the threshold, metrics, per-image rows.

The decision threshold is chosen on the validation split (Youden's J) and only then applied to
the test split, so test metrics never guide a choice. Probabilities are rounded to
`PROBABILITY_DECIMALS` as soon as they are computed, so the threshold, the saved metrics and the
saved per-image rows all see the same numbers (an image cannot change class between `metrics.json`
and `predictions.csv`). Saved models are loaded with Keras `safe_mode`, and predictions go through
the fast inference engine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from core import artifacts, augmentation, data, statistics
from core.models import positive_probability

THRESHOLD_RULE = "Youden's J on the validation split"
PROBABILITY_DECIMALS = 6  # what predictions.csv keeps, and so what every decision uses


def saved_precision(scores) -> np.ndarray:
    """Probabilities as they are saved: rounded to `PROBABILITY_DECIMALS` (idempotent)."""
    return np.round(np.asarray(scores, dtype=np.float64), PROBABILITY_DECIMALS)


def choose_threshold(y_val: np.ndarray, val_scores: np.ndarray) -> float:
    """The decision threshold: Youden's J on the validation split.

    Raises `data.DataError` with what to do when the validation split lacks a class (Youden's J,
    like any sensitivity/specificity trade-off, needs both).
    """
    y_val = np.asarray(y_val)
    counts = {name: int(np.sum(y_val == i)) for i, name in enumerate(data.BINARY.classes)}
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        held = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise data.DataError(
            f"cannot choose the decision threshold: the validation split has no {' or '.join(missing)} images "
            f"({held}); Youden's J needs both classes: add images, or raise --max-per-class"
        )
    return float(statistics.youden_threshold(y_val, val_scores))


def probabilities(
    model, inputs: np.ndarray, engine: str = "auto", batch_size: int = 64, cache_path=None, tta: int = 1
) -> tuple[np.ndarray, str]:
    """Probability of pneumonia for each input (pixels as uint8 (n,s,s,1) or features (n,d)).

    With `tta` > 1 (pixels only), the mean over that many fixed views of each image
    (`augmentation.tta_views`).
    """
    from core.engine import make_engine

    runner = make_engine(model, engine, cache_path=cache_path)
    if len(inputs) == 0:
        return np.zeros(0, np.float32), runner.name
    if inputs.ndim != 4:
        return positive_probability(runner.predict(np.asarray(inputs, np.float32), batch_size=batch_size)).astype(float), runner.name
    scores = [
        positive_probability(runner.predict(data.to_network_input(view), batch_size=batch_size)).astype(float)
        for view in augmentation.tta_views(inputs, tta)
    ]
    return np.mean(scores, axis=0), runner.name


def roc_points(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    """The ROC curve for metrics.json: fpr, tpr and the threshold of each point.

    scikit-learn's first threshold is +inf ("nothing positive"); it is written as the next float
    above the top score, unrounded, so that a probability of exactly 1.0 stays below it (clipping
    it to 1.0 would call such an image positive at the "nothing positive" point).
    """
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    thresholds = thresholds.astype(np.float64)
    finite = np.isfinite(thresholds)
    thresholds[finite] = thresholds[finite].round(PROBABILITY_DECIMALS)
    thresholds[~finite] = np.nextafter(float(np.max(y_score)), np.inf)
    return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist(), "thresholds": thresholds.tolist()}


def prediction_rows(table: pd.DataFrame, y_true: np.ndarray, y_score: np.ndarray, threshold: float, task=data.BINARY) -> pd.DataFrame:
    """One row per image: where it is, what it is, what the model said."""
    predicted = (y_score >= threshold).astype(int)
    return pd.DataFrame(
        {
            "path": table["path"].to_numpy(),
            "patient": table["patient"].to_numpy(),
            "kind": table["kind"].to_numpy(),
            "class_name": table["class_name"].to_numpy(),
            "y_true": y_true.astype(int),
            "probability": saved_precision(y_score),
            "prediction": [task.classes[p] for p in predicted],
            "correct": predicted == y_true,
        }
    )


def summarize_predictions(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict:
    metrics = statistics.binary_metrics(y_true, y_score, threshold)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in metrics.items()}


def evaluate_scores(
    val_table: pd.DataFrame, y_val: np.ndarray, val_scores: np.ndarray,
    test_table: pd.DataFrame, y_test: np.ndarray, test_scores: np.ndarray,
) -> dict:
    """Threshold from validation, then metrics, ROC and per-image rows on test, from probabilities.

    The one place a run's `metrics.json` content (and its two prediction tables) is made: a search
    calls it through `evaluate_model`, an ensemble with its combined probabilities. Every number is
    computed from the probabilities as saved (`saved_precision`), so the saved metrics are what the
    saved predictions give at the saved threshold.
    """
    val_scores, test_scores = saved_precision(val_scores), saved_precision(test_scores)
    threshold = choose_threshold(y_val, val_scores)
    test = summarize_predictions(y_test, test_scores, threshold)
    return {
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "val": summarize_predictions(y_val, val_scores, threshold),
        "test": test,
        "confusion_matrix": [[test["tn"], test["fp"]], [test["fn"], test["tp"]]],
        "labels": list(data.BINARY.classes),
        "roc": roc_points(y_test, test_scores),
        "predictions": prediction_rows(test_table, y_test, test_scores, threshold),
        "val_predictions": prediction_rows(val_table, y_val, val_scores, threshold),
    }


def evaluate_model(model, inputs, labels, table, part, engine="auto", batch_size=64, tta=1, cache_path=None) -> dict:
    """Threshold from validation, then metrics, ROC and per-image rows on test (see `evaluate_scores`)."""
    val_scores, engine_name = probabilities(model, inputs[part["val"]], engine, batch_size, cache_path, tta)
    test_scores, _ = probabilities(model, inputs[part["test"]], engine, batch_size, cache_path, tta)
    result = evaluate_scores(
        table[part["val"]], labels[part["val"]], val_scores, table[part["test"]], labels[part["test"]], test_scores
    )
    return {
        **result,
        "engine": engine_name,
        "tta": {"views": int(tta), "rule": "mean probability over fixed views (core.augmentation.tta_views)"} if tta > 1 else None,
    }


def time_inference(model, sample_pixels: np.ndarray, engine: str = "auto", cache_path=None) -> dict:
    """Milliseconds per image through the saved model: batched, and for a single image."""
    from core.engine import make_engine

    runner = make_engine(model, engine, cache_path=cache_path)
    x = data.to_network_input(sample_pixels)
    runner.predict(x[:2])  # warm-up: the first call pays for tracing and allocation
    start = time.perf_counter()
    runner.predict(x, batch_size=32)
    batched = (time.perf_counter() - start) / max(1, len(x))
    singles = []
    for image in x[:5]:
        start = time.perf_counter()
        runner.predict_one(image)
        singles.append(time.perf_counter() - start)
    return {"engine": runner.name, "ms_per_image": round(batched * 1000, 3), "single_image_ms": round(float(np.median(singles)) * 1000, 3)}


# --------------------------------------------------------------------------
# Saved runs
# --------------------------------------------------------------------------


def load_model(path: str | os.PathLike):
    """Load a saved model without running any code stored in it (Keras `safe_mode`)."""
    import warnings

    import keras

    path = Path(path)
    try:
        with warnings.catch_warnings():  # the optimizer state is not saved for inference: harmless
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise artifacts.RunError(f"cannot load model {path}: {str(error)[:200]}") from None


def run_image_size(run: artifacts.Run) -> int:
    return int(run.settings.get("image_size") or 224)


def predict_files(run: artifacts.Run, paths: list[str], model=None, engine: str = "auto", unusual: bool = False) -> pd.DataFrame:
    """Score image files with a saved run: path, probability of pneumonia, label, error.

    A file that cannot be read gets its reason in `error` and no probability; the others are
    still scored. An ensemble averages its members' probabilities (`model` then maps member names
    to loaded models); see `core.ensemble.predict_files`. With `unusual`, three more columns say
    whether each image is far from the run's training X-rays (`core.ood.flag_files`).
    """
    table = _predict_files(run, paths, model, engine)
    if unusual:
        from core import ood

        flags = ood.flag_files(ood.reference_for(run), list(paths))
        table = pd.concat([table, flags.set_index(table.index)], axis=1)
    return table


def _predict_files(run: artifacts.Run, paths: list[str], model=None, engine: str = "auto") -> pd.DataFrame:
    if run.is_ensemble:
        from core import ensemble

        return ensemble.predict_files(run, paths, models=model, engine=engine)
    if not run.has_model:
        raise artifacts.RunError(f"run {run.name!r} has no saved model yet (state: {run.state})")
    model = model or load_model(run.model_path)
    size = run_image_size(run)
    threshold = run.threshold
    rows, pixels, readable = [], [], []
    for path in paths:
        try:
            pixels.append(data.load_image(path, size))
            readable.append(len(rows))
            rows.append({"path": str(path), "probability": np.nan, "label": "", "error": ""})
        except Exception as error:  # any unreadable file is reported, not fatal
            rows.append({"path": str(path), "probability": np.nan, "label": "", "error": f"cannot read image: {error}"})
    if pixels:
        tta = int(((run.metrics or {}).get("tta") or {}).get("views", 1))
        scores, _ = probabilities(model, np.stack(pixels), engine, cache_path=run.folder / "model.tflite", tta=tta)
        for row_index, score in zip(readable, saved_precision(scores), strict=True):
            rows[row_index]["probability"] = float(score)  # the label is decided on the number shown
            rows[row_index]["label"] = data.BINARY.classes[int(score >= threshold)]
    return pd.DataFrame(rows, columns=["path", "probability", "label", "error"])


def expand_image_paths(items: list[str]) -> list[str]:
    """Files as given, and the images inside folders (recursively), in a stable order."""
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in data.IMAGE_EXTENSIONS and p.is_file())
        elif path.exists():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return paths


def evaluate_run_on_folder(run: artifacts.Run, folder: str, split: str = "test", engine: str = "auto") -> tuple[dict, pd.DataFrame]:
    """Metrics of a saved run on one split folder of a data set, at the run's own threshold."""
    dataset = data.scan_folder(folder)
    table = dataset.table[dataset.table["folder_split"] == split].reset_index(drop=True)
    if table.empty:
        raise data.DataError(f"no images in the {split}/ folder of {dataset.root}: pick another --split")
    data.require_usable(data.Dataset(dataset.root, table))
    trained_on = _training_patients(run)
    overlap = sorted(set(table["patient"]) & trained_on)
    predictions = predict_files(run, list(table["path"]), engine=engine)
    ok = predictions["error"] == ""
    y_true = data.BINARY.labels(table)[ok.to_numpy()]
    scores = predictions.loc[ok, "probability"].to_numpy(float)
    threshold = run.threshold
    metrics = summarize_predictions(y_true, scores, threshold)
    metrics.update({"threshold": threshold, "unreadable": int((~ok).sum()), "patients_seen_in_training": len(overlap)})
    return metrics, predictions


def _training_patients(run: artifacts.Run) -> set[str]:
    path = run.folder / artifacts.SPLITS
    if not path.exists():
        return set()
    table = artifacts.read_csv(path)
    return set(table.loc[table["split"].isin(["train", "val"]), "patient"])
