"""Trial histories and the Trials view: recording, the trial table, importance, figures, the page."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.reporting import trial_figures
from core.runs import artifacts, trials
from core.runs.progress import Progress, StopFlag
from core.search.settings import SearchSettings, SettingsError
from core.search.tuner import trial_callbacks
from tests.conftest import REPO
from tests.helpers import make_trials_run

# ---------------------------------------------------------------------------- recording


def test_recorder_writes_a_readable_history_after_every_epoch(tmp_path):
    path = tmp_path / artifacts.TRIAL_HISTORY
    recorder = trials.HistoryRecorder(path)
    recorder.begin_trial("00")
    for epoch in (1, 2, 3):
        recorder.begin_epoch()
        recorder.end_epoch(epoch, {"loss": 0.5, "auc": 0.7, "val_auc": 0.6 + epoch / 100, "val_loss": 0.4, "accuracy": 0.8})
        saved = artifacts.read_history(path)  # what a reader sees mid-search (or after a kill)
        assert len(saved) == epoch and saved["trial_id"].tolist() == ["00"] * epoch
    assert np.isnan(saved["val_accuracy"]).all()  # a metric the logs lack is a gap, not an error
    recorder.end_training(last_epoch=3, planned_epochs=5)
    recorder.end_trial("00")
    meta = recorder.trial_meta("00")
    assert meta["epochs_run"] == 3 and meta["stopped_early"] is True and meta["duration_s"] >= 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_a_resumed_search_keeps_the_history_and_retries_a_trial_from_scratch(tmp_path):
    path = tmp_path / artifacts.TRIAL_HISTORY
    first = trials.HistoryRecorder(path)
    for trial_id, epochs in (("00", 2), ("01", 1)):  # trial 01 killed after one epoch
        first.begin_trial(trial_id)
        for epoch in range(1, epochs + 1):
            first.end_epoch(epoch, {"val_auc": 0.7})
    saved_trials = [{"trial_id": "00", "duration_s": 12.5, "epochs_run": 2, "stopped_early": False}]
    again = trials.HistoryRecorder(path, saved_trials)
    assert again.trial_meta("00")["duration_s"] == 12.5
    again.begin_trial("01")
    again.end_epoch(1, {"val_auc": 0.8})
    history = artifacts.read_history(path)
    assert history.groupby("trial_id").size().to_dict() == {"00": 2, "01": 1}
    assert history.loc[history["trial_id"] == "01", "val_auc"].tolist() == [0.8]


def test_early_stopping_ends_a_trial_that_stops_improving_and_says_so(tmp_path):
    import keras

    settings = SearchSettings(data_dir=str(tmp_path), patience=2)
    progress, stop = Progress(tmp_path), StopFlag(tmp_path)
    recorder, lines = trials.HistoryRecorder(tmp_path / artifacts.TRIAL_HISTORY), []
    callbacks = trial_callbacks(settings, progress, stop, lines.append, recorder)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    # A learning rate of zero: the validation AUC never changes, so only the first epoch is a best.
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    recorder.begin_trial("00")
    model.fit(x, y, validation_data=(x, y), epochs=10, callbacks=callbacks, verbose=0)
    recorder.end_trial("00")
    assert recorder.trial_meta("00")["epochs_run"] == 3 and recorder.trial_meta("00")["stopped_early"]
    assert len(artifacts.read_history(tmp_path / artifacts.TRIAL_HISTORY)) == 3
    assert any("stopped early after epoch 3 of 10" in line for line in lines)


def test_patience_is_checked_and_reaches_the_settings_from_the_cli(tmp_path):
    with pytest.raises(SettingsError, match="patience"):
        SearchSettings(data_dir=str(tmp_path), patience=-1, name="x").resolved()
    from core import cli

    args = cli.build_parser().parse_args(["tune", "--data", str(tmp_path), "--family", "custom_cnn", "--patience", "3"])
    assert cli.tune_settings(args).patience == 3
    assert SearchSettings(data_dir=str(tmp_path)).patience == 0  # off unless asked for


# ---------------------------------------------------------------------------- the trial table


def test_trial_table_takes_the_best_epoch_from_the_history(tmp_path):
    run = artifacts.load_run(tmp_path, make_trials_run(tmp_path, "r", 6).name)
    history = run.trial_history()
    table = trials.trial_table(run.trials(), history)
    assert table.hyperparameters == ("learning_rate", "dropout", "dense_units", "batch_norm", "filters")
    assert list(table.frame["trial"]) == [1, 2, 3, 4, 5, 6]
    for _, row in table.frame.iterrows():
        rows = history[history["trial_id"] == row["trial_id"]]
        assert row["best_epoch"] == rows.loc[rows["val_auc"].idxmax(), "epoch"]
        assert row[trials.SCORE] == pytest.approx(rows["val_auc"].max())
    assert table.best_trial_id == table.frame.loc[table.frame[trials.SCORE].idxmax(), "trial_id"]
    steps = trials.optimisation_history(table)
    assert (np.diff(steps["best_so_far"]) >= 0).all() and steps["best_so_far"].iloc[-1] == table.frame[trials.SCORE].max()


def test_an_old_run_without_history_still_gives_a_table(tmp_path):
    run = artifacts.load_run(tmp_path, make_trials_run(tmp_path, "old", 4, history=False).name)
    assert run.trial_history() is None
    table = trials.trial_table(run.trials(), None)
    saved = run.trials()
    assert table.frame["best_epoch"].tolist() == [t["best_step"] + 1 for t in saved]  # Keras Tuner's 0-based step
    assert table.frame["duration_s"].isna().all()


def test_a_trial_training_now_is_listed_as_running_without_a_score(tmp_path):
    run = artifacts.load_run(tmp_path, make_trials_run(tmp_path, "live", 5, state="running").name)
    assert run.state == "running"
    table = trials.trial_table(run.trials(), run.trial_history())
    last = table.frame.iloc[-1]
    assert last["status"] == "RUNNING" and np.isnan(last[trials.SCORE]) and last["epochs_run"] >= 1
    # Only in the history (trials.json not yet rewritten): still listed, as running.
    only_history = trials.trial_table(run.trials()[:-1], run.trial_history())
    assert only_history.frame.iloc[-1]["status"] == "RUNNING" and len(only_history.frame) == 5


# ---------------------------------------------------------------------------- importance


def _synthetic_table(n: int, seed: int = 1) -> trials.TrialTable:
    """Only `learning_rate` moves the score; the others are noise the surrogate must rank below it."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "trial": range(1, n + 1), "trial_id": [f"{i:02d}" for i in range(n)],
        "learning_rate": 10 ** rng.uniform(-4, -2, n), "dropout": rng.uniform(0, 0.5, n),
        "dense_units": rng.choice([32, 64, 128], n), "optimizer": rng.choice(["adam", "sgd"], n), "batch_norm": rng.integers(0, 2, n) == 1,
    })
    frame[trials.SCORE] = 0.9 - 0.1 * (np.log10(frame["learning_rate"]) + 3) ** 2
    frame["status"] = "COMPLETED"
    return trials.TrialTable(frame, ("learning_rate", "dropout", "dense_units", "optimizer", "batch_norm"))


