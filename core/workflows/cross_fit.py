"""The out-of-fold threshold: a run's operating point chosen on every image of train/, each scored by
models that never saw it, instead of on the one validation split its seed drew.

The pool is every image the run trained or validated on (its split's train and val rows). It is cut
into K folds by patient (`core.data.splitting.patient_folds`: a patient, the person number and the
kind, is in one fold only; the classes stratified). For each fold, each model of the run (a search
run's chosen trial; each member of an ensemble) is trained again with the same hyperparameters, for
as many epochs as its search kept, on the other K - 1 folds, and scores the held-out fold as it is
and under every change of the stress test. Pooled over the folds, these out-of-fold probabilities
(an ensemble's: its members' combined with its own weights) choose the threshold by the run's own
rule (`core.inference.evaluation.choose_threshold`): seven times the images of one validation
split, where every patient of train/ counts once whichever the seed drew into validation.

The result is a named operating point of the run (`operating_points/NAME.json`, as a site point of
`core.workflows.site` is, with `kind` = "out-of-fold"): the run's models, saved threshold and test
predictions stay as they were; Compare measures the point on test and Predict can decide with it.
Each fold's probabilities are written as soon as they are made (`out_of_fold/MEMBER/fold-K.csv`),
so a stopped cross-fit goes on at the next fold when started again. It trains K times per model:
for the recipe on 2 cores, about K times a repeat (docs/measurements.md, "An out-of-fold threshold").
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.data import splitting, tasks
from core.evidence import site_adaptation, statistics, stress
from core.inference import ensemble, evaluation
from core.runs import artifacts
from core.runs.artifacts import Run, RunError
from core.runs.progress import Progress, SearchStopped, StopFlag, open_log

FOLDS = 5
MAX_FOLDS = 10
RETRIES = 2  # a fold model that fell to chance is trained again with another seed, at most this many times
RETRY_SEED_STEP = 1000
POINT_NAME = "out-of-fold"
KIND = "out-of-fold"  # a saved operating point's `kind` (a site point has none)
OOF_DIR = "out_of_fold"
FOLDS_FILE = "folds.csv"
ID_COLUMNS = ["path", "patient", "fold", "y_true"]  # an out-of-fold table's columns that are not scores
PROGRESS_FILE = "progress.json"  # in OOF_DIR: state (queued, running, completed, stopped, failed), message, pid
STOP_FILE = "stop.request"  # in OOF_DIR: asks a running cross-fit to stop after its current batch
RULE = "Youden's J on out-of-fold predictions over {k} patient-grouped folds of the run's training and validation images{pooled}"
POOLED = (", pooled with their stress-test copies, among the thresholds that keep the unchanged images' sensitivity and "
          f"specificity each within {round(stress.CLEAN_MARGIN * 100)} points of their own Youden point")


# --------------------------------------------------------------------------
# What can be cross-fitted, and how each model trains
# --------------------------------------------------------------------------


def models_of(run: Run) -> list[Run]:
    """The search runs whose models make `run`'s probability: the run itself, or an ensemble's members."""
    return ensemble.member_runs(run) if run.is_ensemble else [run]


def model_problem(run: Run) -> str:
    """Why one model's search cannot be trained again fold by fold ("" when it can)."""
    if run.is_ensemble or run.is_repeat or run.is_imported:
        return f"{run.name} is not a search run: cross-fit a search, its kept runner-up, or an ensemble of them"
    if run.state != "completed" or not run.metrics:
        return f"{run.name} is not finished (state: {run.state})"
    if not run.read(artifacts.BEST_HYPERPARAMETERS):
        return f"{run.name} has no saved best hyperparameters (saved by an older version): start a new search"
    if chosen_epochs(run) is None:
        return f"{run.name} does not say at which epoch its search kept the model ({artifacts.TRIALS} has no best step)"
    return ""


def source_problem(run: Run) -> str:
    """Why `run` cannot be given an out-of-fold threshold ("" when it can)."""
    task = tasks.task_for(run.task)
    if not task.is_binary:
        return (f"{run.name} answers {task.title}: cross-fit its threshold on a two-class run "
                "(a three-class run's classes come from its probabilities, not one threshold)")
    if run.state != "completed" or not run.metrics:
        return f"{run.name} is not finished (state: {run.state}): cross-fit a completed run"
    if not (run.folder / artifacts.SPLITS).exists():
        return f"{run.name} has no saved split: the folds are cut from its training and validation images"
    try:
        members = models_of(run)
    except RunError as error:
        return str(error)
    return next((problem for member in members if (problem := model_problem(member))), "")


