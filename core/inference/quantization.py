"""int8 models of finished runs: made, measured against fp32, and whether the run keeps one.

`quantize_run` quantises a run's own model (`core.models.quantize`), calibrated on a seeded sample
of the run's training images (`splits.csv`, split "train": never the images it is judged on), then
runs the fp32 engine and the int8 model on the run's validation and test images (those of its
prediction tables, with its test-time augmentation) and records how they agree: the AUC of each,
the images that change side at the run's saved threshold, the largest and mean change of
probability. The verdict is decided on validation, as every choice in this project: an AUC change
above `AUC_TOLERANCE`, or more than `MAX_CHANGED_SHARE` of the images changing side, keeps fp32 for
the run (and so does a model the converter cannot quantise).
Test figures are reported beside, never used to choose.

A run that keeps int8 holds `model.int8.onnx` (with the engine's sidecar tying it to the model's
weights) and `int8.json`, the record; one that keeps fp32 holds only the record, which says why.
`int8_problem` is what `--engine int8` is refused with. Each file is written atomically.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core import files
from core.data import loading
from core.evidence import statistics
from core.inference import evaluation
from core.models import model_files
from core.runs import artifacts
from core.runs.artifacts import Run, RunError

ENGINE = "int8"  # core.models.engine.INT8, spelled out so that asking about a run loads no TensorFlow
CALIBRATION_IMAGES = 200  # more did not change the agreement (docs/measurements.md, "int8 inference")
AUC_TOLERANCE = 0.003  # the largest validation AUC change a run keeps int8 with
# The largest share of validation images changing side a run keeps int8 with: MobileNetV2 runs change
# 1.5-3.5 %, the scratch ViT 11 % at an AUC change of 0.001 (docs/measurements.md, "int8 inference").
MAX_CHANGED_SHARE = 0.05
KEEP_INT8 = "int8"
KEEP_FP32 = "keep fp32"
CALIBRATION_RULE = "a seeded random sample of the run's training images (splits.csv, split == train)"


def int8_file(run: Run) -> Path:
    return run.folder / artifacts.INT8_MODEL


def calibration_paths(splits: pd.DataFrame, n_images: int, seed: int) -> list[str]:
    """Up to `n_images` of the training rows' paths, drawn with `seed` (the same draw every time);
    `RunError` when the table has no training image."""
    train = sorted(splits.loc[splits["split"] == "train", "path"].astype(str))
    if not train:
        raise RunError("the run's splits.csv has no training images to calibrate the int8 model on")
    pick = np.random.default_rng(seed).choice(len(train), size=min(n_images, len(train)), replace=False)
    return [train[i] for i in sorted(pick)]


def agreement(y_true: np.ndarray, fp32: np.ndarray, int8: np.ndarray, threshold: float) -> dict:
    """How int8 probabilities agree with fp32 ones on the same images: each AUC, the AUC change
    (int8 − fp32), the images on the other side of `threshold`, the largest and mean |Δp|."""
    fp32, int8 = evaluation.saved_precision(fp32), evaluation.saved_precision(int8)
    auc_fp32 = statistics.binary_metrics(y_true, fp32, threshold)["auc"]
    auc_int8 = statistics.binary_metrics(y_true, int8, threshold)["auc"]
    change = np.abs(int8 - fp32)
    return {
        "images": int(len(fp32)),
        "auc_fp32": round(float(auc_fp32), 6),
        "auc_int8": round(float(auc_int8), 6),
        "auc_change": round(float(auc_int8 - auc_fp32), 6),
        "changed_side": int(np.sum((fp32 >= threshold) != (int8 >= threshold))),
        "max_abs_change": round(float(change.max(initial=0.0)), 6),
        "mean_abs_change": round(float(change.mean()) if len(change) else 0.0, 6),
    }


def verdict(val: dict, tolerance: float = AUC_TOLERANCE, max_changed: float = MAX_CHANGED_SHARE) -> tuple[str, str]:
    """(`KEEP_INT8` or `KEEP_FP32`, why) from the validation agreement (`agreement`): fp32 when the AUC
    moves by more than `tolerance`, or when more than `max_changed` of the images change side at the
    saved threshold (a model that ranks as well but decides otherwise for 1 image in 20 is another model)."""
    change = val["auc_change"]
    if abs(change) > tolerance:
        return KEEP_FP32, (f"the int8 model's validation AUC moved by {change:+.4f} (from {val['auc_fp32']:.4f}), more than "
                           f"{tolerance}: this model does not quantise well enough")
    changed, images = int(val.get("changed_side", 0)), max(int(val.get("images", 0)), 1)
    if changed > max_changed * images:
        return KEEP_FP32, (f"{changed} of {images} validation images ({changed / images:.1%}) changed side at the saved "
                           f"threshold, more than {max_changed:.0%}: this model does not quantise well enough")
    return KEEP_INT8, f"validation AUC within {tolerance} of fp32 ({change:+.4f}), {changed} of {images} images changing side"


def _scored_images(run: Run, table_name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, binary labels) of the images of one of the run's prediction tables that still decode."""
    table = files.read_csv(run.folder / table_name)
    pixels, unreadable = loading.load_images(list(table["path"].astype(str)), size)
    keep = ~table["path"].isin({u.path for u in unreadable}).to_numpy()
    return pixels[keep], table["y_true"].to_numpy(int)[keep]


