"""What every page of the dashboard shares: the two folders, cached loaders and small helpers.

Not a page itself (streamlit_app.py lists the pages). The folders live in `st.session_state`
under `data_dir` and `artifacts_dir`, so they survive page switches; every cached loader takes a
file's mtime or a folder fingerprint as an argument, so a changed run or folder is re-read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import artifacts, data, demo

DATA_KEY = "data_dir"
ARTIFACTS_KEY = "artifacts_dir"
_PENDING_DATA_KEY = "_pending_data_dir"
DEFAULT_DATA_DIR = demo.FULL_DATA_DIR  # when it does not exist, the demo set shipped in demo_data/ is the default
DEFAULT_ARTIFACTS_DIR = "artifacts"
STATE_ICONS = {
    "starting": ":material/hourglass_top:", "running": ":material/directions_run:", "stopping": ":material/pan_tool:",
    "stopped": ":material/pause_circle:", "completed": ":material/check_circle:", "failed": ":material/error:",
    "interrupted": ":material/warning:", "unknown": ":material/help:",
}


# ---------------------------------------------------------------------------- page set-up


def navigation(position: str = "sidebar") -> st.Page:
    """The app's pages under `st.navigation`; streamlit_app.py runs the page it returns."""
    return st.navigation(
        [
            st.Page("pages/data.py", title="Data", icon=":material/photo_library:", default=True),
            st.Page("pages/tune.py", title="Tune", icon=":material/tune:"),
            st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page("pages/predict.py", title="Predict", icon=":material/stethoscope:"),
        ],
        position=position,
    )


def leave_pages_folder_mode() -> None:
    """Make sure the page runs under streamlit_app.py's `st.navigation`, not Streamlit's old mode.

    Streamlit sees a `pages/` folder beside the main script and, until `st.navigation` has been
    called once in the server process, runs the requested page file on its own (no sidebar, no
    page config, every .py in pages/ listed). A first visit straight to /data would get that.
    Streamlit documents that once any session calls `st.navigation` the app ignores `pages/` in
    every session, so such a run calls it (hidden, same pages, so the requested page is kept)
    and reruns: the rerun goes through streamlit_app.py and lands on the same page.
    """
    # Streamlit has no public way to ask whether this run is in the old mode: read the flag that
    # `st.navigation` clears (Streamlit 1.67, pinned). Tolerant here, so an upgrade costs at worst a
    # bare first page; test_app.py's first-visit test fails loudly if the flag changes.
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if not getattr(PagesManager, "uses_pages_directory", False):
        return
    navigation(position="hidden")
    if not PagesManager.uses_pages_directory:  # rerun only once the mode is left: never a loop
        st.rerun()


# ---------------------------------------------------------------------------- the two folders


def init_state() -> None:
    """Defaults from CXR_DATA_DIR / CXR_ARTIFACTS_DIR (else data/chest_xray, else the demo set, and
    artifacts/), and a data folder asked for by a button."""
    state = st.session_state
    if _PENDING_DATA_KEY in state:  # set by a button on the last run, applied before the widget exists
        state[DATA_KEY] = state.pop(_PENDING_DATA_KEY)
    if DATA_KEY not in state:
        state[DATA_KEY] = demo.default_data_dir()
    if ARTIFACTS_KEY not in state:
        state[ARTIFACTS_KEY] = str(artifacts.default_artifacts_dir())  # CXR_ARTIFACTS_DIR, else artifacts/


def data_dir() -> str:
    init_state()
    return str(st.session_state[DATA_KEY]).strip()


def artifacts_dir() -> str:
    init_state()
    return str(st.session_state[ARTIFACTS_KEY]).strip() or DEFAULT_ARTIFACTS_DIR


def use_data_dir(path: str | os.PathLike) -> None:
    """Point the app at another data folder from the next run on (then rerun)."""
    st.session_state[_PENDING_DATA_KEY] = str(path)


def using_demo() -> bool:
    """True when the data folder is the demo set shipped in demo_data/."""
    return demo.is_demo(data_dir())


def check_data_dir(folder: str) -> tuple[Path | None, str]:
    """(data root, "") for a usable folder, else (None, what is wrong with it)."""
    if not folder:
        return None, "type the folder that holds train/ and test/ (each with NORMAL/ and PNEUMONIA/)"
    try:
        return data.find_data_root(folder), ""
    except data.DataError as error:
        return None, str(error)


