"""The Keras Tuner hypermodel of a search: which model a trial builds from its hyperparameters.

Kept apart from `core.models` because it subclasses Keras Tuner's `HyperModel`, which loads
TensorFlow: the dashboard's pages read the model registry without paying for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import keras_tuner

from core.data.tasks import PNEUMONIA, Task
from core.models.backbone_cut import split_backbone
from core.models.backbones import BackboneSpec, build_backbone
from core.models.builders import (
    build_custom_cnn,
    build_cut_finetune,
    build_finetune,
    build_head,
    build_hybrid,
    build_vit,
)
from core.models.families import FAMILIES


@dataclass
class SearchSpace(keras_tuner.HyperModel):
    """The Keras Tuner hypermodel of one search: which family, mode, input and task.

    In frozen mode it builds heads on `n_features` inputs; otherwise whole image models.
    """

    family: str
    mode: str
    image_size: int
    backbone: BackboneSpec | None = None
    n_features: int | None = None
    task: Task = field(default=PNEUMONIA)
    augment: str = "off"  # an augmentation preset, or "search" (in-model augmentation only)
    cut: object | None = None  # an activations.CutBackbone: finetune on cached activations
    weights: str = "none"  # a ViT's: "none" (from scratch) or a .weights.h5 file of its shape

    def __post_init__(self):
        keras_tuner.HyperModel.__init__(self, name=f"{self.family}-{self.mode}", tunable=True)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        if FAMILIES[self.family].patches:  # a plain ViT on pixels, from scratch or a weights file of its shape
            return build_vit(hp, self.image_size, self.task, self.augment, self.weights)
        if self.backbone is None:
            return build_custom_cnn(hp, self.image_size, self.task, self.augment)
        if FAMILIES[self.family].hybrid:  # on cached activations; without them, on pixels through the frozen stem
            cut = self.cut or split_backbone(build_backbone(self.backbone), self.backbone.arch.default_cut)
            return build_hybrid(hp, cut, self.task, joined=self.cut is None)
        if self.mode == "frozen" and self.n_features:
            return build_head(hp, self.n_features, self.task)
        if self.mode == "frozen":  # no feature cache: the frozen backbone runs in every step
            return build_finetune(hp, self.backbone, self.task, unfreeze=0)
        if self.cut is not None:
            return build_cut_finetune(hp, self.cut, self.task)
        return build_finetune(hp, self.backbone, self.task, augment=self.augment)