def test_importance_ranks_the_one_hyperparameter_that_matters_first():
    importance = trials.hyperparameter_importance(_synthetic_table(30))
    ranked = importance.table
    assert ranked["hyperparameter"].iloc[0] == "learning_rate"
    assert ranked["importance"].iloc[0] > 5 * ranked["importance"].iloc[1:].max()
    assert importance.n_trials == 30 and "permutation importance" in importance.method


def test_importance_needs_enough_trials_and_a_varied_hyperparameter():
    assert trials.hyperparameter_importance(_synthetic_table(trials.MIN_TRIALS_FOR_IMPORTANCE - 1)) is None
    fixed = _synthetic_table(20)
    frame = fixed.frame.assign(learning_rate=1e-3, dropout=0.2, dense_units=64, optimizer="adam", batch_norm=True)
    assert trials.hyperparameter_importance(trials.TrialTable(frame, fixed.hyperparameters)) is None


# ---------------------------------------------------------------------------- figures


def test_parallel_coordinates_map_choices_to_codes_and_spread_numbers_to_log(tmp_path):
    table = _synthetic_table(12)
    fig = trial_figures.parallel_coordinates_figure(table).to_plotly_json()
    dims = {d["label"]: d for d in fig["data"][0]["dimensions"]}
    assert dims["optimizer"]["ticktext"] == list(dict.fromkeys(table.frame["optimizer"]))
    assert set(dims["optimizer"]["values"]) <= {0, 1}
    assert set(dims["batch norm"]["ticktext"]) <= {"True", "False"}
    log_axis = dims["learning rate (log scale)"]  # human labels, not Keras Tuner names
    assert log_axis["values"][0] == pytest.approx(np.log10(table.frame["learning_rate"].iloc[0]))
    assert list(dims)[-1] == trial_figures.SCORE_TITLE
    # Axis ends written as the table writes them: AUC with 3 decimals, not plotly's 0.9940584 or 171.51µ.
    assert dims[trial_figures.SCORE_TITLE]["tickformat"] == ".3f"
    assert [trial_figures.number_format(v) for v in ([1.715e-4, 3e-4], [0.1, 0.25], [64, 128])] == [".2e", ".3f", "d"]
    assert fig["data"][0]["line"]["color"] == pytest.approx(table.frame[trials.SCORE].tolist())