def chosen_epochs(run: Run) -> int | None:
    """How many epochs the run's model trained: its chosen trial's best epoch (a kept runner-up's, in its source's trials)."""
    kept = run.settings.get("kept_trial")
    if isinstance(kept, dict):
        rows = [t for t in _trained_by(run).trials() if t.get("trial_id") == kept.get("trial_id")]
    else:
        rows = sorted((t for t in run.trials() if t.get("status") == "COMPLETED" and t.get("score") is not None),
                      key=lambda t: t["score"], reverse=True)[:1]
    step = rows[0].get("best_step") if rows else None
    return int(step) + 1 if isinstance(step, (int, float)) else None


def pool_with_folds(run: Run, n_folds: int) -> pd.DataFrame:
    """The run's training and validation images (path, patient, kind, class_name, ...) with their `fold`,
    drawn with the run's seed."""
    table = files.read_csv(run.folder / artifacts.SPLITS)
    pool = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    task = tasks.task_for(run.task)
    pool["fold"] = splitting.patient_folds(pool, n_folds, run_seed(run), column=task.column)
    return pool


# --------------------------------------------------------------------------
# One model, fold by fold
# --------------------------------------------------------------------------


def run_seed(run: Run) -> int:
    return int(run.settings.get("seed") or 42)


def fold_path(folder: Path, member: str, fold: int) -> Path:
    return folder / member / f"fold-{fold}.csv"


def _train_folds(member: Run, pool: pd.DataFrame, n_folds: int, folder: Path, progress: Progress, stop: StopFlag, log) -> None:
    """Train `member`'s configuration on each fold's other folds and save its held-out probabilities
    (as is and under each stress change); folds already saved are kept."""
    todo = [k for k in range(n_folds) if not fold_path(folder, member.name, k).exists()]
    progress.update(folds_done=progress.state.get("folds_done", 0) + n_folds - len(todo), force=True)
    if not todo:
        log(f"{member.name}: every fold is saved")
        return
    import keras
    import keras_tuner

    from core.search import inputs
    from core.search.hypermodel import SearchSpace
    from core.search.settings import SearchSettings

    settings = SearchSettings.from_dict({**member.settings, "artifacts_dir": str(member.folder.parent)})
    task = settings.task_info
    epochs = chosen_epochs(member)
    hp = keras_tuner.HyperParameters()
    for name, value in member.read(artifacts.BEST_HYPERPARAMETERS).items():
        hp.Fixed(name, value)
    # Every pool image is a training row once: the kind caches augmented views of all of them, and each fold trains on its part.
    kind = inputs.for_settings(settings)
    table, model_inputs = kind.prepare(pool.assign(split="train"), folder / member.name, progress, stop, log, {})
    labels = task.labels(table)
    targets = task.targets(labels)
    space = SearchSpace(settings.family, settings.mode, settings.image_size, settings.backbone(), n_features=kind.n_features,
                        task=task, augment=settings.augment, cut=kind.cut, weights=settings.weights)
    for k in todo:
        stop.check()
        held = (table["fold"] == k).to_numpy()
        part = {"train": ~held, "val": held, "test": np.zeros(len(table), bool)}
        progress.update(message=f"{member.name}: fold {k + 1} of {n_folds}, {epochs} epochs on {int((~held).sum())} images",
                        force=True)
        log(f"{member.name}: fold {k + 1} of {n_folds}: training {epochs} epochs on {int((~held).sum())} images, "
            f"scoring {int(held.sum())}")
        data = inputs.EvaluationData(settings, table, labels, part)
        y_held = task.binary_labels(labels[held])
        for attempt in range(1 + RETRIES):
            # A learning rate near the edge can fall to chance with one seed and not another (docs/measurements.md,
            # "Three classes"): a fold model that did so is trained again with another seed, not averaged in.
            keras.utils.set_random_seed(settings.seed + k + RETRY_SEED_STEP * attempt)
            train, _ = kind.datasets(model_inputs, targets, part)
            model = space.build(hp)
            model.fit(train, epochs=epochs, class_weight=splitting.class_weights(labels[~held], task.n_classes), verbose=0,
                      shuffle=False, callbacks=[_stop_callback(stop)])  # the dataset shuffles itself
            saved = kind.saved_model(model)
            as_is = evaluation.probabilities(saved, np.asarray(data.pixels), settings.engine, settings.batch_size, None,
                                             settings.tta)[0]
            fold_auc = statistics.binary_metrics(y_held, as_is)["auc"]
            # as `ensemble.collapsed_members` judges runs: at chance where the run's own model worked
            if not ensemble.fell_to_chance(fold_auc, (member.metrics or {}).get("val", {}).get("auc")):
                break
            if attempt == RETRIES:
                raise RunError(f"{member.name}'s model fell to chance on fold {k + 1} with {RETRIES + 1} seeds (held-out AUC "
                               f"{fold_auc:.3f}, against {member.metrics['val']['auc']:.3f} on its validation split): its "
                               "hyperparameters do not train reliably, so no out-of-fold threshold is made from it")
            log(f"{member.name}: fold {k + 1}'s model fell to chance (held-out AUC {fold_auc:.3f}): training it again "
                "with another seed")
        fold_dir = folder / member.name / f"fold-{k}"
        stressed = kind.stressed_scores(model, saved, data, fold_dir, stop, log) if settings.stress_test else {}
        rows = table.loc[held, ["path", "patient", "fold"]].assign(y_true=y_held,
                                                                   probability=evaluation.saved_precision(as_is))
        for name, scores in stressed.items():
            rows[name] = evaluation.saved_precision(scores)
        files.write_csv(fold_path(folder, member.name, k), rows)  # atomic: a fold is saved whole or not at all
        progress.update(folds_done=progress.state.get("folds_done", 0) + 1, force=True)
        log(f"{member.name}: fold {k + 1} saved (AUC {fold_auc:.4f} on its held-out images)")
        keras.backend.clear_session()


