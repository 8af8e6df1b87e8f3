"""Kinds of run: the one place that decides how a run scores images, explains them, loads what it
predicts with, and whether it is exported or repeated.

Every caller that scores or explains a run (the CLI's predict and evaluate, the export, the
dashboard's pages) goes through the functions at the bottom, which ask `kind_of(run)`. The kinds,
in `KINDS` (ordered, first match wins):

- `EnsembleRun`: finished runs combined (`core.inference.ensemble`). No model of its own: each
  member predicts and explains at its own input size, averaged with the ensemble's weights. It is
  not exported (export its members) and not repeated (it has no hyperparameters of its own).
- `RepeatRun`: a run's best hyperparameters trained again with other seeds (`core.workflows.repeat`,
  `Run.is_repeat`). It predicts, explains and is exported with its first seed's model, saved as its
  own, exactly like a plain run; it cannot be the source of another repeat (repeat its source).
- `ImportedRun`: a model trained elsewhere and imported (`core.workflows.importing`); its own model
  is the bundle `core.models.imported` reads (a Keras model, or a TF Lite, ONNX or SavedModel file
  run as it is). It is exported with that bundle, and not repeated (nothing here trained it).
- `PlainRun`: a searched run with its own model (`core.inference.evaluation`, `.methods`); it
  takes every run no kind before it claims.

Three-class is not a kind of run but a task (`core.data.tasks`): a plain run and an ensemble can
both be three-class. What the task changes (a probability column per class, the two-step label, the
class an explanation explains) is read from the run's `Task` by the code each kind calls, never here;
the one exception is `explains_each_class`, since a composed ensemble (pneumonia and bacterial-vs-viral
members) is three-class but explains only pneumonia.

A new kind is one more `RunKind` subclass in this file, listed in `KINDS` before `PlainRun`; nothing
else dispatches.

Imports go one way: `evaluation`, `explanation` and `methods` know one model at a time and import neither this
module nor `ensemble`; `ensemble` uses them for its members (plain runs); this module sits on top.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from core.data import tasks
from core.inference import ensemble, evaluation, methods, ood, quantization
from core.inference import unusual as unusual_images
from core.inference.methods import DEFAULT_METHOD
from core.runs import artifacts
from core.runs.artifacts import IMPORTED, REPEAT, Run, RunError

# What `load_models` turns a model file into: `evaluation.load_model`, or a page's cached loader.
ModelLoader = Callable[[Path], Any]


class RunKind(ABC):
    """What every kind of run answers. `models` is what `load_models` gave for the run (so a caller
    may cache it and pass it back in); None loads the models from the run's folder."""

    name: str

    @abstractmethod
    def applies(self, run: Run) -> bool:
        """Whether `run` is of this kind."""

    @abstractmethod
    def load_models(self, run: Run, load: ModelLoader = evaluation.load_model) -> Any:
        """The model(s) the run predicts with, each file read through `load`."""

    @abstractmethod
    def predict_files(self, run: Run, paths: Sequence[str], models: Any = None, engine: str = "auto") -> pd.DataFrame:
        """One row per file: path, probability (of the binary view's positive class), label, error,
        and a probability column per class for a multi-class task."""

    @abstractmethod
    def engine_problem(self, run: Run, engine: str) -> str:
        """Why `predict_files` cannot use `engine` for this run ("" when it can): "int8" needs the int8
        model(s) `python -m core quantize` made and kept (`core.inference.quantization`)."""

    @abstractmethod
    def score_pixels(self, run: Run, images: np.ndarray, models: Any = None) -> np.ndarray:
        """The binary view's positive-class probability of square RGB images (n, S, S, 3) in 0..255, any S."""

    @abstractmethod
    def heatmap(self, run: Run, image_path: str | Path, models: Any = None, class_name: str | None = None,
                method: str = DEFAULT_METHOD) -> tuple[np.ndarray, Image.Image]:
        """(`method`'s heatmap in [0, 1], the image at its own size); `class_name` for a multi-class task."""

    @abstractmethod
    def method_problem(self, run: Run, method: str, models: Any = None) -> str:
        """Why `method` cannot explain this run ("" when it can)."""

    def explains_each_class(self, run: Run) -> bool:
        """Whether `heatmap` explains the `class_name` asked: a multi-class task's runs do."""
        return not tasks.task_for(run.task).is_binary

    @abstractmethod
    def export_problem(self, run: Run) -> str:
        """Why a run of this kind is not exported, with what to do instead ("" when it is: its own model)."""

    @abstractmethod
    def repeat_problem(self, run: Run) -> str:
        """Why a run of this kind cannot be the source of a repeat ("" when it can)."""


