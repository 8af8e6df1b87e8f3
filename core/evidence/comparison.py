"""Several runs side by side: whether they saw the same test images, what each run is, and every image's verdicts.

What the Compare page and the HTML report both need beyond each run's own evidence
(``core.evidence``): the check that the runs were tested on the same images (else their numbers
are not directly comparable), the facts of each run (family, input size, parameters, search and
inference times), and the per-image join of the runs' probabilities with how many runs got each
image wrong and whether they disagree. Pure: predictions tables and runs in, tables out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.data import tasks
from core.data.folders import CLASS_NAMES
from core.evidence import multiclass
from core.runs.artifacts import PER_MEMBER, Run

NEGATIVE, POSITIVE = CLASS_NAMES  # "NORMAL", "PNEUMONIA"
# When the picked runs answer different questions, the binary views are named this way.
GENERIC_NAMES = ("negative", "positive")
# The per-image table's fixed columns; each run's probability goes in "p:<run>", so a run may
# have any name (even "kind" or "wrong in") without clashing with them.
IMAGE_COLUMNS = ("image", "path", "class_name", "kind")
PROBABILITY_PREFIX = "p:"
_TRUTH = "y:"  # a run's true labels while the per-image table is joined


# --------------------------------------------------------------------------
# The same test images
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCheck:
    """Whether the runs were tested on the same images, and how many images each run had."""

    counts: dict[str, int]  # run name -> test images
    same: bool  # exactly the same set of image paths for every run

    @property
    def same_count(self) -> bool:
        """True when the counts agree (then different images mean different files, not a different cap)."""
        return len(set(self.counts.values())) <= 1


def image_check(predictions: Mapping[str, pd.DataFrame]) -> ImageCheck:
    """Compare the runs' test images by path; paired tests need the same ones."""
    counts = {name: len(table) for name, table in predictions.items()}
    paths = {frozenset(table["path"]) for table in predictions.values()}
    return ImageCheck(counts=counts, same=len(set(counts.values())) <= 1 and len(paths) <= 1)


