"""Measure where a run looks: every explanation method on a seeded sample of its test images
(or of its validation images, to choose between runs without looking at test).

For each sampled image and method (`core.inference.methods`), through the one dispatch for any
kind of run (`core.inference.run_kinds`):

- deletion and insertion curves of the run's probability (`core.evidence.faithfulness`), beside the
  same curves for a random heatmap and a centred blob, which know nothing about the image;
- the share of heat in the border band and on bright text-like marks (`core.evidence.heat_location`).

Then a synthetic check with ground truth by construction (`core.evidence.synthetic_opacity`): a
patchy opacity (several soft blobs) inserted into the lung fields of healthy validation X-rays; how much the probability rises,
whether each method's heat peaks inside it, and the IoU of the extracted region
(`core.inference.regions`) with it. It is a check of the explanations, not a clinical
localisation benchmark.

The results go into the run folder (`core.evidence.localisation`), written at the end, whole; a
stop (`localisation.stop` in the run folder, or SIGTERM/SIGINT) leaves what was saved before as it
was. Progress goes to `localisation.progress.json`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core import files
from core.data import loading, tasks
from core.evidence import faithfulness, heat_location, synthetic_opacity
from core.evidence import localisation as saved_evidence
from core.inference import evaluation, methods, regions, run_kinds
from core.runs import artifacts
from core.runs.artifacts import Run, RunError
from core.runs.progress import ProgressFile, SearchStopped, StopFlag, now_utc

PER_CLASS = 16  # sampled test images per class: enough for a patient-bootstrap interval, minutes per run on 2 cores
SYNTHETIC = 16  # healthy validation images that get an inserted opacity
STEPS = 16  # points on each deletion/insertion curve after the start
REGION_SHARE = 0.5  # the region is the smallest area holding half the heat
LOCATION_PX = 512  # border and mark shares are measured on the image shrunk to this long side
# Seconds per model at the default sample on 2 cores, measured on the recipe's MobileNetV2 runs at
# 224 px while another job trained beside them: 188 s and 267 s for two runs, 437 s for their
# three-member ensemble (docs/measurements.md, "Where the models look").
SECONDS_PER_MODEL = 200
BASELINE_GRID = (7, 7)  # random and centred-blob maps are as coarse as MobileNet's Grad-CAM


def sample(predictions: pd.DataFrame, per_class: int = PER_CLASS, seed: int = 0) -> pd.DataFrame:
    """Up to `per_class` readable test images of each class, drawn with `seed`, in a stable order."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in (0, 1):
        rows = predictions[(predictions["y_true"] == label) & predictions["path"].map(lambda p: Path(p).is_file())]
        if len(rows):
            picked.append(rows.iloc[np.sort(rng.permutation(len(rows))[:per_class])])
    if not picked:
        raise RunError("none of the run's sampled images can be found on this machine: the data folder moved or is missing")
    return pd.concat(picked, ignore_index=True)


def estimated_s(runs: Sequence[Run], per_class: int = PER_CLASS, synthetic: int = SYNTHETIC) -> float:
    """About how long measuring `runs` takes: each model (an ensemble's members each) at the default sample's pace."""
    models = sum(max(1, len(run.members)) for run in runs)
    return models * SECONDS_PER_MODEL * (2 * per_class + synthetic) / (2 * PER_CLASS + SYNTHETIC)


def canvas_size(run: Run) -> int:
    """The square size the curves perturb at: the run's input size (an ensemble's largest member's)."""
    sizes = [s for s in run.settings.get("member_image_sizes") or [] if s]
    return int(max(sizes)) if sizes else evaluation.run_image_size(run)


def _pixels(path: str, size: int) -> np.ndarray:
    """The image as the network sees it, (size, size, 3) float32 in 0..255."""
    return np.repeat(loading.load_image(path, size).astype(np.float32), 3, axis=-1)


def _location_image(original: Image.Image) -> np.ndarray:
    """The grey image shrunk to at most LOCATION_PX on its long side, uint8 (H, W)."""
    picture = original.convert("L")
    picture.thumbnail((LOCATION_PX, LOCATION_PX), Image.Resampling.BILINEAR)
    return np.asarray(picture, np.uint8)


def _location(heatmap: np.ndarray, gray: np.ndarray) -> dict[str, float]:
    height, width = gray.shape
    marks = heat_location.bright_marks(gray)
    return {
        "border_share": heat_location.heat_share(heatmap, heat_location.border_mask(width, height)),
        "mark_share": heat_location.heat_share(heatmap, marks) if marks.any() else 0.0,
        "mark_area": float(marks.mean()),
    }


