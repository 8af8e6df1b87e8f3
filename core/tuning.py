"""Hyperparameter searches: settings, the Keras Tuner search loop, progress, stop and resume.

`run_search(settings)` does a whole run: scan and split the data (by patient), decode the pixels,
in frozen mode fill the feature cache, search with Keras Tuner, keep the best model, choose the
decision threshold on validation, evaluate on test and save everything into the run folder.
The same name resumes a stopped or killed search where it stopped (Keras Tuner `overwrite=False`),
with the settings and the split it started with.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core import artifacts, augmentation, data, evaluation, models, search_space, stress, tasks, trials

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_auc"
HYPERBAND_FACTOR = 3  # Keras Tuner's default: each round keeps a third of the models, for 3x the epochs


class SettingsError(ValueError):
    """Search settings that cannot work; the message says which and why."""


class SearchStopped(BaseException):  # noqa: N818 - a signal, not an error
    """Raised inside training when a stop was asked for.

    A BaseException on purpose, like KeyboardInterrupt: Keras Tuner records an `Exception` in a
    trial as a failed trial and goes on, whereas this must end the search and leave the trial to
    be retried on resume. Keras Tuner's documented `errors.FatalError` also passes its trial loop,
    but it is an `Exception`, so any `except Exception` around a stop check (image decoding, the
    TF Lite fallback) would swallow the stop, and subclassing it would import Keras Tuner, hence
    TensorFlow, with this module (`--help`, the dashboard). tests/test_tuner_contract.py checks
    that Keras Tuner lets this through and keeps the trial.
    """


# ---------------------------------------------------------------------------- settings


@dataclass
class SearchSettings:
    """Everything that defines a search; saved as `settings.json` in the run folder."""

    data_dir: str
    family: str = "custom_cnn"
    # What the models predict (core.tasks): "pneumonia", "bacterial_vs_viral" or "three_class".
    # Runs saved before tasks existed have none: they are pneumonia runs.
    task: str = tasks.DEFAULT
    tuner: str = "random"
    trials: int = 10
    epochs: int = 5
    image_size: int | None = None  # None: the family's default
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    mode: str = "frozen"  # transfer families: "frozen" (cached features) or "finetune"
    batch_size: int = 32
    seed: int = 42
    max_per_class: int | None = None
    name: str | None = None
    artifacts_dir: str = "artifacts"
    mobilenet_version: str = "v2"
    alpha: float = 1.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    feature_cache: bool = True
    engine: str = "auto"
    # finetune mode: train the layers above `cut` (None: the architecture's default) on cached
    # activations of the layers below it; off, every step runs the whole backbone (slow on a CPU)
    activation_cache: bool = True
    cut: str | None = None
    augment: str = "off"  # an augmentation preset (core.augmentation), or "search" for in-model augmentation
    augment_views: int = 3  # augmented copies of each training image cached for cut-point fine-tuning
    tta: int = 1  # test-time augmentation: views averaged when evaluating and predicting (1: off)
    stress_test: bool = True  # measure the model on changed validation images (core.stress)
    # edits of the default search space (core.search_space), e.g. {"dropout": 0.2}; None: the default space
    space: dict | None = None
    # Every hyperparameter fixed to these values (name -> value): the search trains that one model.
    # `core.repeat` retrains a run's best hyperparameters this way with other seeds. Unlike a `space`
    # edit, this replays a finished trial exactly, hyperparameters outside the editable space included.
    fixed_hyperparameters: dict | None = None
    cache_dir: str | None = None  # the shared pixel and feature caches, when not `artifacts_dir/.cache`
    # Early stopping per trial: end a trial after this many epochs without a better validation AUC.
    # 0 = off by default: the presets were measured without it, and their 1-6 epochs leave little to cut.
    patience: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def family_info(self) -> models.Family:
        return models.FAMILIES[self.family]

    def resolved(self) -> SearchSettings:
        """Fill in defaults that depend on other settings, then check the whole."""
        settings = copy.replace(self) if hasattr(copy, "replace") else copy.copy(self)
        if settings.family not in models.FAMILIES:
            raise SettingsError(f"unknown family {settings.family!r}: choose one of {', '.join(models.FAMILIES)}")
        family = settings.family_info
        settings.data_dir = os.path.abspath(os.path.expanduser(settings.data_dir))
        settings.task = tasks.canonical_name(settings.task)
        settings.image_size = settings.image_size or family.default_image_size
        if not family.transfer:
            settings.weights, settings.mode = "none", "scratch"
        if not settings.name:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            settings.name = f"{settings.family}-{settings.mode}-{stamp}"
        settings.check()
        settings.space = search_space.canonical_edits(settings.default_space(), settings.space) or None
        return settings

    def check(self) -> None:
        problems = []
        if tasks.canonical_name(self.task) not in tasks.TASKS:
            problems.append(f"task must be one of {', '.join(tasks.TASKS)}")
        if self.tuner not in TUNERS:
            problems.append(f"tuner must be one of {', '.join(TUNERS)}")
        if self.family_info.transfer and self.mode not in models.MODES:
            problems.append(f"mode must be one of {', '.join(models.MODES)}")
        if not 1 <= int(self.trials) <= 1000:
            problems.append("trials must be between 1 and 1000")
        if not 1 <= int(self.epochs) <= 1000:
            problems.append("epochs must be between 1 and 1000")
        if self.tuner == "hyperband" and int(self.epochs) < 2:
            problems.append("hyperband needs at least 2 epochs (it trains candidates for more and more epochs)")
        if not 32 <= int(self.image_size) <= 1024:
            problems.append("image size must be between 32 and 1024 pixels")
        elif self.image_size < self.family_info.min_image_size:
            problems.append(f"{self.family} needs images of at least {self.family_info.min_image_size} pixels")
        if not 1 <= int(self.batch_size) <= 4096:
            problems.append("batch size must be between 1 and 4096")
        if self.max_per_class is not None and int(self.max_per_class) < 4:
            problems.append("max images per class must be at least 4 (or unset for all images)")
        if self.mobilenet_version not in models.MOBILENET_VERSIONS:
            problems.append(f"MobileNet version must be one of {', '.join(models.MOBILENET_VERSIONS)}")
        widths = models.MOBILENET_WIDTHS.get(self.mobilenet_version, ())
        if self.family == "mobilenet" and self.alpha not in widths:
            problems.append(f"MobileNet {self.mobilenet_version} comes in widths (alpha) {', '.join(map(str, widths))}")
        if weights_problem := models.weights_problem(self.weights):
            problems.append(weights_problem)
        if not (0.05 <= self.val_fraction <= 0.4 and 0.05 <= self.test_fraction <= 0.4):
            problems.append("validation and test fractions must be between 0.05 and 0.4")
        if self.engine not in ("auto", "tflite", "keras"):
            problems.append("engine must be auto, tflite or keras")
        problems += self._augmentation_problems()
        if not 0 <= int(self.patience) <= 1000:
            problems.append("patience (early stopping) must be between 0 (off) and 1000 epochs")
        if not problems:  # the space depends on the settings above: check it once they hold
            problems += self._space_problems()
        if not 1 <= int(self.tta) <= augmentation.TTA_MAX_VIEWS:
            problems.append(f"test-time augmentation takes 1 (off) to {augmentation.TTA_MAX_VIEWS} views")
        if problems:
            raise SettingsError("; ".join(problems))
        artifacts.check_run_name(self.name)

    def _augmentation_problems(self) -> list[str]:
        problems = []
        if self.augment not in (*augmentation.AUGMENTATIONS, augmentation.SEARCH):
            problems.append(f"augmentation must be one of {', '.join(augmentation.AUGMENTATIONS)} or {augmentation.SEARCH}")
        elif self.augment != "off" and self.mode == "frozen":
            problems.append("augmentation needs --mode finetune or the custom CNN: frozen features are computed once, unaugmented")
        elif self.augment == augmentation.SEARCH and self.uses_activation_cache:
            problems.append("augmentation 'search' changes the images per trial, which the activation cache cannot: "
                            "pick a preset, or turn the activation cache off")
        if not 1 <= int(self.augment_views) <= 16:
            problems.append("augmented views must be between 1 and 16")
        if self.cut and not self.uses_activation_cache:
            problems.append("a cut layer needs --mode finetune with the activation cache on")
        if self.uses_activation_cache and not self.cut_layer:
            problems.append(f"{self.backbone().architecture} has no default cut layer: pass --cut LAYER")
        return problems

    def _space_problems(self) -> list[str]:
        try:
            self.hyperparameters()
        except search_space.SpaceError as error:
            return [f"search space: {error}"]
        return []

    def default_space(self) -> dict[str, search_space.Hyperparameter]:
        """Every hyperparameter this search's trials draw, with its default range or choices."""
        return search_space.default_space(self.family, self.mode, int(self.image_size), self.augment, self.uses_activation_cache)

    def hyperparameters(self) -> dict[str, search_space.Hyperparameter]:
        """The search space after the user's edits (`space`); SpaceError when an edit cannot apply."""
        return search_space.apply_edits(self.default_space(), self.space)

    @property
    def task_info(self) -> tasks.Task:
        return tasks.task_for(self.task)

    @property
    def uses_activation_cache(self) -> bool:
        return self.family_info.transfer and self.mode == "finetune" and bool(self.activation_cache)

    @property
    def cut_layer(self) -> str | None:
        spec = self.backbone()
        return self.cut or (spec.arch.default_cut if spec else None)

    def backbone(self) -> models.BackboneSpec | None:
        return self.family_info.backbone(self.image_size, self.weights, self.mobilenet_version, self.alpha)