class PlainRun(RunKind):
    """A searched run: one model of its own (`model.keras`), read at the run's input size."""

    name = "plain"

    def applies(self, run: Run) -> bool:
        return True  # the last kind: every run no other kind claims

    def load_models(self, run: Run, load: ModelLoader = evaluation.load_model) -> Any:
        return load(evaluation.own_model_path(run))

    def predict_files(self, run: Run, paths: Sequence[str], models: Any = None, engine: str = "auto") -> pd.DataFrame:
        return evaluation.predict_files(run, list(paths), model=models, engine=engine)

    def engine_problem(self, run: Run, engine: str) -> str:
        return quantization.int8_problem(run) if engine == quantization.ENGINE else ""

    def score_pixels(self, run: Run, images: np.ndarray, models: Any = None) -> np.ndarray:
        return evaluation.score_pixels(models or self.load_models(run), images)

    def heatmap(self, run: Run, image_path: str | Path, models: Any = None, class_name: str | None = None,
                method: str = DEFAULT_METHOD) -> tuple[np.ndarray, Image.Image]:
        return methods.heatmap_for_run(run, image_path, model=models, class_name=class_name, method=method)

    def method_problem(self, run: Run, method: str, models: Any = None) -> str:
        return methods.method_named(method).problem(models or self.load_models(run))

    def export_problem(self, run: Run) -> str:
        return ""

    def repeat_problem(self, run: Run) -> str:
        return ""


class RepeatRun(PlainRun):
    """A repeat (`core.workflows.repeat`): predicts with its first seed's model, saved as its own."""

    name = "repeat"

    def applies(self, run: Run) -> bool:
        return run.is_repeat

    def repeat_problem(self, run: Run) -> str:
        return f"{run.name} is itself a repeat of {run.settings[REPEAT].get('source')}: repeat that run instead"


class ImportedRun(PlainRun):
    """A model trained elsewhere (`core.workflows.importing`): its bundle (the copied file and its
    adapter, `core.models.imported`) is its own model, read as a Keras model or run as a file of its
    format; explained by occlusion, and by the gradient methods when it is a Keras model."""

    name = "imported"

    def applies(self, run: Run) -> bool:
        return run.is_imported

    def repeat_problem(self, run: Run) -> str:
        return (f"{run.name} is an imported model: it was trained elsewhere, so there are no hyperparameters or "
                "training data here to train it again with; retrain it where it was made, then import it again")


class EnsembleRun(RunKind):
    """Finished runs combined (`core.inference.ensemble`); `models` maps member names to their models."""

    name = "ensemble"

    def applies(self, run: Run) -> bool:
        return run.is_ensemble

    def load_models(self, run: Run, load: ModelLoader = evaluation.load_model) -> dict[str, Any]:
        return {name: load(path) for name, path in zip(run.members, run.model_paths, strict=True)}

    def predict_files(self, run: Run, paths: Sequence[str], models: Any = None, engine: str = "auto") -> pd.DataFrame:
        return ensemble.predict_files(run, list(paths), models=models, engine=engine)

    def engine_problem(self, run: Run, engine: str) -> str:
        if engine != quantization.ENGINE:
            return ""
        problems = [p for p in (quantization.int8_problem(m) for m in ensemble.member_runs(run)) if p]
        return f"ensemble {run.name!r} predicts int8 only when each member can: " + "; ".join(problems) if problems else ""

    def score_pixels(self, run: Run, images: np.ndarray, models: Any = None) -> np.ndarray:
        return ensemble.score_pixels(run, images, models=models)

    def heatmap(self, run: Run, image_path: str | Path, models: Any = None, class_name: str | None = None,
                method: str = DEFAULT_METHOD) -> tuple[np.ndarray, Image.Image]:
        return ensemble.heatmap_for_run(run, image_path, models=models, class_name=class_name, method=method)

    def method_problem(self, run: Run, method: str, models: Any = None) -> str:
        return ensemble.method_problem(run, method, models=models)

    def explains_each_class(self, run: Run) -> bool:
        # a composed run shows its pneumonia members' heatmaps of pneumonia (`ensemble.view_members`)
        return super().explains_each_class(run) and not ensemble.is_composed(ensemble.member_tasks(run))

    def export_problem(self, run: Run) -> str:
        return (
            f"run {run.name!r} is an ensemble: it has no model of its own, so it is not exported; export its members "
            f"({', '.join(run.members)}) one by one (its weights are in its settings.json)"
        )

    def repeat_problem(self, run: Run) -> str:
        return f"{run.name} is an ensemble: it has no hyperparameters of its own; repeat one of its members ({', '.join(run.members)})"


KINDS: tuple[RunKind, ...] = (EnsembleRun(), RepeatRun(), ImportedRun(), PlainRun())


def kind_of(run: Run) -> RunKind:
    """The first kind in `KINDS` that claims `run`."""
    for kind in KINDS:
        if kind.applies(run):
            return kind
    raise RunError(f"run {run.name!r} is of no known kind ({', '.join(k.name for k in KINDS)})")


# --------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------


def load_models(run: Run, load: ModelLoader = evaluation.load_model) -> Any:
    """The model(s) `run` predicts with, to pass back into `predict_files` and `heatmap`: one model,
    or {member name: model} for an ensemble. A page passes its cached loader as `load`."""
    return kind_of(run).load_models(run, load)