def _stop_callback(stop: StopFlag):
    """Ends a fold's training at the next batch once a stop is asked for (`StopFlag`)."""
    import keras

    return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stop.check())


# --------------------------------------------------------------------------
# The threshold
# --------------------------------------------------------------------------


def out_of_fold_scores(run: Run, folder: Path, members: list[Run], n_folds: int) -> pd.DataFrame:
    """One row per pool image: path, patient, fold, y_true, probability and one column per stress
    change, combined over the members with the ensemble's weights (the run's own, for one model)."""
    tables = []
    for member in members:
        parts = [files.read_csv(fold_path(folder, member.name, k)) for k in range(n_folds)]
        tables.append(pd.concat(parts).sort_values("path").reset_index(drop=True))
    first = tables[0]
    if any(not t["path"].equals(first["path"]) for t in tables[1:]):
        raise RunError(f"the members' out-of-fold files in {folder} cover different images: delete {folder} and cross-fit again")
    weights = ensemble.weights_of(run) if run.is_ensemble else np.ones(1)
    score_columns = [c for c in first.columns if c not in ID_COLUMNS]
    out = first[ID_COLUMNS].copy()
    for column in score_columns:
        out[column] = evaluation.saved_precision(ensemble.combine(np.column_stack([t[column] for t in tables]), weights))
    return out


def _stress_columns(scores: pd.DataFrame) -> list[str]:
    """The columns of an out-of-fold table that hold a stress change's scores."""
    return [c for c in scores.columns if c not in (*ID_COLUMNS, "probability")]


def choose(scores: pd.DataFrame) -> float:
    """The run's own rule (`evaluation.choose_threshold`) on out-of-fold scores: pooled with the stress
    changes when there are any."""
    y = scores["y_true"].to_numpy(np.int64)
    stressed = {c: scores[c].to_numpy() for c in _stress_columns(scores)}
    return evaluation.choose_threshold(y, scores["probability"].to_numpy(), stressed=stressed or None)