# ---------------------------------------------------------------------------- progress


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Progress:
    """The run's `progress.json`, rewritten atomically so another process can always read it."""

    def __init__(self, folder: Path, previous: dict | None = None, file_name: str = artifacts.PROGRESS):
        self.path = folder / file_name
        previous = previous or {}
        self.state = {
            "state": "starting",
            "phase": "starting",
            "message": "",
            "trial": 0,
            "trials_total": None,
            "trials_done": previous.get("trials_done", 0),
            "epoch": 0,
            "epochs": None,
            "latest_val_auc": previous.get("latest_val_auc"),
            "best_val_auc": previous.get("best_val_auc"),
            "elapsed_s": 0.0,
            "elapsed_before_s": previous.get("elapsed_before_s", 0.0) + previous.get("elapsed_s", 0.0),
            "started_at": previous.get("started_at") or _now(),
            "resumed_at": _now() if previous else None,
            "updated_at": _now(),
            "pid": os.getpid(),
            "host": artifacts.this_host(),
            "error": None,
        }
        self._start = time.monotonic()
        self._last_write = 0.0
        self.write()

    def update(self, force: bool = False, **values) -> None:
        self.state.update(values)
        now = time.monotonic()
        if force or now - self._last_write >= 1.0:
            self.write()

    def write(self) -> None:
        self.state["elapsed_s"] = round(time.monotonic() - self._start, 1)
        self.state["updated_at"] = _now()
        self._last_write = time.monotonic()
        artifacts.write_json(self.path, self.state)


