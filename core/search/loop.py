"""The search loop: one whole run, from the data to the saved, evaluated best model.

`run_search(settings)` does a whole run: scan and split the data (by patient), prepare what the
trials train on (pixels, or cached backbone features or activations), search with Keras Tuner,
keep the best model, choose the decision threshold on validation, evaluate on test and save
everything into the run folder. The same name resumes a stopped or killed search where it stopped
(Keras Tuner `overwrite=False`), with the settings and the split it started with. The pieces it
calls live beside it: the settings in `core.search.settings`, progress and stop in
`core.runs.progress`, the split in `core.search.splits`, the input kinds in `core.search.inputs`,
the tuner and its callbacks in `core.search.tuner`, several machines in `core.search.distributed`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from core import files
from core.data import augmentation, folders, loading, splitting
from core.evidence import stress
from core.inference import evaluation
from core.models import builders
from core.runs import artifacts, trials
from core.runs.progress import Progress, StopFlag, now_utc, open_log, recorded_end
from core.search import inputs
from core.search.hypermodel import SearchSpace
from core.search.settings import SearchSettings
from core.search.splits import preflight, prepare_split
from core.search.tuner import make_tuner, planned_trials, save_trials, trial_callbacks, trial_rows, watch_chief


def run_search(settings: SearchSettings, log=print, resume: bool = False, role: str | None = None) -> dict:
    """Run (or resume) a search and save the run; returns the test metrics.

    Raises SettingsError, folders.DataError, backbones.WeightsError or artifacts.RunError with a message
    for the user; a stop request ends it with state "stopped" and returns {"state": "stopped"}.
    """
    settings = settings.resolved()
    folder = artifacts.run_dir(settings.artifacts_dir, settings.name)
    existing = files.read_json(folder / artifacts.SETTINGS)
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
        run_log = open_log(folder, log)
        previous = files.read_json(folder / artifacts.PROGRESS) if resume else None
        progress = Progress(folder, previous)
        stop = StopFlag(folder)
        stop.file.unlink(missing_ok=True)
        stop.install_signal_handlers()
        if not existing:
            files.write_json(folder / artifacts.SETTINGS, settings.to_dict())
        kept = f"completed trials are kept; resume with `python -m core resume {settings.name}`"
        with recorded_end(progress, run_log, kept, stop):
            result = search(settings, folder, progress, stop, run_log, dataset, role)
            progress.update(state="completed", phase="done", message="completed", force=True)
            run_log(f"done: test AUC {result['test']['auc']:.4f}, accuracy {result['test']['accuracy']:.4f}"
                    + evaluation.multiclass_summary(result))
            return result
        return {"state": "stopped"}  # reached only when a stop request ended the block


def search(settings: SearchSettings, folder: Path, progress: Progress, stop: StopFlag, log, dataset=None, role=None) -> dict:
    """The search itself in an open run folder; a chief, a worker (`role`) or a whole run (None).

    One sequence for every input kind (`core.search.inputs`): split, inputs, trials, best model.
    """
    _ignore_harmless_warnings()
    timings: dict[str, float] = {}
    clock = time.monotonic()
    keras.utils.set_random_seed(settings.seed)
    task = settings.task_info
    progress.update(phase="reading data", message="scanning and splitting the data", force=True)
    table, _ = prepare_split(settings, folder, log, dataset)
    timings["scan_s"] = time.monotonic() - clock

    _note_random_frozen_backbone(settings, log)
    kind = inputs.for_settings(settings)
    table, model_inputs = kind.prepare(table, folder, progress, stop, log, timings)
    splitting.require_splits(table, task)
    stop.check()
    # Seeded again: preparing the inputs draws random numbers only when a cache is cold (augmented views,
    # a backbone's weights), so without this the same search trained differently with a warm cache
    # (docs/measurements.md, "Both answers averaged").
    keras.utils.set_random_seed(settings.seed)

    labels = task.labels(table)
    part = {split: (table["split"] == split).to_numpy() for split in folders.SPLITS}
    weights = splitting.class_weights(labels[part["train"]], task.n_classes)
    targets = task.targets(labels)  # one-hot for a softmax head
    space = SearchSpace(settings.family, settings.mode, settings.image_size, settings.backbone(),
                        n_features=kind.n_features, task=task, augment=settings.augment, cut=kind.cut, weights=settings.weights)

    clock = time.monotonic()
    if settings.kept_trial:  # another search's finished trial, kept as this run: nothing trains
        tuner, chosen, completed = _kept_trial(settings, space, progress, stop, log)
    else:
        trained_trials = _search_trials(settings, space, lambda: kind.datasets(model_inputs, targets, part), weights, folder,
                                        progress, stop, log, role)
        if trained_trials is None:
            return _worker_done(progress, log)
        tuner, chosen, completed = trained_trials
    timings["search_s"] = time.monotonic() - clock

    progress.update(phase="evaluating", message="evaluating the best model", force=True)
    clock = time.monotonic()
    best_hp = chosen.hyperparameters
    trained = tuner.load_model(chosen)  # the trial's best epoch, as Keras Tuner's get_best_models loads it
    files.write_json(folder / artifacts.BEST_HYPERPARAMETERS, _chosen(best_hp))
    model = kind.saved_model(trained)
    data = inputs.EvaluationData(settings, table, labels, part)
    val_stressed = _stress_test(settings, kind, trained, model, data, folder, progress, stop, log, timings)
    result = kind.evaluate(trained, model, model_inputs, data, folder, val_stressed)
    timings["evaluate_s"] = time.monotonic() - clock - timings.get("stress_s", 0.0)
    _log_worst_stress(result, log)
    files.save_model(folder / artifacts.MODEL, model)
    result["inference"] = _time_inference(settings, model, table[part["test"]], folder)
    result.update(_run_record(settings, model, best_hp, timings, completed, kind))
    evaluation.write_result(folder, result)
    return result


def _ignore_harmless_warnings() -> None:
    import warnings

    # Keras Tuner passes shuffle=True to fit and reloads checkpoints without optimizer state: both harmless.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")


def _note_random_frozen_backbone(settings: SearchSettings, log) -> None:
    spec = settings.backbone()
    if spec is not None and spec.weights == "none" and settings.mode == "frozen":
        log("note: a frozen backbone with random weights gives random features; expect results near chance "
            "(a baseline for what ImageNet features add). Use --mode finetune to train a backbone from scratch")


def _history_path(folder: Path, progress: Progress, role: str | None) -> Path:
    """A worker records its own trials beside its log; the others, the run's trial_history.csv."""
    if role == "worker":
        return progress.path.with_name(f"{progress.path.stem}_{artifacts.TRIAL_HISTORY}")
    return folder / artifacts.TRIAL_HISTORY


