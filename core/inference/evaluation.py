"""Evaluation and prediction: probabilities from a model, the threshold, metrics, per-image rows.

The decision threshold is chosen on the validation split (Youden's J) and only then applied to
the test split, so test metrics never guide a choice. When the search ran its stress test, the
validation images as changed there count too (`core.evidence.stress.robust_threshold`): a threshold that
holds when images look as another site's do, kept where the unchanged images lose at most
`stress.CLEAN_MARGIN` of their own sensitivity or specificity. Probabilities are rounded to
`PROBABILITY_DECIMALS` as soon as they are computed, so the threshold, the saved metrics and the
saved per-image rows all see the same numbers (an image cannot change class between `metrics.json`
and `predictions.csv`). Saved models are loaded with Keras `safe_mode`, and predictions go through
the fast inference engine. A three-class run (``core.data.tasks``) is evaluated twice: on its binary
view (pneumonia vs normal from P(bacterial) + P(viral)), exactly as a two-class run, and on its
three classes by the two-step rule (``core.evidence.multiclass``). It knows one model at a time: scoring
any kind of run (an ensemble uses several) goes through ``core.inference.run_kinds``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from core import files
from core.data import augmentation, folders, loading, tasks
from core.evidence import multiclass, statistics, stress
from core.models.builders import positive_probability
from core.runs import artifacts

THRESHOLD_RULE = "Youden's J on the validation split"
PROBABILITY_DECIMALS = 6  # what predictions.csv keeps, and so what every decision uses


def saved_precision(scores) -> np.ndarray:
    """Probabilities as they are saved: rounded to `PROBABILITY_DECIMALS` (idempotent)."""
    return np.round(np.asarray(scores, dtype=np.float64), PROBABILITY_DECIMALS)


def choose_threshold(
    y_val: np.ndarray, val_scores: np.ndarray, classes: tuple[str, str] = tasks.PNEUMONIA.classes,
    stressed: Mapping[str, np.ndarray] | None = None,
) -> float:
    """The decision threshold: Youden's J on the validation split; with `stressed` (the validation
    images' probabilities under the stress test's changes, `core.evidence.stress`), on them pooled too,
    among the thresholds that keep the unchanged images' sensitivity and specificity each within
    `stress.CLEAN_MARGIN` of their own Youden point (`stress.robust_threshold`).

    Raises `folders.DataError` with what to do when the validation split lacks a class (Youden's J,
    like any sensitivity/specificity trade-off, needs both). `classes` name them in the message.
    """
    y_val = np.asarray(y_val)
    counts = {name: int(np.sum(y_val == i)) for i, name in enumerate(classes)}
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        held = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise folders.DataError(
            f"cannot choose the decision threshold: the validation split has no {' or '.join(missing)} images "
            f"({held}); Youden's J needs both classes: add images, or raise --max-per-class"
        )
    if stressed:
        return stress.robust_threshold(y_val, val_scores, stressed)
    return float(statistics.youden_threshold(y_val, val_scores))


def threshold_rule(stressed: Mapping[str, np.ndarray] | None) -> str:
    """How `choose_threshold` chose, in words for metrics.json, the report and the model card."""
    return stress.ROBUST_THRESHOLD_RULE if stressed else THRESHOLD_RULE


def model_outputs(
    model, inputs: np.ndarray, engine: str = "auto", batch_size: int = 64, cache_path=None, tta: int = 1
) -> tuple[np.ndarray, str]:
    """The model's output rows for each input (pixels as uint8 (n,s,s,1) or features (n,d)):
    (n, 1) for a sigmoid head, (n, k) class probabilities for a softmax.

    With `tta` > 1 (pixels only), the mean over that many fixed views of each image
    (`augmentation.tta_views`).
    """
    from core.models.engine import make_engine

    runner = make_engine(model, engine, cache_path=cache_path)
    if len(inputs) == 0:
        width = int(model.output_shape[-1]) if getattr(model, "output_shape", None) else 1
        return np.zeros((0, width), np.float64), runner.name
    if inputs.ndim != 4:
        return np.asarray(runner.predict(np.asarray(inputs, np.float32), batch_size=batch_size), np.float64), runner.name
    outputs = [
        np.asarray(runner.predict(loading.to_network_input(view), batch_size=batch_size), np.float64)
        for view in augmentation.tta_views(inputs, tta)
    ]
    return np.mean(outputs, axis=0), runner.name


def probabilities(
    model, inputs: np.ndarray, engine: str = "auto", batch_size: int = 64, cache_path=None, tta: int = 1
) -> tuple[np.ndarray, str]:
    """Probability of the run's binary view for each input: pneumonia (or, for bacterial vs viral,
    viral); a three-class model's P(bacterial) + P(viral) (`models.positive_probability`)."""
    outputs, name = model_outputs(model, inputs, engine, batch_size, cache_path, tta)
    return positive_probability(outputs).astype(float), name


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