def test_optimisation_history_counts_whole_trials():
    fig = trial_figures.optimisation_history_figure(_synthetic_table(3))
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1  # no trial 1.5
    assert trial_figures.optimisation_history_figure(_synthetic_table(45)).layout.xaxis.dtick == 5


def test_learning_curves_draw_train_and_validation_with_the_best_highlighted(tmp_path):
    run = artifacts.load_run(tmp_path, make_trials_run(tmp_path, "r", 5).name)
    table = trials.trial_table(run.trials(), run.trial_history())
    other = next(t for t in table.frame["trial_id"] if t != table.best_trial_id)
    fig = trial_figures.learning_curves_figure(run.trial_history(), [table.best_trial_id, other], table.best_trial_id)
    widths = {trace.name: trace.line.width for trace in fig.data}
    assert len(fig.data) == 4 and fig.layout.xaxis.title.text == "Epoch"
    best = [name for name, width in widths.items() if width == 4]
    assert len(best) == 2 and all("(best)" in name for name in best)


# ---------------------------------------------------------------------------- the page


def _tune_page(artifacts_dir, detail: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "tune.py"), default_timeout=60)
    at.session_state["data_dir"] = str(artifacts_dir / "no-data")
    at.session_state["artifacts_dir"] = str(artifacts_dir)
    if detail:
        at.session_state["tune_detail"] = detail
    return at.run()


def _titles(at: AppTest) -> list[str]:
    return [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]


@pytest.mark.parametrize("tuner", ["random", "hyperband"])
def test_trials_view_renders_for_a_finished_search(tmp_path, tuner):
    make_trials_run(tmp_path, f"{tuner}-run", 12, tuner=tuner)
    at = _tune_page(tmp_path, f"{tuner}-run")
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "best_epoch" in d.value.columns)
    assert len(table) == 12 and {"best_epoch", "duration_s", "status"} <= set(table.columns)
    tried = next(d.value for d in at.dataframe if "learning_rate" in d.value.columns)  # the hyperparameters, a table of their own
    assert list(tried["trial"]) == list(table["trial"]) and "best_epoch" not in tried.columns
    titles = _titles(at)
    for title in ("Optimisation history", "Parallel coordinates", "Validation AUC against each hyperparameter",
                  "Hyperparameter importance (12 trials)", "Learning curves"):
        assert any(t.startswith(title) for t in titles), (title, titles)


def test_trials_view_follows_a_running_search_in_its_live_panel(tmp_path):
    make_trials_run(tmp_path, "live", 5, state="running")
    at = _tune_page(tmp_path)
    assert not at.exception, [e.value for e in at.exception]
    assert artifacts.load_run(tmp_path, "live").progress["pid"] == os.getpid()
    table = next(d.value for d in at.dataframe if "best_epoch" in d.value.columns)
    assert table["status"].tolist()[-1] == "RUNNING"
    assert any(t.startswith("Optimisation history") for t in _titles(at))
    # Fewer than 8 scored trials: no importance, and the page says how many there are.
    assert "this run has 4 scored trials" in "\n".join(c.value for c in at.caption)
    assert at.multiselect(key="live_trials_live_curves").value[-1] == "04"  # the trial training now


def test_trials_view_of_an_old_run_without_history_is_a_note(tmp_path):
    make_trials_run(tmp_path, "old", 9, history=False)
    at = _tune_page(tmp_path, "old")
    assert not at.exception and not at.error
    assert any("saved before per-epoch histories were kept" in i.value for i in at.info)
    assert any(t.startswith("Optimisation history") for t in _titles(at))
    assert not any(t.startswith("Learning curves") for t in _titles(at))
