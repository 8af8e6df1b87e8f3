"""Import a model trained elsewhere as a run: the same split, threshold rule and evidence as a search.

Owns what an import is: which files and options are accepted (`plan_import` checks everything
it can before anything is written: the data, the model file, its input and output against the
task, and its outputs on a few real images), the run folder it makes (`create_import`: the split,
the model copied with its adapter, then the settings), and the scoring (`run_import`): validation
and test images through the model, the stress test on validation, the threshold chosen on
validation by the rule every search uses, metrics, prediction tables and the speed, saved by
`core.inference.evaluation` exactly as a search saves them.

The split follows a search's rules and seed (`core.search.splits.make_split`), so an import with
the data, seed and cap of a searched run holds the same validation and test images: Compare pairs
them, and they can be ensembled. An imported run is an ordinary run folder:
- `settings.json`: family "imported", the task, seed and fractions of the split, the input size,
  and `imported` = {source, format, sha256, adapter, imported_at};
- `imported_model/`: the copied model and its `adapter.json` (`core.models.imported`);
- `splits.csv`, `data_summary.json`, `metrics.json`, `predictions.csv`, `val_predictions.csv`,
  `val_stress_predictions.csv`, `log.txt`, `progress.json`, as a search's.

`python -m core resume NAME` scores a stopped or killed import again from its saved folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import files
from core.data import folders, loading, tasks
from core.evidence import stress
from core.inference import evaluation
from core.models import model_files
from core.models.model_files import ModelFileError
from core.runs import artifacts
from core.runs.artifacts import IMPORTED, IMPORTED_MODEL, RunError
from core.runs.progress import Progress, StopFlag, now_utc, open_log, recorded_end
from core.search.settings import SearchSettings, pixel_cache
from core.search.splits import drop_undecodable, make_split

if TYPE_CHECKING:
    from core.models.imported import Adapter

FAMILY = "imported"
PROBE_IMAGES = 4  # real images the model scores before anything is written: its outputs are checked on them
LOW_AUC = 0.6  # a validation AUC below this right after import: the scaling or the positive output is likely wrong
_SPLIT_DEFAULTS = SearchSettings(data_dir="")  # a search's split defaults: an import splits as a search does


@dataclass(frozen=True)
class ImportOptions:
    """What `python -m core import` and the Import form take. Only what the model file cannot say:
    the pixel scaling always, the input size, channels and layout when the file leaves them dynamic
    (given anyway, they must agree with it), which output is the positive class, whether the outputs
    are logits; and the task and split of the data."""

    model: str
    name: str
    data_dir: str
    artifacts_dir: str
    scaling: str
    task: str = tasks.DEFAULT
    image_size: int | None = None
    channels: int | None = None
    layout: str | None = None
    positive: int | None = None
    logits: bool = False
    seed: int = _SPLIT_DEFAULTS.seed
    max_per_class: int | None = None
    val_fraction: float = _SPLIT_DEFAULTS.val_fraction
    test_fraction: float = _SPLIT_DEFAULTS.test_fraction
    stress_test: bool = True
    source: str | None = None  # where the file came from, when `model` is a temporary copy (an upload)


def option_names() -> list[str]:
    return [f.name for f in fields(ImportOptions)]


# --------------------------------------------------------------------------
# Checking, before anything is written
# --------------------------------------------------------------------------


def plan_import(options: ImportOptions) -> dict:
    """The imported run's settings (nothing is written). RunError or folders.DataError says what is
    wrong and what to do: a taken or bad name, data without usable images, a file that is not a
    model, an input or output that does not fit the task, outputs that are not probabilities."""
    folder = artifacts.run_dir(options.artifacts_dir, options.name)
    if folder.exists():
        raise RunError(f"a run named {options.name!r} already exists: pick another --name")
    from core.models import imported  # Keras: loaded only when a model is imported, not with the pages

    task = tasks.task_for(options.task)
    dataset = folders.scan_folder(options.data_dir)
    folders.require_usable(dataset, task)
    try:
        model = model_files.open_model(options.model)
        adapter = imported.resolve_adapter(
            model, 1 if task.is_binary else task.n_classes, options.scaling, options.image_size, options.channels,
            options.layout, options.positive, options.logits,
        )
        adapter = _probed(model, adapter, list(task.select(dataset.table)["path"][:PROBE_IMAGES]))
    except ModelFileError as error:
        raise RunError(f"cannot import {Path(options.model).name}: {error}") from None
    return {
        "name": options.name,
        "data_dir": str(options.data_dir),
        "artifacts_dir": str(options.artifacts_dir),
        "family": FAMILY,
        "task": task.name,
        "seed": int(options.seed),
        "max_per_class": options.max_per_class,
        "val_fraction": float(options.val_fraction),
        "test_fraction": float(options.test_fraction),
        "image_size": adapter.size,
        "engine": "auto",
        "batch_size": _SPLIT_DEFAULTS.batch_size,
        "stress_test": bool(options.stress_test),
        IMPORTED: {
            "source": options.source or os.path.abspath(options.model),
            "format": adapter.format,
            "sha256": model_files.file_digest(options.model),
            "adapter": adapter.to_dict(),
            "options": {k: v for k, v in asdict(options).items() if k in ("scaling", "image_size", "channels", "layout",
                                                                           "positive", "logits")},
        },
    }


def _probed(model: model_files.ModelFile, adapter: Adapter, paths: list[str]) -> Adapter:
    """The adapter, its output width read from a probe when the file left it dynamic, after checking
    the model's raw outputs on a few real images (ModelFileError naming the problem)."""
    from core.models import imported

    pixels = loading.to_network_input(np.stack([loading.load_image(p, adapter.size) for p in paths]))
    try:
        raw = model.run(np.ascontiguousarray(np.asarray(imported.model_input(pixels, adapter)), np.float32))
    except Exception as error:
        raise ModelFileError(
            f"the model fails on {adapter.size}x{adapter.size}x{adapter.channels} {adapter.layout} images "
            f"({str(error)[:160]}): check --input-size, --channels and --layout"
        ) from None
    raw = np.asarray(raw)
    if raw.ndim == 2 and adapter.outputs == 0:
        adapter = imported.with_output_width(adapter, raw.shape[1])
    if problem := imported.output_problem(raw, adapter):
        raise ModelFileError(problem)
    return adapter


