"""The cost model of a search on a CPU: its time estimated before it starts, and the time left while
it runs.

Each family's figures per image live on its entry (`core.models.families.Cost`); the figures
here are what a search costs besides them, calibrated on the whole runs of `MEASURED` (the
recommended recipe on 2 x86-64 cores; docs/measurements.md, "How long a search takes"). Every
time the dashboard and the command line quote, estimated or measured, comes from this module:
`estimate_search_s` (and `estimate_phases`) for the estimate, `about` for how it is written, and
`MEASURED` for what real runs took.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.evidence import stress
from core.models import families
from core.runs.progress import trials_finished


def estimate_remaining_s(progress: dict) -> float | None:
    """Seconds left, from the time spent so far on the trials and epochs already done."""
    finished = trials_finished(progress)
    if finished is None or finished <= 0 or progress.get("phase") != "searching":
        return None
    elapsed = (progress.get("elapsed_s") or 0.0) + (progress.get("elapsed_before_s") or 0.0)
    return max(0.0, elapsed / finished * (progress["trials_total"] - finished))


# --------------------------------------------------------------------------
# What real runs took: the figures the estimate is calibrated on
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredRun:
    """One run measured end to end on the reference machine: its settings, its images and its times
    (`progress.json`'s `elapsed_s`, and `metrics.json`'s `timings` per phase)."""

    name: str  # the run folder it was read from
    preset: str  # the preset (or recipe step) it ran
    trials: int
    epochs: int
    views: int  # cached augmented views per training image
    warm: bool  # the pixels and un-augmented activations were already cached by an earlier step
    elapsed_s: float
    timings: dict  # metrics.json "timings": scan, activations, search (training), stress, evaluate
    views_cached: bool = False  # its augmented views were cached by the run it draws on (a repeat, a runner-up)


# The recommended recipe (`python -m core recipe --name cold`) into an empty artifacts folder (its
# caches empty too) on 2 cores of an otherwise idle machine, 2026-12-04, with the stress test's 15
# changes; MobileNetV2 fine-tuned on cached activations at 224 px, seed 42, then its runner-up trial
# kept as a run (nothing trains: the stress test's top pass and the evaluation). Its data: the chest
# X-ray folder's 5,528 images, split by patient into 4,470 training, 746 validation and 312 test
# images. (Beside other work the figures below grow by half, and the same idle machine's epochs vary
# from 12 to 16 s from hour to hour; these were measured at 16: docs/measurements.md, "How long a
# search takes".)
MEASURED_DATA = {"images": 5528, "train": 4470, "val": 746}
MEASURED = (
    MeasuredRun("cold-recommended", "recommended", 4, 6, 3, False, 518.5,
                {"scan_s": 0.68, "activations_s": 77.30, "search_s": 385.05, "stress_s": 46.51, "evaluate_s": 7.68}),
    MeasuredRun("cold-runner-up", "runner-up", 0, 6, 3, True, 17.9,
                {"scan_s": 0.03, "activations_s": 0.04, "search_s": 0.01, "stress_s": 9.12, "evaluate_s": 7.41}, views_cached=True),
)
MEASURED_RECIPE_S = sum(run.elapsed_s for run in MEASURED)  # the ensemble step adds a fraction of a second
TOLERANCE = 0.15  # the estimate of each measured run is within this share of its measured time (tests/test_search.py)


# --------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------

# What a search costs besides the family's own figures (`families.Family.cost`), per image at the
# family's default size; calibrated on `MEASURED` where a MobileNetV2 run measures them.
STARTUP_S = 2.0  # scanning the folder, building the model (TensorFlow's import comes before the run's clock starts)
# First decode and resize of an X-ray (pixels are cached per size afterwards): on 2 cores it overlaps the
# bottom pass, so it adds little; a quick-preset run's activations (decode, bottom pass, one augmented view)
DECODE_MS = 0.6
AUGMENT_MS = 1.7  # one augmented view of one image, cached (Keras preprocessing layers); MEASURED recommended's and repeat's activations
HEAD_STEP_MS = 0.1  # a head on cached feature vectors
TRIAL_S = 0.5  # a fine-tuning trial besides its epochs: model build, best weights restored; a one-trial repeat timed on 2026-12-04
# A fine-tuning epoch besides its steps and validation pass (the best weights kept, progress written, a new
# iterator): an epoch's parts timed on 2 cores (docs/measurements.md, "How long a search takes")
FINETUNE_EPOCH_S = 0.5
KERAS_PASS = 1.25  # a whole-model pass through Keras (stress test, evaluation) over the engine's `frozen_pass_ms`; MEASURED stress
# The chosen model made ready to score and keep, once per fine-tuned run: converted for the engine (TF
# Lite), saved, timed on a few images. MEASURED runner-up's evaluation, which does nothing else besides.
MODEL_FILES_S = 4.0
# The stress test scores the validation images as they are and under each change (core.evidence.stress):
# 16 ways today, as in the measured recipe.
STRESS_CONDITIONS = 1 + len(stress.PERTURBATIONS)

TRAIN_SHARE, VAL_SHARE = 0.7, 0.15  # of the images, when splits are carved from one pool
VAL_FRACTION = 0.15  # of train/, when a test/ folder is kept (core.data.splitting.assign_splits)


def split_sizes(summary: dict, n_images: int | None = None) -> tuple[int, int, int]:
    """(images, training, validation) a search of the folder `summary` (`splitting.summarize`) would
    use: a summary already split says; a `test/` folder is kept and the validation split carved from
    train/; otherwise the default shares. `n_images` (fewer, e.g. with a per-class cap) keeps the shares."""
    total = int(summary.get("total_images") or 0)
    images = {split: sum(counts.values()) for split, counts in (summary.get("images") or {}).items()}
    if summary.get("split_by") == "split" and images.get("train"):
        train_share, val_share = images["train"] / total, images.get("val", 0) / total
    elif images.get("test") and total > images["test"]:
        pool = (total - images["test"]) / total
        train_share, val_share = pool * (1 - VAL_FRACTION), pool * VAL_FRACTION
    else:
        train_share, val_share = TRAIN_SHARE, VAL_SHARE
    n = total if n_images is None else min(n_images, total)
    return n, round(n * train_share), round(n * val_share)


def estimate_phases(
    family: str, mode: str, image_size: int, trials: int, epochs: int, n_images: int,
    activation_cache: bool = True, views: int = 0, version: str | None = None,
    n_train: float | None = None, n_val: float | None = None, warm: bool = False, views_cached: bool = False,
) -> dict[str, float]:
    """A search's time on a 2-core CPU before it starts, per phase, named as `metrics.json`'s timings.

    Frozen transfer learning pays for one backbone pass, then seconds per trial; fine-tuning pays
    for one pass below the cut (and one per augmented view), then a step of the top per image and
    epoch, and the stress test; the custom CNN and uncached fine-tuning pay a whole training step
    per image and epoch. Costs scale with the pixel count. `n_train` and `n_val` default to the
    shares of a carved split (`split_sizes` gives a folder's own); `warm`: the pixels, the
    un-augmented activations and the stress test's bottom pass are cached by an earlier run at the
    same size (a recipe's later steps); `views_cached`: the augmented views too (a repeat's, drawn by
    its source).
    """
    info = families.FAMILIES[family]
    cost = info.cost_for(version)  # a hybrid's stem costs what its own family measured
    scale = (image_size / info.default_image_size) ** 2
    n_train = TRAIN_SHARE * n_images if n_train is None else n_train
    n_val = VAL_SHARE * n_images if n_val is None else n_val
    n_test = max(0.0, n_images - n_train - n_val)
    decode = 0.0 if warm else n_images * DECODE_MS / 1000
    epoch_images = n_train + n_val / 3  # validation: forward only
    if not info.transfer:
        step = cost.scratch_step_ms * scale / 1000
        return {"scan_s": STARTUP_S, "activations_s": decode, "search_s": trials * epochs * epoch_images * step}
    if mode == "frozen":
        features = n_images * cost.frozen_pass_ms * scale / 1000
        return {"scan_s": STARTUP_S, "activations_s": decode + features,
                "search_s": trials * (0.5 + epochs * n_train * HEAD_STEP_MS / 1000)}
    keras_pass = cost.frozen_pass_ms * KERAS_PASS * scale / 1000
    phases = {"scan_s": STARTUP_S, "stress_s": STRESS_CONDITIONS * n_val * keras_pass,
              "evaluate_s": MODEL_FILES_S + (n_val + n_test) * keras_pass}
    if activation_cache:
        clean = 0 if warm else n_images
        fresh_views = 0 if views_cached else views
        bottom = (clean + fresh_views * n_train) * cost.bottom_pass_ms * scale / 1000 + fresh_views * n_train * AUGMENT_MS * scale / 1000
        step = cost.top_step_ms * scale / 1000
        if warm and cost.top_pass_ms:  # the changed images' bottom pass is cached: only the top passes them
            phases["stress_s"] = len(stress.PERTURBATIONS) * n_val * cost.top_pass_ms * scale / 1000
        return {**phases, "activations_s": decode + bottom,
                "search_s": trials * (TRIAL_S + epochs * (FINETUNE_EPOCH_S + epoch_images * step))}
    step = cost.finetune_step_ms * scale / 1000
    return {**phases, "activations_s": decode, "search_s": trials * (TRIAL_S + epochs * (FINETUNE_EPOCH_S + epoch_images * step))}


def estimate_search_s(
    family: str, mode: str, image_size: int, trials: int, epochs: int, n_images: int,
    activation_cache: bool = True, views: int = 0, version: str | None = None,
    n_train: float | None = None, n_val: float | None = None, warm: bool = False, views_cached: bool = False,
) -> float:
    """A search's whole time on a 2-core CPU, before it starts (`estimate_phases`, summed)."""
    return sum(estimate_phases(family, mode, image_size, trials, epochs, n_images, activation_cache, views, version,
                               n_train, n_val, warm, views_cached).values())


def about(seconds: float) -> str:
    """An estimate as the pages and presets write it, rounded to what it can promise: "about 4 min"."""
    if seconds < 50:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min" if minutes % 60 else f"about {minutes // 60} h"


def took(seconds: float) -> str:
    """A measured time as the pages and docs quote it: "25 min 28 s"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds < 3600 else f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"