def _curves(score, pixels: np.ndarray, heatmap: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    return (faithfulness.deletion_curve(score, pixels, heatmap, steps=steps),
            faithfulness.insertion_curve(score, pixels, heatmap, steps=steps))


def _progress(folder: Path) -> ProgressFile:
    """`localisation.progress.json`: what is being measured, how far, and by which process."""
    return ProgressFile(folder / saved_evidence.PROGRESS_FILE, {
        "state": "running", "done": 0, "total": None, "message": "", "pid": os.getpid(), "host": artifacts.this_host(),
        "started_at": now_utc(), "error": None,
    })


def measure(
    run: Run,
    method_names: Sequence[str] | None = None,
    per_class: int = PER_CLASS,
    synthetic: int = SYNTHETIC,
    steps: int = STEPS,
    seed: int = 0,
    split: str = "test",
    load: run_kinds.ModelLoader = evaluation.load_model,
    echo: Callable[[str], None] = lambda _message: None,
) -> saved_evidence.Saved:
    """Measure and save where `run` looks (see the module docstring); returns what was saved.

    Raises `RunError` for a run it cannot measure (no test predictions, a three-class task, no test
    image on this machine) and `SearchStopped` when stopped; the run's earlier evidence is then kept.
    """
    task = tasks.task_for(run.task)
    if not task.is_binary:
        raise RunError(f"run {run.name!r} is a {task.title} run: where-it-looks measures two-class runs "
                       "(a three-class run's heatmap explains a different class on each image)")
    chosen = list(method_names or methods.METHODS)
    for name in chosen:
        methods.method_named(name)  # an unknown name fails before any work
    saved_evidence.file_name(saved_evidence.SUMMARY_FILE, split)  # an unknown split fails before any work
    predictions = run.predictions() if split == "test" else run.val_predictions()
    if predictions is None:
        raise RunError(f"run {run.name!r} has no {split} predictions")
    test = sample(predictions, per_class, seed)
    healthy = _healthy_validation(run, synthetic, seed)
    stop = StopFlag(run.folder, file_name=saved_evidence.STOP_FILE)
    stop.install_signal_handlers()
    progress = _progress(run.folder)
    try:
        models = run_kinds.load_models(run, load)
        size = canvas_size(run)

        def score(batch: np.ndarray) -> np.ndarray:
            return run_kinds.score_pixels(run, batch, models)

        skipped = {name: problem for name in chosen if (problem := run_kinds.method_problem(run, name, models))}
        kept = len(chosen) - len(skipped)  # a method that does not fit the run (rollout on a CNN) is left out, with its reason
        if not kept:
            raise RunError(f"no chosen explanation method applies to run {run.name!r}: "
                           + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
        progress.update(total=len(test) * (kept + len(saved_evidence.BASELINES)) + len(healthy) * (kept + 1))
        image_rows, curves = _measure_test_images(run, test, chosen, models, score, size, steps, seed, skipped,
                                                  lambda message: _tick(progress, stop, echo, message))
        synthetic_rows = _measure_synthetic(run, healthy, [m for m in chosen if m not in skipped], models, score, size,
                                            seed, lambda message: _tick(progress, stop, echo, message))
    except SearchStopped:
        stop.file.unlink(missing_ok=True)  # the request is served: the next measurement starts afresh
        progress.update(force=True, state="stopped", message="stopped by request: the evidence saved before is kept")
        raise
    except Exception as error:
        progress.update(force=True, state="failed", error=f"{type(error).__name__}: {error}")
        raise
    about = {
        "run": run.name, "created_at": now_utc(), "split": split, "seed": seed, "per_class": per_class,
        "n_images": len(test), "synthetic": len(healthy), "steps": steps, "region_share": REGION_SHARE,
        "border_band": heat_location.BORDER_BAND, "canvas_px": size, "methods": [m for m in chosen if m not in skipped],
        "skipped": skipped, "baselines": list(saved_evidence.BASELINES), "curves": curves,
    }
    images, synthetic_table = pd.DataFrame(image_rows), pd.DataFrame(synthetic_rows, columns=list(saved_evidence.SYNTHETIC_COLUMNS))
    saved_evidence.write(run.folder, about, images, synthetic_table, split)
    progress.update(force=True, state="completed", message="done")
    return saved_evidence.read(run.folder, split)


def _tick(progress: ProgressFile, stop: StopFlag, echo, message: str) -> None:
    stop.check()
    progress.update(done=progress.state["done"] + 1, message=message)
    echo(f"[{progress.state['done']}/{progress.state['total']}] {message}")


def _healthy_validation(run: Run, n: int, seed: int) -> pd.DataFrame:
    """Up to `n` healthy validation images (the synthetic check's canvases); none for a task without a healthy class."""
    val = run.val_predictions()
    if val is None or n <= 0 or "normal" not in set(val.get("kind", [])):
        return pd.DataFrame(columns=["path", "patient"])
    rows = val[(val["kind"] == "normal") & val["path"].map(lambda p: Path(p).is_file())]
    rng = np.random.default_rng(seed + 1)
    return rows.iloc[np.sort(rng.permutation(len(rows))[:n])].reset_index(drop=True)


def _measure_test_images(run, test, chosen, models, score, size, steps, seed, skipped, tick):
    rows, sums = [], {}
    baselines = {"random": None, "centred blob": faithfulness.centred_blob(BASELINE_GRID)}
    for i, item in enumerate(test.itertuples(index=False)):
        pixels = _pixels(item.path, size)
        gray = None
        base = {"run": run.name, "path": item.path, "patient": item.patient, "y_true": int(item.y_true),
                "probability": float(score(pixels[None])[0])}
        for name in [*chosen, *saved_evidence.BASELINES]:
            if name in skipped:
                continue
            if name in saved_evidence.BASELINES:
                heatmap = baselines[name] if baselines[name] is not None else faithfulness.random_heatmap(BASELINE_GRID, seed * 100_003 + i)
            else:
                heatmap, original = run_kinds.heatmap(run, item.path, models, method=name)
                gray = _location_image(original) if gray is None else gray
            if gray is None:
                gray = _location_image(loading.decode_image(item.path))
            deletion, insertion = _curves(score, pixels, heatmap, steps)
            rows.append({**base, "method": name, "deletion": faithfulness.curve_area(deletion),
                         "insertion": faithfulness.curve_area(insertion), **_location(heatmap, gray)})
            total = sums.setdefault(name, {"deletion": np.zeros(steps + 1), "insertion": np.zeros(steps + 1), "n": 0})
            total["deletion"] += deletion
            total["insertion"] += insertion
            total["n"] += 1
            tick(f"{run.name}: {name} on {Path(item.path).name}")
    curves = {name: {kind: list(np.round(total[kind] / total["n"], 6)) for kind in ("deletion", "insertion")}
              for name, total in sums.items()}
    return rows, curves


def _measure_synthetic(run, healthy, chosen, models, score, size, seed, tick):
    """Each healthy image with a patchy opacity of known place and size; probability before/after, hit and IoU per method."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-opacity-") as folder:
        for i, item in enumerate(healthy.itertuples(index=False)):
            gray = _location_image(loading.decode_image(item.path))
            height, width = gray.shape
            changed, mask = synthetic_opacity.insert_patchy_opacity(gray, seed=seed * 1_000 + i)
            path = Path(folder) / f"opacity-{i}.png"
            Image.fromarray(changed).save(path)
            before = float(score(_resized(gray, size)[None])[0])
            after = float(score(_resized(changed, size)[None])[0])
            base = {"run": run.name, "path": item.path, "patient": item.patient, "blobs": synthetic_opacity.PATCHY_BLOBS,
                    "mask_area": float(mask.mean()), "p_before": before, "p_after": after}
            tick(f"{run.name}: opacity in {Path(item.path).name}")
            for name in chosen:
                heatmap, _ = run_kinds.heatmap(run, path, models, method=name)
                region = regions.region_of(heatmap, width, height, share=REGION_SHARE)
                rows.append({**base, "method": name, "hit": bool(synthetic_opacity.hit(heatmap, mask)),
                             "iou": float(synthetic_opacity.iou(region.mask, mask))})
                tick(f"{run.name}: {name} on the opacity in {Path(item.path).name}")
    return rows


def _resized(gray: np.ndarray, size: int) -> np.ndarray:
    """A grey image squashed to the network's square, as `loading.load_image` does, (size, size, 3) float32."""
    square = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return np.repeat(square[..., None], 3, axis=-1)


def stop(run: Run) -> None:
    """Ask a running measurement of `run` to stop (it keeps the evidence saved before)."""
    files.write_bytes(run.folder / saved_evidence.STOP_FILE, b"stop\n")


def progress_of(run: Run) -> dict | None:
    """The measurement's progress file, or None when it was never started."""
    return files.read_json(run.folder / saved_evidence.PROGRESS_FILE)


def measure_runs(runs: Sequence[Run], echo: Callable[[str], None] = print, **options) -> dict[str, str]:
    """Measure each run in turn, loading each model file once; {run: "" or why it was skipped}."""
    cache: dict[Path, object] = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = evaluation.load_model(path)
        return cache[path]

    problems = {}
    for i, run in enumerate(runs):
        try:
            measure(run, load=load, echo=echo, **options)
            problems[run.name] = ""
        except RunError as error:
            problems[run.name] = str(error)
            echo(f"{run.name}: skipped: {error}")
            files.write_json(run.folder / saved_evidence.PROGRESS_FILE, {"state": "failed", "error": str(error), "updated_at": now_utc()})
        except SearchStopped:
            for waiting in runs[i + 1:]:  # the queue ends here: the runs after this one were never started
                (waiting.folder / saved_evidence.STOP_FILE).unlink(missing_ok=True)
                files.write_json(waiting.folder / saved_evidence.PROGRESS_FILE, {"state": "stopped", "message": "stopped before its turn",
                                                                                 "updated_at": now_utc()})
            raise
    return problems