def prediction_rows(
    table: pd.DataFrame, y_true: np.ndarray, y_score: np.ndarray, threshold: float, task: tasks.Task = tasks.PNEUMONIA
) -> pd.DataFrame:
    """One row per image: where it is, what it is, what the model said (on the task's binary view:
    `y_true` and `prediction` are its two classes)."""
    predicted = (y_score >= threshold).astype(int)
    return pd.DataFrame(
        {
            "path": table["path"].to_numpy(),
            "patient": table["patient"].to_numpy(),
            "kind": table["kind"].to_numpy(),
            "class_name": table["class_name"].to_numpy(),
            "y_true": y_true.astype(int),
            "probability": saved_precision(y_score),
            "prediction": [task.binary_classes[p] for p in predicted],
            "correct": predicted == y_true,
        }
    )


def summarize_predictions(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict:
    metrics = statistics.binary_metrics(y_true, y_score, threshold)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v)) for k, v in metrics.items()}


def evaluate_scores(
    val_table: pd.DataFrame, y_val: np.ndarray, val_scores: np.ndarray,
    test_table: pd.DataFrame, y_test: np.ndarray, test_scores: np.ndarray,
    task: tasks.Task = tasks.PNEUMONIA, val_stressed: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Threshold from validation, then metrics, ROC and per-image rows on test, from probabilities.

    The one place a run's `metrics.json` content (and its two prediction tables) is made: a search
    calls it through `evaluate_model`, an ensemble with its combined probabilities. Every number is
    computed from the probabilities as saved (`saved_precision`), so the saved metrics are what the
    saved predictions give at the saved threshold. The labels are the task's binary view (0/1).
    With `val_stressed` (the validation images' probabilities under each stress-test change, by
    condition) the threshold is chosen on them pooled too, and the result also holds `stress` (the
    stress test's rows at that threshold) and `val_stress_predictions` (the table to save).
    """
    val_scores, test_scores = saved_precision(val_scores), saved_precision(test_scores)
    if val_stressed:
        val_stressed = {name: saved_precision(scores) for name, scores in val_stressed.items()}
    threshold = choose_threshold(y_val, val_scores, task.binary_classes, val_stressed)
    test = summarize_predictions(y_test, test_scores, threshold)
    stress_result = {}
    if val_stressed:
        clean = stress.clean_point(y_val, val_scores)
        stress_result = {
            # The unchanged validation images' own Youden point, shown beside the pooled threshold.
            "clean_threshold": clean["threshold"],
            "clean_val": {"sensitivity": clean["sensitivity"], "specificity": clean["specificity"]},
            "stress": stress.stress_rows(y_val, val_scores, val_stressed, threshold),
            "val_stress_predictions": stress.scores_table(val_table["path"], val_stressed),
        }
    return {
        "threshold": threshold,
        "threshold_rule": threshold_rule(val_stressed),
        "val": summarize_predictions(y_val, val_scores, threshold),
        "test": test,
        "confusion_matrix": [[test["tn"], test["fp"]], [test["fn"], test["tp"]]],
        "labels": list(task.binary_classes),
        "task": task.name,
        "roc": roc_points(y_test, test_scores),
        "predictions": prediction_rows(test_table, y_test, test_scores, threshold, task),
        "val_predictions": prediction_rows(val_table, y_val, val_scores, threshold, task),
        **stress_result,
    }


def write_result(folder: str | os.PathLike, result: dict) -> None:
    """Save what `evaluate_scores` made into a run folder: the prediction tables as CSV (taken out of
    `result`), then `metrics.json` with the rest. Each file is written atomically."""
    folder = Path(folder)
    files.write_csv(folder / artifacts.VAL_PREDICTIONS, result.pop("val_predictions"))
    if "val_stress_predictions" in result:
        files.write_csv(folder / artifacts.VAL_STRESS_PREDICTIONS, result.pop("val_stress_predictions"))
    files.write_csv(folder / artifacts.PREDICTIONS, result.pop("predictions"))
    files.write_json(folder / artifacts.METRICS, result)


def evaluate_classes(
    val_table: pd.DataFrame, y_val: np.ndarray, val_probabilities: np.ndarray,
    test_table: pd.DataFrame, y_test: np.ndarray, test_probabilities: np.ndarray, task: tasks.Task,
    val_stressed: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """A multi-class run's `metrics.json` content: its binary view through `evaluate_scores` (the
    derived probability 1 − P(first class), threshold chosen on validation), plus `multiclass`
    (metrics and intervals, `core.evidence.multiclass.summary`, by its two-step rule on the binary view's
    calls at that threshold); the prediction tables get the true and the predicted class and a
    probability column per class. Labels are class indices."""
    val_p = saved_precision(val_probabilities)
    test_p = saved_precision(test_probabilities)
    result = evaluate_scores(
        val_table, task.binary_labels(y_val), positive_probability(val_p), test_table, task.binary_labels(y_test),
        positive_probability(test_p), task, val_stressed,
    )
    called = {key: multiclass.binary_calls(result[key], task) for key in ("val_predictions", "predictions")}
    result["multiclass"] = multiclass.summary(
        task, y_val, val_p, y_test, test_p, test_table["patient"].astype(str).to_numpy(),
        val_called=called["val_predictions"], test_called=called["predictions"],
    )
    for key, y, p in (("val_predictions", y_val, val_p), ("predictions", y_test, test_p)):
        rows = result[key]
        result[key] = pd.concat([rows, multiclass.prediction_columns(task, y, p, called[key]).set_index(rows.index)], axis=1)
    return result


def multiclass_summary(result: dict) -> str:
    """A log line's tail for a multi-class run ("" for others): accuracy (and the argmax's) and macro AUC on test."""
    block = result.get("multiclass") or {}
    test = block.get("test") or {}
    if not test:
        return ""
    argmax = (block.get("argmax_accuracy") or {}).get("test")
    beside = f" (argmax {argmax:.4f})" if argmax is not None else ""
    return f"; {len(block.get('classes', []))} classes: accuracy {test['accuracy']:.4f}{beside}, macro AUC {test['macro_auc']:.4f}"


def evaluate_model(
    model, inputs, labels, table, part, engine="auto", batch_size=64, tta=1, cache_path=None, task: tasks.Task = tasks.PNEUMONIA,
    val_stressed: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Threshold from validation, then metrics, ROC and per-image rows on test (see `evaluate_scores`;
    `evaluate_classes` for a multi-class task, whose `labels` are class indices)."""
    if task.is_binary:
        val_scores, engine_name = probabilities(model, inputs[part["val"]], engine, batch_size, cache_path, tta)
        test_scores, _ = probabilities(model, inputs[part["test"]], engine, batch_size, cache_path, tta)
        result = evaluate_scores(
            table[part["val"]], labels[part["val"]], val_scores, table[part["test"]], labels[part["test"]], test_scores, task,
            val_stressed,
        )
    else:
        val_p, engine_name = model_outputs(model, inputs[part["val"]], engine, batch_size, cache_path, tta)
        test_p, _ = model_outputs(model, inputs[part["test"]], engine, batch_size, cache_path, tta)
        result = evaluate_classes(
            table[part["val"]], labels[part["val"]], val_p, table[part["test"]], labels[part["test"]], test_p, task, val_stressed
        )
    return {
        **result,
        "engine": engine_name,
        "tta": {"views": int(tta), "rule": "mean probability over fixed views (core.data.augmentation.tta_views)"} if tta > 1 else None,
    }


