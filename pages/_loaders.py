"""The dashboard's cached loaders: every read of a data folder or a run file that a page repeats.

Each loader is a Streamlit cache (`st.cache_data`, or `st.cache_resource` for Keras models)
keyed by a file's mtime or a folder fingerprint, so a changed run or folder is re-read and an
unchanged one costs nothing on the next rerun. The pages call the public `*_for` functions; the
work itself is `core`'s (scan, split, predictions, evidence, Grad-CAM).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import files
from core.data import folders, splitting
from core.runs import artifacts

# --------------------------------------------------------------------------
# Data folders
# --------------------------------------------------------------------------


def folder_fingerprint(root: Path) -> str:
    """Changes when images are added to or removed from the split and class folders."""
    digest = hashlib.sha256(str(root).encode())
    folders = [root]
    for _ in range(2):  # root -> split folders -> class folders
        children = []
        for folder in folders:
            try:
                children += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        folders += children
        folders = list(dict.fromkeys(folders))
    for folder in folders:
        try:
            digest.update(f"|{folder}|{folder.stat().st_mtime_ns}".encode())
        except OSError:
            digest.update(f"|{folder}|gone".encode())
    return digest.hexdigest()[:20]


@st.cache_data(max_entries=4, show_spinner="Scanning the data folder…")
def _dataset(root: str, fingerprint: str) -> folders.Dataset:
    """One scan per version of a folder (checking every image's header is the slow part)."""
    return folders.scan_folder(root)


@st.cache_data(max_entries=4, show_spinner=False)
def _scan(root: str, fingerprint: str) -> tuple[dict, pd.DataFrame]:
    dataset = _dataset(root, fingerprint)
    return splitting.summarize(dataset), dataset.table


@st.cache_data(max_entries=4, show_spinner="Splitting by patient…")
def _split(root: str, fingerprint: str, seed: int = 42, task_name: str = "pneumonia") -> tuple[dict | None, str]:
    from core.data import tasks

    task = tasks.task_for(task_name)
    dataset = _dataset(root, fingerprint)  # a copy: cache_data hands out copies, so notes can grow
    try:
        folders.require_usable(dataset, task)
        table, notes = splitting.assign_splits(dataset.table, seed=seed, task=task)
    except folders.DataError as error:
        return None, str(error)
    dataset.notes.extend(notes)
    return splitting.summarize(dataset, table, task), ""


def summary_for(root: Path) -> dict | None:
    try:
        return _scan(str(root), folder_fingerprint(root))[0]
    except folders.DataError:
        return None


def scan_for(root: Path) -> tuple[dict, pd.DataFrame]:
    return _scan(str(root), folder_fingerprint(root))


def split_summary_for(root: Path, task: str = "pneumonia") -> tuple[dict | None, str]:
    """The summary of the split a search of `task` would make (default fractions and seed)."""
    return _split(str(root), folder_fingerprint(root), 42, task)



# --------------------------------------------------------------------------
# Run files
# --------------------------------------------------------------------------


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _model(path: str, mtime_ns: int):
    from core.inference import evaluation

    return evaluation.load_model(path)


def model_for(run: artifacts.Run):
    """The run's loaded model; for an ensemble, {member name: model} (what `core` then expects)."""
    from core.inference import run_kinds

    return run_kinds.load_models(run, lambda path: _model(str(path), _mtime(path)))


def models_mtime(run: artifacts.Run) -> tuple[int, ...]:
    """The mtimes of the model files a run predicts with (its members' for an ensemble): a cache key."""
    try:
        return tuple(_mtime(path) for path in run.model_paths)
    except artifacts.RunError:
        return ()


@st.cache_data(max_entries=32, show_spinner=False)
def _predictions(path: str, mtime_ns: int) -> pd.DataFrame:
    return artifacts.read_predictions(path)


def predictions_for(run: artifacts.Run) -> pd.DataFrame:
    path = run.folder / artifacts.PREDICTIONS
    if not path.exists():
        raise artifacts.RunError(f"run {run.name!r} has no test predictions yet (state: {run.state})")
    return _predictions(str(path), _mtime(path))


def val_predictions_for(run: artifacts.Run) -> pd.DataFrame | None:
    """The run's validation predictions (cached), or None for runs saved before they were kept."""
    path = run.folder / artifacts.VAL_PREDICTIONS
    return _predictions(str(path), _mtime(path)) if path.exists() else None


@st.cache_data(max_entries=32, show_spinner=False)
def _splits(path: str, mtime_ns: int) -> pd.DataFrame:
    return files.read_csv(path, usecols=["path", "split", "folder_split"])


def splits_for(run: artifacts.Run) -> pd.DataFrame | None:
    """The run's split table (path, split, folder_split), cached; None when it has none."""
    path = run.folder / artifacts.SPLITS
    return _splits(str(path), _mtime(path)) if path.exists() else None


@st.cache_data(max_entries=16, show_spinner=False)
def _trained_on(path: str, mtime_ns: int) -> frozenset[str]:
    table = files.read_csv(path, usecols=["path", "split"])
    return frozenset(table.loc[table["split"].isin(["train", "val"]), "path"])


def trained_on(run: artifacts.Run) -> frozenset[str]:
    """Paths of the images a run trained or chose its threshold on (from its splits.csv)."""
    path = run.folder / artifacts.SPLITS
    return _trained_on(str(path), _mtime(path)) if path.exists() else frozenset()


@st.cache_data(max_entries=32, show_spinner=False)
def _predict(
    artifacts_folder: str, name: str, models_mtime_ns: tuple[int, ...], images: tuple[tuple[str, bytes], ...], engine: str,
    int8_mtime_ns: tuple[int, ...],
) -> pd.DataFrame:
    from core.inference import run_kinds

    run = artifacts.load_run(artifacts_folder, name)
    model = model_for(run)
    with tempfile.TemporaryDirectory(prefix="cxr-predict-") as folder:
        paths = []
        for i, (file_name, content) in enumerate(images):
            suffix = Path(file_name).suffix.lower()
            path = Path(folder) / f"{i:04d}{suffix if suffix in folders.IMAGE_EXTENSIONS else '.img'}"
            path.write_bytes(content)
            paths.append(str(path))
        table = run_kinds.predict_files(run, paths, model, engine=engine, unusual=True)
    names = [file_name for file_name, _ in images]
    # Reasons name the temporary copy: name the file the user gave instead.
    table["error"] = [error.replace(path, name) for error, path, name in zip(table["error"], paths, names, strict=True)]
    table.insert(0, "image", names)
    return table.drop(columns=["path"])


def predict_images(run: artifacts.Run, images: list[tuple[str, bytes]], engine: str = "auto") -> pd.DataFrame:
    """Score (name, bytes) images with a run: image, probability, label, error, unusual, unusual_reason (one row each).
    `engine` "int8": with the int8 model(s) the run keeps (`run_kinds.engine_problem` says when there are none)."""
    try:  # an int8 model made again (its record rewritten) must not be served from the cache
        int8_mtimes = tuple(_mtime(path.parent / artifacts.INT8_RECORD) for path in run.model_paths) if engine == "int8" else ()
    except artifacts.RunError:
        int8_mtimes = ()
    return _predict(str(run.folder.parent), run.name, models_mtime(run), tuple(images), engine, int8_mtimes)


@st.cache_data(max_entries=128, show_spinner=False)
def _evidence(
    path: str, mtime_ns: int, val_path: str, val_mtime_ns: int, name: str, threshold: float, saved_threshold: float, n_resamples: int, seed: int
):
    from core.evidence import run_evidence

    validation = _predictions(val_path, val_mtime_ns) if val_mtime_ns else None
    return run_evidence.run_evidence(
        name, _predictions(path, mtime_ns), threshold, saved_threshold, n_resamples=n_resamples, seed=seed, validation=validation
    )


def evidence_for(run: artifacts.Run, threshold: float, n_resamples: int, seed: int):
    """The run's `core.evidence.run_evidence.RunEvidence` at `threshold`, cached on its predictions file's mtime."""
    path = run.folder / artifacts.PREDICTIONS
    if not path.exists():
        raise artifacts.RunError(f"run {run.name!r} has no test predictions yet (state: {run.state})")
    val_path = run.folder / artifacts.VAL_PREDICTIONS  # absent in older runs (mtime 0): points then come from test
    return _evidence(
        str(path), _mtime(path), str(val_path), _mtime(val_path), run.name, float(threshold), run.threshold, int(n_resamples), int(seed)
    )


# --------------------------------------------------------------------------
# Where the models look
# --------------------------------------------------------------------------


@st.cache_data(max_entries=32, show_spinner=False)
def _localisation(folder: str, mtime_ns: int):
    from core.evidence import localisation

    return localisation.read(Path(folder))


def localisation_for(artifacts_folder: str, names: list[str]) -> dict:
    """{run: its saved `core.evidence.localisation.Saved`} for the runs measured, cached on the file's mtime."""
    from core.evidence import localisation

    found = {}
    for name in names:
        folder = artifacts.run_dir(artifacts_folder, name)
        saved = _localisation(str(folder), _mtime(folder / localisation.SUMMARY_FILE))
        if saved is not None:
            found[name] = saved
    return found


@st.cache_data(max_entries=32, show_spinner="Resampling patients…")
def _localisation_summary(folder: str, mtime_ns: int, n_resamples: int, seed: int):
    from core.evidence import localisation

    return localisation.method_summary(_localisation(folder, mtime_ns), n_resamples, seed)


def localisation_summaries(artifacts_folder: str, names: tuple[str, ...], n_resamples: int, seed: int) -> dict:
    """{run: `core.evidence.localisation.method_summary`} of measured runs, cached."""
    from core.evidence import localisation

    summaries = {}
    for name in names:
        folder = artifacts.run_dir(artifacts_folder, name)
        summaries[name] = _localisation_summary(str(folder), _mtime(folder / localisation.SUMMARY_FILE), int(n_resamples), int(seed))
    return summaries


# --------------------------------------------------------------------------
# Heatmaps (every explanation method)
# --------------------------------------------------------------------------

# Heatmap overlays are shown this wide at most: the original is shrunk to it before blending.
OVERLAY_PX = 640


@st.cache_data(max_entries=96, show_spinner=False)
def _heatmap(
    artifacts_folder: str, name: str, models_mtime_ns: tuple[int, ...], file_name: str, content: bytes, class_name: str | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from core.inference import run_kinds

    run = artifacts.load_run(artifacts_folder, name)
    model = model_for(run)
    suffix = Path(file_name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="cxr-heatmap-") as folder:
        path = Path(folder) / f"image{suffix if suffix in folders.IMAGE_EXTENSIONS else '.img'}"
        path.write_bytes(content)
        heatmap, original = run_kinds.heatmap(run, path, model, class_name=class_name, method=method)
    original.thumbnail((OVERLAY_PX, OVERLAY_PX), Image.Resampling.LANCZOS)
    return heatmap, np.asarray(original)


def explanation_overlay(run: artifacts.Run, file_name: str, content: bytes, opacity: float = 0.4, class_name: str | None = None,
                        method: str = "gradcam", share: float = 0.0):
    """(the run's heatmap of one image blended over it, whether any region points to its class, the
    outlined region as `core.inference.regions.region_record` or None when `share` is 0).

    `method` is a `core.inference.methods` name; a three-class run explains `class_name` (a class
    of its task), by default its predicted class. The picture is PIL RGB at most OVERLAY_PX wide,
    with the region's outline and box drawn in green. The heatmap is cached per run, model file,
    image bytes and method; only the blend and the region follow the sliders. An ensemble's is the
    weighted mean of its members' heatmaps (`core.inference.explanation.combine_heatmaps`). An
    all-zero heatmap (nothing in the image pushes the run towards its class) gives a uniformly
    cold overlay, hence the flag. Raises `RunError` (no model) or `ValueError`/`OSError` (an image
    or a model the method cannot use, e.g. attention rollout on a CNN).
    """
    from core.inference import explanation, regions

    if not run.has_model:
        raise artifacts.RunError(f"run {run.name!r} has no saved model")
    heatmap, original = _heatmap(str(run.folder.parent), run.name, models_mtime(run), file_name, content, class_name, method)
    picture = explanation.overlay(original, heatmap, opacity=float(opacity))
    record = None
    if share > 0:
        region = regions.region_of(heatmap, picture.width, picture.height, share=float(share))
        picture, record = regions.draw_region(picture, region), regions.region_record(region)
    return picture, bool(np.max(heatmap) > 0), record


def explanation_files(run: artifacts.Run, file_name: str, content: bytes, class_name: str | None, method: str, share: float,
                      **about) -> dict[str, bytes]:
    """Predict's download for one image and run: the overlay with its region, the mask and the box
    (`core.inference.regions.region_files`), at the image's own size; a `share` of 0 (no region shown) saves half the heat's."""
    import io

    from core.data import loading
    from core.inference import explanation, regions

    heatmap, _ = _heatmap(str(run.folder.parent), run.name, models_mtime(run), file_name, content, class_name, method)
    original = loading.decode_image(io.BytesIO(content))  # the mask and box at the image's own size, not the page's
    region = regions.region_of(heatmap, original.width, original.height, share=float(share) or 0.5)
    return regions.region_files(region, explanation.overlay(original, heatmap), run=run.name, method=method, image=file_name, **about)


@st.cache_data(max_entries=64, show_spinner=False)
def _class_evidence(path: str, mtime_ns: int, name: str, task_name: str, n_resamples: int, seed: int):
    from core.data import tasks
    from core.evidence import multiclass

    return multiclass.class_evidence(name, _predictions(path, mtime_ns), tasks.task_for(task_name), n_resamples=n_resamples, seed=seed)


def class_evidence_for(run: artifacts.Run, n_resamples: int, seed: int):
    """A three-class run's `core.evidence.multiclass.ClassEvidence` (metrics at its decision, intervals, one-vs-rest curves), cached."""
    path = run.folder / artifacts.PREDICTIONS
    return _class_evidence(str(path), _mtime(path), run.name, run.task, int(n_resamples), int(seed))
