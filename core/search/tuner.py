"""The Keras Tuner side of a search: the tuner, its per-trial callbacks and its trial list.

`make_tuner` builds the chosen Keras Tuner (random, Bayesian or Hyperband) as a subclass that
reports trial starts and ends to `progress.json` and rewrites `trials.json`; `trial_callbacks`
gives every trial's `fit` the progress and history callback (which also turns a stop request
into `SearchStopped`) and early stopping; `watch_chief` reports a distributed search's trials in
the chief's `progress.json`. Keras and Keras Tuner are imported inside the
functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from core import files
from core.models import search_space
from core.runs import artifacts, trials
from core.runs.progress import Progress, StopFlag
from core.search.settings import SearchSettings

OBJECTIVE = "val_auc"
HYPERBAND_FACTOR = 3  # Keras Tuner's default: each round keeps a third of the models, for 3x the epochs


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


def make_tuner(settings: SearchSettings, hypermodel, folder: Path, progress: Progress, stop: StopFlag, log,
               recorder: trials.HistoryRecorder):
    """The chosen Keras Tuner over `hypermodel`, resuming whatever `folder` already holds."""
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
                save_trials(self, folder, recorder)

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
            save_trials(self, folder, recorder)

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


def planned_trials(tuner, settings: SearchSettings) -> int:
    """The trials this search will run: the setting, or fewer when Hyperband's brackets hold fewer."""
    if settings.tuner != "hyperband" or not hasattr(tuner.oracle, "trials"):  # a worker's client oracle
        return settings.trials
    return min(settings.trials, hyperband_trials(settings.epochs))


def trial_rows(tuner, recorder: trials.HistoryRecorder | None = None) -> list[dict]:
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


def save_trials(tuner, folder: Path, recorder: trials.HistoryRecorder | None = None) -> None:
    """Rewrite the run's `trials.json` from the tuner's oracle."""
    if recorder is None:  # keep what an earlier writer measured (the chief's watcher has no recorder)
        recorder = trials.HistoryRecorder(folder / artifacts.TRIAL_HISTORY, files.read_json(folder / artifacts.TRIALS, []) or [])
    files.write_json(folder / artifacts.TRIALS, trial_rows(tuner, recorder))




def watch_chief(tuner, progress: Progress, folder: Path) -> threading.Event:
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
            save_trials(tuner, folder)

    threading.Thread(target=watch, daemon=True, name="chief-progress").start()
    return done_event