def time_inference(model, sample_pixels: np.ndarray, engine: str = "auto", cache_path=None) -> dict:
    """Milliseconds per image through the saved model: batched, and for a single image."""
    from core.models.engine import make_engine

    runner = make_engine(model, engine, cache_path=cache_path)
    x = loading.to_network_input(sample_pixels)
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
    """Load a saved model without running any code stored in it (Keras `safe_mode`); an imported
    run's bundle folder is read and adapted (`core.models.imported.load_bundle`)."""
    import warnings

    import keras

    import core.models.transformer  # noqa: F401  registers the hybrid's own layers (cxr>...) for loading
    from core.models import imported

    path = Path(path)
    if imported.is_bundle(path):
        try:
            return imported.load_bundle(path)
        except ValueError as error:
            raise artifacts.RunError(f"cannot load the imported model in {path}: {error}") from None
    try:
        with warnings.catch_warnings():  # the optimizer state is not saved for inference: harmless
            warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        raise artifacts.RunError(f"cannot load model {path}: {str(error)[:200]}") from None


def run_image_size(run: artifacts.Run) -> int:
    return int(run.settings.get("image_size") or 224)


def own_model_path(run: artifacts.Run) -> Path:
    """The run's own saved model file; `RunError` when it has none (yet)."""
    if not run.model_path.exists():
        raise artifacts.RunError(f"run {run.name!r} has no saved model yet (state: {run.state})")
    return run.model_path


