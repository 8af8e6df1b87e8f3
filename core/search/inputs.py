"""What a search's trials train on: pixels, cached frozen-backbone features or cached cut-point activations.

Each input kind is one class with the same small interface, so the search loop (`core.search.loop`)
is one sequence of steps for all of them:
- `prepare` builds what the kind needs (a backbone, its cut), decodes the images or fills its cache,
  and returns the table of usable images with the inputs aligned to it, row for row (images that
  cannot be decoded are dropped from both, and from the kind's augmented views);
- `datasets` gives the training and validation `tf.data` pipelines;
- `n_features` and `cut` are what the hypermodel (`core.search.hypermodel.SearchSpace`) needs;
- `saved_model` turns the best trained model into the model saved to the run: it takes pixels;
- `evaluate` measures the best model on validation and test;
- `record` is what `metrics.json` says about the inputs.
`for_settings` picks the kind from the settings: the one place that decides it. A new input kind is
one class here and its line in `for_settings`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import keras
import numpy as np
import pandas as pd

from core.data import augmentation, folders, loading
from core.evidence import stress
from core.inference import evaluation
from core.models import backbone_cut, backbones, builders
from core.runs import artifacts
from core.runs.progress import Progress, StopFlag
from core.search import activations, features
from core.search.settings import SearchSettings, cache_root, pixel_cache
from core.search.splits import drop_undecodable

if TYPE_CHECKING:
    import tensorflow as tf

Log = Callable[[str], None]


class EvaluationData:
    """The labelled images a best model is evaluated on, with the validation and test rows apart.

    `pixels` are the validation and test images, decoded once on first use (pixel cache): the
    saved model is evaluated and stress-tested on them; a kind that evaluates on its own inputs
    never decodes them unless the stress test asks.
    """

    def __init__(self, settings: SearchSettings, table: pd.DataFrame, labels: np.ndarray, part: dict[str, np.ndarray]):
        self.settings, self.table, self.labels, self.part = settings, table, labels, part
        self.rows = part["val"] | part["test"]
        self.held_out_part = {split: mask[self.rows] for split, mask in part.items()}

    @cached_property
    def pixels(self) -> np.ndarray:
        """The validation and test images, (n, size, size, 1) uint8, in the table's order."""
        paths = list(self.table.loc[self.rows, "path"])
        return loading.load_images(paths, self.settings.image_size, pixel_cache(self.settings))[0]


