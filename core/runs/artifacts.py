"""Saved runs: the layout of a run folder, its lock, and reading runs back.

One folder per run under the artifacts folder; every file in it is written whole or not at all
(`core.files`). A run's state comes from `progress.json` plus a check that its process still lives.
"""

from __future__ import annotations

import math
import os
import re
import socket
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from core import files
from core.data.tasks import canonical_name
from core.files import read_csv, read_json

SETTINGS = "settings.json"
DATA_SUMMARY = "data_summary.json"
SPLITS = "splits.csv"
PROGRESS = "progress.json"
TRIALS = "trials.json"
TRIAL_HISTORY = "trial_history.csv"  # trial × epoch (core.runs.trials); absent in runs saved before it was kept
BEST_HYPERPARAMETERS = "best_hyperparameters.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
VAL_PREDICTIONS = "val_predictions.csv"  # where operating points are chosen
VAL_STRESS_PREDICTIONS = "val_stress_predictions.csv"  # validation probabilities under the stress test's changes (core.evidence.stress)
MODEL = "model.keras"
TFLITE_MODEL = "model.tflite"  # the same model converted for the TF Lite engine (core.models.engine), made on first use
INT8_MODEL = "model.int8.onnx"  # its full-integer quantised twin (core.inference.quantization), made on request
INT8_RECORD = "int8.json"  # how that int8 model agrees with fp32, and whether the run keeps it
LOG = "log.txt"
LOCK = "search.lock"
TUNER_DIR = "tuner"
# Named operating points chosen on a site's labelled images (core.workflows.site): one JSON file each,
# `operating_points/<name>.json`; the run's own threshold stays in metrics.json.
OPERATING_POINTS = "operating_points"
NOTES = "notes.json"  # the user's note, tags and archived flag (core.runs.catalog); never written by a search
DEFAULT_TASK = "pneumonia"  # runs saved without a task are the pneumonia binary task
# An ensemble's settings name this family and its members (runs in the same artifacts folder);
# it has no model of its own and predicts with theirs (see core.inference.ensemble).
ENSEMBLE_FAMILY = "ensemble"
# A repeat's settings hold this key: {source, seeds, main} (see core.workflows.repeat); it predicts
# with its first seed's model, saved as its own.
REPEAT = "repeat"
# An imported run's settings hold this key: where its model came from and how it is read (see
# core.workflows.importing); its model is the bundle folder IMPORTED_MODEL (core.models.imported).
IMPORTED = "imported"
IMPORTED_MODEL = "imported_model"

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
ACTIVE_STATES = ("starting", "running", "stopping")


class RunError(ValueError):
    """A run that does not exist, has a bad name or cannot be used; the message says why."""


# --------------------------------------------------------------------------
# Prediction tables
# --------------------------------------------------------------------------

_FIX_PREDICTIONS = "restore the file from a copy of the run, or run the search again to write it anew"


def _bad_value(path: Path, column: str, values: pd.Series, ok: pd.Series, wanted: str) -> RunError:
    """The RunError naming the first row of ``column`` that is not ``ok``: file, column, line, value."""
    row = int(ok.to_numpy().argmin())
    value = values.iloc[row]
    shown = "an empty cell" if pd.isna(value) else repr(str(value))
    return RunError(
        f"{path} is damaged: column {column!r} holds {shown} on line {row + 2} (the header is line 1), "
        f"where {wanted} belongs; {_FIX_PREDICTIONS}"
    )


