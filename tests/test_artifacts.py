"""core.runs.artifacts.Run's run rules: its threshold, its AUCs, the default run of each family, its elapsed time."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from core import files
from core.runs import artifacts


def make_run(
    root: Path, name: str, family: str, *, val_auc=None, test_auc=None, progress: dict | None = None, threshold=None
) -> artifacts.Run:
    """A run folder written by hand with only the files the rules read."""
    folder = root / name
    files.write_json(folder / artifacts.SETTINGS, {"name": name, "family": family})
    files.write_json(folder / artifacts.PROGRESS, progress or {"state": "completed"})
    metrics: dict = {"val": {}, "test": {}}
    if val_auc is not None:
        metrics["val"]["auc"] = val_auc
    if test_auc is not None:
        metrics["test"]["auc"] = test_auc
    if threshold is not None:
        metrics["threshold"] = threshold
    files.write_json(folder / artifacts.METRICS, metrics)
    return artifacts.load_run(root, name)


def test_the_default_run_of_a_family_is_chosen_on_validation_not_on_test(tmp_path):
    # "peeked" has the higher test AUC but the lower validation AUC: choosing it would be a choice made on test.
    peeked = make_run(tmp_path, "peeked", "mobilenet", val_auc=0.80, test_auc=0.99)
    honest = make_run(tmp_path, "honest", "mobilenet", val_auc=0.90, test_auc=0.85)
    cnn = make_run(tmp_path, "cnn", "custom_cnn", val_auc=0.70, test_auc=0.75)
    assert artifacts.best_per_family([peeked, cnn, honest]) == ["cnn", "honest"]  # in the order given
    assert artifacts.best_per_family([honest, peeked]) == ["honest"]


def test_a_run_without_a_saved_validation_auc_falls_back_to_the_search_progress(tmp_path):
    old = make_run(tmp_path, "old", "xception", test_auc=0.99, progress={"state": "completed", "best_val_auc": 0.95})
    new = make_run(tmp_path, "new", "xception", val_auc=0.93, test_auc=0.80)
    assert old.validation_auc == 0.95
    assert artifacts.best_per_family([new, old]) == ["old"]
    bare = make_run(tmp_path, "bare", "xception", test_auc=1.0)  # no validation score anywhere: never preferred
    assert bare.validation_auc == -math.inf
    assert artifacts.best_per_family([bare, new]) == ["new"]


def test_missing_or_undefined_aucs_sort_last(tmp_path):
    run = make_run(tmp_path, "nan", "custom_cnn", val_auc=float("nan"), test_auc=None)
    assert run.validation_auc == -math.inf and run.test_auc == -math.inf
    assert make_run(tmp_path, "ok", "custom_cnn", val_auc=0.6, test_auc=0.7).test_auc == 0.7


def test_threshold_is_the_saved_one_else_one_half(tmp_path):
    assert make_run(tmp_path, "chosen", "custom_cnn", threshold=0.37).threshold == 0.37
    assert make_run(tmp_path, "unchosen", "custom_cnn").threshold == 0.5


def test_elapsed_time_adds_every_start_and_a_live_run_counts_up_to_now(tmp_path):
    updated = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    progress = {"elapsed_s": 30.0, "elapsed_before_s": 100.0, "updated_at": updated.isoformat()}
    stopped = make_run(tmp_path, "stopped", "custom_cnn", progress={**progress, "state": "stopped"})
    assert stopped.elapsed_s(now=updated + timedelta(hours=1)) == 130.0  # not running: nothing added
    live = make_run(
        tmp_path, "live", "custom_cnn", progress={**progress, "state": "running", "pid": os.getpid(), "host": artifacts.this_host()}
    )
    assert live.elapsed_s(now=updated + timedelta(seconds=12)) == pytest.approx(142.0)
    assert live.elapsed_s(now=updated - timedelta(seconds=5)) == 130.0  # a clock behind the file adds nothing
    broken = make_run(
        tmp_path, "broken", "custom_cnn",
        progress={**progress, "updated_at": "yesterday", "state": "running", "pid": os.getpid(), "host": artifacts.this_host()},
    )
    assert broken.elapsed_s() == 130.0


# ---------------------------------------------------------------------------- prediction tables


def _tables(folder: Path) -> None:
    """A run's three prediction tables, sound: 4 validation and 4 test images."""
    y = [0, 0, 1, 1]
    rows = {"path": [f"/d/{i}.jpeg" for i in range(4)], "patient": ["007", "008", "009", "010"], "y_true": y}
    pd.DataFrame({**rows, "probability": [0.1, 0.4, 0.6, 1.0]}).to_csv(folder / artifacts.PREDICTIONS, index=False)
    pd.DataFrame({**rows, "probability": [0.0, 0.3, 0.7, 0.9], "probability_viral": [0.0, 0.1, 0.2, 0.3]}).to_csv(
        folder / artifacts.VAL_PREDICTIONS, index=False
    )
    pd.DataFrame({"path": rows["path"], "sharpened": [0.2, 0.3, 0.8, 0.9]}).to_csv(folder / artifacts.VAL_STRESS_PREDICTIONS, index=False)


def _damage(path: Path, column: str, row: int, value) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


READERS = {
    artifacts.PREDICTIONS: artifacts.Run.predictions,
    artifacts.VAL_PREDICTIONS: artifacts.Run.val_predictions,
    artifacts.VAL_STRESS_PREDICTIONS: artifacts.Run.val_stress_predictions,
}


def test_sound_prediction_tables_read_as_saved(tmp_path):
    run = make_run(tmp_path, "ok", "custom_cnn")
    _tables(run.folder)
    assert run.predictions()["probability"].tolist() == [0.1, 0.4, 0.6, 1.0]
    assert run.predictions()["patient"].tolist() == ["007", "008", "009", "010"]  # ids stay strings
    assert run.val_predictions()["probability_viral"].max() == 0.3
    assert run.val_stress_predictions()["sharpened"].tolist() == [0.2, 0.3, 0.8, 0.9]


@pytest.mark.parametrize(
    ("file_name", "column", "row", "value", "shown"),
    [
        (artifacts.PREDICTIONS, "probability", 2, "", "an empty cell"),
        (artifacts.PREDICTIONS, "probability", 1, "nan", "an empty cell"),
        (artifacts.PREDICTIONS, "y_true", 3, "yes", "'yes'"),
        (artifacts.PREDICTIONS, "y_true", 0, "0.5", "'0.5'"),
        (artifacts.VAL_PREDICTIONS, "probability", 1, "1.7", "'1.7'"),
        (artifacts.VAL_PREDICTIONS, "probability_viral", 3, "-0.1", "'-0.1'"),
        (artifacts.VAL_STRESS_PREDICTIONS, "sharpened", 2, "high", "'high'"),
    ],
)
def test_a_damaged_prediction_table_names_the_file_column_and_line(tmp_path, file_name, column, row, value, shown):
    run = make_run(tmp_path, "edited", "custom_cnn")
    _tables(run.folder)
    _damage(run.folder / file_name, column, row, value)
    if row < 3:
        _damage(run.folder / file_name, column, 3, "")  # a later bad row too: the first one is named
    with pytest.raises(artifacts.RunError) as caught:
        READERS[file_name](run)
    message = str(caught.value)
    assert str(run.folder / file_name) in message and f"column {column!r}" in message
    assert f"holds {shown} on line {row + 2}" in message
    assert "restore the file" in message and "run the search again" in message
    for other, read in READERS.items():  # the run's other tables still read
        if other != file_name:
            assert isinstance(read(run), pd.DataFrame)