def _quantizable(run: Run) -> None:
    if run.is_ensemble:
        raise RunError(f"run {run.name!r} is an ensemble: it has no model of its own; quantise its members "
                       f"({', '.join(run.members)}) one by one")
    if run.is_imported and run.settings[artifacts.IMPORTED].get("format") not in model_files.KERAS_FORMATS:
        raise RunError(f"run {run.name!r} is an imported {run.settings[artifacts.IMPORTED].get('format')} file: only Keras models "
                       "are quantised here; quantise it where it was made and import the int8 TF Lite file as a run of its own")
    if run.state != "completed" or not run.metrics or not run.model_path.exists():
        raise RunError(f"run {run.name!r} is not finished (state: {run.state}): only completed runs with a saved model are quantised")
    for name in (artifacts.SPLITS, artifacts.VAL_PREDICTIONS, artifacts.PREDICTIONS):
        if not (run.folder / name).exists():
            raise RunError(f"run {run.name!r} has no {name} (saved by an older version): the int8 model is calibrated and judged on its images")


def quantize_run(
    run: Run, n_images: int = CALIBRATION_IMAGES, seed: int | None = None, model=None, tolerance: float = AUC_TOLERANCE,
    max_changed: float = MAX_CHANGED_SHARE,
) -> dict:
    """Quantise `run`'s model, measure it against fp32 and keep it or not (see the module's doc);
    returns the record written to `int8.json`. `seed` draws the calibration images (default: the
    run's own seed); `model`: the run's model, when already loaded; `tolerance`: the validation AUC
    change the run keeps int8 with; `max_changed`: the share of validation images changing side it keeps int8 with."""
    from core.models import engine, quantize

    _quantizable(run)
    if n_images < 1:
        raise RunError(f"the int8 model needs at least one calibration image, got {n_images}")
    seed = int(run.settings.get("seed", 0)) if seed is None else int(seed)
    model = model or evaluation.load_model(run.model_path)
    size = evaluation.run_image_size(run)
    paths = calibration_paths(files.read_csv(run.folder / artifacts.SPLITS), n_images, seed)
    pixels, unreadable = loading.load_images(paths, size)
    calibration = np.delete(pixels, [paths.index(u.path) for u in unreadable], axis=0)
    record = {
        "calibration": {"rule": CALIBRATION_RULE, "images": int(len(calibration)), "seed": seed},
        "threshold": run.threshold,
        "tolerance_auc": tolerance,
        "max_changed_share": max_changed,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        int8_model = quantize.quantize(model, loading.to_network_input(calibration))
        engine.store_converted(int8_file(run), model, int8_model, engine.INT8)
    except Exception as error:  # a model the converter cannot quantise keeps fp32, saying why
        return _keep_fp32(run, {**record, "verdict": KEEP_FP32, "reason": f"quantisation failed: {type(error).__name__}: {str(error)[:300]}"})
    tta = int(((run.metrics or {}).get("tta") or {}).get("views", 1))
    fp32_path = run.folder / artifacts.TFLITE_MODEL
    for split, table_name in (("val", artifacts.VAL_PREDICTIONS), ("test", artifacts.PREDICTIONS)):
        x, y = _scored_images(run, table_name, size)
        fp32, fp32_engine = evaluation.probabilities(model, x, "auto", cache_path=fp32_path, tta=tta)
        int8, _ = evaluation.probabilities(model, x, engine.INT8, cache_path=int8_file(run), tta=tta)
        record[split] = agreement(y, fp32, int8, run.threshold)
        record["fp32_engine"] = fp32_engine
    record["int8_bytes"] = len(int8_model)
    record["verdict"], record["reason"] = verdict(record["val"], tolerance, max_changed)
    if record["verdict"] == KEEP_FP32:
        return _keep_fp32(run, record)
    files.write_json(run.folder / artifacts.INT8_RECORD, record)
    return record


def _keep_fp32(run: Run, record: dict) -> dict:
    """Write the record of a run that keeps fp32, and remove any int8 model it had."""
    from core.models import engine

    engine.remove_converted(int8_file(run))
    files.write_json(run.folder / artifacts.INT8_RECORD, record)
    return record


def int8_problem(run: Run) -> str:
    """Why `run`'s own model cannot predict with the int8 engine ("" when it can): no int8 model
    made yet, or its record says it keeps fp32 (and why)."""
    record = run.read(artifacts.INT8_RECORD) or {}
    if record.get("verdict") == KEEP_FP32:
        return f"run {run.name!r} keeps fp32: {record.get('reason', 'see its int8.json')}; use the fp32 engine (--engine auto)"
    if not record or not int8_file(run).exists():
        return f"run {run.name!r} has no int8 model: run `python -m core quantize {run.name}` first"
    return ""


def summary(record: dict) -> str:
    """The record in a few lines for a terminal: fp32 against int8 on validation and test, and the verdict."""
    lines = []
    if "val" in record:
        lines.append(f"{'split':<6} {'images':>6} {'AUC fp32':>9} {'AUC int8':>9} {'change':>8} {'changed side':>12} {'max |Δp|':>9}")
        for split in ("val", "test"):
            a = record[split]
            lines.append(f"{split:<6} {a['images']:>6} {a['auc_fp32']:>9.4f} {a['auc_int8']:>9.4f} {a['auc_change']:>+8.4f} "
                         f"{a['changed_side']:>12} {a['max_abs_change']:>9.4f}")
        lines.append(f"(at the saved threshold {record['threshold']:.6f}; calibrated on {record['calibration']['images']} "
                     f"training images, seed {record['calibration']['seed']})")
    kept = "int8 kept" if record["verdict"] == KEEP_INT8 else "keeps fp32"
    lines.append(f"{kept}: {record['reason']}")
    return "\n".join(lines)