def _search_trials(settings: SearchSettings, space: SearchSpace, make_datasets, class_weight: dict, folder: Path,
                   progress: Progress, stop: StopFlag, log, role: str | None):
    """Keras Tuner's trials on the (training, validation) datasets `make_datasets()` gives: (the
    tuner, its best trial, how many trials finished), or None for a distributed worker, whose chief
    evaluates. The datasets are made after the tuner, as they always were: the order of the seeded
    random draws decides what every trial starts from."""
    recorder = trials.HistoryRecorder(_history_path(folder, progress, role), files.read_json(folder / artifacts.TRIALS, []) or [])
    tuner = make_tuner(settings, space, folder, progress, stop, log, recorder)
    total = planned_trials(tuner, settings)
    progress.update(state="running", phase="searching", trials_total=total, epochs=settings.epochs, force=True)
    log(f"searching: {settings.tuner} search, {total} trials, {settings.epochs} epochs, class weights {class_weight}")
    datasets = make_datasets()
    callbacks = trial_callbacks(settings, progress, stop, log, recorder)
    watcher = watch_chief(tuner, progress, folder) if role == "chief" else None
    _run_trials(tuner, *datasets, settings.epochs, class_weight, callbacks, watcher)
    if role == "worker":
        return None
    stop.check()
    save_trials(tuner, folder, recorder)
    completed = len(_completed_trials(tuner))
    return tuner, tuner.oracle.get_best_trials(1)[0], completed


def _run_trials(tuner, train_ds, val_ds, epochs: int, class_weight: dict, callbacks: list, watcher) -> None:
    """Keras Tuner's search, with the collector's long-lived objects frozen and the chief's watcher ended after."""
    # Keras Tuner clears the Keras session before every trial, and that runs a full gc.collect()
    # over everything loaded so far (TensorFlow, the backbone, the data): a fair share of a short
    # frozen-mode trial (docs/measurements.md, "Benchmarks"). Freezing those long-lived objects takes them out of it.
    gc.freeze()
    try:
        tuner.search(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight, callbacks=callbacks, verbose=0)
    finally:
        gc.unfreeze()  # in-process callers (tests, the distributed test) get a normal collector back
        if watcher:
            watcher.set()