class SearchInputs:
    """What every input kind does; the kinds below fill in `_build` and `_load` (and override the rest)."""

    timing_key: ClassVar[str]  # the name of the time `prepare` took in metrics.json's timings

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.spec = settings.backbone()
        self.n_features: int | None = None  # the width of cached features, when the trials train heads on them
        self.cut: backbone_cut.CutBackbone | None = None  # the cut backbone, when the trials train its top

    def prepare(
        self, table: pd.DataFrame, folder: Path, progress: Progress, stop: StopFlag, log: Log, timings: dict[str, float]
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Build what this kind needs, then decode the images or fill the cache; records the time under `timing_key`.

        Returns the table without the images that could not be decoded (they join the run's list of
        unreadable files) and the inputs aligned with it.
        """
        self._build()
        clock = time.monotonic()
        progress.update(phase="decoding images", message=f"decoding {len(table)} images at {self.settings.image_size} px", force=True)
        log(f"decoding {len(table)} images at {self.settings.image_size} px (cached per size)")
        inputs, errors = self._load(table, progress, stop, log)
        table, inputs = drop_undecodable(table, inputs, errors, folder, log)
        timings[self.timing_key] = time.monotonic() - clock
        return table, inputs

    def _build(self) -> None:
        """Build what the inputs are computed with (nothing by default)."""

    def _load(self, table: pd.DataFrame, progress: Progress, stop: StopFlag, log: Log) -> tuple[np.ndarray, list[folders.UnreadableFile]]:
        """The inputs of every row of `table` (undecodable rows included) and the files that could not be decoded."""
        raise NotImplementedError

    def datasets(self, inputs: np.ndarray, targets: np.ndarray, part: dict[str, np.ndarray]) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """The training (shuffled) and validation `tf.data` datasets of `prepare`'s inputs."""
        settings = self.settings
        train = loading.make_tf_dataset(inputs[part["train"]], targets[part["train"]], settings.batch_size, shuffle=True, seed=settings.seed)
        val = loading.make_tf_dataset(inputs[part["val"]], targets[part["val"]], settings.batch_size)
        return train, val

    def saved_model(self, trained: keras.Model) -> keras.Model:
        """The model saved to the run, which takes pixels: here the trained model itself."""
        return trained

    def evaluate(self, trained: keras.Model, saved: keras.Model, inputs: np.ndarray, data: EvaluationData, folder: Path,
                 val_stressed: dict[str, np.ndarray] | None = None) -> dict:
        """The saved model on the validation and test pixels: exactly what `predict` will give later."""
        settings = self.settings
        return evaluation.evaluate_model(
            saved, data.pixels, data.labels[data.rows], data.table[data.rows], data.held_out_part, settings.engine,
            settings.batch_size, tta=settings.tta, cache_path=folder / artifacts.TFLITE_MODEL, task=settings.task_info,
            val_stressed=val_stressed,
        )

    def stressed_scores(self, trained: keras.Model, saved: keras.Model, data: EvaluationData, folder: Path,
                        stop: StopFlag, log: Log) -> dict[str, np.ndarray]:
        """The saved model's probabilities on the validation images under each stress-test change
        (`core.evidence.stress`), by change."""
        settings = self.settings

        def score(images: np.ndarray) -> np.ndarray:
            return evaluation.probabilities(saved, images, settings.engine, settings.batch_size, folder / artifacts.TFLITE_MODEL, settings.tta)[0]

        return stress.stressed_scores(score, np.asarray(data.pixels)[data.held_out_part["val"]])

    def record(self) -> dict:
        """What metrics.json says about the inputs: which cache the trials trained on, if any."""
        return {"feature_cache": False, "activation_cache": None}


class PixelInputs(SearchInputs):
    """Decoded pixels: the custom CNN, a backbone fine-tuned whole, or a frozen backbone without the feature cache.

    Every step runs the whole model on the images. This kind does what the caches cannot: a model
    without a backbone, augmentation drawn afresh every step or searched per trial, a backbone
    that changes below any cut. With a backbone it is by far the slowest on a CPU, which is why
    the cached kinds below exist.
    """

    timing_key = "decode_s"

    def _build(self) -> None:
        if self.spec is None:
            return
        if self.settings.mode == "frozen":
            # Built once and left unused, as the search always did: it checks the weights now, and its
            # initializers' draws from the seeded random state shape what every trial starts from.
            backbones.build_backbone(self.spec)
        else:
            backbones.resolve_weights(self.spec)  # fail on missing weights now, not in every trial

    def _load(self, table, progress, stop, log):
        return loading.load_images(
            list(table["path"]), self.settings.image_size, pixel_cache(self.settings),
            progress=lambda done, total: progress.update(message=f"decoded {done}/{total}"),
        )


class FeatureInputs(SearchInputs):
    """Pooled features of a frozen backbone, computed once per image ever (`core.search.features`).

    The backbone never changes in frozen mode, so pushing every image through it every epoch would
    repeat the same minutes of CPU work: the trials train small heads on the cached vectors instead.
    """

    timing_key = "features_s"
    backbone = None  # the frozen backbone, once built

    def _build(self) -> None:
        self.backbone = backbones.build_backbone(self.spec)

    def _load(self, table, progress, stop, log):
        settings = self.settings
        values, errors = features.cached_features(
            self.backbone, self.spec, list(table["path"]), settings.image_size, cache_root(settings),
            engine=settings.engine, seed=settings.seed,
            progress=lambda done, total: progress.update(message=f"features {done}/{total}"),
            log=log, stop=stop.check,
        )
        self.n_features = values.shape[1]
        return values, errors

    def saved_model(self, trained: keras.Model) -> keras.Model:
        """The frozen backbone with the trained head on top."""
        return builders.attach_head(self.backbone, trained)

    def evaluate(self, trained, saved, inputs, data, folder, val_stressed=None) -> dict:
        """The head on the cached features: the saved model's numbers, much faster. Test-time
        augmentation needs pixels: then the saved model on pixels."""
        settings = self.settings
        if settings.tta > 1:
            return super().evaluate(trained, saved, inputs, data, folder, val_stressed)
        return evaluation.evaluate_model(
            trained, inputs, data.labels, data.table, data.part, settings.engine, settings.batch_size,
            task=settings.task_info, val_stressed=val_stressed,
        )

    def record(self) -> dict:
        return {**super().record(), "feature_cache": True}


class ActivationInputs(SearchInputs):
    """Activations of a backbone's frozen bottom at a cut, cached once (`core.search.activations`).

    Fine-tuning the top blocks makes the features fit chest X-rays, but running the whole backbone
    every epoch costs minutes per epoch on a CPU while the bottom never changes: the trials train
    the top above the cut, and a head, on cached activations. Augmentation happens below the cut, so
    `views` augmented copies of each training image are cached too, and each epoch draws one of them
    per image. Activations are float16 and the views need pixels: the saved model (bottom, top and
    head joined again) is evaluated on pixels.
    """

    timing_key = "activations_s"
    views: np.ndarray | None = None  # (views, training rows, ...) augmented activations; None without augmentation

    def _build(self) -> None:
        self.cut = backbone_cut.split_backbone(backbones.build_backbone(self.spec), self.settings.cut_layer)

    def _load(self, table, progress, stop, log):
        settings = self.settings
        train_rows = (table["split"] == "train").to_numpy()
        cached = activations.cached_activations(
            self.cut, self.spec, list(table["path"]), train_rows, cache_root(settings),
            augmentation.preset(settings.augment), settings.augment_views, seed=settings.seed, engine=settings.engine,
            progress=lambda message: progress.update(message=message), log=log, stop=stop.check, views_seed=settings.views_seed,
        )
        self.views = _without_undecodable_views(cached.views, table, train_rows, cached.errors)
        return cached.clean, cached.errors

    def datasets(self, inputs, targets, part):
        """Training draws one cached augmented view per image per epoch; validation reads the clean activations."""
        settings = self.settings
        rows = np.flatnonzero(part["train"])
        # The views cover the rows that were training rows when they were cached: every row for a
        # cross-fit (core.workflows.cross_fit), whose folds each train on a part of them.
        covers_all = self.views is not None and self.views.shape[1] == len(inputs)
        train = activations.training_dataset(self.views, inputs[rows], targets[rows], settings.batch_size, settings.seed,
                                             view_index=rows if covers_all else None)
        val = loading.make_tf_dataset(np.asarray(inputs[part["val"]], np.float32), targets[part["val"]], settings.batch_size)
        return train, val

    def saved_model(self, trained: keras.Model) -> keras.Model:
        """The frozen bottom joined to the trained top and head at the cut."""
        return backbone_cut.join(self.cut, trained)

    def stressed_scores(self, trained, saved, data, folder, stop, log) -> dict[str, np.ndarray]:
        """The same probabilities, through the trained top alone over the changed images' cached
        bottom activations (`activations.stressed_activations`): bit for bit the saved model's, and
        after the first run of a backbone and cut, about a quarter of the work. Test-time
        augmentation needs pixels."""
        from core.models.engine import make_engine

        settings = self.settings
        if settings.tta > 1:
            return super().stressed_scores(trained, saved, data, folder, stop, log)
        val = data.held_out_part["val"]
        changed = activations.stressed_activations(
            self.cut, self.spec, list(data.table.loc[data.rows, "path"][val]), np.asarray(data.pixels)[val],
            cache_root(settings), seed=settings.seed, engine=settings.engine, log=log, stop=stop.check,
        )
        top = make_engine(trained, settings.engine)
        return {name: builders.positive_probability(top.predict(bottom, batch_size=settings.batch_size)).astype(float)
                for name, bottom in changed.items()}

    def record(self) -> dict:
        settings = self.settings
        return {**super().record(), "activation_cache": {"cut": self.cut.cut, "augment": settings.augment, "views": settings.augment_views}}


def _without_undecodable_views(views: np.ndarray | None, table: pd.DataFrame, train_rows: np.ndarray, errors) -> np.ndarray | None:
    """The views hold the training rows only: drop the undecodable ones there too, to stay aligned."""
    if views is None or not errors:
        return views
    bad = table["path"].isin({e.path for e in errors}).to_numpy()
    return views[:, ~bad[train_rows]]


def for_settings(settings: SearchSettings) -> SearchInputs:
    """The input kind a search trains on (nothing is built yet: `prepare` does that)."""
    if settings.backbone() is not None and settings.mode == "frozen" and settings.feature_cache:
        return FeatureInputs(settings)
    if settings.uses_activation_cache:
        return ActivationInputs(settings)
    return PixelInputs(settings)
