"""Search settings: what defines a search, its defaults and its checks.

`SearchSettings` is saved as `settings.json` in the run folder and read back on resume;
`resolved()` fills in the defaults that depend on other settings and refuses settings that cannot
work with a `SettingsError` naming the problem. No Keras import: the CLI's `--help` and the
dashboard's Tune form build and check settings without TensorFlow.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

from core.data import augmentation, tasks
from core.models import backbones, families, search_space
from core.runs import artifacts

TUNERS = ("random", "bayesian", "hyperband")


class SettingsError(ValueError):
    """Search settings that cannot work; the message says which and why."""


@dataclass
class SearchSettings:
    """Everything that defines a search; saved as `settings.json` in the run folder."""

    data_dir: str
    family: str = "custom_cnn"
    # What the models predict (core.data.tasks): "pneumonia", "bacterial_vs_viral" or "three_class".
    # Runs saved before tasks existed have none: they are pneumonia runs.
    task: str = tasks.DEFAULT
    tuner: str = "random"
    trials: int = 10
    epochs: int = 5
    image_size: int | None = None  # None: the family's default
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    mode: str = "frozen"  # transfer families: "frozen" (cached features) or "finetune"
    batch_size: int = 32
    seed: int = 42
    max_per_class: int | None = None
    name: str | None = None
    artifacts_dir: str = "artifacts"
    mobilenet_version: str = "v2"
    alpha: float = 1.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    feature_cache: bool = True
    engine: str = "auto"
    # finetune mode: train the layers above `cut` (None: the architecture's default) on cached
    # activations of the layers below it; off, every step runs the whole backbone (slow on a CPU)
    activation_cache: bool = True
    cut: str | None = None
    augment: str = "off"  # an augmentation preset (core.data.augmentation), or "search" for in-model augmentation
    augment_views: int = 3  # augmented copies of each training image cached for cut-point fine-tuning
    # The seed those copies are drawn with; None: `seed`. A repeat keeps its source's (core.workflows.repeat):
    # its seeds then train on the views already cached and differ in everything the training seed draws.
    views_seed: int | None = None
    tta: int = 1  # test-time augmentation: views averaged when evaluating and predicting (1: off)
    stress_test: bool = True  # measure the model on changed validation images (core.evidence.stress)
    # edits of the default search space (core.models.search_space), e.g. {"dropout": 0.2}; None: the default space
    space: dict | None = None
    # Every hyperparameter fixed to these values (name -> value): the search trains that one model.
    # `core.workflows.repeat` retrains a run's best hyperparameters this way with other seeds. Unlike a `space`
    # edit, this replays a finished trial exactly, hyperparameters outside the editable space included.
    fixed_hyperparameters: dict | None = None
    # Another search's finished trial kept as this run, {"source": RUN, "rank": K, "trial_id": ID}: nothing
    # trains, the trial's saved best epoch is evaluated as a search evaluates its best (core.workflows.runner_up).
    kept_trial: dict | None = None
    cache_dir: str | None = None  # the shared pixel and feature caches, when not `artifacts_dir/.cache`
    # Early stopping per trial: end a trial after this many epochs without a better validation AUC.
    # 0 = off by default: the presets were measured without it, and their 1-6 epochs leave little to cut.
    patience: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> SearchSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def task_info(self) -> tasks.Task:
        return tasks.task_for(self.task)

    @property
    def family_info(self) -> families.Family:
        return families.FAMILIES[self.family]

    def resolved(self) -> SearchSettings:
        """Fill in defaults that depend on other settings, then check the whole."""
        settings = copy.replace(self) if hasattr(copy, "replace") else copy.copy(self)
        if settings.family not in families.FAMILIES:
            raise SettingsError(f"unknown family {settings.family!r}: choose one of {', '.join(families.FAMILIES)}")
        family = settings.family_info
        settings.data_dir = os.path.abspath(os.path.expanduser(settings.data_dir))
        settings.task = tasks.canonical_name(settings.task)
        settings.image_size = settings.image_size or family.default_image_size
        if not family.transfer:
            # no ImageNet weights from scratch; a ViT may start from a weights file of its own shape
            keeps_file = family.patches and settings.weights not in backbones.WEIGHTS_CHOICES
            settings.weights, settings.mode = settings.weights if keeps_file else "none", "scratch"
        if not settings.name:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            settings.name = f"{settings.family}-{settings.mode}-{stamp}"
        settings.check()
        settings.space = search_space.canonical_edits(settings.default_space(), settings.space) or None
        return settings

    def check(self) -> None:
        problems = []
        if tasks.canonical_name(self.task) not in tasks.TASKS:
            problems.append(f"task must be one of {', '.join(tasks.TASKS)}")
        if self.tuner not in TUNERS:
            problems.append(f"tuner must be one of {', '.join(TUNERS)}")
        if self.family_info.transfer and self.mode not in families.MODES:
            problems.append(f"mode must be one of {', '.join(families.MODES)}")
        elif self.family_info.hybrid and not self.uses_activation_cache:
            problems.append(f"{self.family} ({self.family_info.title}) trains its transformer on cut-point activations only: "
                            "it needs --mode finetune with the activation cache on (no --mode frozen, no --no-activation-cache)")
        if not 1 <= int(self.trials) <= 1000:
            problems.append("trials must be between 1 and 1000")
        if not 1 <= int(self.epochs) <= 1000:
            problems.append("epochs must be between 1 and 1000")
        if self.tuner == "hyperband" and int(self.epochs) < 2:
            problems.append("hyperband needs at least 2 epochs (it trains candidates for more and more epochs)")
        if not 32 <= int(self.image_size) <= 1024:
            problems.append("image size must be between 32 and 1024 pixels")
        elif self.image_size < (smallest := self.family_info.min_size(self.mobilenet_version)):
            problems.append(f"{self.family} needs images of at least {smallest} pixels")
        if not 1 <= int(self.batch_size) <= 4096:
            problems.append("batch size must be between 1 and 4096")
        if self.max_per_class is not None and int(self.max_per_class) < 4:
            problems.append("max images per class must be at least 4 (or unset for all images)")
        family = self.family_info
        if family.versions and self.mobilenet_version not in family.versions:
            problems.append(f"{family.title} {family.version_label} must be one of {', '.join(family.versions)}")
        elif (widths := family.widths(self.mobilenet_version)) and self.alpha not in widths:
            problems.append(f"{family.title} {self.mobilenet_version} comes in widths (alpha) {', '.join(map(str, widths))}")
        if weights_problem := backbones.weights_problem(self.weights):
            problems.append(weights_problem)
        if not (0.05 <= self.val_fraction <= 0.4 and 0.05 <= self.test_fraction <= 0.4):
            problems.append("validation and test fractions must be between 0.05 and 0.4")
        if self.engine not in ("auto", "tflite", "keras"):
            problems.append("engine must be auto, tflite or keras")
        problems += self._augmentation_problems()
        if self.kept_trial is not None and not _is_kept_trial(self.kept_trial):
            problems.append("kept_trial must name a finished search's trial: {'source': RUN, 'rank': 2 or more, 'trial_id': ID}")
        if not 0 <= int(self.patience) <= 1000:
            problems.append("patience (early stopping) must be between 0 (off) and 1000 epochs")
        if not problems:  # the space depends on the settings above: check it once they hold
            problems += self._space_problems()
        if not 1 <= int(self.tta) <= augmentation.TTA_MAX_VIEWS:
            problems.append(f"test-time augmentation takes 1 (off) to {augmentation.TTA_MAX_VIEWS} views")
        if problems:
            raise SettingsError("; ".join(problems))
        artifacts.check_run_name(self.name)

    def _augmentation_problems(self) -> list[str]:
        problems = []
        if self.augment not in (*augmentation.AUGMENTATIONS, augmentation.SEARCH):
            problems.append(f"augmentation must be one of {', '.join(augmentation.AUGMENTATIONS)} or {augmentation.SEARCH}")
        elif self.augment != "off" and self.mode == "frozen":
            problems.append("augmentation needs --mode finetune or the custom CNN: frozen features are computed once, unaugmented")
        elif self.augment == augmentation.SEARCH and self.uses_activation_cache:
            problems.append("augmentation 'search' changes the images per trial, which the activation cache cannot: "
                            "pick a preset, or turn the activation cache off")
        elif self.augment in augmentation.AUGMENTATIONS and not augmentation.in_model(self.augment) and not self.uses_activation_cache:
            problems.append(f"augmentation {self.augment!r} blacks out borders or changes the acquisition on cached augmented views only: it needs "
                            "--mode finetune with the activation cache on (a backbone with a cut layer)")
        if not 1 <= int(self.augment_views) <= 16:
            problems.append("augmented views must be between 1 and 16")
        if self.cut and not self.uses_activation_cache:
            problems.append("a cut layer needs --mode finetune with the activation cache on")
        known_version = not self.family_info.versions or self.mobilenet_version in self.family_info.versions  # else reported above
        if self.uses_activation_cache and known_version and not self.cut_layer:
            problems.append(f"{self.backbone().architecture} has no default cut layer: pass --cut LAYER")
        return problems

    def _space_problems(self) -> list[str]:
        try:
            self.hyperparameters()
        except search_space.SpaceError as error:
            return [f"search space: {error}"]
        return []

    def default_space(self) -> dict[str, search_space.Hyperparameter]:
        """Every hyperparameter this search's trials draw, with its default range or choices."""
        return search_space.default_space(self.family, self.mode, int(self.image_size), self.augment, self.uses_activation_cache)

    def hyperparameters(self) -> dict[str, search_space.Hyperparameter]:
        """The search space after the user's edits (`space`); SpaceError when an edit cannot apply."""
        return search_space.apply_edits(self.default_space(), self.space)

    @property
    def uses_activation_cache(self) -> bool:
        return self.family_info.transfer and self.mode == "finetune" and bool(self.activation_cache)

    @property
    def cut_layer(self) -> str | None:
        spec = self.backbone()
        return self.cut or (spec.arch.default_cut if spec else None)

    def backbone(self) -> backbones.BackboneSpec | None:
        return self.family_info.backbone(self.image_size, self.weights, self.mobilenet_version, self.alpha)


def _is_kept_trial(kept) -> bool:
    return (isinstance(kept, dict) and isinstance(kept.get("source"), str) and isinstance(kept.get("trial_id"), str)
            and isinstance(kept.get("rank"), int) and not isinstance(kept.get("rank"), bool) and kept["rank"] >= 2)


def cache_root(settings: SearchSettings) -> Path:
    """Decoded pixels and backbone features are shared by runs: they live beside the runs."""
    return Path(os.environ.get("CXR_CACHE_DIR") or settings.cache_dir or Path(settings.artifacts_dir) / ".cache")


def pixel_cache(settings: SearchSettings) -> Path:
    """Where decoded pixels are cached, shared by runs (a search's, an imported model's)."""
    return cache_root(settings) / "pixels"
