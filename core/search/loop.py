"""The search loop: one whole run, from the data to the saved, evaluated best model.

`run_search(settings)` does a whole run: scan and split the data (by patient), decode the pixels,
in frozen mode fill the feature cache, search with Keras Tuner, keep the best model, choose the
decision threshold on validation, evaluate on test and save everything into the run folder.
The same name resumes a stopped or killed search where it stopped (Keras Tuner `overwrite=False`),
with the settings and the split it started with. The pieces it calls live beside it: the settings
in `core.search.settings`, progress and stop in `core.runs.progress`, the split in `core.search.splits`, the tuner and
its callbacks in `core.search.tuner`, several machines in `core.search.distributed`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core import files
from core.data import augmentation, folders, loading, splitting
from core.evidence import stress
from core.inference import evaluation
from core.models import backbones, builders
from core.runs import artifacts, trials
from core.runs.progress import Progress, StopFlag, now_utc, open_log, recorded_end
from core.search.hypermodel import SearchSpace
from core.search.settings import SearchSettings, cache_root
from core.search.splits import drop_undecodable, preflight, prepare_split
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
    """The search itself in an open run folder; a chief, a worker (`role`) or a whole run (None)."""
    import warnings

    import keras

    from core.models import backbone_cut  # they load TensorFlow: only a search needs them
    from core.search import activations, features

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
    backbone = backbones.build_backbone(spec) if spec is not None and (settings.mode == "frozen" or use_activations) else None
    if spec is not None and backbone is None:
        backbones.resolve_weights(spec)  # finetune: fail on missing weights now, not in every trial
    cut = backbone_cut.split_backbone(backbone, settings.cut_layer) if use_activations else None

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
        inputs, errors = loading.load_images(
            list(table["path"]), settings.image_size, cache_root(settings) / "pixels",
            progress=lambda done, total: progress.update(message=f"decoded {done}/{total}"),
        )
    if views is not None and errors:  # the views hold the training rows only: keep them aligned
        train_rows = (table["split"] == "train").to_numpy()
        bad = table["path"].isin({e.path for e in errors}).to_numpy()
        views = views[:, ~bad[train_rows]]
    table, inputs = drop_undecodable(table, inputs, errors, folder, log)
    splitting.require_splits(table, task)
    timings["features_s" if use_features else "activations_s" if use_activations else "decode_s"] = time.monotonic() - clock
    stop.check()

    labels = task.labels(table)
    part = {split: (table["split"] == split).to_numpy() for split in folders.SPLITS}
    weights = splitting.class_weights(labels[part["train"]], task.n_classes)
    targets = task.targets(labels)  # one-hot for a softmax head
    space = SearchSpace(
        settings.family, settings.mode, settings.image_size, spec,
        n_features=inputs.shape[1] if use_features else None, task=task, augment=settings.augment, cut=cut,
    )

    clock = time.monotonic()
    # A worker records its own trials beside its log; the others, the run's trial_history.csv.
    history_path = progress.path.with_name(f"{progress.path.stem}_{artifacts.TRIAL_HISTORY}") if role == "worker" else folder / artifacts.TRIAL_HISTORY
    recorder = trials.HistoryRecorder(history_path, files.read_json(folder / artifacts.TRIALS, []) or [])
    tuner = make_tuner(settings, space, folder, progress, stop, log, recorder)
    total = planned_trials(tuner, settings)
    progress.update(state="running", phase="searching", trials_total=total, epochs=settings.epochs, force=True)
    log(f"searching: {settings.tuner} search, {total} trials, {settings.epochs} epochs, class weights {weights}")
    if use_activations:
        train_ds = activations.training_dataset(views, inputs[part["train"]], targets[part["train"]], settings.batch_size, settings.seed)
        val_ds = loading.make_tf_dataset(np.asarray(inputs[part["val"]], np.float32), targets[part["val"]], settings.batch_size)
    else:
        train_ds = loading.make_tf_dataset(inputs[part["train"]], targets[part["train"]], settings.batch_size, shuffle=True, seed=settings.seed)
        val_ds = loading.make_tf_dataset(inputs[part["val"]], targets[part["val"]], settings.batch_size)
    callbacks = trial_callbacks(settings, progress, stop, log, recorder)
    watcher = watch_chief(tuner, progress, folder) if role == "chief" else None
    # Keras Tuner clears the Keras session before every trial, and that runs a full gc.collect()
    # over everything loaded so far (TensorFlow, the backbone, the data): a fair share of a short
    # frozen-mode trial (README, "Benchmarks"). Freezing those long-lived objects takes them out of it.
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
    save_trials(tuner, folder, recorder)
    timings["search_s"] = time.monotonic() - clock

    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        messages = [row["message"] for row in trial_rows(tuner) if row["message"]]
        raise RuntimeError(f"no trial finished; last error: {messages[-1] if messages else 'unknown'}")

    progress.update(phase="evaluating", message="evaluating the best model", force=True)
    clock = time.monotonic()
    best_hp = tuner.get_best_hyperparameters(1)[0]
    trained = tuner.get_best_models(1)[0]
    files.write_json(folder / artifacts.BEST_HYPERPARAMETERS, {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")})
    if use_features:
        model = builders.attach_head(backbone, trained)
    elif use_activations:
        model = backbone_cut.join(cut, trained)
    else:
        model = trained
    # Validation and test pixels, decoded once (pixel cache) for the evaluation on pixels and the
    # stress test, whichever needs them.
    rows = part["val"] | part["test"]
    sub = {split: mask[rows] for split, mask in part.items()}
    pixels = None
    if not (use_features and settings.tta == 1) or settings.stress_test:
        pixels, _ = loading.load_images(list(table.loc[rows, "path"]), settings.image_size, cache_root(settings) / "pixels")
    # The stress test's changed validation images: their probabilities choose the threshold with the
    # images as they are (core.evidence.stress.robust_threshold), and the stress table is read at it.
    val_stressed = None
    if settings.stress_test:
        progress.update(message="stress test on validation", force=True)
        stress_clock = time.monotonic()
        val_stressed = _stressed_scores(settings, model, np.asarray(pixels)[sub["val"]], folder)
        timings["stress_s"] = time.monotonic() - stress_clock
    if use_features and settings.tta == 1:
        # Evaluate what the search trained on: the same numbers as the saved model, much faster.
        result = evaluation.evaluate_model(
            trained, inputs, labels, table, part, settings.engine, settings.batch_size, task=task, val_stressed=val_stressed
        )
    else:
        # The saved model on pixels (activations are float16; views need pixels): exactly what
        # `predict` will give later.
        result = evaluation.evaluate_model(
            model, pixels, labels[rows], table[rows], sub, settings.engine, settings.batch_size,
            tta=settings.tta, cache_path=folder / "model.tflite", task=task, val_stressed=val_stressed,
        )
    timings["evaluate_s"] = time.monotonic() - clock - timings.get("stress_s", 0.0)
    worst = stress.worst(result.get("stress") or [])
    if worst:
        log(f"stress test on validation: worst is {worst['condition']} (specificity {worst['specificity']:.3f}, "
            f"sensitivity {worst['sensitivity']:.3f}); threshold {result['threshold']:.3f} chosen on validation with its "
            "stressed copies")
    files.save_model(folder / artifacts.MODEL, model)
    sample = loading.load_images(list(table.loc[part["test"], "path"][:32]), settings.image_size)[0]
    result["inference"] = evaluation.time_inference(model, sample, settings.engine, folder / "model.tflite")
    result.update(
        {
            "task": task.name,
            "parameters": builders.count_parameters(model),
            "best_hyperparameters": {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "trials_completed": len(completed),
            "feature_cache": use_features,
            "activation_cache": {"cut": cut.cut, "augment": settings.augment, "views": settings.augment_views} if cut else None,
            "augmentation": _augmentation_record(settings, best_hp),
            "finished_at": now_utc(),
        }
    )
    evaluation.write_result(folder, result)
    return result


def _stressed_scores(settings: SearchSettings, model, val_pixels: np.ndarray, folder: Path) -> dict[str, np.ndarray]:
    """The saved model's probabilities on validation images changed as sites differ (core.evidence.stress)."""

    def score(images: np.ndarray) -> np.ndarray:
        return evaluation.probabilities(model, images, settings.engine, settings.batch_size, folder / "model.tflite", settings.tta)[0]

    return stress.stressed_scores(score, val_pixels)


def _augmentation_record(settings: SearchSettings, best_hp) -> dict | None:
    """What the augmentation preset meant when this run trained (presets may be retuned later)."""
    name = best_hp.values.get("augment", settings.augment) if settings.augment == augmentation.SEARCH else settings.augment
    if settings.mode == "frozen" or name == "off":
        return None
    return {"preset": name, **asdict(augmentation.preset(name))}