def engine_file(run: artifacts.Run, engine: str) -> Path:
    """The file `engine` runs the run's model from: its int8 model (made by `python -m core quantize`)
    for "int8", else the fp32 TF Lite conversion (made on first use)."""
    from core.models.engine import INT8

    return run.folder / (artifacts.INT8_MODEL if engine == INT8 else artifacts.TFLITE_MODEL)


def predict_files(run: artifacts.Run, paths: list[str], model=None, engine: str = "auto") -> pd.DataFrame:
    """Score image files with a saved run's own model: path, probability of its binary view's
    positive class (pneumonia; viral for bacterial vs viral), label, error.

    A multi-class run also gives each class's probability (`tasks.probability_column`) and its
    label is the class of the two-step rule (`multiclass.TWO_STEP_RULE`). A file that cannot be read gets its reason in `error` and no
    probability; the others are still scored. One model only: any kind of run (an ensemble
    averages its members'), and the flag of unusual images, is `core.inference.run_kinds.predict_files`.
    """
    own_model_path(run)  # a model passed in is the run's own, loaded earlier: the run must still have it
    model = model or load_model(run.model_path)
    task = tasks.task_for(run.task)
    class_columns = [] if task.is_binary else [tasks.probability_column(c) for c in task.classes]
    size = run_image_size(run)
    threshold = run.threshold
    rows, pixels, readable = [], [], []
    for path in paths:
        blank = {"path": str(path), "probability": np.nan, "label": "", "error": "", **dict.fromkeys(class_columns, np.nan)}
        try:
            pixels.append(loading.load_image(path, size))
            readable.append(len(rows))
            rows.append(blank)
        except Exception as error:  # any unreadable file is reported, not fatal
            rows.append({**blank, "error": f"cannot read image: {error}"})
    if pixels:
        tta = int(((run.metrics or {}).get("tta") or {}).get("views", 1))
        outputs, _ = model_outputs(model, np.stack(pixels), engine, cache_path=engine_file(run, engine), tta=tta)
        outputs = saved_precision(outputs)
        for row_index, output in zip(readable, outputs, strict=True):
            score = float(saved_precision(positive_probability(output[None]))[0])
            rows[row_index]["probability"] = score  # the label is decided on the number shown
            if task.is_binary:
                rows[row_index]["label"] = task.binary_classes[int(score >= threshold)]
            else:  # pneumonia or not on the number shown, then its kind (core.evidence.multiclass.TWO_STEP_RULE)
                rows[row_index]["label"] = multiclass.class_of(task, output, score >= threshold)
                rows[row_index].update({column: float(v) for column, v in zip(class_columns, output, strict=True)})
    return pd.DataFrame(rows, columns=["path", "probability", "label", "error", *class_columns])