class StopFlag:
    """Set by SIGTERM/SIGINT or by a `stop.request` file in the run folder."""

    FILE = "stop.request"

    def __init__(self, folder: Path):
        self.file = folder / self.FILE
        self.event = threading.Event()
        self._last_check = 0.0

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())

    def is_set(self) -> bool:
        if self.event.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check > 0.5:  # a stat per half second, not per batch
            self._last_check = now
            if self.file.exists():
                self.event.set()
        return self.event.is_set()

    def check(self) -> None:
        if self.is_set():
            raise SearchStopped()


def _make_progress_callback(progress: Progress, stop: StopFlag, log, recorder: trials.HistoryRecorder):
    import keras

    class ProgressCallback(keras.callbacks.Callback):
        """Reports epochs to `progress.json` and the trial history, and turns a stop request into `SearchStopped`."""

        last_epoch = 0

        def __deepcopy__(self, memo):  # Keras Tuner deep-copies callbacks per trial; keep one.
            return self

        def on_train_begin(self, logs=None):
            self.last_epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            recorder.begin_epoch()
            progress.update(epoch=epoch + 1, force=True)

        def on_train_end(self, logs=None):
            # Reached only when fit returns: a stop request or a failed trial raises past it.
            planned = int(self.params.get("epochs") or self.last_epoch)
            recorder.end_training(self.last_epoch, planned)
            if self.last_epoch < planned:
                log(f"  trial {progress.state['trial']}: stopped early after epoch {self.last_epoch} of {planned} "
                    "(no better validation AUC for the patience set)")

        def on_train_batch_end(self, batch, logs=None):
            stop.check()

        def on_test_batch_end(self, batch, logs=None):
            stop.check()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            val_auc = logs.get(OBJECTIVE)
            best = progress.state.get("best_val_auc")
            if val_auc is not None and (best is None or val_auc > best):
                best = float(val_auc)
            progress.update(epoch=epoch + 1, latest_val_auc=val_auc, best_val_auc=best, force=True)
            self.last_epoch = epoch + 1
            recorder.end_epoch(epoch + 1, logs)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float)))
            log(f"  trial {progress.state['trial']}/{progress.state['trials_total']} epoch {epoch + 1}: {shown}")

    return ProgressCallback()


def trial_callbacks(settings: SearchSettings, progress: Progress, stop: StopFlag, log, recorder: trials.HistoryRecorder) -> list:
    """What every trial's `fit` gets: progress and history reporting, and early stopping when asked for."""
    import keras

    callbacks = [_make_progress_callback(progress, stop, log, recorder)]
    if settings.patience:
        # Keras Tuner deep-copies callbacks per trial, so each trial gets a fresh patience count.
        callbacks.append(keras.callbacks.EarlyStopping(monitor=OBJECTIVE, mode="max", patience=int(settings.patience)))
        log(f"early stopping: a trial ends after {settings.patience} epochs without a better validation AUC")
    return callbacks


