"""Ensembles: finished runs combined into a new run that averages their probabilities.

Owns what makes an ensemble: which runs may be combined (finished, not ensembles themselves,
tested and validated on exactly the same images), how the weights are chosen (equal, or the
point of a coarse grid on the simplex with the best validation AUC), and how an ensemble scores
new images and explains them (each member at its own input size, averaged with the weights).
Members of one multi-class task (three-class runs) make an ensemble of that task, whose class
probabilities are the members' averaged. Runs of the paper's two questions, pneumonia vs normal and
bacterial vs viral, split the same way, are *composed* into a three-class run (`COMPOSE_RULE`: the
first question, then the second, as Kermany et al. asked them). Three-class runs may join a composed
run: its classes are then the mean of the two answers, composed and three-class (`BOTH_ANSWERS_RULE`,
the three-class recipe's result). Any other mix answers the members' binary question.

An ensemble is saved as an ordinary run folder, so every page, the report and `predict` read it
like any other run: `predictions.csv`, `val_predictions.csv` and `metrics.json` are made by
`core.inference.evaluation.evaluate_scores` (threshold chosen on validation, as for every run);
`splits.csv` and `data_summary.json` come from the members; `settings.json` has family
"ensemble", the member names and their weights. The members stay where they are (the same
artifacts folder) and their models are loaded from there: deleting a member breaks prediction
with the ensemble (its saved results stay readable).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core import files
from core.data import tasks
from core.evidence import multiclass, stress
from core.inference import evaluation, explanation, methods
from core.models.builders import positive_probability
from core.runs import artifacts
from core.runs.artifacts import Run, RunError

EQUAL_RULE = "equal weights (the plain mean of the members' probabilities)"
WEIGHTED_RULE = (
    "the weights on a grid of step 1/{steps} on the simplex (non-negative, summing to 1) with the highest "
    "validation AUC; ties go to the weights closest to equal"
)
MAX_GRID_POINTS = 2000  # the grid gets coarser with more members so it stays under this
_ROW_COLUMNS = ["path", "patient", "kind", "class_name", "y_true"]
# A member whose training collapsed: validation AUC at chance while another member's shows the task is
# learnt (docs/measurements.md, "Three classes": a three-class repeat at learning rate 9·10⁻⁴ ended
# at 0.50). Averaged in, it only dilutes the others.
CHANCE_AUC = 0.55
WORKING_AUC = 0.75
# A composed run's members answer these two questions; its three classes follow from them by the chain rule.
COMPOSED_QUESTIONS = (tasks.PNEUMONIA.name, tasks.BACTERIAL_VS_VIRAL.name)
COMPOSE_RULE = (
    "composed: P(normal) = 1 − p, P(bacterial) = p·(1 − q), P(viral) = p·q, where p is the pneumonia members' "
    "probability and q the bacterial-vs-viral members' P(viral), each question's members averaged with their weights"
)
# Three-class members of a composed run answer the same three-way question another way. The two answers
# are averaged half and half: chosen on validation at three seeds over either answer alone
# (docs/measurements.md, "Both answers averaged").
BOTH_ANSWERS_RULE = (
    "both answers: the composed class probabilities and the three-class members' own (averaged with their weights), "
    "half and half"
)


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def grid_steps(n_members: int, max_points: int = MAX_GRID_POINTS) -> int:
    """The finest step 1/k (k <= 10) whose simplex grid for `n_members` has at most `max_points` points."""
    steps = 10
    while steps > 1 and math.comb(steps + n_members - 1, n_members - 1) > max_points:
        steps -= 1
    return steps


def simplex_grid(n_members: int, steps: int) -> np.ndarray:
    """Every weight vector whose entries are multiples of 1/steps and sum to 1: (points, n_members)."""
    if n_members < 1 or steps < 1:
        raise ValueError("a weight grid needs at least one member and one step")
    rows = [c for c in itertools.product(range(steps + 1), repeat=n_members - 1) if sum(c) <= steps]
    grid = np.array([[*c, steps - sum(c)] for c in rows], dtype=np.float64)
    return grid / steps


def _auc_columns(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The ROC AUC of each column of `scores` (ties count one half), by the rank-sum formula."""
    from scipy.stats import rankdata

    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("choosing weights needs both classes in the validation split")
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def choose_weights(y_val: np.ndarray, member_scores: np.ndarray, steps: int | None = None) -> tuple[np.ndarray, float]:
    """(weights, their validation AUC): the grid point with the highest validation AUC.

    `member_scores` is (images, members), the members' validation probabilities. Ties (within
    1e-12) go to the weights closest to equal, then to the first in grid order, so the choice is
    reproducible. Only validation labels are seen here: test never guides the weights.
    """
    y = np.asarray(y_val, dtype=np.int64)
    scores = np.asarray(member_scores, dtype=np.float64)
    n = scores.shape[1]
    grid = simplex_grid(n, steps or grid_steps(n))
    aucs = _auc_columns(y, scores @ grid.T)
    best = aucs.max()
    tied = np.flatnonzero(aucs >= best - 1e-12)
    distance = np.linalg.norm(grid[tied] - 1.0 / n, axis=1)
    pick = tied[np.argmin(distance)]
    return grid[pick], float(aucs[pick])


