"""Patients, not images, are split: the patient-grouped splits, the per-class cap, class weights and
the summary of a data set.

No patient is ever in two splits (a patient is the person number and the kind, `core.data.folders`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from core.data.folders import CLASS_NAMES, MIN_SPLIT_IMAGES_PER_CLASS, SPLITS, DataError, Dataset
from core.data.tasks import PNEUMONIA, Task


def _carve(pool: pd.DataFrame, fraction: float, seed: int, column: str = "class_name") -> pd.Series:
    """Pick about `fraction` of the pool's patients, stratified by `column` (the task's classes); True where picked."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    if pool["patient"].nunique() < n_splits:
        raise DataError(
            f"only {pool['patient'].nunique()} patients left to split: add images or lower the split fraction"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, picked = next(folds.split(pool, pool[column], groups=pool["patient"]))
    mask = pd.Series(False, index=pool.index)
    mask.iloc[picked] = True
    return mask


def patient_folds(table: pd.DataFrame, n_folds: int, seed: int, column: str = "class_name") -> np.ndarray:
    """Fold number (0 .. n_folds - 1) of each row: patient-grouped (a patient is in one fold only) and
    stratified by `column` (the task's classes), as `_carve` picks a split. `DataError` when there
    are fewer patients than folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if table["patient"].nunique() < n_folds:
        raise DataError(f"only {table['patient'].nunique()} patients for {n_folds} folds: use fewer folds or more images")
    fold = np.full(len(table), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for number, (_, held) in enumerate(splitter.split(table, table[column], groups=table["patient"])):
        fold[held] = number
    return fold


def _has_enough(table: pd.DataFrame, task: Task = PNEUMONIA) -> bool:
    counts = table[task.column].value_counts()
    return all(counts.get(name, 0) >= MIN_SPLIT_IMAGES_PER_CLASS for name in task.classes)


def assign_splits(
    table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42, task: Task = PNEUMONIA
) -> tuple[pd.DataFrame, list[str]]:
    """Add a `split` column so that no patient is in two splits; return the table and notes.

    Patients are split once, by the pneumonia question's rule, whatever the task; then only the
    task's images are kept (`Task.select`: pneumonia images for bacterial vs viral). So runs of
    different tasks made with the same data, fractions and seed hold the same patients in each
    split: a bacterial-vs-viral run never trained on a pneumonia run's validation or test patients,
    and the two can be composed into a three-class run (`core.inference.ensemble`). The price: a
    task's kinds (bacterial, viral) are not stratified on their own; with hundreds of patients per
    kind their shares in validation stay close to training's.

    The download's own `test/` is kept when it holds both classes; a missing or tiny `val/` (the
    public one has 16 images) is folded into the training pool and a validation split is carved out
    of it, stratified by class (normal, pneumonia) and grouped by patient.
    """
    table, notes = _split_patients(table, val_fraction, test_fraction, seed)
    unused = int((~task.rows(table)).sum())
    if unused and task is not PNEUMONIA:
        notes.append(f"the {task.name} task uses {int(task.rows(table).sum()):,} of the images; {unused:,} are not of its classes ({', '.join(task.names)})")
    return task.select(table), notes


def _split_patients(table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Every image's split by the pneumonia question's rule (`assign_splits`)."""
    task = PNEUMONIA
    notes: list[str] = []
    table = task.select(table)
    table["split"] = ""
    in_folder = {split: table["folder_split"] == split for split in SPLITS}

    if _has_enough(table[in_folder["test"]], task):
        table.loc[in_folder["test"], "split"] = "test"
        pool = ~in_folder["test"]
    else:
        if in_folder["test"].any():
            notes.append(f"test/ has too few images per class (< {MIN_SPLIT_IMAGES_PER_CLASS}): carved a test split instead")
        pool = pd.Series(True, index=table.index)
    keep_val = _has_enough(table[in_folder["val"]], task)
    if keep_val:
        table.loc[in_folder["val"], "split"] = "val"
        pool &= ~in_folder["val"]
    elif in_folder["val"].any():
        notes.append(
            f"val/ has only {int(in_folder['val'].sum())} images: they join the training pool and a "
            f"patient-grouped validation split ({val_fraction:.0%}) is carved out of train/"
        )

    # A patient already in an official split may not also train: drop them from the pool.
    fixed_patients = set(table.loc[table["split"] != "", "patient"])
    leaking = pool & table["patient"].isin(fixed_patients)
    if leaking.any():
        notes.append(
            f"dropped {int(leaking.sum())} training images of {table.loc[leaking, 'patient'].nunique()} "
            "patients who also appear in the official val/ or test/ folders"
        )
        table = table[~leaking].copy()
        pool = pool[~leaking]

    pool_table = table[pool]
    carved_test = not (table["split"] == "test").any()
    if carved_test:
        picked = _carve(pool_table, test_fraction, seed, task.column)
        table.loc[picked[picked].index, "split"] = "test"
        pool_table = pool_table[~picked]
        notes.append(f"no usable test/ folder: carved a patient-grouped test split ({test_fraction:.0%})")
    if not keep_val:
        # The fraction is of the whole pool, so rescale it to what the test carve left.
        fraction = val_fraction / (1 - test_fraction) if carved_test else val_fraction
        picked = _carve(pool_table, min(0.5, fraction), seed + 1, task.column)
        table.loc[picked[picked].index, "split"] = "val"
        pool_table = pool_table[~picked]
    table.loc[pool_table.index, "split"] = "train"
    return table.reset_index(drop=True), notes