def _make_tuner(settings: SearchSettings, hypermodel, folder: Path, progress: Progress, stop: StopFlag, log,
                recorder: trials.HistoryRecorder):
    import keras_tuner

    base = {
        "random": keras_tuner.RandomSearch,
        "bayesian": keras_tuner.BayesianOptimization,
        "hyperband": keras_tuner.Hyperband,
    }[settings.tuner]

    class ReportingTuner(base):
        """The chosen Keras Tuner, reporting trial starts and ends to `progress.json`."""

        def on_trial_begin(self, trial):
            stop.check()
            # A distributed worker's oracle is a client without the trial list: count its own.
            number = len(self.oracle.trials) if hasattr(self.oracle, "trials") else int(trial.trial_id) + 1
            progress.update(trial=number, epoch=0, phase="searching", message=f"trial {number}", force=True)
            shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in trial.hyperparameters.values.items()}
            log(f"trial {number}/{progress.state['trials_total']}: {shown}")
            recorder.begin_trial(trial.trial_id)
            super().on_trial_begin(trial)
            if hasattr(self.oracle, "trials"):  # list it (running) at once, so the live panel shows it
                _save_trials(self, folder, recorder)

        def on_trial_end(self, trial):
            recorder.end_trial(trial.trial_id)
            super().on_trial_end(trial)
            if not hasattr(self.oracle, "trials"):  # a distributed worker: the chief keeps the list
                ran = progress.state.setdefault("trials_run", [])
                ran.append(trial.trial_id)
                progress.update(trials_done=len(ran), force=True)
                return
            done = sum(t.status == "COMPLETED" for t in self.oracle.trials.values())
            progress.update(trials_done=done, force=True)
            _save_trials(self, folder, recorder)

    options = {
        "hypermodel": hypermodel,
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "directory": str(folder),
        "project_name": artifacts.TUNER_DIR,
        "overwrite": False,
        "seed": settings.seed,
        "max_consecutive_failed_trials": 3,
    }
    if settings.fixed_hyperparameters:  # a replay: every hyperparameter as the finished trial drew it
        space = keras_tuner.HyperParameters()
        for name, value in settings.fixed_hyperparameters.items():
            space.Fixed(name, value)
        options.update(hyperparameters=space, tune_new_entries=False)
    elif settings.space:  # the edited hyperparameters, registered before the model's own defaults
        edited = settings.hyperparameters()
        options["hyperparameters"] = search_space.registered_in_advance(edited[name] for name in settings.space)
    if settings.tuner == "hyperband":
        tuner = ReportingTuner(max_epochs=settings.epochs, factor=HYPERBAND_FACTOR, **options)
        tuner.oracle.max_trials = settings.trials  # a cap: Hyperband itself sizes its brackets
    else:
        tuner = ReportingTuner(max_trials=settings.trials, **options)
    return tuner


def hyperband_trials(max_epochs: int, factor: int = HYPERBAND_FACTOR) -> int:
    """Trials in one Hyperband iteration, sized as Keras Tuner sizes them (Li et al. 2018).

    Bracket b (0 .. brackets-1, one more each time `max_epochs` divides by `factor`) starts
    ceil(s / (b + 1) * factor**b) models, s = ceil(1 + log_factor(max_epochs)), and each of its b
    later rounds keeps 1/factor of them. Computed here rather than read from the oracle's private
    `_get_num_brackets` / `_get_size`; tests/test_tuner_contract.py checks it against a real search.
    """
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        brackets += 1
    s = math.ceil(1 + math.log(max_epochs, factor))
    return sum(
        math.ceil(s / (bracket + 1) * factor ** (bracket - round_))
        for bracket in range(brackets)
        for round_ in range(bracket + 1)
    )


def _planned_trials(tuner, settings: SearchSettings) -> int:
    if settings.tuner != "hyperband" or not hasattr(tuner.oracle, "trials"):  # a worker's client oracle
        return settings.trials
    return min(settings.trials, hyperband_trials(settings.epochs))


def _trial_rows(tuner, recorder: trials.HistoryRecorder | None = None) -> list[dict]:
    """trials.json: Keras Tuner's view of each trial, plus what the recorder measured (duration, epochs run)."""
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id) if t.trial_id.isdigit() else 0):
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "score": trial.score,
                "best_step": trial.best_step,
                "hyperparameters": values,
                "message": (trial.message or "").strip().splitlines()[-1:] if trial.message else None,
                # Hyperband: the epochs this trial trains to, and the trial it continues (if any).
                "epochs_budget": trial.hyperparameters.values.get("tuner/epochs"),
                "continues": trial.hyperparameters.values.get("tuner/trial_id"),
                **(recorder.trial_meta(trial.trial_id) if recorder else {}),
            }
        )
    return rows