def point_record(run: Run, scores: pd.DataFrame, n_folds: int, seed: int, name: str, epochs: dict[str, int]) -> dict[str, Any]:
    """The saved operating point, in a site point's terms (`core.evidence.site_adaptation`): its
    threshold, and what it and the run's validation-chosen threshold give on the out-of-fold images
    as they are, with intervals by patient; besides, each fold's own threshold (their spread is how
    far one split of a fifth of the images would have moved it)."""
    threshold = choose(scores)
    y, s = scores["y_true"].to_numpy(np.int64), scores["probability"].to_numpy()
    groups = scores["patient"].astype(str).to_numpy()
    stressed = _stress_columns(scores)

    def intervals(at: float) -> dict:
        return {k: v.to_dict() for k, v in site_adaptation.proportion_intervals(y, s, at, groups).items()}

    return files.json_safe({
        "name": name, "kind": KIND, "run": run.name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "site": f"out-of-fold: {n_folds} patient-grouped folds of {run.name}'s training and validation images",
        "rule": KIND, "rule_text": RULE.format(pooled=POOLED if stressed else "", k=n_folds), "threshold": threshold,
        "calibration": None, "folds": n_folds, "seed": seed, "n_images": len(scores), "n_patients": int(np.unique(groups).size),
        "n_positive": int(y.sum()), "epochs": epochs, "stress_conditions": len(stressed),
        "fold_thresholds": [choose(scores[scores["fold"] == k]) for k in range(n_folds)],
        "metrics": evaluation.summarize_predictions(y, s, threshold), "intervals": intervals(threshold),
        "run_threshold": run.threshold, "at_run_threshold": intervals(run.threshold), "confidence": site_adaptation.CONFIDENCE,
    })


# --------------------------------------------------------------------------
# The whole cross-fit
# --------------------------------------------------------------------------


def check_folds(n_folds) -> int:
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= MAX_FOLDS:
        raise RunError(f"folds must be a whole number from 2 to {MAX_FOLDS}, got {n_folds!r}: pass e.g. --folds {FOLDS}")
    return int(n_folds)


def cross_fit(
    artifacts_dir: str | os.PathLike, name: str, n_folds: int = FOLDS, point_name: str = POINT_NAME, replace: bool = False,
    log=print,
) -> dict[str, Any]:
    """Cross-fit run `name`'s threshold over `n_folds` patient-grouped folds; save and return the operating point.

    Folds already saved by an earlier, stopped cross-fit with the same folds are kept. `RunError` says
    what is wrong (a run that cannot be cross-fitted, a taken point name, other folds saved before);
    a stop request (Ctrl-C, SIGTERM, `python -m core stop NAME`) raises `SearchStopped` after the fold
    in progress is dropped.
    """
    from core.workflows import site

    n_folds = check_folds(n_folds)
    run = artifacts.load_run(artifacts_dir, name)
    if problem := source_problem(run):
        raise RunError(f"cannot cross-fit: {problem}")
    path = site.point_path(run, point_name)  # RunError for a bad name
    if path.exists() and not replace:
        raise RunError(f"run {run.name!r} already has an operating point named {point_name!r}: pick another --point-name, or --replace")
    pool = pool_with_folds(run, n_folds)
    if problem := _saved_folds_problem(run, pool):
        raise RunError(problem)
    folder = run.folder / OOF_DIR
    folder.mkdir(exist_ok=True)
    _same_folds_as_before(folder, pool)
    members = models_of(run)
    start = time.monotonic()
    with files.file_lock(folder / ".lock"):
        run_log = open_log(folder, log)
        progress = Progress(folder, None, PROGRESS_FILE)
        progress.update(state="running", message="reading the images", force=True)
        stop = StopFlag(folder, STOP_FILE)
        stop.file.unlink(missing_ok=True)
        stop.install_signal_handlers()
        progress.update(folds_done=0, folds_total=n_folds * len(members), force=True)
        run_log(f"cross-fit of {run.name}: {n_folds} patient-grouped folds of {len(pool)} images "
                f"({pool['patient'].nunique()} patients), models {', '.join(m.name for m in members)}")
        try:
            for member in members:
                _train_folds(member, pool, n_folds, folder, progress, stop, run_log)
        except SearchStopped:
            progress.update(state="stopped", message="stopped: the folds saved are kept", force=True)
            run_log("stopped: the folds saved are kept; run the same command to go on")
            raise
        except Exception as error:
            progress.update(state="failed", message="failed: the folds saved are kept", error=f"{type(error).__name__}: {error}",
                            force=True)
            raise
        scores = out_of_fold_scores(run, folder, members, n_folds)
        files.write_csv(folder / "out_of_fold_predictions.csv", scores)
        record = point_record(run, scores, n_folds, run_seed(run), point_name, {m.name: chosen_epochs(m) for m in members})
        record["elapsed_s"] = round(time.monotonic() - start, 1)
        files.write_json(path, record)
        progress.update(state="completed", message=f"saved operating point {point_name}", folds_done=n_folds * len(members),
                        force=True)
        run_log(f"out-of-fold threshold {record['threshold']:.3f} (the run's own: {run.threshold:.3f}; the folds' own: "
                f"{min(record['fold_thresholds']):.3f}-{max(record['fold_thresholds']):.3f}), saved as operating point {point_name}")
    return record


