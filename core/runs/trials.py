"""A search's trials: their per-epoch history (recorded as the search goes) and what is read from it.

This module owns `trial_history.csv`, a tidy table of trial × epoch (train and validation loss,
AUC and accuracy, seconds per epoch), and the per-trial facts that go into `trials.json` beside
Keras Tuner's own (start, duration, epochs run, stopped early). `HistoryRecorder` writes them
during a search, each time atomically, so a running or killed search always leaves a readable
file. The rest are pure functions over `trials.json` rows and that history: the trial table, the
best epoch per trial, the optimisation history and hyperparameter importance.

No Keras and no Streamlit in here: the Keras callback lives in `core.search.tuner`, the figures in
`core.reporting.trial_figures`, the page in `pages/_trials.py`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core import files
from core.runs.artifacts import read_history

# The metrics a trial reports each epoch (core.models compiles every model with these names).
METRICS = ("loss", "auc", "accuracy")
HISTORY_COLUMNS = ("trial_id", "epoch", *METRICS, *(f"val_{m}" for m in METRICS), "epoch_s")
SCORE = "best_val_auc"
# Fewer scored trials than this give a surrogate too little to learn from: no importance then.
MIN_TRIALS_FOR_IMPORTANCE = 8
PERMUTATION_REPEATS = 10
# Trial-level facts the recorder adds to each trials.json row.
META_KEYS = ("started_at", "duration_s", "epochs_run", "stopped_early")


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------


class HistoryRecorder:
    """Per-epoch rows and per-trial facts of one search process, written as they come.

    The CSV is rewritten whole after every epoch through the atomic writer: a few thousand rows
    take milliseconds, and a reader (the live panel) never sees half a line, even after a kill.
    A resumed search starts from the rows and facts already saved.
    """

    def __init__(self, history_path: Path, previous_trials: Sequence[Mapping] = ()):
        self.path = Path(history_path)
        previous = read_history(self.path)
        self.rows: list[dict] = previous.to_dict("records") if previous is not None else []
        self.meta: dict[str, dict] = {
            str(t["trial_id"]): {k: t[k] for k in META_KEYS if t.get(k) is not None}
            for t in previous_trials if t.get("trial_id") is not None
        }
        self.trial_id: str | None = None
        self._trial_clock = self._epoch_clock = time.monotonic()

    def begin_trial(self, trial_id: str) -> None:
        self.trial_id = str(trial_id)
        # A trial retried after a stop or a kill trains again from its first epoch: its old rows go.
        self.rows = [r for r in self.rows if str(r["trial_id"]) != self.trial_id]
        self.meta[self.trial_id] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"), "epochs_run": 0, "stopped_early": False}
        self._trial_clock = time.monotonic()
        self.write()

    def begin_epoch(self) -> None:
        self._epoch_clock = time.monotonic()

    def end_epoch(self, epoch: int, logs: Mapping) -> None:
        """Record epoch `epoch` (1-based, counted from the trial's own first epoch for Hyperband) of the current trial."""
        if self.trial_id is None:
            return
        row = {"trial_id": self.trial_id, "epoch": int(epoch), "epoch_s": round(time.monotonic() - self._epoch_clock, 3)}
        for name in HISTORY_COLUMNS[2:-1]:
            value = logs.get(name)
            row[name] = float(value) if isinstance(value, (int, float, np.floating)) else np.nan
        self.rows.append(row)
        meta = self.meta.setdefault(self.trial_id, {})
        meta["epochs_run"] = meta.get("epochs_run", 0) + 1
        meta["duration_s"] = round(time.monotonic() - self._trial_clock, 2)
        self.write()

    def end_training(self, last_epoch: int, planned_epochs: int) -> None:
        """Training returned normally: it stopped early when it ended before the planned last epoch."""
        if self.trial_id is not None:
            self.meta.setdefault(self.trial_id, {})["stopped_early"] = int(last_epoch) < int(planned_epochs)

    def end_trial(self, trial_id: str) -> None:
        meta = self.meta.setdefault(str(trial_id), {})
        if str(trial_id) == self.trial_id:
            meta["duration_s"] = round(time.monotonic() - self._trial_clock, 2)
        self.trial_id = None

    def trial_meta(self, trial_id: str) -> dict:
        return dict(self.meta.get(str(trial_id), {}))

    def write(self) -> None:
        files.write_csv(self.path, pd.DataFrame(self.rows, columns=list(HISTORY_COLUMNS)))


# --------------------------------------------------------------------------
# The trial table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialTable:
    """One row per trial (`frame`) and which of its columns are hyperparameters."""

    frame: pd.DataFrame
    hyperparameters: tuple[str, ...]

    @property
    def scored(self) -> pd.DataFrame:
        """The trials with a validation AUC, in trial order."""
        return self.frame[self.frame[SCORE].notna()]

    @property
    def best_trial_id(self) -> str | None:
        scored = self.scored
        return None if scored.empty else str(scored.loc[scored[SCORE].idxmax(), "trial_id"])


def _trial_number(trial_id) -> int:
    """Keras Tuner numbers trials "00", "01", ...: trial 1, 2, ... as people count them."""
    text = str(trial_id)
    return int(text) + 1 if text.isdigit() else 0


def best_epochs(history: pd.DataFrame | None) -> pd.DataFrame:
    """Per trial: the best validation AUC, the epoch it came at, epochs run and their seconds."""
    columns = ["trial_id", SCORE, "best_epoch", "epochs_recorded", "history_s"]
    if history is None or history.empty or "val_auc" not in history.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for trial_id, rows_of_trial in history.groupby("trial_id", sort=False):
        scores = rows_of_trial["val_auc"]
        best = scores.idxmax() if scores.notna().any() else None
        rows.append({
            "trial_id": str(trial_id),
            SCORE: float(scores[best]) if best is not None else np.nan,
            "best_epoch": int(rows_of_trial.loc[best, "epoch"]) if best is not None else np.nan,
            "epochs_recorded": len(rows_of_trial),
            "history_s": float(rows_of_trial["epoch_s"].sum()) if "epoch_s" in rows_of_trial else np.nan,
        })
    return pd.DataFrame(rows, columns=columns)


def trial_table(trials: Sequence[Mapping], history: pd.DataFrame | None = None) -> TrialTable:
    """The trials of a run as a table: every hyperparameter, best validation AUC and its epoch,
    epochs run, stopped early, duration and status.

    `trials` are `trials.json` rows; `history` is `trial_history.csv` or None for older runs, which
    then show Keras Tuner's score and best step, with no duration. A trial in the history but not
    yet in trials.json is the one training now.
    """
    by_epoch = best_epochs(history).set_index("trial_id")
    names: list[str] = []
    rows = []
    for trial in trials:
        values = trial.get("hyperparameters") or {}
        names += [n for n in values if n not in names]
        trial_id = str(trial.get("trial_id"))
        recorded = by_epoch.loc[trial_id] if trial_id in by_epoch.index else None
        best_step = trial.get("best_step")
        score = trial.get("score")
        rows.append({
            "trial": _trial_number(trial_id),
            "trial_id": trial_id,
            **values,
            # Keras Tuner's score (the objective at the trial's best epoch); none while a trial trains.
            SCORE: float(score) if score is not None else np.nan,
            "best_epoch": _best_epoch(recorded, best_step if score is not None else None),
            "epochs_run": trial.get("epochs_run", recorded["epochs_recorded"] if recorded is not None else np.nan),
            "stopped_early": trial.get("stopped_early"),
            "duration_s": trial.get("duration_s", recorded["history_s"] if recorded is not None else np.nan),
            "status": trial.get("status") or "?",
        })
    listed = {r["trial_id"] for r in rows}
    for trial_id, recorded in by_epoch.iterrows():
        if trial_id not in listed:
            rows.append({"trial": _trial_number(trial_id), "trial_id": trial_id, SCORE: np.nan,
                         "best_epoch": recorded["best_epoch"], "epochs_run": recorded["epochs_recorded"],
                         "stopped_early": None, "duration_s": recorded["history_s"], "status": "RUNNING"})
    columns = ["trial", "trial_id", *names, SCORE, "best_epoch", "epochs_run", "stopped_early", "duration_s", "status"]
    frame = pd.DataFrame(rows, columns=columns).sort_values("trial", kind="stable").reset_index(drop=True)
    for column in ("best_epoch", "epochs_run", "duration_s", SCORE):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return TrialTable(frame, tuple(names))


def _best_epoch(recorded: pd.Series | None, best_step) -> float:
    """The epoch of the best validation AUC: from the history, else from Keras Tuner's 0-based best step."""
    if recorded is not None and pd.notna(recorded["best_epoch"]):
        return float(recorded["best_epoch"])
    return float(best_step) + 1 if best_step is not None else np.nan


def optimisation_history(table: TrialTable) -> pd.DataFrame:
    """Score by trial number and the best score so far (NaN before the first scored trial)."""
    frame = table.frame[["trial", "trial_id", SCORE]].copy()
    frame["best_so_far"] = frame[SCORE].cummax()
    return frame


# --------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------


def is_categorical(values: pd.Series) -> bool:
    """Strings and booleans are choices without an order; numbers keep theirs."""
    present = values.dropna()
    return present.empty or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in present)