# --------------------------------------------------------------------------
# What each run is
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What a run is, beside its evidence: read from its settings and metrics, None where not saved."""

    family: str
    mode: str | None
    image_size: int | None
    parameters: int | None
    validation_auc: float | None  # the saved model's AUC on validation (metrics.json)
    search_s: float | None  # the whole hyperparameter search, all trials
    ms_per_image: float | None  # batched inference through the saved model's engine
    single_image_ms: float | None
    task: str = tasks.DEFAULT  # core.data.tasks name; runs saved without one are pneumonia runs


def run_facts(run: Run) -> RunFacts:
    """The facts of one run, as saved in its folder."""
    metrics = run.metrics or {}
    inference = metrics.get("inference") or {}
    return RunFacts(
        family=run.family,
        task=run.task,
        mode=run.settings.get("mode"),
        image_size=run.settings.get("image_size"),
        parameters=metrics.get("parameters"),
        validation_auc=(metrics.get("val") or {}).get("auc"),
        search_s=(metrics.get("timings") or {}).get("search_s"),
        ms_per_image=inference.get("ms_per_image"),
        single_image_ms=inference.get("single_image_ms"),
    )


def facts_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run with the Compare page's fact columns (they follow the metrics table's columns)."""
    rows = []
    for run in runs:
        facts = run_facts(run)
        rows.append(
            {
                "family": facts.family,
                "task": facts.task,
                "mode": facts.mode,
                "input px": str(facts.image_size) if facts.image_size else PER_MEMBER,
                "parameters": facts.parameters,
                "training time (s)": facts.search_s,
                "inference (ms/image)": facts.ms_per_image,
                "single image (ms)": facts.single_image_ms,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# What question the runs answer
# --------------------------------------------------------------------------


def run_task(run: Run) -> tasks.Task:
    """The run's task (`core.data.tasks`); a run saved without one is a pneumonia run."""
    return tasks.task_for(run.task)


def binary_names(runs: Sequence[Run]) -> tuple[str, str]:
    """(negative, positive) of the runs' binary view as a reader sees them: ("normal", "pneumonia"),
    ("bacterial", "viral"), or "negative"/"positive" when the runs answer different questions."""
    names = {run_task(run).binary_names for run in runs}
    return names.pop() if len(names) == 1 else GENERIC_NAMES


def matrix_labels(run: Run) -> list[str]:
    """The classes of a run's binary confusion matrix, negative first: as saved, else its task's."""
    return list((run.metrics or {}).get("labels") or run_task(run).binary_classes)


def three_class_runs(predictions: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task]) -> list[str]:
    """The runs, in order, whose three classes can be shown: a multi-class task and its class columns saved."""
    return [name for name, table in predictions.items() if multiclass.has_classes(table, run_tasks[name])]


def question_notes(runs: Sequence[Run]) -> list[str]:
    """What the page and the report say about the runs' questions: a three-class run is compared on
    the derived binary question; runs of different questions are not paired."""
    notes = []
    picked = [run_task(run) for run in runs]
    if any(not t.is_binary for t in picked) and len(picked) > 1:
        notes.append(
            "Three-class runs are compared with the others on the derived binary question, pneumonia vs normal: their "
            "probability of pneumonia is P(bacterial) + P(viral), and their threshold on it is chosen on validation like "
            "any run's. Their three classes (normal below the threshold, else the likelier kind) are shown in their own section."
        )
    questions = {t.question for t in picked}
    if len(questions) > 1:
        notes.append(
            "The runs answer different questions (" + "; ".join(
                f"{q}: {tasks.task_for(q).title}" for q in sorted(questions)
            ) + "). Curves and metrics are each run's own (positive = viral for bacterial vs viral, pneumonia otherwise); "
            "runs of different questions are tested on different images and are never paired."
        )
    return notes


# --------------------------------------------------------------------------
# Every image's verdicts
# --------------------------------------------------------------------------


def probability_column(name: str) -> str:
    return f"{PROBABILITY_PREFIX}{name}"


def per_image_table(predictions: Mapping[str, pd.DataFrame], thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Every test image of any run, one row each, sorted by path.

    Columns: ``image`` (the file name), ``path``, ``class_name``, ``kind``, each run's probability as
    ``p:<run>`` (empty where that run did not score the image), ``wrong in`` (how many runs call the
    image wrongly at their threshold) and ``disagree`` (the runs that scored it do not all call it
    the same way).
    """
    if not predictions:
        raise ValueError("the per-image table needs the predictions of at least one run")
    missing = sorted(name for name in predictions if name not in thresholds)
    if missing:
        raise ValueError(f"no threshold for {missing}: pass one threshold per run")
    keys = list(IMAGE_COLUMNS[1:])
    joined: pd.DataFrame | None = None
    for name, table in predictions.items():
        # Each run's own truth (y_true): the same image is positive for a pneumonia run and may be
        # negative for a bacterial-vs-viral one.
        part = table[[*keys, "probability"]].rename(columns={"probability": probability_column(name)})
        part[_TRUTH + name] = table["y_true"].to_numpy() if "y_true" in table else (table["class_name"] == POSITIVE).astype(int).to_numpy()
        joined = part if joined is None else joined.merge(part, on=keys, how="outer")
    joined = joined.sort_values("path").reset_index(drop=True)
    truth = pd.DataFrame({name: joined[_TRUTH + name] == 1 for name in predictions})
    called = pd.DataFrame({name: joined[probability_column(name)] >= thresholds[name] for name in predictions})
    scored = pd.DataFrame({name: joined[probability_column(name)].notna() for name in predictions})
    joined = joined.drop(columns=[_TRUTH + name for name in predictions])
    joined.insert(0, "image", joined["path"].map(lambda p: str(p).rsplit("/", 1)[-1]))
    joined["wrong in"] = (called.ne(truth) & scored).sum(axis=1).astype(int)
    joined["disagree"] = called.where(scored).nunique(axis=1, dropna=True) > 1
    return joined


def filter_images(table: pd.DataFrame, *, wrong: bool = False, disagree: bool = False, true_class: str | None = None) -> pd.DataFrame:
    """The rows of a ``per_image_table`` misclassified by any run, where the runs disagree, of one true class."""
    mask = pd.Series(True, index=table.index)
    if wrong:
        mask &= table["wrong in"] > 0
    if disagree:
        mask &= table["disagree"]
    if true_class is not None:
        mask &= table["class_name"] == true_class
    return table[mask].reset_index(drop=True)


def image_verdicts(
    row: Mapping[str, Any], thresholds: Mapping[str, float], classes: Mapping[str, tuple[str, str]] | None = None
) -> pd.DataFrame:
    """One image of a ``per_image_table`` (a row) as each run sees it: run, probability, threshold, label.

    The label is one of the run's binary classes (``classes``: run name -> (negative, positive),
    default NORMAL/PNEUMONIA), empty where the run did not score the image.
    """
    classes = classes or {}
    names = list(thresholds)
    probabilities = [row[probability_column(name)] for name in names]
    return pd.DataFrame(
        {
            "run": names,
            "probability": probabilities,
            "threshold": [thresholds[name] for name in names],
            "label": [
                classes.get(name, CLASS_NAMES)[int(p >= thresholds[name])] if pd.notna(p) else ""
                for name, p in zip(names, probabilities, strict=True)
            ],
        }
    )


def probability_of(row: Mapping[str, Any], name: str) -> float:
    """A run's probability for one row of a ``per_image_table``, NaN where it did not score the image."""
    value = row[probability_column(name)]
    return float(value) if pd.notna(value) else float(np.nan)


def predicted_class(predictions: pd.DataFrame, path: str) -> str:
    """A multi-class run's predicted class (as saved, `multiclass.predicted_classes`) of the image at `path`; "" for a binary
    run or an image it did not score."""
    if "predicted_class" not in predictions:
        return ""
    return str(predictions.set_index("path")["predicted_class"].get(path, ""))