def cap_per_class(table: pd.DataFrame, max_per_class: int | None, seed: int = 42, task: Task = PNEUMONIA) -> pd.DataFrame:
    """Keep at most `max_per_class` images of each of the task's classes in each split, drawing whole patients.

    For quick runs. Patients are drawn at random (seeded) and kept whole, so a cap never splits
    a patient and never changes which split a patient is in.
    """
    if not max_per_class:
        return table
    rng = np.random.default_rng(seed)
    kept = []
    for _, group in table.groupby(["split", task.column], sort=True):
        patients = np.array(sorted(group["patient"].unique()))
        rng.shuffle(patients)
        sizes = group.groupby("patient").size()
        total = 0
        chosen = []
        for patient in patients:
            if total + sizes[patient] > max_per_class and total > 0:
                continue
            chosen.append(patient)
            total += sizes[patient]
            if total >= max_per_class:
                break
        kept.append(group[group["patient"].isin(chosen)])
    return pd.concat(kept).sort_index().reset_index(drop=True)


def check_patient_disjoint(table: pd.DataFrame) -> None:
    """Raise if any patient appears in two splits (a leak that would inflate test metrics)."""
    splits_per_patient = table.groupby("patient")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        raise DataError(f"patients in more than one split: {', '.join(leaking.index[:5])}")


def require_splits(table: pd.DataFrame, task: Task = PNEUMONIA) -> None:
    """Refuse a split table where a split lacks a class of the task: AUC and thresholds need every one."""
    for split in SPLITS:
        counts = table.loc[table["split"] == split, task.column].value_counts()
        missing = [name for name in task.classes if counts.get(name, 0) == 0]
        if missing:
            raise DataError(
                f"the {split} split has no {' or '.join(missing)} images: add images, or raise "
                "--max-per-class so every split gets every class"
            )


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights that make each class count as much as the others (n / (k * n_c))."""
    counts = np.bincount(labels, minlength=n_classes)
    return {c: float(len(labels) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def summarize(dataset: Dataset, table: pd.DataFrame | None = None, task: Task = PNEUMONIA) -> dict:
    """Counts a user checks before training: images and patients per split and class, kinds,
    class balance and weights, and the files that were skipped.

    `task_images` counts the task's classes per split and `class_weights` are the task's, as its
    training uses them (`images` stays by folder class, NORMAL and PNEUMONIA).
    """
    table = dataset.table if table is None else table
    split_column = "split" if "split" in table.columns else "folder_split"
    splits = [s for s in SPLITS if (table[split_column] == s).any()]
    images = {
        split: {name: int(((table[split_column] == split) & (table["class_name"] == name)).sum()) for name in CLASS_NAMES}
        for split in splits
    }
    patients = {split: int(table.loc[table[split_column] == split, "patient"].nunique()) for split in splits}
    kinds = {
        split: {k: int(v) for k, v in table.loc[table[split_column] == split, "kind"].value_counts().sort_index().items()}
        for split in splits
    }
    train = table[table[split_column] == "train"]
    normal, pneumonia = (int((train["class_name"] == name).sum()) for name in CLASS_NAMES)
    task_train = task.select(train)
    weights = class_weights(task.labels(task_train), task.n_classes) if len(task_train) else {}
    task_images = {
        split: {
            name: int(((table[split_column] == split) & (table[task.column] == value)).sum())
            for value, name in zip(task.classes, task.names, strict=True)
        }
        for split in splits
    }
    return {
        "root": str(dataset.root),
        "split_by": split_column,
        "task": task.name,
        "images": images,
        "task_images": task_images,
        "patients": patients,
        "kinds": kinds,
        "total_images": int(len(table)),
        "pneumonia_to_normal_ratio": round(pneumonia / normal, 3) if normal else None,
        "class_weights": {task.classes[c]: round(w, 4) for c, w in weights.items()},
        "unreadable": [{"path": u.path, "reason": u.reason} for u in dataset.unreadable],
        "notes": list(dataset.notes),
    }


def positive_per_negative(
    task_images: Mapping[str, Mapping[str, int]], task: Task, splits: Iterable[str] | None = None
) -> float | None:
    """Images of the task's binary positive class per negative one (``summarize``'s ``task_images``),
    over `splits` (default: all); None without negatives. A three-class task's positives are its
    bacterial and viral images, as in its pneumonia vs normal view."""
    shown = list(task_images) if splits is None else [s for s in splits if s in task_images]
    negative = sum(int(task_images[s].get(task.names[0], 0)) for s in shown)
    positive = sum(int(task_images[s].get(name, 0)) for s in shown for name in task.names[1:])
    return positive / negative if negative else None