def check_predictions(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``table`` (read from ``path``) when its labels are 0/1 and its probabilities numbers in [0, 1].

    A hand-edited file with a blank, a word or a NaN in such a column would otherwise fail far from
    here (an integer cast, a metric of NaN), with no word of which file to mend. Labels: ``y_true``.
    Probabilities: ``probability``, ``probability_<class>`` and, in ``val_stress_predictions.csv``,
    every column but ``path``. Raises ``RunError`` naming the file, the column and its first bad line.
    """
    stress = path.name == VAL_STRESS_PREDICTIONS
    for column in table.columns:
        if column == "y_true":
            wanted, low, high, whole = "a label 0 or 1", 0, 1, True
        elif column == "probability" or column.startswith("probability_") or (stress and column != "path"):
            wanted, low, high, whole = "a probability between 0 and 1", 0.0, 1.0, False
        else:
            continue
        numbers = pd.to_numeric(table[column], errors="coerce")
        ok = numbers.between(low, high)  # False for NaN and for words, which became NaN
        if whole:
            ok &= numbers == numbers.round()
        if not ok.all():
            raise _bad_value(path, column, table[column], ok, wanted)
    return table


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """A run's prediction table (``predictions.csv``, ``val_predictions.csv`` or
    ``val_stress_predictions.csv``), checked by :func:`check_predictions`."""
    return check_predictions(read_csv(path), Path(path))


# --------------------------------------------------------------------------
# Names and folders
# --------------------------------------------------------------------------


def default_artifacts_dir() -> Path:
    return Path(os.environ.get("CXR_ARTIFACTS_DIR", "artifacts"))


def check_run_name(name: str) -> str:
    """Accept names that are one plain folder inside the artifacts folder, nothing else."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or name in (".", ".."):
        raise RunError(
            f"invalid run name {name!r}: use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_point_name(name: str) -> str:
    """Accept an operating point's name when it is one plain file name (the rules of a run name)."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or name in (".", ".."):
        raise RunError(
            f"invalid operating point name {name!r}: use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def run_dir(artifacts: str | os.PathLike, name: str) -> Path:
    return Path(artifacts) / check_run_name(name)


def existing_run_dir(artifacts: str | os.PathLike, name: str) -> Path:
    folder = run_dir(artifacts, name)
    if not (folder / SETTINGS).exists():
        known = ", ".join(r.name for r in list_runs(artifacts)[:10]) or "none yet"
        raise RunError(f"no run named {name!r} in {artifacts} (runs there: {known})")
    return folder


# --------------------------------------------------------------------------
# Process liveness
# --------------------------------------------------------------------------


def copy_split(source: Path, target: Path) -> None:
    """Give run folder `target` the split of run folder `source` (`splits.csv`, `data_summary.json`): a
    search started there uses a saved split as it is (core.search.splits.prepare_split)."""
    files.write_csv(target / SPLITS, files.read_csv(source / SPLITS))
    files.write_json(target / DATA_SUMMARY, files.read_json(source / DATA_SUMMARY))


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        with open(f"/proc/{int(pid)}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def effective_state(progress: dict | None, active: tuple[str, ...] = ACTIVE_STATES) -> str:
    """The state to show: a run whose process died while in one of the `active` states (a search's
    by default) was interrupted, not running."""
    if not progress:
        return "unknown"
    state = progress.get("state", "unknown")
    if state in active and progress.get("host", this_host()) == this_host():
        if not pid_alive(progress.get("pid")):
            return "interrupted"
    return state


# --------------------------------------------------------------------------
# A lock per run
# --------------------------------------------------------------------------


@contextmanager
def run_lock(folder: Path):
    """Hold the run's lock for the life of a search; refuse if another live process holds it.

    The kernel releases it when the process dies, even by SIGKILL (`files.file_lock`), so a killed
    search never leaves a stale lock behind.
    """
    with ExitStack() as stack:
        try:
            stack.enter_context(files.file_lock(folder / LOCK, wait=False))
        except files.LockBusy:
            raise RunError(f"run {folder.name!r} is already running in another process: stop it first, or pick another name") from None
        yield


def is_locked(folder: Path) -> bool:
    return files.is_locked(folder / LOCK)


# --------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------


@dataclass
class Run:
    """A saved run, read lazily from its folder."""

    name: str
    folder: Path
    settings: dict
    progress: dict
    metrics: dict | None

    @property
    def state(self) -> str:
        return effective_state(self.progress)

    @property
    def family(self) -> str:
        return self.settings.get("family", "?")

    @property
    def task(self) -> str:
        """The task's name (core.data.tasks): runs saved without one are pneumonia runs, "binary" is its old name."""
        return canonical_name(self.settings.get("task") or DEFAULT_TASK)

    @property
    def notes(self) -> dict:
        """The run's notes.json: {"note": str, "tags": [str], "archived": bool}, read once."""
        cached = self.__dict__.get("_notes")
        if cached is None:
            stored = read_json(self.folder / NOTES, {})
            stored = stored if isinstance(stored, dict) else {}
            tags = stored.get("tags") if isinstance(stored.get("tags"), list) else []
            cached = {
                "note": str(stored.get("note") or ""),
                "tags": [str(t) for t in tags],
                "archived": bool(stored.get("archived", False)),
                "archived_at": stored.get("archived_at"),
            }
            self.__dict__["_notes"] = cached
        return cached

    @property
    def archived(self) -> bool:
        return self.notes["archived"]

    @property
    def tags(self) -> list[str]:
        return self.notes["tags"]

    @property
    def model_path(self) -> Path:
        """The run's own model: `model.keras`, or an imported run's bundle folder."""
        return self.folder / (IMPORTED_MODEL if self.is_imported else MODEL)

    @property
    def is_imported(self) -> bool:
        """Whether the run scores a model trained elsewhere (`python -m core import`)."""
        return isinstance(self.settings.get(IMPORTED), dict)

    @property
    def is_ensemble(self) -> bool:
        return self.family == ENSEMBLE_FAMILY

    @property
    def is_repeat(self) -> bool:
        """Whether the run is a repeat: a run's best hyperparameters trained again with other seeds."""
        return isinstance(self.settings.get(REPEAT), dict)

    @property
    def members(self) -> list[str]:
        """The names of an ensemble's member runs (beside it in the same folder); [] for other runs."""
        return [str(m) for m in self.settings.get("members") or []] if self.is_ensemble else []

    @property
    def model_paths(self) -> list[Path]:
        """The model files this run predicts with: its own, or each member's for an ensemble."""
        if self.is_ensemble:  # run_dir refuses a member name that is not a plain run name
            return [run_dir(self.folder.parent, member) / MODEL for member in self.members]
        return [self.model_path]

    @property
    def has_model(self) -> bool:
        try:
            paths = self.model_paths
        except RunError:
            return False
        return bool(paths) and all(p.exists() for p in paths)

    # Run rules: what the pages and the report need to know about a run, decided here once.

    @property
    def threshold(self) -> float:
        """The decision threshold the search chose on validation (0.5 for a run saved without one)."""
        return float((self.metrics or {}).get("threshold", 0.5))

    @property
    def test_auc(self) -> float:
        """The saved model's AUC on test, or -inf when there is none (so it sorts last). For display only."""
        return _finite_or_minus_inf(((self.metrics or {}).get("test") or {}).get("auc"))

    @property
    def validation_auc(self) -> float:
        """The saved model's AUC on validation, or -inf when there is none.

        `metrics.json`'s `val.auc` is the saved model's own score on the validation split; runs
        saved without it fall back to the search's best epoch score (`progress.json`).
        """
        saved = _finite_or_minus_inf(((self.metrics or {}).get("val") or {}).get("auc"))
        return saved if math.isfinite(saved) else _finite_or_minus_inf(self.progress.get("best_val_auc"))

    def elapsed_s(self, now: datetime | None = None) -> float:
        """Seconds the search has run, over all its starts; a live run counts up to `now`."""
        progress = self.progress
        total = float(progress.get("elapsed_s") or 0.0) + float(progress.get("elapsed_before_s") or 0.0)
        if self.state in ACTIVE_STATES and progress.get("updated_at"):
            try:
                updated = datetime.fromisoformat(progress["updated_at"])
                total += max(0.0, ((now or datetime.now(UTC)) - updated).total_seconds())
            except (TypeError, ValueError):  # a hand-edited or truncated timestamp: count what was saved
                pass
        return total

    def read(self, file_name: str, default=None):
        return read_json(self.folder / file_name, default)

    def predictions(self) -> pd.DataFrame:
        path = self.folder / PREDICTIONS
        if not path.exists():
            raise RunError(f"run {self.name!r} has no test predictions yet (state: {self.state})")
        return read_predictions(path)

    def val_predictions(self) -> pd.DataFrame | None:
        """The validation split's predictions, or None for runs saved before they were kept."""
        path = self.folder / VAL_PREDICTIONS
        return read_predictions(path) if path.exists() else None

    def val_stress_predictions(self) -> pd.DataFrame | None:
        """The validation images' probabilities under the stress test's changes (core.evidence.stress), or
        None for runs saved before they were kept or without the stress test."""
        path = self.folder / VAL_STRESS_PREDICTIONS
        return read_predictions(path) if path.exists() else None

    def operating_points(self) -> dict[str, dict]:
        """The run's named operating points chosen on site images ({name: the saved record}, by name);
        {} when there are none. An unreadable file is left out."""
        found = {}
        for path in sorted((self.folder / OPERATING_POINTS).glob("*.json")):
            record = read_json(path)
            if isinstance(record, dict) and RUN_NAME.match(path.stem) and isinstance(record.get("threshold"), (int, float)):
                found[path.stem] = record
        return found

    def operating_point(self, name: str) -> dict:
        """One named operating point (`operating_points`); `RunError` naming the ones there are otherwise."""
        points = self.operating_points()
        if name not in points:
            known = ", ".join(points) or "none yet: make one with `python -m core adapt`"
            raise RunError(f"run {self.name!r} has no operating point named {name!r} (its points: {known})")
        return points[name]

    def trials(self) -> list[dict]:
        """trials.json: one dict per Keras Tuner trial; [] before the first trial or if unreadable."""
        rows = self.read(TRIALS, [])
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def trial_history(self) -> pd.DataFrame | None:
        """trial_history.csv (with distributed workers' own files), or None for runs saved before it
        was kept: callers show a note, not an error."""
        parts = [read_history(path) for path in [self.folder / TRIAL_HISTORY, *sorted((self.folder / "workers").glob(f"*_{TRIAL_HISTORY}"))]]
        parts = [p for p in parts if p is not None]
        return pd.concat(parts, ignore_index=True) if parts else None

    def log_tail(self, lines: int = 30, file_name: str = LOG) -> str:
        """The last lines of the run's log (or of another text file in its folder, e.g. process.log)."""
        try:
            with open(self.folder / file_name, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64_000))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def _finite_or_minus_inf(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")


def best_per_family(runs: list[Run]) -> list[str]:
    """Names of the run with the best validation AUC in each family, in the order of `runs`.

    The default runs of Compare and Predict. Chosen on validation, never on test: picking the
    best test AUC would make the test split a selection set and flatter the runs shown.
    """
    best: dict[str, Run] = {}
    for run in runs:
        if run.family not in best or run.validation_auc > best[run.family].validation_auc:
            best[run.family] = run
    chosen = {r.name for r in best.values()}
    return [r.name for r in runs if r.name in chosen]


def load_run(artifacts: str | os.PathLike, name: str) -> Run:
    folder = existing_run_dir(artifacts, name)
    return Run(
        name=name,
        folder=folder,
        settings=read_json(folder / SETTINGS, {}),
        progress=read_json(folder / PROGRESS, {}),
        metrics=read_json(folder / METRICS),
    )


def list_runs(artifacts: str | os.PathLike) -> list[Run]:
    """Every run folder under `artifacts`, newest first; folders without settings are skipped."""
    root = Path(artifacts)
    if not root.is_dir():
        return []
    runs = []
    for folder in root.iterdir():
        if folder.is_dir() and RUN_NAME.match(folder.name) and (folder / SETTINGS).exists():
            runs.append(load_run(root, folder.name))
    return sorted(runs, key=lambda r: r.progress.get("started_at") or "", reverse=True)


def _number(value) -> float:
    """NaN for a missing value, so metric columns stay numeric (sortable) for unfinished runs."""
    return float("nan") if value is None else float(value)


# An ensemble's image size in tables: its members read their own sizes (words, not a blank a table would print as None)
PER_MEMBER = "per member"


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it is, its state and its test metrics (blank until evaluated)."""
    rows = []
    for run in runs:
        metrics = (run.metrics or {}).get("test", {})
        rows.append(
            {
                "run": run.name,
                "family": run.family,
                "task": run.task,
                "mode": run.settings[IMPORTED].get("format") if run.is_imported else run.settings.get("mode"),
                "tuner": run.settings.get("tuner") or "–",  # an ensemble or an imported model has none
                # an ensemble's members read their own sizes: words, not a blank a table would print as None
                "image_size": str(run.settings["image_size"]) if run.settings.get("image_size") else PER_MEMBER,
                "state": run.state,
                # an imported model was trained elsewhere, an ensemble combines trained runs: no trials of their own
                "trials": "–" if run.is_imported or run.is_ensemble
                else f"{run.progress.get('trials_done', 0)}/{run.progress.get('trials_total', '?')}",
                "best_val_auc": _number(run.progress.get("best_val_auc")),
                "test_auc": _number(metrics.get("auc")),
                "accuracy": _number(metrics.get("accuracy")),
                "sensitivity": _number(metrics.get("sensitivity")),
                "specificity": _number(metrics.get("specificity")),
                "threshold": _number((run.metrics or {}).get("threshold")),
                "started_at": run.progress.get("started_at"),
                "tags": ", ".join(run.tags),
                "note": run.notes["note"],
                "archived": run.archived,
            }
        )
    return pd.DataFrame(rows)


def read_history(path: Path) -> pd.DataFrame | None:
    """A saved trial_history.csv, or None when there is none (runs saved before it was kept)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        table = read_csv(path, dtype={"trial_id": str})
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    missing = [c for c in ("trial_id", "epoch") if c not in table.columns]
    return None if missing else table
