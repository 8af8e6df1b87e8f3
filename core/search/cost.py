"""The cost model of a search on a CPU: its time estimated before it starts, and the time left while
it runs.

Each family's figures per image live on its entry (`core.models.families.Cost`); the figures
here are what a search costs besides them, measured on the reference machine (2 x86-64 cores;
docs/measurements.md).
"""

from __future__ import annotations

from core.models import families
from core.runs.progress import trials_finished


def estimate_remaining_s(progress: dict) -> float | None:
    """Seconds left, from the time spent so far on the trials and epochs already done."""
    finished = trials_finished(progress)
    if finished is None or finished <= 0 or progress.get("phase") != "searching":
        return None
    elapsed = (progress.get("elapsed_s") or 0.0) + (progress.get("elapsed_before_s") or 0.0)
    return max(0.0, elapsed / finished * (progress["trials_total"] - finished))


# What a search costs besides the family's own figures (`families.Family.cost`), per image on the
# same reference machine (docs/measurements.md, "Benchmarks").
AUGMENT_MS = 6.0  # one augmented view of one image at 224 px (Keras preprocessing layers)


STRESS_CONDITIONS = 7  # the stress test scores the validation images this many ways (core.evidence.stress)


HEAD_STEP_MS = 0.1  # a head on cached feature vectors


STARTUP_S = 10.0  # TensorFlow import, scanning, model build and conversion


DECODE_MS = 1.5  # first decode and resize (pixels are cached per size afterwards)


TRAIN_SHARE, VAL_SHARE = 0.7, 0.15  # of the images, when splits are carved


def estimate_search_s(
    family: str, mode: str, image_size: int, trials: int, epochs: int, n_images: int,
    activation_cache: bool = True, views: int = 0, version: str | None = None,
) -> float:
    """Order of magnitude of a search's time on a 2-core CPU, before it starts.

    Frozen transfer learning pays for one backbone pass, then seconds per trial; fine-tuning pays
    for one pass below the cut (and one per augmented view), then a step of the top per image and
    epoch; the custom CNN and uncached fine-tuning pay a whole training step per image and epoch.
    Costs scale with the pixel count.
    """
    info = families.FAMILIES[family]
    cost = info.cost_for(version)  # a hybrid's stem costs what its own family measured
    scale = (image_size / info.default_image_size) ** 2
    n_train, n_val = TRAIN_SHARE * n_images, VAL_SHARE * n_images
    fixed = STARTUP_S + n_images * DECODE_MS / 1000
    if not info.transfer:
        step = cost.scratch_step_ms * scale / 1000
        return fixed + trials * epochs * (n_train + n_val / 3) * step  # validation: forward only
    if mode == "frozen":
        features = n_images * cost.frozen_pass_ms * scale / 1000
        return fixed + features + trials * (0.5 + epochs * n_train * HEAD_STEP_MS / 1000)
    stress = STRESS_CONDITIONS * n_val * cost.frozen_pass_ms * scale / 1000
    if activation_cache:
        bottom = (n_images + views * n_train) * cost.bottom_pass_ms * scale / 1000 + views * n_train * AUGMENT_MS * scale / 1000
        step = cost.top_step_ms * scale / 1000
        return fixed + bottom + stress + trials * (1.0 + epochs * (n_train + n_val / 3) * step)
    step = cost.finetune_step_ms * scale / 1000
    return fixed + trials * epochs * (n_train + n_val / 3) * step
