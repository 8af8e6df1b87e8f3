"""The unusual-image flag of any run: image statistics and the model's own features, either one flags.

Two detectors, each with its cut-off chosen on the run's validation images:

- `core.inference.ood`: 19 statistics of the decoded image (brightness, contrast, edges, colour,
  noise, JPEG blocks...), the same for every run; it catches blank, dark, bright, colour, noisy and
  heavily compressed files;
- `core.inference.feature_ood`: the Mahalanobis distance of the pooled features the model itself
  computes; it catches images whose histogram looks like an X-ray's but whose content does not
  (a greyscale photograph, another body part, an inverted X-ray).

An image is unusual when either fires; `unusual_reason` says in words which one did, and why. A run
whose model has no features to read (an imported TF Lite, ONNX or SavedModel file), or whose
training images are gone, is checked by the statistics alone, and the reason says so on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.inference import ensemble, evaluation, feature_ood, ood
from core.runs.artifacts import Run, RunError

FEATURE_REASON = "far from the training X-rays in the model's own features"
STATISTICS_ONLY = "checked by image statistics only"


def _member_models(run: Run, models: Any) -> list[tuple[Run, Any]]:
    """(run, Keras model) of each member of an ensemble, or of the run itself; models loaded when not given."""
    members = ensemble.member_runs(run) if run.is_ensemble else [run]
    if run.is_ensemble:
        given = models or {}
        return [(m, given[m.name] if given.get(m.name) is not None else evaluation.load_model(m.model_path)) for m in members]
    return [(run, models if models is not None else evaluation.load_model(evaluation.own_model_path(run)))]


def feature_ratios(run: Run, paths: Sequence[str], models: Any = None) -> tuple[np.ndarray, str]:
    """(each image's feature distance over its cut-off, NaN where unreadable; "" or why there are none).

    An ensemble's is the mean of its members' ratios, each member with its own reference."""
    paths = list(paths)
    try:
        pairs = _member_models(run, models)
    except RunError as error:
        return np.full(len(paths), np.nan), str(error)
    ratios = []
    for member, model in pairs:
        if feature_ood.head_entry(model) is None:
            what = "the imported model file" if member.is_imported else "the model"
            return np.full(len(paths), np.nan), f"{what} has no layers to read pooled features from"
        reference = feature_ood.reference_for(member, model)
        if reference is None:
            return np.full(len(paths), np.nan), f"no feature reference for {member.name} (its training images are not available)"
        features, readable = feature_ood.file_features(model, paths, int(model.input_shape[1]))
        ratio = np.full(len(paths), np.nan)
        if readable:
            ratio[readable] = feature_ood.distances(reference, features) / reference["cutoff"]
        ratios.append(ratio)
    return np.mean(ratios, axis=0), ""


def flag_files(run: Run, paths: Sequence[str], models: Any = None) -> pd.DataFrame:
    """unusual (bool, or NA when neither detector could read the file), unusual_reason (in words:
    which detector fired and why), ood_score (the statistics' score, `ood.flag_files`)."""
    paths = list(paths)
    return combine(ood.flag_files(ood.reference_for(run), paths), *feature_ratios(run, paths, models))


def combine(statistics: pd.DataFrame, ratios: np.ndarray, missing: str = "") -> pd.DataFrame:
    """The flag from the statistics' flags (`ood.flag_files`) and the feature ratios (`feature_ratios`,
    with the reason they are missing): unusual when either detector fires."""
    table = statistics
    unusual, reasons = [], []
    for stats_flag, stats_reason, ratio in zip(table["unusual"], table["unusual_reason"], ratios, strict=True):
        stats_known = stats_flag is not pd.NA
        fired = [stats_reason] if stats_known and stats_flag else []
        if np.isfinite(ratio) and ratio > 1.0:
            fired.append(f"{FEATURE_REASON} (distance {ratio:.1f} × the validation cut-off)")
        notes = [] if stats_known or not stats_reason else [stats_reason]  # no statistics reference
        if missing:
            notes.append(f"no feature check{f' ({STATISTICS_ONLY})' if stats_known else ''}: {missing}")
        unusual.append(bool(fired) if stats_known or np.isfinite(ratio) else pd.NA)
        reasons.append("; ".join(fired + notes))
    return table.assign(unusual=unusual, unusual_reason=reasons)