def check_artifacts_dir(folder: str) -> tuple[bool, str]:
    """(usable, message): runs found, a folder still to be created, or why it cannot be used."""
    path = Path(folder).expanduser()
    if path.is_file():
        return False, f"{path} is a file, not a folder: runs are saved in a folder"
    if path.is_dir():
        if not os.access(path, os.W_OK):
            count = len(artifacts.list_runs(path))
            return True, f"{count} saved runs; the folder is read-only, so new searches cannot be started here"
        count = len(artifacts.list_runs(path))
        return True, f"{count} saved run{'s' if count != 1 else ''} in {path.resolve()}"
    parent = next((p for p in path.resolve().parents if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        return False, f"{path} does not exist and cannot be created ({parent} is read-only)"
    return True, f"{path} does not exist yet: it is created when you start a search"


def sidebar() -> None:
    """The folder inputs, checked as typed; rendered by streamlit_app.py on every page."""
    init_state()
    with st.sidebar:
        st.subheader("Folders")
        st.text_input(
            "Data folder", key=DATA_KEY, live="600ms",
            help="The folder that holds train/, val/, test/ (each with NORMAL/ and PNEUMONIA/), as in the public "
            "download. A parent folder is fine: it is searched a few levels down.",
        )
        root, problem = check_data_dir(data_dir())
        if root is None:
            st.error(problem, icon=":material/folder_off:")
        else:
            summary = summary_for(root)
            found = f"{summary['total_images']:,} images" if summary else "found"
            where = f" in {root}" if Path(os.path.abspath(data_dir())) != root else ""
            if demo.is_demo(root):
                st.info(
                    f"**Demo set**: {found} at {demo.IMAGE_PX} px, a small sample of the public data set "
                    f"({demo.FULL_IMAGES} X-rays at full size) to try the tool; its metrics say little. "
                    "The Data page gets the full data in one click.",
                    icon=":material/science:",
                )
                st.page_link("pages/data.py", label="Get the full data", icon=":material/download:")
            else:
                st.caption(f":material/check_circle: {found}{where}")
        st.text_input(
            "Artifacts folder (saved runs)", key=ARTIFACTS_KEY, live="600ms",
            help="Where searches save their runs (one sub-folder per run), and where the other pages read them.",
        )
        usable, message = check_artifacts_dir(artifacts_dir())
        if usable:
            st.caption(f"{':material/check_circle:' if Path(artifacts_dir()).is_dir() else ':material/info:'} {message}")
        else:
            st.error(message, icon=":material/folder_off:")


# ---------------------------------------------------------------------------- cached loaders


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
def _dataset(root: str, fingerprint: str) -> data.Dataset:
    """One scan per version of a folder (checking every image's header is the slow part)."""
    return data.scan_folder(root)


@st.cache_data(max_entries=4, show_spinner=False)
def _scan(root: str, fingerprint: str) -> tuple[dict, pd.DataFrame]:
    dataset = _dataset(root, fingerprint)
    return data.summarize(dataset), dataset.table


@st.cache_data(max_entries=4, show_spinner="Splitting by patient…")
def _split(root: str, fingerprint: str, seed: int = 42, task_name: str = "pneumonia") -> tuple[dict | None, str]:
    from core import tasks

    task = tasks.task_for(task_name)
    dataset = _dataset(root, fingerprint)  # a copy: cache_data hands out copies, so notes can grow
    try:
        data.require_usable(dataset, task)
        table, notes = data.assign_splits(dataset.table, seed=seed, task=task)
    except data.DataError as error:
        return None, str(error)
    dataset.notes.extend(notes)
    return data.summarize(dataset, table, task), ""


def summary_for(root: Path) -> dict | None:
    try:
        return _scan(str(root), folder_fingerprint(root))[0]
    except data.DataError:
        return None


def scan_for(root: Path) -> tuple[dict, pd.DataFrame]:
    return _scan(str(root), folder_fingerprint(root))


def split_summary_for(root: Path, task: str = "pneumonia") -> tuple[dict | None, str]:
    """The summary of the split a search of `task` would make (default fractions and seed)."""
    return _split(str(root), folder_fingerprint(root), 42, task)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _model(path: str, mtime_ns: int):
    from core import evaluation

    return evaluation.load_model(path)


def model_for(run: artifacts.Run):
    """The run's loaded model; for an ensemble, {member name: model} (what `core` then expects)."""
    if run.is_ensemble:
        return {name: _model(str(path), _mtime(path)) for name, path in zip(run.members, run.model_paths, strict=True)}
    return _model(str(run.model_path), _mtime(run.model_path))


def models_mtime(run: artifacts.Run) -> tuple[int, ...]:
    """The mtimes of the model files a run predicts with (its members' for an ensemble): a cache key."""
    try:
        return tuple(_mtime(path) for path in run.model_paths)
    except artifacts.RunError:
        return ()


@st.cache_data(max_entries=32, show_spinner=False)
def _predictions(path: str, mtime_ns: int) -> pd.DataFrame:
    return artifacts.read_csv(path)


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
    return artifacts.read_csv(path, usecols=["path", "split", "folder_split"])


def splits_for(run: artifacts.Run) -> pd.DataFrame | None:
    """The run's split table (path, split, folder_split), cached; None when it has none."""
    path = run.folder / artifacts.SPLITS
    return _splits(str(path), _mtime(path)) if path.exists() else None


@st.cache_data(max_entries=16, show_spinner=False)
def _trained_on(path: str, mtime_ns: int) -> frozenset[str]:
    table = artifacts.read_csv(path, usecols=["path", "split"])
    return frozenset(table.loc[table["split"].isin(["train", "val"]), "path"])


def trained_on(run: artifacts.Run) -> frozenset[str]:
    """Paths of the images a run trained or chose its threshold on (from its splits.csv)."""
    path = run.folder / artifacts.SPLITS
    return _trained_on(str(path), _mtime(path)) if path.exists() else frozenset()


@st.cache_data(max_entries=32, show_spinner=False)
def _predict(artifacts_folder: str, name: str, models_mtime_ns: tuple[int, ...], images: tuple[tuple[str, bytes], ...]) -> pd.DataFrame:
    from core import evaluation

    run = artifacts.load_run(artifacts_folder, name)
    model = model_for(run)
    with tempfile.TemporaryDirectory(prefix="cxr-predict-") as folder:
        paths = []
        for i, (file_name, content) in enumerate(images):
            suffix = Path(file_name).suffix.lower()
            path = Path(folder) / f"{i:04d}{suffix if suffix in data.IMAGE_EXTENSIONS else '.img'}"
            path.write_bytes(content)
            paths.append(str(path))
        table = evaluation.predict_files(run, paths, model=model, unusual=True)
    names = [file_name for file_name, _ in images]
    # Reasons name the temporary copy: name the file the user gave instead.
    table["error"] = [error.replace(path, name) for error, path, name in zip(table["error"], paths, names, strict=True)]
    table.insert(0, "image", names)
    return table.drop(columns=["path"])


def predict_images(run: artifacts.Run, images: list[tuple[str, bytes]]) -> pd.DataFrame:
    """Score (name, bytes) images with a run: image, probability, label, error, unusual, unusual_reason (one row each)."""
    return _predict(str(run.folder.parent), run.name, models_mtime(run), tuple(images))


@st.cache_data(max_entries=128, show_spinner=False)
def _evidence(
    path: str, mtime_ns: int, val_path: str, val_mtime_ns: int, name: str, threshold: float, saved_threshold: float, n_resamples: int, seed: int
):
    from core import evidence

    validation = _predictions(val_path, val_mtime_ns) if val_mtime_ns else None
    return evidence.run_evidence(
        name, _predictions(path, mtime_ns), threshold, saved_threshold, n_resamples=n_resamples, seed=seed, validation=validation
    )


def evidence_for(run: artifacts.Run, threshold: float, n_resamples: int, seed: int):
    """The run's `core.evidence.RunEvidence` at `threshold`, cached on its predictions file's mtime."""
    path = run.folder / artifacts.PREDICTIONS
    if not path.exists():
        raise artifacts.RunError(f"run {run.name!r} has no test predictions yet (state: {run.state})")
    val_path = run.folder / artifacts.VAL_PREDICTIONS  # absent in older runs (mtime 0): points then come from test
    return _evidence(
        str(path), _mtime(path), str(val_path), _mtime(val_path), run.name, float(threshold), run.threshold, int(n_resamples), int(seed)
    )


# Grad-CAM overlays are shown this wide at most: the original is shrunk to it before blending.
OVERLAY_PX = 640


@st.cache_data(max_entries=96, show_spinner=False)
def _heatmap(
    artifacts_folder: str, name: str, models_mtime_ns: tuple[int, ...], file_name: str, content: bytes, class_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from core import explanation

    run = artifacts.load_run(artifacts_folder, name)
    model = model_for(run)
    suffix = Path(file_name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="cxr-gradcam-") as folder:
        path = Path(folder) / f"image{suffix if suffix in data.IMAGE_EXTENSIONS else '.img'}"
        path.write_bytes(content)
        heatmap, original = explanation.heatmap_for_run(run, path, model=model, class_name=class_name)
    original.thumbnail((OVERLAY_PX, OVERLAY_PX), Image.Resampling.LANCZOS)
    return heatmap, np.asarray(original)


def gradcam_overlay(run: artifacts.Run, file_name: str, content: bytes, opacity: float = 0.4, class_name: str | None = None):
    """(the run's Grad-CAM of one image blended over it, whether any region points to pneumonia).

    A three-class run explains `class_name` (a class of its task), by default its predicted class.

    The picture is PIL RGB at most OVERLAY_PX wide. The heatmap is cached per run, model file and
    image bytes; only the blend follows `opacity`. An ensemble's is the weighted mean of its
    members' heatmaps (`core.explanation.combine_heatmaps`). An all-zero heatmap (nothing in the image pushes
    the run towards pneumonia) gives a uniformly cold overlay, hence the flag. Raises `RunError`
    (no model) or `ValueError`/`OSError` (an image or a model Grad-CAM cannot use).
    """
    from core import explanation

    if not run.has_model:
        raise artifacts.RunError(f"run {run.name!r} has no saved model")
    heatmap, original = _heatmap(str(run.folder.parent), run.name, models_mtime(run), file_name, content, class_name)
    return explanation.overlay(original, heatmap, opacity=float(opacity)), bool(np.max(heatmap) > 0)


def gradcam_caption(run_name: str, probability: float, label: str, has_evidence: bool, explained: str = "pneumonia") -> str:
    """`explained`: the class the heatmap is of (pneumonia, viral, or a three-class run's chosen class)."""
    shown = f"p = {probability:.3f}, {label}" if np.isfinite(probability) else "not scored"
    what = "" if explained == "pneumonia" else f" · regions pointing to {explained}"
    return f"{run_name} · Grad-CAM · {shown}{what}" + ("" if has_evidence else f" · no region points to {explained}")


GRADCAM_PREDICTED = "predicted class"


def gradcam_class_choice(runs: list[artifacts.Run], key: str) -> str | None:
    """A select box for the class three-class runs' Grad-CAM explains (shown only when one is picked):
    None for each run's predicted class, else a class of the three-class task."""
    from core import tasks

    if not any(not tasks.task_for(r.task).is_binary for r in runs):
        return None
    task = tasks.THREE_CLASS
    shown = st.selectbox(
        "Grad-CAM class (three-class runs)", [GRADCAM_PREDICTED, *task.classes], key=key,
        format_func=lambda c: c if c == GRADCAM_PREDICTED else task.names[task.classes.index(c)],
        help="Which class the heatmap of a three-class run explains: by default the class it predicts (argmax). "
        "Two-class runs always explain their positive class (pneumonia, or viral).",
    )
    return None if shown == GRADCAM_PREDICTED else shown


def explained_class(run: artifacts.Run, class_name: str | None, label: str = "") -> str:
    """What a run's Grad-CAM explains, in words: a two-class run's positive class, a three-class
    run's chosen class or (None) its predicted one (`label`, its argmax class)."""
    from core import tasks

    task = tasks.task_for(run.task)
    if task.is_binary:
        return task.binary_names[1]
    chosen = class_name or label
    return task.names[task.classes.index(chosen)] if chosen in task.classes else "its predicted class"


# ---------------------------------------------------------------------------- runs


def runs_with_metrics(folder: str, archived: bool | None = False) -> list[artifacts.Run]:
    """Runs with test predictions; archived ones only with `archived=None` (both) or True (only them)."""
    from core import catalog

    runs = [r for r in artifacts.list_runs(folder) if r.metrics and (r.folder / artifacts.PREDICTIONS).exists()]
    return catalog.filter_runs(runs, archived=archived)


def runs_with_model(folder: str, archived: bool | None = False) -> list[artifacts.Run]:
    from core import catalog

    return catalog.filter_runs([r for r in artifacts.list_runs(folder) if r.metrics and r.has_model], archived=archived)


def archived_toggle(folder: str, key: str) -> bool | None:
    """A "show archived runs" switch, only where the folder has archived runs: None (show them too) or False."""
    if not any(r.archived for r in artifacts.list_runs(folder)):
        return False
    return None if st.toggle("Show archived runs", key=key, help="Archived runs are hidden by default; restore them on the Tune page.") else False


def forget_stale_choice(key: str, options) -> None:
    """A multiselect whose remembered runs are gone (another folder, a deleted run) starts over
    from its default instead of silently showing fewer runs or none."""
    chosen = st.session_state.get(key)
    if chosen is not None and any(name not in options for name in chosen):
        del st.session_state[key]


def run_label(run: artifacts.Run) -> str:
    auc = run.test_auc
    shown = f"test AUC {auc:.3f}" if np.isfinite(auc) else run.state
    return f"{run.name} ({run.family}, {run.task}, {shown})"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def format_number(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and np.isfinite(value) else "–"


@st.cache_data(max_entries=64, show_spinner=False)
def _class_evidence(path: str, mtime_ns: int, name: str, task_name: str, n_resamples: int, seed: int):
    from core import multiclass, tasks

    return multiclass.class_evidence(name, _predictions(path, mtime_ns), tasks.task_for(task_name), n_resamples=n_resamples, seed=seed)


def class_evidence_for(run: artifacts.Run, n_resamples: int, seed: int):
    """A three-class run's `core.multiclass.ClassEvidence` (argmax metrics, intervals, one-vs-rest curves), cached."""
    path = run.folder / artifacts.PREDICTIONS
    return _class_evidence(str(path), _mtime(path), run.name, run.task, int(n_resamples), int(seed))