def predict_files(run: Run, paths: Sequence[str], models: Any = None, engine: str = "auto", unusual: bool = False) -> pd.DataFrame:
    """Score image files with any run: path, probability of its binary view's positive class
    (pneumonia; viral for bacterial vs viral), label, error; for a multi-class task also each class's
    probability, the label then being the class of the two-step rule (normal below the threshold, else
    the likelier kind: `core.evidence.multiclass.TWO_STEP_RULE`). A file that cannot be read gets its reason
    in `error` and no probability; the others are still scored. `models`: what `load_models` gave.

    With `unusual`, three more columns say whether each image is far from the run's training X-rays,
    by its image statistics or in the model's own features (`core.inference.unusual.flag_files`), and a
    flagged image's label is `ood.NOT_ASSESSED`, not a class; `model_label` keeps what the model called
    every image.
    """
    if problem := engine_problem(run, engine):
        raise RunError(problem)
    if unusual and models is None:  # loaded once, for the scores and the features
        models = load_models(run)
    table = kind_of(run).predict_files(run, paths, models, engine)
    if unusual:
        flags = unusual_images.flag_files(run, list(paths), models)
        table = pd.concat([table, flags.set_index(table.index)], axis=1)
        table.insert(table.columns.get_loc("label") + 1, "model_label", table["label"])
        table["label"] = ood.assessed_labels(table["label"], table["unusual"])
    return table


def engine_problem(run: Run, engine: str) -> str:
    """Why `predict_files` cannot score with `engine` for `run` ("" when it can): with "int8", a run
    (or an ensemble's member) without a kept int8 model, each named with what to do."""
    return kind_of(run).engine_problem(run, engine)


def heatmap(run: Run, image_path: str | Path, models: Any = None, class_name: str | None = None,
            method: str = DEFAULT_METHOD) -> tuple[np.ndarray, Image.Image]:
    """`method`'s heatmap (`core.inference.methods.METHODS`, Grad-CAM by default) of any run on one
    image file: (heatmap, the original image at its own size). A multi-class task explains
    `class_name` (by default the predicted class); an ensemble's is the weighted mean of its members'
    (`explanation.combine_heatmaps`). ValueError when the method does not apply (`method_problem`)."""
    return kind_of(run).heatmap(run, image_path, models, class_name, method)


def explains_each_class(run: Run) -> bool:
    """Whether the run's heatmap explains whichever class of its task is asked (a three-class model, or an
    ensemble of them), rather than its binary view's positive class (a two-class run; a composed three-class
    run, which shows where its pneumonia members look for pneumonia)."""
    return kind_of(run).explains_each_class(run)


def default_method(runs: Sequence[Run]) -> str:
    """The explanation method a page shows first for `runs` (`methods.default_for`), read from their
    settings without loading a model: an imported file without gradients (`model_files.KERAS_FORMATS`
    are the ones with) makes it occlusion; all transformer families, attention rollout."""
    from core.models import families, model_files

    def gradients(run: Run) -> bool:
        try:
            members = [artifacts.load_run(run.folder.parent, m) for m in run.members] if run.is_ensemble else [run]
        except RunError:  # a deleted member: the page says so where it explains
            return True
        return all(not m.is_imported or m.settings[IMPORTED].get("format") in model_files.KERAS_FORMATS for m in members)

    transformer = bool(runs) and all(getattr(families.FAMILIES.get(r.family), "transformer", False) for r in runs)
    return methods.default_for(transformer, all(gradients(r) for r in runs))


def method_problem(run: Run, method: str, models: Any = None) -> str:
    """Why `method` cannot explain `run` ("" when it can): unknown, or not for its model(s) (e.g.
    attention rollout of a CNN). Loads the models when `models` is None."""
    if method not in methods.METHODS:
        return f"unknown explanation method {method!r}: choose one of {', '.join(methods.METHODS)}"
    return kind_of(run).method_problem(run, method, models)


def score_pixels(run: Run, images: np.ndarray, models: Any = None) -> np.ndarray:
    """The probability of any run's binary view's positive class (as `predict_files`' probability, not
    rounded) for square RGB images (n, S, S, 3) float in 0..255 at any S, each resized (bilinear) to
    each model's input size; an ensemble's is its members' weighted mean (`ensemble.combine`). No
    test-time augmentation: what model-agnostic evidence (deletion curves) perturbs and scores."""
    return kind_of(run).score_pixels(run, images, models)


def evaluate_on_folder(run: Run, folder: str, split: str = "test", engine: str = "auto") -> tuple[dict, pd.DataFrame]:
    """(metrics at the run's own threshold, the per-image predictions) of any run on one split folder
    of a data set (`evaluation.split_images`, `evaluation.metrics_on_images`)."""
    table = evaluation.split_images(run, folder, split)
    predictions = predict_files(run, list(table["path"]), engine=engine)
    return evaluation.metrics_on_images(run, table, predictions), predictions


def export_problem(run: Run) -> str:
    """Why `run`'s kind is not exported ("" when it is: the export packs its own model file)."""
    return kind_of(run).export_problem(run)


def repeat_problem(run: Run) -> str:
    """Why `run`'s kind cannot be the source of a repeat ("" when it can)."""
    return kind_of(run).repeat_problem(run)