def _save_trials(tuner, folder: Path, recorder: trials.HistoryRecorder | None = None) -> None:
    if recorder is None:  # keep what an earlier writer measured (the chief's watcher has no recorder)
        recorder = trials.HistoryRecorder(folder / artifacts.TRIAL_HISTORY, artifacts.read_json(folder / artifacts.TRIALS, []) or [])
    artifacts.write_json(folder / artifacts.TRIALS, _trial_rows(tuner, recorder))


# ---------------------------------------------------------------------------- data for a run


def preflight(settings: SearchSettings) -> data.Dataset:
    """Check what can be checked before a run folder exists: the data and the weights.

    A folder without usable images of both classes, or weights that cannot be had, is refused
    here, so a mistake leaves no half-made run behind.
    """
    dataset = data.scan_folder(settings.data_dir)
    data.require_usable(dataset, settings.task_info)
    spec = settings.backbone()
    if spec is not None:
        models.resolve_weights(spec)
    return dataset


def prepare_split(settings: SearchSettings, folder: Path, log, dataset: data.Dataset | None = None) -> tuple[pd.DataFrame, dict]:
    """The run's split table: saved on the first start, read back on resume so it never changes."""
    saved = folder / artifacts.SPLITS
    summary = artifacts.read_json(folder / artifacts.DATA_SUMMARY)
    if saved.exists() and summary:
        table = artifacts.read_csv(saved)
        missing = [p for p in table["path"] if not os.path.exists(p)]
        if missing:
            raise data.DataError(
                f"{len(missing)} images of this run's split are gone (e.g. {missing[0]}): restore the data folder "
                "or start a new run"
            )
        log(f"resuming with the saved split: {len(table)} images")
        return table, summary
    if dataset is None:
        log(f"scanning {settings.data_dir}")
        dataset = data.scan_folder(settings.data_dir)
        data.require_usable(dataset, settings.task_info)
    task = settings.task_info
    table, notes = data.assign_splits(dataset.table, settings.val_fraction, settings.test_fraction, settings.seed, task)
    dataset.notes.extend(notes)
    table = data.cap_per_class(table, settings.max_per_class, settings.seed, task)
    data.check_patient_disjoint(table)
    data.require_splits(table, task)
    summary = data.summarize(dataset, table, task)
    artifacts.write_csv(saved, table)
    artifacts.write_json(folder / artifacts.DATA_SUMMARY, summary)
    for note in summary["notes"]:
        log(f"note: {note}")
    if summary["unreadable"]:
        log(f"skipped {len(summary['unreadable'])} unreadable files (listed in {artifacts.DATA_SUMMARY})")
    return table, summary


def _drop_undecodable(table: pd.DataFrame, pixels: np.ndarray, errors, folder: Path, log):
    if not errors:
        return table, pixels
    bad = {e.path for e in errors}
    keep = ~table["path"].isin(bad).to_numpy()
    log(f"skipped {len(bad)} images that could not be decoded")
    summary = artifacts.read_json(folder / artifacts.DATA_SUMMARY, {})
    listed = {u["path"] for u in summary.get("unreadable", [])}
    summary.setdefault("unreadable", []).extend({"path": e.path, "reason": e.reason} for e in errors if e.path not in listed)
    artifacts.write_json(folder / artifacts.DATA_SUMMARY, summary)
    return table[keep].reset_index(drop=True), pixels[keep]


def cache_root(settings: SearchSettings) -> Path:
    """Decoded pixels and backbone features are shared by runs: they live beside the runs."""
    return Path(os.environ.get("CXR_CACHE_DIR") or settings.cache_dir or Path(settings.artifacts_dir) / ".cache")


# ---------------------------------------------------------------------------- the search


def run_search(settings: SearchSettings, log=print, resume: bool = False, role: str | None = None) -> dict:
    """Run (or resume) a search and save the run; returns the test metrics.

    Raises SettingsError, data.DataError, models.WeightsError or artifacts.RunError with a message
    for the user; a stop request ends it with state "stopped" and returns {"state": "stopped"}.
    """
    settings = settings.resolved()
    folder = artifacts.run_dir(settings.artifacts_dir, settings.name)
    existing = artifacts.read_json(folder / artifacts.SETTINGS)
    if existing and not resume:
        raise artifacts.RunError(
            f"a run named {settings.name!r} already exists: resume it with `python -m core resume {settings.name}` "
            "or pick another --name"
        )
    if resume:
        if not existing:
            raise artifacts.RunError(f"no run named {settings.name!r} to resume in {settings.artifacts_dir}")
        settings = SearchSettings.from_dict({**existing, "artifacts_dir": settings.artifacts_dir})
        if (folder / artifacts.METRICS).exists():
            raise artifacts.RunError(f"run {settings.name!r} is already complete; start a new run to search again")
    dataset = None if resume else preflight(settings)

    with artifacts.run_lock(folder):
        run_log = _open_log(folder, log)
        previous = artifacts.read_json(folder / artifacts.PROGRESS) if resume else None
        progress = Progress(folder, previous)
        stop = StopFlag(folder)
        stop.file.unlink(missing_ok=True)
        stop.install_signal_handlers()
        if not existing:
            artifacts.write_json(folder / artifacts.SETTINGS, settings.to_dict())
        try:
            result = _search(settings, folder, progress, stop, run_log, dataset, role)
            progress.update(state="completed", phase="done", message="completed", force=True)
            run_log(f"done: test AUC {result['test']['auc']:.4f}, accuracy {result['test']['accuracy']:.4f}"
                    + evaluation.multiclass_summary(result))
            return result
        except SearchStopped:
            progress.update(state="stopped", phase="stopped", message="stopped by request; resume to continue", force=True)
            run_log(f"stopped: completed trials are kept; resume with `python -m core resume {settings.name}`")
            return {"state": "stopped"}
        except BaseException as error:
            progress.update(state="failed", phase="failed", error=f"{type(error).__name__}: {error}", force=True)
            run_log(f"failed: {error}")
            raise
        finally:
            stop.file.unlink(missing_ok=True)


