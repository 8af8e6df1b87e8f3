"""The questions a model can be trained to answer, and what each means for labels, splits and names.

Kermany et al. (Cell 2018) asked two questions of the same X-rays: pneumonia against normal, and
bacterial against viral pneumonia. A `Task` says which images a question uses, how an image's
row of the data table (``core.data``) becomes a label, and how the classes are named for a reader:

- ``pneumonia``: normal (0) vs pneumonia (1), every image; the paper's first question.
- ``bacterial_vs_viral``: bacterial (0) vs viral (1), pneumonia images only. Viral is the positive
  class, as in the paper's second question (its sensitivity is that of finding viral pneumonia).
- ``three_class``: normal (0) / bacterial (1) / viral (2), every image; a softmax over three classes,
  decided in two steps: normal below the threshold of its "pneumonia vs normal" view, the derived
  binary probability P(bacterial) + P(viral) = 1 − P(normal) (so it can be compared with pneumonia
  runs), else the likelier kind (`core.evidence.multiclass`).

Runs saved before tasks existed have none and are ``pneumonia`` runs; the name ``binary`` used then
in code is accepted as an alias. Pure: numpy and pandas only (the dashboard's pages import it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT = "pneumonia"
ALIASES = {"binary": "pneumonia"}  # the name of the pneumonia task before there were others


class TaskError(ValueError):
    """An unknown task name; the message lists the known ones."""


@dataclass(frozen=True)
class Task:
    """What the models predict from a row of the data table.

    ``classes`` are values of the table's ``column`` in label order (label i is ``classes[i]``); rows
    whose value is not among them are not used by the task (normal images in ``bacterial_vs_viral``,
    a pneumonia file whose kind cannot be read in the kind-based tasks). ``names`` are what a reader
    sees for each class. For two classes the last is the positive one.
    """

    name: str
    classes: tuple[str, ...]
    column: str  # the table column whose value, matched against `classes`, gives the label
    names: tuple[str, ...]
    title: str  # the question in a few words, e.g. "bacterial vs viral pneumonia"

    @property
    def positive_class(self) -> str:
        return self.classes[-1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_binary(self) -> bool:
        return self.n_classes == 2

    # ------------------------------------------------------------------ labels

    def rows(self, table: pd.DataFrame) -> np.ndarray:
        """True for the rows this task uses."""
        return table[self.column].isin(self.classes).to_numpy()

    def select(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows this task uses, re-indexed."""
        return table[self.rows(table)].reset_index(drop=True)

    def labels(self, table: pd.DataFrame) -> np.ndarray:
        """Label index of each row (every row must be one the task uses)."""
        index = {name: i for i, name in enumerate(self.classes)}
        labels = table[self.column].map(index)
        if labels.isna().any():
            odd = sorted(set(table.loc[labels.isna(), self.column].astype(str)))
            raise ValueError(f"task {self.name} has no class for {odd}: select the task's rows first (Task.select)")
        return labels.to_numpy(dtype="int64")

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """What the network is trained against: the labels for a sigmoid, one-hot rows for a softmax.

        One-hot rather than sparse labels, so that Keras' AUC metric (the search's objective) is the
        micro-averaged one-vs-rest AUC of the softmax, and class weights still apply (Keras takes
        each row's argmax for them).
        """
        labels = np.asarray(labels, dtype="int64")
        if self.is_binary:
            return labels
        return np.eye(self.n_classes, dtype="float32")[labels]

    # ------------------------------------------------------------------ the binary question

    @property
    def binary_classes(self) -> tuple[str, str]:
        """(negative, positive) class of the run's binary view: its own two, or normal/pneumonia."""
        return (self.classes[0], self.classes[1]) if self.is_binary else ("NORMAL", "PNEUMONIA")

    @property
    def binary_names(self) -> tuple[str, str]:
        """(negative, positive) as a reader sees them, e.g. ("bacterial", "viral")."""
        return (self.names[0], self.names[1]) if self.is_binary else ("normal", "pneumonia")

    def binary_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels of the binary view: as they are for two classes; for three, 1 = not normal."""
        labels = np.asarray(labels, dtype="int64")
        return labels if self.is_binary else (labels != 0).astype("int64")

    @property
    def question(self) -> str:
        """Which binary question the run's probability answers: runs answering the same one on the
        same images can be paired. A three-class run answers pneumonia vs normal (derived)."""
        return self.name if self.is_binary else DEFAULT


PNEUMONIA = Task("pneumonia", ("NORMAL", "PNEUMONIA"), "class_name", ("normal", "pneumonia"), "normal vs pneumonia")
BACTERIAL_VS_VIRAL = Task(
    "bacterial_vs_viral", ("bacteria", "virus"), "kind", ("bacterial", "viral"), "bacterial vs viral pneumonia"
)
THREE_CLASS = Task("three_class", ("normal", "bacteria", "virus"), "kind", ("normal", "bacterial", "viral"), "normal / bacterial / viral")
TASKS = {task.name: task for task in (PNEUMONIA, BACTERIAL_VS_VIRAL, THREE_CLASS)}

DESCRIPTIONS = {
    "pneumonia": "normal vs pneumonia (every image; the paper's first question)",
    "bacterial_vs_viral": "bacterial vs viral, pneumonia images only; viral is the positive class (the paper's second question)",
    "three_class": "normal / bacterial / viral (softmax; normal below the pneumonia view's threshold, else the likelier kind); the pneumonia view is P(bacterial) + P(viral)",
}


def canonical_name(name: str | None) -> str:
    """The task's name as saved from now on: none (an old run) is `pneumonia`, `binary` too."""
    name = str(name or DEFAULT)
    return ALIASES.get(name, name)


def task_for(name: str | None) -> Task:
    """The task named `name` (aliases and None accepted); `TaskError` names the known ones."""
    canonical = canonical_name(name)
    if canonical not in TASKS:
        raise TaskError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[canonical]


def probability_column(class_name: str) -> str:
    """predictions.csv's column with each image's probability of `class_name` (multi-class runs)."""
    return f"probability_{class_name}"


def comparability_problem(task_a: Task, task_b: Task) -> str:
    """Why runs of these two tasks cannot be paired ("" when they answer the same binary question)."""
    if task_a.question == task_b.question:
        return ""
    return (
        f"they answer different questions ({task_a.name}: {PNEUMONIA.title if task_a.question == DEFAULT else task_a.title}; "
        f"{task_b.name}: {PNEUMONIA.title if task_b.question == DEFAULT else task_b.title}) on different images "
        "(bacterial vs viral uses pneumonia images only), so no paired test applies"
    )