def progress_of(run: Run) -> dict | None:
    """The cross-fit's progress file (`PROGRESS_FILE`), or None when none was started."""
    return files.read_json(run.folder / OOF_DIR / PROGRESS_FILE)


def stop(run: Run) -> None:
    """Ask a running cross-fit of `run` to stop; the folds it saved are kept."""
    files.write_bytes(run.folder / OOF_DIR / STOP_FILE, b"stop\n")


def estimated_s(run: Run, n_folds: int = FOLDS) -> float | None:
    """About how long a cross-fit of `run` takes on this machine: each model's epochs, K times, at the
    pace its own search trained (seconds per epoch per training image, `metrics.json`'s timings),
    on (K - 1)/K of the pool, plus the stress test's pass per fold. None without timings."""
    total = 0.0
    for member in models_of(run):
        source = _trained_by(member)
        timings, trials = (source.metrics or {}).get("timings") or {}, (source.metrics or {}).get("trials_completed")
        epochs, search_s = source.settings.get("epochs"), timings.get("search_s")
        images = (source.read(artifacts.DATA_SUMMARY) or {}).get("images") or {}
        n_train, n_val = (sum((images.get(split) or {}).values()) for split in ("train", "val"))
        kept_epochs = chosen_epochs(member)
        if not (search_s and trials and epochs and n_train and kept_epochs):
            return None
        pool = n_train + n_val
        per_image_epoch = search_s / (trials * epochs * n_train)
        total += n_folds * kept_epochs * per_image_epoch * pool * (n_folds - 1) / n_folds
        total += (timings.get("stress_s") or 0.0) * pool / max(1, n_val)
    return total


def _trained_by(member: Run) -> Run:
    """The run whose search trained `member`'s model: itself, or a kept runner-up's source."""
    kept = member.settings.get("kept_trial")
    return artifacts.load_run(member.folder.parent, kept["source"]) if isinstance(kept, dict) else member


def folds_problem(run: Run, n_folds: int) -> str:
    """Why a cross-fit of `run` with `n_folds` would not match the folds saved before ("" when it would,
    or none are saved): fold files of other folds are never mixed."""
    if not (run.folder / OOF_DIR / FOLDS_FILE).exists():
        return ""
    return _saved_folds_problem(run, pool_with_folds(run, n_folds))


def _saved_folds_problem(run: Run, current: pd.DataFrame) -> str:
    """`folds_problem` for folds already drawn (`pool_with_folds`)."""
    saved = run.folder / OOF_DIR / FOLDS_FILE
    if not saved.exists():
        return ""
    before = files.read_csv(saved)
    if len(before) == len(current) and before["path"].equals(current["path"]) and before["fold"].equals(current["fold"]):
        return ""
    return (f"{saved.parent} holds folds made with other settings (another number of folds): delete that folder, or "
            f"cross-fit with {before['fold'].nunique()} folds")


def _same_folds_as_before(folder: Path, pool: pd.DataFrame) -> None:
    """Write the folds on the first start (dropping fold files whose folds file was lost: they cannot be trusted)."""
    if (folder / FOLDS_FILE).exists():
        return
    for old in folder.glob("*/fold-*.csv"):
        old.unlink()
    files.write_csv(folder / FOLDS_FILE, pool[["path", "patient", "fold"]])