# --------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------


def create_import(settings: dict, model: str | os.PathLike, progress: dict | None = None) -> Path:
    """Make the run folder of planned `settings`: the split, the `model` file copied into its bundle,
    `progress`, then the settings (listed last, so the run appears whole). A failure on the way
    removes the folder."""
    folder = artifacts.run_dir(settings["artifacts_dir"], settings["name"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: of two clicks, one gets the folder
    except FileExistsError:
        raise RunError(f"a run named {settings['name']!r} already exists: pick another --name") from None
    try:
        dataset = folders.scan_folder(settings["data_dir"])
        table, summary = make_split(dataset, tasks.task_for(settings["task"]), settings["val_fraction"],
                                    settings["test_fraction"], settings["seed"], settings["max_per_class"])
        files.write_csv(folder / artifacts.SPLITS, table)
        files.write_json(folder / artifacts.DATA_SUMMARY, summary)
        from core.models import imported

        record = settings[IMPORTED]
        adapter = imported.save_bundle(model, imported.Adapter.from_dict(record["adapter"]), folder / IMPORTED_MODEL)
        settings = {**settings, IMPORTED: {**record, "adapter": adapter.to_dict(), "imported_at": now_utc()}}
        if progress is not None:
            files.write_json(folder / artifacts.PROGRESS, progress)
        files.write_json(folder / artifacts.SETTINGS, settings)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def run_import(artifacts_dir: str | os.PathLike, name: str, log=print) -> dict:
    """Score imported run `name` on its validation and test images and save the run; returns its
    metrics ({"state": "stopped"} after a stop request). Runs again from the start when resumed."""
    run = artifacts.load_run(artifacts_dir, name)
    if not run.is_imported:
        raise RunError(f"run {name!r} is not an imported model")
    if run.metrics:
        raise RunError(f"run {name!r} is already complete; import the model again under another --name")
    with artifacts.run_lock(run.folder):
        run_log = open_log(run.folder, log)
        progress = Progress(run.folder, run.progress)
        stop = StopFlag(run.folder)
        stop.file.unlink(missing_ok=True)
        stop.install_signal_handlers()
        with recorded_end(progress, run_log, f"import again with `python -m core resume {name}`", stop):
            result = _score(run, progress, stop, run_log)
            progress.update(state="completed", phase="done", message="completed", force=True)
            return result
        return {"state": "stopped"}


def _score(run: artifacts.Run, progress: Progress, stop: StopFlag, log) -> dict:
    from core.models import imported

    settings, record = run.settings, run.settings[IMPORTED]
    search_like = SearchSettings.from_dict({**settings, "artifacts_dir": str(run.folder.parent)})
    task = tasks.task_for(run.task)
    timings: dict[str, float] = {}
    progress.update(state="running", phase="reading data", message="decoding the validation and test images", force=True)
    log(f"imported {record['format']} model {record['source']} (sha256 {record['sha256'][:12]}…): "
        f"{imported.Adapter.from_dict(record['adapter']).describe()}")
    clock = time.monotonic()
    table = files.read_csv(run.folder / artifacts.SPLITS)
    table = table[table["split"].isin(["val", "test"])].reset_index(drop=True)
    pixels, errors = loading.load_images(list(table["path"]), search_like.image_size, pixel_cache(search_like))
    table, pixels = drop_undecodable(table, np.asarray(pixels), errors, run.folder, log)
    timings["scan_s"] = time.monotonic() - clock
    stop.check()

    clock = time.monotonic()
    model = evaluation.load_model(run.model_path)
    labels = task.labels(table)
    part = {split: (table["split"] == split).to_numpy() for split in ("val", "test")}
    cache = run.folder / artifacts.TFLITE_MODEL
    val_stressed = None
    if settings.get("stress_test", True):
        progress.update(phase="evaluating", message="stress test on validation", force=True)

        def score(images: np.ndarray) -> np.ndarray:
            return evaluation.probabilities(model, images, "auto", search_like.batch_size, cache)[0]

        val_stressed = stress.stressed_scores(score, pixels[part["val"]])
        timings["stress_s"] = time.monotonic() - clock
        stop.check()
    progress.update(phase="evaluating", message="scoring the validation and test images", force=True)
    clock = time.monotonic()
    result = evaluation.evaluate_model(model, pixels, labels, table, part, "auto", search_like.batch_size, 1, cache, task,
                                       val_stressed)
    timings["evaluate_s"] = time.monotonic() - clock
    result["inference"] = evaluation.time_inference(model, pixels[part["test"]][:32], "auto", cache)
    warnings = import_warnings(result, record)
    for warning in warnings:
        log(f"warning: {warning}")
    result.update({
        "task": task.name,
        "parameters": _parameters(model),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "imported": {k: record[k] for k in ("source", "format", "sha256")},
        "warnings": warnings,
        "finished_at": now_utc(),
    })
    evaluation.write_result(run.folder, result)
    log(f"done: validation AUC {result['val']['auc']:.4f}; test AUC {result['test']['auc']:.4f}, "
        f"accuracy {result['test']['accuracy']:.4f}" + evaluation.multiclass_summary(result))
    return result


def import_warnings(result: dict, record: dict) -> list[str]:
    """What a user should check after the import: a validation AUC below `LOW_AUC` most often means
    the pixel scaling or the positive output was given wrong (below 0.5: the classes are swapped)."""
    auc = float(result["val"]["auc"])
    if auc >= LOW_AUC:
        return []
    adapter = record["adapter"]
    output = ("the output's meaning (it may be the other class's probability)" if adapter["outputs"] == 1
              else f"the positive output (--positive-output, now {adapter.get('positive')})")
    swapped = " Below 0.5, the model ranks the classes the other way round." if auc < 0.5 else ""
    return [
        f"validation AUC {auc:.3f} right after import: the pixel scaling (--scaling, now {adapter['scaling']}) or "
        f"{output} is the likely cause.{swapped} Delete this run and import again with other values"
    ]


def _parameters(model) -> int | None:
    """The Keras model's parameter count (`builders.count_parameters`); None for a file run as it is."""
    from core.models import builders

    return builders.count_parameters(model) if hasattr(model, "weights") else None


def import_model(options: ImportOptions, log=print) -> dict:
    """Check, create and score an imported run in this process (the CLI's `import`); returns its metrics."""
    settings = plan_import(options)
    create_import(settings, options.model)
    return run_import(options.artifacts_dir, options.name, log)
