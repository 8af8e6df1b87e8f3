"""The explanation methods, as one registry, and the one way a saved run's own model explains an image.

Every method maps (model, pixels (S, S, 3) float 0..255, class index or None) to a heatmap (h, w)
float32 in [0, 1]: 1 at the hottest point, all zeros when nothing speaks for the explained class,
the heat being evidence for that class (the positive class of a sigmoid; the chosen class, else the
predicted one, of a softmax). The resolution is the method's own (Grad-CAM's feature map, the
input's pixels, a transformer's patch grid): overlays and regions stretch it to the image
(`core.evidence.heatmap_grid.stretch`). Any kind of run (an ensemble's members each at its own size)
is explained through `core.inference.run_kinds.heatmap`, which names the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data import loading
from core.data.tasks import task_for
from core.inference import attention, evaluation, explanation, gradients, perturbation

if TYPE_CHECKING:
    import keras

    from core.runs.artifacts import Run

Compute = Callable[["keras.Model", np.ndarray, "int | None"], np.ndarray]


@dataclass(frozen=True)
class ExplanationMethod:
    """One way to explain an image. `name` is the command line's id, `label` the pages' name,
    `summary` one line on what the heat means; `model_agnostic` when it needs only predictions (any
    model), else it reads gradients or layers of a Keras model."""

    name: str
    label: str
    summary: str
    model_agnostic: bool
    compute: Compute
    needs: Callable[[keras.Model], str] = lambda _model: ""

    def problem(self, model: keras.Model) -> str:
        """"" when the method applies to `model`, else why not (in words for a user)."""
        from core.models.imported import ForeignModel

        if isinstance(model, ForeignModel) and not self.model_agnostic:
            return (f"{self.label} reads a Keras model's gradients or layers, and this model is an imported "
                    f"{model.adapter.format} file: use occlusion, which needs only its predictions")
        return self.needs(model)


def _feature_map_problem(model) -> str:
    try:
        explanation.find_last_feature_map(model)
    except ValueError as error:
        return f"{error}: Grad-CAM explains convolutional models"
    return ""


def _attention_problem(model) -> str:
    return "" if attention.attention_layers(model) else attention.NO_ATTENTION


def _occlusion(model: keras.Model, pixels: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """Occlusion with the Keras model itself as the scorer: the explained column of its output."""
    batch = explanation.network_input(pixels, model)
    column = explanation.explained_column(np.asarray(model(batch, training=False)), class_index)

    runner = evaluation.engine_for(model)  # hundreds of occluded copies: through the fast engine

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(runner.predict(np.asarray(images, np.float32), batch_size=64))[:, column]

    return perturbation.occlusion(predict, batch[0])


METHODS: dict[str, ExplanationMethod] = {
    method.name: method
    for method in (
        ExplanationMethod(
            "gradcam", "Grad-CAM",
            "regions of the last feature map whose activation raises the class's score (coarse, one cell per feature-map position)",
            False, lambda model, pixels, class_index: explanation.grad_cam(model, pixels, class_index=class_index),
            _feature_map_problem,
        ),
        ExplanationMethod(
            "gradcam++", "Grad-CAM++",
            "as Grad-CAM, each position's gradient weighed on its own: several separate regions of one class all show",
            False, lambda model, pixels, class_index: explanation.grad_cam_plus_plus(model, pixels, class_index=class_index),
            _feature_map_problem,
        ),
        ExplanationMethod(
            "occlusion", "Occlusion",
            "how much the class's probability drops when a patch of the image is blurred away",
            True, _occlusion,
        ),
        ExplanationMethod(
            "smoothgrad", "SmoothGrad",
            "pixels whose small change moves the class's score most, averaged over noisy copies of the image",
            False, lambda model, pixels, class_index: gradients.smoothgrad(model, pixels, class_index=class_index),
        ),
        ExplanationMethod(
            "rollout", "Attention rollout",
            "image patches a transformer's tokens draw their information from, through all its attention layers (class-blind)",
            False, attention.attention_rollout, _attention_problem,
        ),
    )
}
DEFAULT_METHOD = "gradcam"


def method_named(name: str) -> ExplanationMethod:
    """The method with id `name`; ValueError naming the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown explanation method {name!r}: choose one of {', '.join(METHODS)}") from None


def heatmap_for_run(
    run: Run, image_path: str | Path, model: keras.Model | None = None, class_name: str | None = None, method: str = DEFAULT_METHOD
) -> tuple[np.ndarray, Image.Image]:
    """`method`'s heatmap of a saved run's own model on one image file: (heatmap, the original image at its own size).

    A multi-class run explains `class_name` (one of its task's classes), by default its predicted
    class; a two-class run always explains its positive class. ValueError when the method does not
    apply to the run's model (`ExplanationMethod.problem`).

    The network sees the image as prediction does (squashed to the run's square input size); the
    original is returned unresized so the overlay can keep its aspect ratio. One model only: any
    kind of run is explained by `core.inference.run_kinds.heatmap`.
    """
    chosen = method_named(method)
    model = model or evaluation.load_model(evaluation.own_model_path(run))
    if problem := chosen.problem(model):
        raise ValueError(f"{chosen.label} does not apply to run {run.name!r}: {problem}")
    task = task_for(run.task)
    class_index = task.classes.index(class_name) if class_name in task.classes and not task.is_binary else None
    pixels = loading.to_network_input(loading.load_image(image_path, evaluation.run_image_size(run))[None])[0]
    return chosen.compute(model, pixels, class_index), explanation.load_original(image_path)


def default_for(transformer: bool, gradients: bool = True) -> str:
    """The method shown first: occlusion when some model has no gradients to read (an imported TF
    Lite, ONNX or SavedModel file: it needs only predictions), attention rollout for transformer
    models (their own explanation), Grad-CAM for the rest (the most faithful of the cheap ones on the
    recipe's CNNs, docs/measurements.md)."""
    if not gradients:
        return "occlusion"
    return "rollout" if transformer else DEFAULT_METHOD