def combine(member_scores: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The ensemble's probability: the weighted mean of the members' (the last axis of `member_scores`:
    columns of scores, or the members of stacked class probabilities)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.asarray(member_scores, dtype=np.float64) @ (w / w.sum())


# --------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------


def _problem(run: Run) -> str:
    """Why `run` cannot be a member ("" when it can)."""
    if run.is_ensemble:
        return f"{run.name} is itself an ensemble (of {', '.join(run.members)}): pick its members instead"
    if run.state != "completed" or not run.metrics:
        return f"{run.name} is not finished (state: {run.state})"
    if not (run.folder / artifacts.PREDICTIONS).exists():
        return f"{run.name} has no test predictions"
    if not (run.folder / artifacts.VAL_PREDICTIONS).exists():
        return f"{run.name} has no validation predictions (saved by an older version): weights and threshold need them"
    if not run.has_model:
        return f"{run.name} has no saved model"
    return ""


def collapsed_members(runs: Sequence[Run]) -> dict[str, str]:
    """{name: why} for each run whose validation AUC is at most `CHANCE_AUC` while another run's is at
    least `WORKING_AUC`: a training that learnt nothing (a diverged learning rate), next to one that
    did. Empty when no run works (a tiny or hard data set: nothing to compare with)."""
    aucs = {run.name: float(((run.metrics or {}).get("val") or {}).get("auc", np.nan)) for run in runs}
    working = {name: auc for name, auc in aucs.items() if np.isfinite(auc) and auc >= WORKING_AUC}
    if not working:
        return {}
    best = max(working, key=working.get)
    return {
        name: (f"{name}'s validation AUC is {auc:.2f}, at chance, where {best}'s is {working[best]:.2f}: its training did "
               "not learn (a learning rate too high for its seed is the usual cause); retrain it with a lower one")
        for name, auc in aucs.items() if fell_to_chance(auc, working[best])
    }


def fell_to_chance(auc: float, reference_auc: float | None) -> bool:
    """Whether a model at `auc` learnt nothing (at most `CHANCE_AUC`) where a model at `reference_auc`
    shows the task is learnt (at least `WORKING_AUC`)."""
    return (reference_auc is not None and np.isfinite(auc) and np.isfinite(reference_auc)
            and reference_auc >= WORKING_AUC and auc <= CHANCE_AUC)


def same_images(first: Run, other: Run, a: pd.DataFrame, b: pd.DataFrame, split: str) -> str:
    paths_a, paths_b = set(a["path"]), set(b["path"])
    if paths_a == paths_b:
        return ""
    return (
        f"{first.name} and {other.name} were {split} on different images ({len(paths_a)} and {len(paths_b)} images, "
        f"{len(paths_a & paths_b)} in common): an ensemble needs members split the same way (same data, seed and image cap)"
    )


def check_members(runs: Sequence[Run]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Each member's (validation, test) predictions, or `RunError` naming every run that cannot join."""
    names = [r.name for r in runs]
    if len(set(names)) < 2:
        raise RunError(f"an ensemble needs at least two different runs, got {', '.join(names) or 'none'}")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise RunError(f"each run can be a member once: {', '.join(repeated)} named twice")
    problems = [p for p in (_problem(r) for r in runs) if p]
    if problems:
        raise RunError("cannot combine: " + "; ".join(problems))
    composed = is_composed([r.task for r in runs])
    if not composed:  # a composed run's questions differ on purpose; each of its groups holds one task
        first_task = tasks.task_for(runs[0].task)
        for other in runs[1:]:
            if problem := tasks.comparability_problem(first_task, tasks.task_for(other.task)):
                raise RunError(f"cannot combine {runs[0].name} and {other.name}: {problem}")
    groups = answer_groups(runs, [r.task for r in runs]) if composed else (list(runs),)
    tables = {r.name: (r.val_predictions(), r.predictions()) for r in runs}
    for group in (group for group in groups if group):
        first = group[0]
        for other in group[1:]:
            for index, split in ((0, "validated"), (1, "tested")):
                problem = same_images(first, other, tables[first.name][index], tables[other.name][index], split)
                if problem:
                    raise RunError(f"cannot combine: {problem}")
    if composed:  # every other answer is made on the pneumonia members' images (those of its task)
        (first, *_), *others = groups
        for task, group in zip((tasks.BACTERIAL_VS_VIRAL, tasks.THREE_CLASS), others, strict=True):
            for index, split in ((0, "validated"), (1, "tested")):
                if group and (problem := _same_pneumonia_images(first, group[0], tables[first.name][index],
                                                                 tables[group[0].name][index], split, task)):
                    raise RunError(f"cannot compose: {problem}")
    return tables


def _same_pneumonia_images(
    pneumonia_run: Run, other_run: Run, pneumonia: pd.DataFrame, other: pd.DataFrame, split: str, task: tasks.Task
) -> str:
    """Why a bacterial-vs-viral or three-class run's images are not the pneumonia run's images of that task
    (its pneumonia X-rays of a known kind, or every X-ray of a known class) ("" when they are)."""
    expected = set(pneumonia.loc[task.rows(pneumonia), "path"])
    found = set(other["path"])
    if expected == found:
        return ""
    what = "pneumonia X-rays" if task == tasks.BACTERIAL_VS_VIRAL else "X-rays of a known class"
    return (
        f"{other_run.name} was {split} on other images than {pneumonia_run.name}'s {what} ({len(found)} and "
        f"{len(expected)} images, {len(found & expected)} in common): compose runs split the same way (same data, seed and "
        "image cap; runs made before every task kept the pneumonia split cannot be composed)"
    )


def _aligned(tables: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """(the first table's image rows, the members' probabilities as columns), in the first table's order."""
    rows = tables[0][_ROW_COLUMNS].reset_index(drop=True)
    columns = []
    for table in tables:
        indexed = table.set_index("path")
        if not indexed.index.is_unique:
            raise RunError("a member's predictions list an image twice")
        if not np.array_equal(indexed.loc[rows["path"], "y_true"].to_numpy(), rows["y_true"].to_numpy()):
            raise RunError("the members disagree on the true class of some images")
        columns.append(indexed.loc[rows["path"], "probability"].to_numpy(dtype=np.float64))
    return rows, np.column_stack(columns)


def is_composed(member_tasks: Sequence[str | None]) -> bool:
    """Whether members of these tasks compose a three-class run: both questions there (pneumonia, bacterial vs
    viral), and every other member a three-class run (`BOTH_ANSWERS_RULE`)."""
    names = {tasks.canonical_name(name) for name in member_tasks}
    return set(COMPOSED_QUESTIONS) <= names <= {*COMPOSED_QUESTIONS, tasks.THREE_CLASS.name}


def question_masks(member_tasks: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(pneumonia members, bacterial-vs-viral members) of a composed run, as boolean masks over its members."""
    names = np.array([tasks.canonical_name(name) for name in member_tasks])
    return names == COMPOSED_QUESTIONS[0], names == COMPOSED_QUESTIONS[1]


def class_mask(member_tasks: Sequence[str | None]) -> np.ndarray:
    """A composed run's three-class members (the other answer, `BOTH_ANSWERS_RULE`), as a boolean mask."""
    return np.array([tasks.canonical_name(name) == tasks.THREE_CLASS.name for name in member_tasks], dtype=bool)


def by_question(items: Sequence, member_tasks: Sequence[str | None]) -> tuple[list, list]:
    """(the pneumonia members', the bacterial-vs-viral members') `items`, one item per member, in member order."""
    pneumonia, kind = question_masks(member_tasks)
    return ([item for item, keep in zip(items, pneumonia, strict=True) if keep],
            [item for item, keep in zip(items, kind, strict=True) if keep])


def answer_groups(items: Sequence, member_tasks: Sequence[str | None]) -> tuple[list, list, list]:
    """A composed run's `items` by role: (pneumonia members', bacterial-vs-viral members', three-class members');
    the last is empty when the run composes the two questions alone."""
    return (*by_question(items, member_tasks),
            [item for item, keep in zip(items, class_mask(member_tasks), strict=True) if keep])


def compose_classes(pneumonia: np.ndarray, viral: np.ndarray) -> np.ndarray:
    """The three-class probabilities (normal, bacterial, viral) by `COMPOSE_RULE` from P(pneumonia) and
    P(viral | pneumonia): (images, 3), each row summing to 1."""
    p, q = np.asarray(pneumonia, dtype=np.float64), np.asarray(viral, dtype=np.float64)
    return np.column_stack([1.0 - p, p * (1.0 - q), p * q])


def ensemble_task(runs: Sequence[Run]) -> tasks.Task:
    """The question an ensemble answers. Members of one multi-class task (all three-class runs) make
    an ensemble of that task: their class probabilities are averaged. Pneumonia and bacterial-vs-viral
    members together compose a three-class run (`is_composed`). Otherwise the members'
    probabilities answer one binary question (a three-class member's is P(pneumonia)), and so
    does the ensemble."""
    if is_composed([r.task for r in runs]):
        return tasks.THREE_CLASS
    first = tasks.task_for(runs[0].task)
    if not first.is_binary and all(tasks.task_for(r.task) == first for r in runs):
        return first
    return tasks.task_for(first.question)


def _combined_classes(tables: Sequence[pd.DataFrame], rows: pd.DataFrame, task: tasks.Task, weights) -> tuple[np.ndarray, np.ndarray]:
    """(true class index, the members' class probabilities combined with the weights) for the images
    of `rows`, in their order: a multi-class ensemble's predictions."""
    per_member = [multiclass.from_predictions(t.set_index("path").loc[rows["path"]].reset_index(), task) for t in tables]
    y = per_member[0][0]
    if any(not np.array_equal(y, other[0]) for other in per_member[1:]):
        raise RunError("the members disagree on the true class of some images")
    return y, combine(np.stack([p for _, p, _ in per_member], axis=-1), weights)  # (images, classes, members)


def _combined_stress(runs: Sequence[Run], paths: pd.Series, weights: np.ndarray) -> dict[str, np.ndarray] | None:
    """The members' stressed validation probabilities (core.evidence.stress), combined with the weights, by
    condition: the ensemble's threshold is then chosen as its members' were. None when a member kept
    none (saved before, or with --no-stress-test): the threshold is then plain Youden's J."""
    per_member = [stress.saved_scores(r.val_stress_predictions(), list(paths)) for r in runs]
    if any(scores is None for scores in per_member):
        return None
    conditions = [name for name in per_member[0] if all(name in scores for scores in per_member)]
    return {name: combine(np.column_stack([scores[name] for scores in per_member]), weights) for name in conditions} or None


def _merged_splits(runs: Sequence[Run]) -> pd.DataFrame | None:
    """Every member's split table in one: validation and test are shared, training is their union."""
    parts = [files.read_csv(r.folder / artifacts.SPLITS) for r in runs if (r.folder / artifacts.SPLITS).exists()]
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True).drop_duplicates("path", keep="first").reset_index(drop=True)


def total(values: list) -> float | None:
    """The sum of `values` rounded to 3 decimals, or None when any is missing (a partial sum would mislead)."""
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return round(sum(numbers), 3) if len(numbers) == len(values) else None


# --------------------------------------------------------------------------
# Building one
# --------------------------------------------------------------------------


def _kind_scores(kind_runs: Sequence[Run], tables: Mapping, rows_by_split: Sequence[pd.DataFrame]) -> list[np.ndarray]:
    """The bacterial-vs-viral members' P(viral) for every image of each of `rows_by_split` (validation, test):
    one (images, members) array per split. Their saved predictions for the pneumonia X-rays, and their
    models' for the normal ones, which they never saw (a composed run's P(bacterial) and P(viral) of a
    normal X-ray need them): each model scores the normal X-rays of both splits in one call."""
    normal = [~tasks.BACTERIAL_VS_VIRAL.rows(rows) for rows in rows_by_split]
    normal_paths = [path for rows, is_normal in zip(rows_by_split, normal, strict=True) for path in rows.loc[is_normal, "path"]]
    out = [np.full((len(rows), len(kind_runs)), np.nan) for rows in rows_by_split]
    for j, run in enumerate(kind_runs):
        scored = np.empty(0)
        if normal_paths:
            table = evaluation.predict_files(run, normal_paths)
            if (bad := table[table["error"] != ""]).size:
                raise RunError(f"{run.name} cannot score {len(bad)} normal X-rays of the split (e.g. {bad['path'].iloc[0]}: "
                               f"{bad['error'].iloc[0]}): restore the data folder")
            scored = table["probability"].to_numpy(dtype=np.float64)
        start = 0
        for index, (rows, is_normal, q) in enumerate(zip(rows_by_split, normal, out, strict=True)):
            saved = tables[run.name][index].set_index("path")
            q[~is_normal, j] = saved.loc[rows.loc[~is_normal, "path"], "probability"].to_numpy(dtype=np.float64)
            count = int(is_normal.sum())
            q[is_normal, j] = scored[start:start + count]
            start += count
    return out


def _group_weights(y: np.ndarray, scores: np.ndarray, weighted: bool) -> np.ndarray:
    """One question's member weights: equal, or `choose_weights` on validation."""
    if weighted and scores.shape[1] > 1:
        return choose_weights(y, scores, grid_steps(scores.shape[1]))[0]
    return np.full(scores.shape[1], 1.0 / scores.shape[1])


def _composed_result(runs: Sequence[Run], tables: Mapping, weighted: bool) -> tuple[dict, np.ndarray, str]:
    """(metrics, weights, weight rule) of a composed three-class run (`COMPOSE_RULE`, and `BOTH_ANSWERS_RULE` with
    three-class members). Each question's members, and the three-class members, are weighted among themselves (the
    saved weights sum to 1 within each group); the threshold of the binary view is chosen on validation from the
    members' scores, stressed copies included, as theirs were."""
    task = tasks.THREE_CLASS
    member_tasks_ = [r.task for r in runs]
    pneumonia_mask, kind_mask = question_masks(member_tasks_)
    classes_mask = class_mask(member_tasks_)
    pneumonia_runs, kind_runs, class_runs = answer_groups(runs, member_tasks_)
    parts = []
    for index in (0, 1):  # validation, test
        rows, scores = _aligned([tables[r.name][index] for r in pneumonia_runs])
        known = task.rows(rows)  # a pneumonia X-ray of unknown kind has no three-class label
        parts.append((rows[known].reset_index(drop=True), scores[known]))
    (val_rows, val_p), (test_rows, test_p) = parts
    val_q, test_q = _kind_scores(kind_runs, tables, [val_rows, test_rows])
    y_val, y_test = task.labels(val_rows), task.labels(test_rows)
    is_kind = y_val != 0
    weights = np.zeros(len(runs))
    weights[pneumonia_mask] = np.round(_group_weights(is_kind.astype(np.int64), val_p, weighted), 6)
    weights[kind_mask] = np.round(_group_weights((y_val[is_kind] == 2).astype(np.int64), val_q[is_kind], weighted), 6)
    val_classes, test_classes = (
        compose_classes(combine(p, weights[pneumonia_mask]), combine(q, weights[kind_mask]))
        for p, q in ((val_p, val_q), (test_p, test_q))
    )
    view_runs, view_weights = pneumonia_runs, weights[pneumonia_mask]  # whose scores make the pneumonia view
    if class_runs:  # the other answer: the three-class members' own class probabilities, averaged in half and half
        views = np.column_stack([tables[r.name][0].set_index("path").loc[val_rows["path"], "probability"] for r in class_runs])
        weights[classes_mask] = np.round(_group_weights(is_kind.astype(np.int64), views.astype(np.float64), weighted), 6)
        (y_own, val_own), (y_own_test, test_own) = (
            _combined_classes([tables[r.name][index] for r in class_runs], rows, task, weights[classes_mask])
            for index, rows in ((0, val_rows), (1, test_rows))
        )
        if not (np.array_equal(y_own, y_val) and np.array_equal(y_own_test, y_test)):
            raise RunError("the three-class members and the pneumonia members disagree on the true class of some images")
        val_classes, test_classes = (val_classes + val_own) / 2, (test_classes + test_own) / 2
        # each group's weights sum to 1, so together (normalised by `combine`) each group counts half
        view_runs, view_weights = [*pneumonia_runs, *class_runs], np.concatenate([view_weights, weights[classes_mask]])
    val_stressed = _combined_stress(view_runs, val_rows["path"], view_weights)
    result = evaluation.evaluate_classes(val_rows, y_val, val_classes, test_rows, y_test, test_classes, task, val_stressed)
    groups = max(len(pneumonia_runs), len(kind_runs), len(class_runs))
    rule = (WEIGHTED_RULE.format(steps=grid_steps(groups)) if weighted else EQUAL_RULE)
    both = f"; {BOTH_ANSWERS_RULE}" if class_runs else ""
    return result, weights, f"{rule}, within each question; {COMPOSE_RULE}{both}"


def _combined_result(runs: Sequence[Run], tables: Mapping, task: tasks.Task, weighted: bool) -> tuple[dict, np.ndarray, str]:
    """(metrics, weights, weight rule) of an ensemble whose members answer one question."""
    val_rows, val_scores = _aligned([tables[r.name][0] for r in runs])
    test_rows, test_scores = _aligned([tables[r.name][1] for r in runs])
    y_val, y_test = val_rows["y_true"].to_numpy(np.int64), test_rows["y_true"].to_numpy(np.int64)
    if weighted:
        steps = grid_steps(len(runs))
        weights, _ = choose_weights(y_val, val_scores, steps)
        rule = WEIGHTED_RULE.format(steps=steps)
    else:
        weights, rule = np.full(len(runs), 1.0 / len(runs)), EQUAL_RULE
    weights = np.round(weights, 6)
    val_stressed = _combined_stress(runs, val_rows["path"], weights)
    if task.is_binary:
        result = evaluation.evaluate_scores(
            val_rows, y_val, combine(val_scores, weights), test_rows, y_test, combine(test_scores, weights), task, val_stressed
        )
    else:  # the members' class probabilities, averaged: the derived binary view and the classes follow from them
        (y_val, val_p), (y_test, test_p) = (
            _combined_classes([tables[r.name][index] for r in runs], rows, task, weights)
            for index, rows in ((0, val_rows), (1, test_rows))
        )
        result = evaluation.evaluate_classes(val_rows, y_val, val_p, test_rows, y_test, test_p, task, val_stressed)
    return result, weights, rule


def build_ensemble(artifacts_dir: str | Path, members: Sequence[str], name: str, weighted: bool = False) -> Run:
    """Combine finished runs into a new run `name` in the same folder; return it.

    Refuses (`RunError`, naming the runs) an existing name, fewer than two members, unfinished
    runs, ensembles as members, and members validated or tested on different images.
    """
    start = time.monotonic()
    folder = artifacts.run_dir(artifacts_dir, name)
    if (folder / artifacts.SETTINGS).exists():
        raise RunError(f"a run named {name!r} already exists: pick another --name")
    runs = [artifacts.load_run(artifacts_dir, member) for member in members]
    tables = check_members(runs)
    task = ensemble_task(runs)
    if is_composed([r.task for r in runs]):
        result, weights, rule = _composed_result(runs, tables, weighted)
    else:
        result, weights, rule = _combined_result(runs, tables, task, weighted)
    member_metrics = [r.metrics or {} for r in runs]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    result.update(
        {
            "engine": "members",
            "tta": None,  # each member predicts with its own test-time augmentation, if any
            "ensemble": {"members": [r.name for r in runs], "weights": weights.tolist(), "weight_rule": rule},
            # What using the ensemble costs: every member's parameters, search and inference time.
            "parameters": total([m.get("parameters") for m in member_metrics]),
            "timings": {"search_s": total([(m.get("timings") or {}).get("search_s") for m in member_metrics])},
            "inference": {
                "engine": "members",
                "ms_per_image": total([(m.get("inference") or {}).get("ms_per_image") for m in member_metrics]),
                "single_image_ms": total([(m.get("inference") or {}).get("single_image_ms") for m in member_metrics]),
            },
            "trials_completed": 0,
            "finished_at": now,
        }
    )
    if result["parameters"] is not None:
        result["parameters"] = int(result["parameters"])
    settings = {
        "name": name,
        "family": artifacts.ENSEMBLE_FAMILY,
        "mode": artifacts.ENSEMBLE_FAMILY,
        "task": task.name,
        "member_tasks": [r.task for r in runs],
        "members": [r.name for r in runs],
        "weights": weights.tolist(),
        "weighted": bool(weighted),
        "weight_rule": rule,
        "member_families": [r.family for r in runs],
        "member_image_sizes": [r.settings.get("image_size") for r in runs],
        "image_size": None,  # each member reads images at its own size
        "data_dir": runs[0].settings.get("data_dir"),
        "seed": runs[0].settings.get("seed"),
    }
    progress = {
        "state": "completed", "phase": "done", "message": f"ensemble of {', '.join(r.name for r in runs)}",
        "trials_done": 0, "trials_total": 0, "best_val_auc": result["val"]["auc"], "started_at": now, "updated_at": now,
        "elapsed_s": round(time.monotonic() - start, 2), "host": artifacts.this_host(), "error": None,
    }
    with artifacts.run_lock(folder):
        splits = _merged_splits(runs)
        if splits is not None:
            files.write_csv(folder / artifacts.SPLITS, splits)
        summary = runs[0].read(artifacts.DATA_SUMMARY)
        if summary is not None:
            files.write_json(folder / artifacts.DATA_SUMMARY, summary)
        evaluation.write_result(folder, result)
        files.write_json(folder / artifacts.PROGRESS, progress)
        files.write_json(folder / artifacts.SETTINGS, settings)  # last: the run is listed once it is whole
    (folder / artifacts.LOCK).unlink(missing_ok=True)
    return artifacts.load_run(artifacts_dir, name)


# --------------------------------------------------------------------------
# Using one
# --------------------------------------------------------------------------


def member_runs(run: Run) -> list[Run]:
    """An ensemble's member runs, read from the folder beside it; `RunError` when one is gone."""
    try:
        return [artifacts.load_run(run.folder.parent, member) for member in run.members]
    except RunError as error:
        raise RunError(f"ensemble {run.name!r} cannot use its members: {error}") from None


def weights_of(run: Run) -> np.ndarray:
    """The ensemble's weights, one per member, summing to 1."""
    weights = np.asarray(run.settings.get("weights") or [], dtype=np.float64)
    if weights.size != len(run.members) or weights.size == 0 or weights.sum() <= 0 or (weights < 0).any():
        raise RunError(f"ensemble {run.name!r} has unusable weights {run.settings.get('weights')!r} for members {run.members}")
    return weights / weights.sum()


def member_tasks(run: Run) -> list[str]:
    """Each member's task, as the ensemble saved them (ensembles saved before tasks existed: the ensemble's)."""
    return list(run.settings.get("member_tasks") or [run.task] * len(run.members))


def view_members(run: Run) -> list[tuple[Run, float]]:
    """(member, weight) of each member with weight that scores pixels and is explained: every one, or a composed
    run's pneumonia members (they answer its first question, P(pneumonia), directly; with three-class members
    beside them, `BOTH_ANSWERS_RULE`, the run's view also averages theirs in, but a three-class model explains
    one class, not pneumonia)."""
    weighted = list(zip(member_runs(run), weights_of(run), strict=True))
    if is_composed(member_tasks(run)):
        weighted, _ = by_question(weighted, member_tasks(run))
    return [(m, float(w)) for m, w in weighted if w > 0]


def weights_text(run: Run) -> str:
    """e.g. "cnn-small 0.60, cnn-wide 0.40": each member with its weight as saved."""
    return ", ".join(f"{m} {w:.2f}" for m, w in zip(run.members, run.settings["weights"], strict=True))


def predict_files(run: Run, paths: list[str], models: Mapping | None = None, engine: str = "auto") -> pd.DataFrame:
    """Score image files with an ensemble: each member at its own size, averaged with the weights.

    `models` (member name -> loaded Keras model) spares loading them again. Same columns as
    `core.inference.evaluation.predict_files`: a multi-class ensemble also gives each class's probability (the
    members' averaged) and its label is the class of the two-step rule (`multiclass.predicted_classes`:
    normal below the threshold, else the likelier kind). A file any member cannot read gets that
    member's reason.
    """
    members, weights = member_runs(run), weights_of(run)
    task = tasks.task_for(run.task)
    tables = [evaluation.predict_files(m, paths, model=(models or {}).get(m.name), engine=engine) for m in members]
    scores = np.column_stack([t["probability"].to_numpy(dtype=np.float64) for t in tables])
    errors = [next((e for e in row if e), "") for row in zip(*(t["error"] for t in tables), strict=True)]
    threshold = run.threshold
    class_columns = [] if task.is_binary else [tasks.probability_column(c) for c in task.classes]
    classes, composed = None, is_composed(member_tasks(run))
    if composed:
        pneumonia, kind = question_masks(member_tasks(run))
        classes = compose_classes(combine(scores[:, pneumonia], weights[pneumonia]), combine(scores[:, kind], weights[kind]))
        if (own := class_mask(member_tasks(run))).any():  # `BOTH_ANSWERS_RULE`
            own_tables = [t for t, keep in zip(tables, own, strict=True) if keep]
            classes = (classes + combine(np.stack([t[class_columns].to_numpy(dtype=np.float64) for t in own_tables], axis=-1),
                                         weights[own])) / 2
        classes = evaluation.saved_precision(classes)
    elif class_columns:
        classes = evaluation.saved_precision(
            combine(np.stack([t[class_columns].to_numpy(dtype=np.float64) for t in tables], axis=-1), weights)
        )
    # the label is decided on the number shown: a composed run's view is its classes' P(pneumonia)
    combined = evaluation.saved_precision(
        positive_probability(classes) if composed else combine(scores, weights)
    )
    rows = []
    for i, (path, score, error) in enumerate(zip(paths, combined, errors, strict=True)):
        ok = not error and np.isfinite(score)
        label = task.binary_classes[int(score >= threshold)] if ok else ""
        each_class = {}
        if classes is not None:
            each_class = dict(zip(class_columns, classes[i] if ok else [np.nan] * len(class_columns), strict=True))
            label = multiclass.class_of(task, classes[i], score >= threshold) if ok else ""
        rows.append({"path": str(path), "probability": float(score) if ok else np.nan, "label": label, "error": error, **each_class})
    return pd.DataFrame(rows, columns=["path", "probability", "label", "error", *class_columns])


def _member_model(member: Run, models: Mapping | None):
    """The member's model: the one passed in `models` (a page's cached one), else loaded from its folder."""
    return (models or {}).get(member.name) or evaluation.load_model(evaluation.own_model_path(member))


def score_pixels(run: Run, images: np.ndarray, models: Mapping | None = None) -> np.ndarray:
    """The ensemble's probability of its binary view's positive class for a batch of square RGB images
    (n, S, S, 3) in 0..255: the members' (`evaluation.score_pixels`, each at its own size) combined with the weights;
    a member without weight is neither loaded nor run."""
    weighted = view_members(run)  # as `heatmap_for_run`
    scores = [evaluation.score_pixels(_member_model(m, models), images) for m, _ in weighted]
    return combine(np.column_stack(scores), [w for _, w in weighted])


def heatmap_for_run(
    run: Run, image_path: str | Path, models: Mapping | None = None, class_name: str | None = None, method: str = methods.DEFAULT_METHOD
):
    """(the weighted mean of the members' `method` heatmaps, the original image); see `explanation.combine_heatmaps`.
    Three-class members explain `class_name` (by default each its own predicted class); a composed run
    shows its pneumonia members' heatmaps of pneumonia (`view_members`), whatever `class_name`. ValueError,
    naming the member, when the method does not apply to one of them."""
    heatmaps, weights, original = [], [], None
    if is_composed(member_tasks(run)):
        class_name = None  # a composed run shows where its pneumonia members look for pneumonia
    for member, weight in view_members(run):  # a member without weight does not take part in the decision
        try:
            heatmap, original = methods.heatmap_for_run(
                member, image_path, model=(models or {}).get(member.name), class_name=class_name, method=method
            )
        except ValueError as error:
            raise ValueError(f"ensemble {run.name!r}, member {member.name!r}: {error}") from None
        heatmaps.append(heatmap)
        weights.append(weight)
    return explanation.combine_heatmaps(heatmaps, weights), original


def method_problem(run: Run, method: str, models: Mapping | None = None) -> str:
    """Why `method` cannot explain the ensemble ("" when it explains every member that has weight)."""
    chosen = methods.method_named(method)
    for member, _ in view_members(run):  # the others are not explained (see `heatmap_for_run`): no model to load
        model = _member_model(member, models)
        if problem := chosen.problem(model):
            return f"{chosen.label} does not apply to member {member.name!r}: {problem}"
    return ""