def _worker_done(progress: Progress, log) -> dict:
    """A worker ends after its trials: the chief saves and evaluates the run."""
    log(f"worker finished: ran trials {progress.state.get('trials_run', [])}")
    return {"state": "worker-done", "trials_run": progress.state.get("trials_run", [])}


def _kept_trial(settings: SearchSettings, space: SearchSpace, progress: Progress, stop: StopFlag, log):
    """(the source search's tuner, read only; the finished trial `settings.kept_trial` names; 0 trials
    trained): a runner-up run's model is that trial's saved best epoch (`core.workflows.runner_up`)."""
    kept = settings.kept_trial
    source = artifacts.load_run(settings.artifacts_dir, kept["source"])
    source_settings = SearchSettings.from_dict({**source.settings, "artifacts_dir": settings.artifacts_dir})
    tuner = make_tuner(source_settings, space, source.folder, progress, stop, log, None)
    trial = tuner.oracle.trials.get(kept["trial_id"])
    if trial is None or not _finished(trial):
        raise artifacts.RunError(f"{kept['source']} has no finished trial {kept['trial_id']} to keep: its search folder "
                                 f"({artifacts.TUNER_DIR}/) changed or is gone; keep another trial under another name")
    progress.update(state="running", phase="evaluating", trials_total=0, force=True)
    log(f"keeping trial {trial.trial_id} of {kept['source']} (its number {kept['rank']}, validation AUC {trial.score:.4f}): "
        "nothing trains")
    return tuner, trial, 0  # no trial trained here


def _finished(trial) -> bool:
    """Whether a Keras Tuner trial finished with a score."""
    return trial.status == "COMPLETED" and trial.score is not None


def _completed_trials(tuner) -> list:
    """The trials that finished with a score; none is an error naming the last trial's."""
    completed = [t for t in tuner.oracle.trials.values() if _finished(t)]
    if not completed:
        messages = [row["message"] for row in trial_rows(tuner) if row["message"]]
        raise RuntimeError(f"no trial finished; last error: {messages[-1] if messages else 'unknown'}")
    return completed


def _chosen(best_hp) -> dict:
    """The best trial's hyperparameters, without Keras Tuner's own bookkeeping (`tuner/...`)."""
    return {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")}


def _stress_test(settings: SearchSettings, kind: inputs.SearchInputs, trained, model, data: inputs.EvaluationData, folder: Path,
                 progress: Progress, stop: StopFlag, log, timings: dict[str, float]) -> dict[str, np.ndarray] | None:
    """The stress test's changed validation images, scored by the saved model (None when it is off).

    Their probabilities choose the threshold with the images as they are
    (core.evidence.stress.robust_threshold), and the stress table is read at it.
    """
    if not settings.stress_test:
        return None
    progress.update(message="stress test on validation", force=True)
    clock = time.monotonic()
    val_stressed = kind.stressed_scores(trained, model, data, folder, stop, log)
    timings["stress_s"] = time.monotonic() - clock
    return val_stressed


def _log_worst_stress(result: dict, log) -> None:
    worst = stress.worst(result.get("stress") or [])
    if worst:
        log(f"stress test on validation: worst is {worst['condition']} (specificity {worst['specificity']:.3f}, "
            f"sensitivity {worst['sensitivity']:.3f}); threshold {result['threshold']:.3f} chosen on validation with its "
            "stressed copies")


def _time_inference(settings: SearchSettings, model, test_table, folder: Path) -> dict:
    """The saved model's speed on up to 32 test images."""
    sample = loading.load_images(list(test_table["path"][:32]), settings.image_size)[0]
    return evaluation.time_inference(model, sample, settings.engine, folder / artifacts.TFLITE_MODEL)


def _run_record(settings: SearchSettings, model, best_hp, timings: dict[str, float], completed: int, kind: inputs.SearchInputs) -> dict:
    """What metrics.json records about the run beside the evaluation."""
    return {
        "task": settings.task_info.name,
        "parameters": builders.count_parameters(model),
        "best_hyperparameters": _chosen(best_hp),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "trials_completed": completed,
        **kind.record(),
        "augmentation": _augmentation_record(settings, best_hp),
        "finished_at": now_utc(),
    }


def _augmentation_record(settings: SearchSettings, best_hp) -> dict | None:
    """What the augmentation preset meant when this run trained (presets may be retuned later)."""
    name = best_hp.values.get("augment", settings.augment) if settings.augment == augmentation.SEARCH else settings.augment
    if settings.mode == "frozen" or name == "off":
        return None
    return {"preset": name, **asdict(augmentation.preset(name))}