def _open_log(folder: Path, echo, file_name: str = artifacts.LOG):
    path = folder / file_name

    def log(message: str) -> None:
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {message}"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            echo(line)

    return log


def _search(settings: SearchSettings, folder: Path, progress: Progress, stop: StopFlag, log, dataset=None, role=None) -> dict:
    import warnings

    import keras

    from core import activations, features  # they load TensorFlow: only a search needs them

    # Keras Tuner passes shuffle=True to fit and reloads checkpoints without optimizer state: both harmless.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")

    timings: dict[str, float] = {}
    clock = time.monotonic()
    keras.utils.set_random_seed(settings.seed)
    task = settings.task_info

    progress.update(phase="reading data", message="scanning and splitting the data", force=True)
    table, _ = prepare_split(settings, folder, log, dataset)
    timings["scan_s"] = time.monotonic() - clock

    spec = settings.backbone()
    if spec is not None and spec.weights == "none" and settings.mode == "frozen":
        log("note: a frozen backbone with random weights gives random features; expect results near chance "
            "(a baseline for what ImageNet features add). Use --mode finetune to train a backbone from scratch")
    use_features = spec is not None and settings.mode == "frozen" and settings.feature_cache
    use_activations = spec is not None and settings.uses_activation_cache
    backbone = models.build_backbone(spec) if spec is not None and (settings.mode == "frozen" or use_activations) else None
    if spec is not None and backbone is None:
        models.resolve_weights(spec)  # finetune: fail on missing weights now, not in every trial
    cut = activations.split_backbone(backbone, settings.cut_layer) if use_activations else None

    clock = time.monotonic()
    progress.update(phase="decoding images", message=f"decoding {len(table)} images at {settings.image_size} px", force=True)
    log(f"decoding {len(table)} images at {settings.image_size} px (cached per size)")
    inputs = views = None
    if use_features:
        inputs, errors = features.cached_features(
            backbone, spec, list(table["path"]), settings.image_size, cache_root(settings),
            engine=settings.engine, seed=settings.seed,
            progress=lambda done, total: progress.update(message=f"features {done}/{total}"),
            log=log, stop=stop.check,
        )
    elif use_activations:
        cached = activations.cached_activations(
            cut, spec, list(table["path"]), (table["split"] == "train").to_numpy(), cache_root(settings),
            augmentation.preset(settings.augment), settings.augment_views, seed=settings.seed, engine=settings.engine,
            progress=lambda message: progress.update(message=message), log=log, stop=stop.check,
        )
        inputs, views, errors = cached.clean, cached.views, cached.errors
    else:
        inputs, errors = data.load_images(
            list(table["path"]), settings.image_size, cache_root(settings) / "pixels",
            progress=lambda done, total: progress.update(message=f"decoded {done}/{total}"),
        )
    if views is not None and errors:  # the views hold the training rows only: keep them aligned
        train_rows = (table["split"] == "train").to_numpy()
        bad = table["path"].isin({e.path for e in errors}).to_numpy()
        views = views[:, ~bad[train_rows]]
    table, inputs = _drop_undecodable(table, inputs, errors, folder, log)
    data.require_splits(table, task)
    timings["features_s" if use_features else "activations_s" if use_activations else "decode_s"] = time.monotonic() - clock
    stop.check()

    labels = task.labels(table)
    part = {split: (table["split"] == split).to_numpy() for split in data.SPLITS}
    weights = data.class_weights(labels[part["train"]], task.n_classes)
    targets = task.targets(labels)  # one-hot for a softmax head
    hypermodel = models.SearchSpace(
        settings.family, settings.mode, settings.image_size, spec,
        n_features=inputs.shape[1] if use_features else None, task=task, augment=settings.augment, cut=cut,
    )

    clock = time.monotonic()
    # A worker records its own trials beside its log; the others, the run's trial_history.csv.
    history_path = progress.path.with_name(f"{progress.path.stem}_{artifacts.TRIAL_HISTORY}") if role == "worker" else folder / artifacts.TRIAL_HISTORY
    recorder = trials.HistoryRecorder(history_path, artifacts.read_json(folder / artifacts.TRIALS, []) or [])
    tuner = _make_tuner(settings, hypermodel, folder, progress, stop, log, recorder)
    total = _planned_trials(tuner, settings)
    progress.update(state="running", phase="searching", trials_total=total, epochs=settings.epochs, force=True)
    log(f"searching: {settings.tuner} search, {total} trials, {settings.epochs} epochs, class weights {weights}")
    if use_activations:
        train_ds = activations.training_dataset(views, inputs[part["train"]], targets[part["train"]], settings.batch_size, settings.seed)
        val_ds = data.make_tf_dataset(np.asarray(inputs[part["val"]], np.float32), targets[part["val"]], settings.batch_size)
    else:
        train_ds = data.make_tf_dataset(inputs[part["train"]], targets[part["train"]], settings.batch_size, shuffle=True, seed=settings.seed)
        val_ds = data.make_tf_dataset(inputs[part["val"]], targets[part["val"]], settings.batch_size)
    callbacks = trial_callbacks(settings, progress, stop, log, recorder)
    watcher = _watch_chief(tuner, progress, folder) if role == "chief" else None
    # Keras Tuner clears the Keras session before every trial, and that runs a full gc.collect()
    # over everything loaded so far (TensorFlow, the backbone, the data): about 0.25 s a trial,
    # a fifth of a frozen-mode trial. Freezing those long-lived objects takes them out of it.
    gc.freeze()
    try:
        tuner.search(train_ds, validation_data=val_ds, epochs=settings.epochs, class_weight=weights, callbacks=callbacks, verbose=0)
    finally:
        gc.unfreeze()  # in-process callers (tests, the distributed test) get a normal collector back
        if watcher:
            watcher.set()
    if role == "worker":
        log(f"worker finished: ran trials {progress.state.get('trials_run', [])}")
        return {"state": "worker-done", "trials_run": progress.state.get("trials_run", [])}
    stop.check()
    _save_trials(tuner, folder, recorder)
    timings["search_s"] = time.monotonic() - clock

    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        messages = [row["message"] for row in _trial_rows(tuner) if row["message"]]
        raise RuntimeError(f"no trial finished; last error: {messages[-1] if messages else 'unknown'}")

    progress.update(phase="evaluating", message="evaluating the best model", force=True)
    clock = time.monotonic()
    best_hp = tuner.get_best_hyperparameters(1)[0]
    trained = tuner.get_best_models(1)[0]
    artifacts.write_json(folder / artifacts.BEST_HYPERPARAMETERS, {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")})
    if use_features:
        model = models.attach_head(backbone, trained)
    elif use_activations:
        model = activations.join(cut, trained)
    else:
        model = trained
    # Validation and test pixels, decoded once (pixel cache) for the evaluation on pixels and the
    # stress test, whichever needs them.
    rows = part["val"] | part["test"]
    sub = {split: mask[rows] for split, mask in part.items()}
    pixels = None
    if not (use_features and settings.tta == 1) or settings.stress_test:
        pixels, _ = data.load_images(list(table.loc[rows, "path"]), settings.image_size, cache_root(settings) / "pixels")
    if use_features and settings.tta == 1:
        # Evaluate what the search trained on: the same numbers as the saved model, much faster.
        result = evaluation.evaluate_model(trained, inputs, labels, table, part, settings.engine, settings.batch_size, task=task)
    else:
        # The saved model on pixels (activations are float16; views need pixels): exactly what
        # `predict` will give later.
        result = evaluation.evaluate_model(
            model, pixels, labels[rows], table[rows], sub, settings.engine, settings.batch_size,
            tta=settings.tta, cache_path=folder / "model.tflite", task=task,
        )
    timings["evaluate_s"] = time.monotonic() - clock
    if settings.stress_test:
        progress.update(message="stress test on validation", force=True)
        clock = time.monotonic()
        val_pixels = np.asarray(pixels)[sub["val"]]
        result["stress"] = _stress_test(settings, model, val_pixels, task.binary_labels(labels[part["val"]]), result["threshold"], folder)
        timings["stress_s"] = time.monotonic() - clock
        worst = stress.worst(result["stress"])
        if worst:
            log(f"stress test on validation: worst is {worst['condition']} (specificity {worst['specificity']:.3f}, "
                f"sensitivity {worst['sensitivity']:.3f})")
    artifacts.save_model(folder / artifacts.MODEL, model)
    sample = data.load_images(list(table.loc[part["test"], "path"][:32]), settings.image_size)[0]
    result["inference"] = evaluation.time_inference(model, sample, settings.engine, folder / "model.tflite")
    result.update(
        {
            "task": task.name,
            "parameters": models.count_parameters(model),
            "best_hyperparameters": {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "trials_completed": len(completed),
            "feature_cache": use_features,
            "activation_cache": {"cut": cut.cut, "augment": settings.augment, "views": settings.augment_views} if cut else None,
            "augmentation": _augmentation_record(settings, best_hp),
            "finished_at": _now(),
        }
    )
    artifacts.write_csv(folder / artifacts.VAL_PREDICTIONS, result.pop("val_predictions"))
    artifacts.write_csv(folder / artifacts.PREDICTIONS, result.pop("predictions"))
    artifacts.write_json(folder / artifacts.METRICS, result)
    return result


def _stress_test(settings: SearchSettings, model, val_pixels: np.ndarray, y_val: np.ndarray, threshold: float, folder: Path) -> list[dict]:
    """The saved model on validation images changed as sites differ (core.stress), at its threshold."""

    def score(images: np.ndarray) -> np.ndarray:
        scores = evaluation.probabilities(model, images, settings.engine, settings.batch_size, folder / "model.tflite", settings.tta)[0]
        return evaluation.saved_precision(scores)

    return stress.stress_test(score, val_pixels, y_val, threshold)


def _augmentation_record(settings: SearchSettings, best_hp) -> dict | None:
    """What the augmentation preset meant when this run trained (presets may be retuned later)."""
    name = best_hp.values.get("augment", settings.augment) if settings.augment == augmentation.SEARCH else settings.augment
    if settings.mode == "frozen" or name == "off":
        return None
    return {"preset": name, **asdict(augmentation.preset(name))}


# ---------------------------------------------------------------------------- distributed searches


def configure_distributed(role: str, oracle: str, worker_id: str | None = None) -> None:
    """Set Keras Tuner's own distribution variables: one chief oracle, any number of workers.

    All processes must see the same artifacts folder (one machine, or a shared file system):
    workers write trial checkpoints there and the chief evaluates the best one at the end.
    """
    host, _, port = oracle.rpartition(":")
    if role not in ("chief", "worker") or not host or not port.isdigit():
        raise SettingsError("distributed searches need --distributed chief|worker and --oracle HOST:PORT")
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else f"tuner-{worker_id or os.getpid()}"


def _watch_chief(tuner, progress: Progress, folder: Path) -> threading.Event:
    """The chief only serves the oracle; a thread reports the workers' trials as they end."""
    done_event = threading.Event()

    def watch() -> None:
        while not done_event.wait(2.0):
            trials = list(tuner.oracle.trials.values())
            scores = [t.score for t in trials if t.status == "COMPLETED" and t.score is not None]
            progress.update(
                trial=len(trials), trials_done=len(scores), best_val_auc=max(scores) if scores else None,
                message=f"serving trials to workers; {len(scores)} done", force=True,
            )
            _save_trials(tuner, folder)

    threading.Thread(target=watch, daemon=True, name="chief-progress").start()
    return done_event


def run_worker(artifacts_dir: str, name: str, worker_id: str, log=print, wait_s: float = 900) -> dict:
    """A distributed worker: wait for the chief's split, then train the trials the chief hands out."""
    folder = artifacts.run_dir(artifacts_dir, name)
    deadline = time.monotonic() + wait_s
    while not ((folder / artifacts.SPLITS).exists() and (folder / artifacts.DATA_SUMMARY).exists()):
        if time.monotonic() > deadline:
            raise artifacts.RunError(f"no chief started run {name!r} in {artifacts_dir} within {wait_s:.0f} s")
        time.sleep(1.0)
    settings = SearchSettings.from_dict({**artifacts.read_json(folder / artifacts.SETTINGS), "artifacts_dir": artifacts_dir})
    workers = folder / "workers"
    workers.mkdir(exist_ok=True)
    run_log = _open_log(workers, log, f"{worker_id}.log")
    progress = Progress(workers, file_name=f"{worker_id}.json")
    stop = StopFlag(folder)
    stop.install_signal_handlers()
    try:
        result = _search(settings, folder, progress, stop, run_log, role="worker")
        progress.update(state="completed", phase="done", force=True)
        return result
    except SearchStopped:
        progress.update(state="stopped", phase="stopped", force=True)
        return {"state": "stopped"}
    except BaseException as error:
        progress.update(state="failed", phase="failed", error=f"{type(error).__name__}: {error}", force=True)
        raise