def encode(values: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    """Numbers as they are; choices as codes 0, 1, ... with their labels (in order of first sight)."""
    if not is_categorical(values):
        return pd.to_numeric(values, errors="coerce").to_numpy(float), None
    labels = list(dict.fromkeys(str(v) for v in values.dropna()))
    codes = values.map(lambda v: labels.index(str(v)) if pd.notna(v) else np.nan)
    return codes.to_numpy(float), labels


def hyperparameter_label(name: str) -> str:
    """A hyperparameter's Keras Tuner name in words for a header or an axis: "conv_blocks" -> "conv blocks"."""
    return name.replace("_", " ")


def varied_hyperparameters(table: TrialTable) -> list[str]:
    """The hyperparameters that took more than one value among the scored trials."""
    scored = table.scored
    return [n for n in table.hyperparameters if n in scored and scored[n].astype(str).nunique() > 1]


@dataclass(frozen=True)
class Importance:
    """Permutation importance of a random-forest surrogate (hyperparameters → validation AUC)."""

    table: pd.DataFrame  # hyperparameter, importance, spread; most important first
    n_trials: int
    method: str


IMPORTANCE_METHOD = (
    "permutation importance of a random forest (scikit-learn, 200 trees) fitted on the scored trials' "
    "hyperparameters (choices as codes) to predict their best validation AUC: how much the forest's R² drops "
    "when one hyperparameter's values are shuffled (mean and SD over 10 shuffles)"
)


def hyperparameter_importance(table: TrialTable, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE, seed: int = 0) -> Importance | None:
    """Which hyperparameters the score depends on, or None with too few scored trials or none varied.

    The forest is scored on the trials it was fitted on: with tens of trials there is nothing to
    hold out, so read the ranking, not the size.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score

    scored = table.scored
    names = varied_hyperparameters(table)
    if len(scored) < min_trials or not names:
        return None
    x = np.column_stack([encode(scored[n])[0] for n in names])
    x = np.where(np.isnan(x), -1.0, x)  # a hyperparameter a trial did not have (conditional): its own value
    y = scored[SCORE].to_numpy(float)
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1).fit(x, y)
    baseline = r2_score(y, forest.predict(x))
    # Every shuffled copy in one matrix and one predict call: sklearn's permutation_importance makes
    # a call per copy, and the per-call overhead of the 200 trees dominates (docs/measurements.md, "Benchmarks").
    rng = np.random.default_rng(seed)
    copies = []
    for column in range(len(names)):
        for _ in range(PERMUTATION_REPEATS):
            shuffled = x.copy()
            shuffled[:, column] = rng.permutation(shuffled[:, column])
            copies.append(shuffled)
    predicted = forest.predict(np.concatenate(copies)).reshape(len(names), PERMUTATION_REPEATS, len(y))
    drops = np.array([[baseline - r2_score(y, p) for p in per_name] for per_name in predicted])
    ranked = pd.DataFrame({"hyperparameter": names, "importance": drops.mean(axis=1), "spread": drops.std(axis=1)})
    ranked = ranked.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)
    return Importance(ranked, len(scored), IMPORTANCE_METHOD)