def score_pixels(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The probability of the binary view's positive class (as `probabilities`) for square RGB images
    (n, S, S, 3) float in 0..255 at any S, each resized (bilinear, on the float values) to the model's
    input size first. The Keras model itself, batched, without test-time augmentation: what a
    perturbation of the pixels does to the model (e.g. deletion curves)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[-1] != 3:
        raise ValueError(f"expected square RGB images (n, S, S, 3), got shape {images.shape}")
    size = model.input_shape[1]
    if size is not None and images.shape[1] != size:
        images = np.stack([_resized(image, int(size)) for image in images])
    if not len(images):
        return np.zeros(0, np.float64)
    return np.asarray(positive_probability(np.asarray(engine_for(model).predict(images, batch_size=batch_size), np.float64)), np.float64)


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_for(model):
    """The inference engine (`core.models.engine`, "auto": TF Lite, else Keras) of a loaded model,
    made once per model object and process. Perturbation methods and deletion curves run the same
    model on hundreds of changed copies of an image; converting it once makes them several times
    faster than calling the Keras model (docs/measurements.md)."""
    from core.models.engine import make_engine

    with _ENGINES_LOCK:
        if model not in _ENGINES:
            _ENGINES[model] = make_engine(model, "auto")
        return _ENGINES[model]


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(image[..., c], mode="F").resize((size, size), Image.Resampling.BILINEAR)) for c in range(3)],
        axis=-1,
    )


def expand_image_paths(items: list[str]) -> list[str]:
    """Files as given, and the images inside folders (recursively), in a stable order."""
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in folders.IMAGE_EXTENSIONS and p.is_file())
        elif path.exists():
            paths.append(str(path))
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return paths


def split_images(run: artifacts.Run, folder: str, split: str = "test") -> pd.DataFrame:
    """The images of the run's task in one split folder (`train/`, `val/`, `test/`) of a data set;
    `folders.DataError` when there are none or they cannot be used."""
    task = tasks.task_for(run.task)
    dataset = folders.scan_folder(folder)
    table = task.select(dataset.table[dataset.table["folder_split"] == split])
    if table.empty:
        raise folders.DataError(f"no images of the {task.name} task in the {split}/ folder of {dataset.root}: pick another --split")
    folders.require_usable(folders.Dataset(dataset.root, table), task)
    return table


def metrics_on_images(run: artifacts.Run, table: pd.DataFrame, predictions: pd.DataFrame) -> dict:
    """Metrics of a run on `table`'s images (`split_images`) from their `predictions` (one row per
    image, in order), at the run's own threshold; with the count of unreadable files and of patients
    the run trained or chose its threshold on."""
    task = tasks.task_for(run.task)
    overlap = set(table["patient"]) & _training_patients(run)
    ok = predictions["error"] == ""
    y_true = task.binary_labels(task.labels(table))[ok.to_numpy()]
    scores = predictions.loc[ok, "probability"].to_numpy(float)
    threshold = run.threshold
    metrics = summarize_predictions(y_true, scores, threshold)
    metrics.update({"threshold": threshold, "unreadable": int((~ok).sum()), "patients_seen_in_training": len(overlap)})
    return metrics


def _training_patients(run: artifacts.Run) -> set[str]:
    path = run.folder / artifacts.SPLITS
    if not path.exists():
        return set()
    table = files.read_csv(path)
    return set(table.loc[table["split"].isin(["train", "val"]), "patient"])
