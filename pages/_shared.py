"""What every page of the dashboard shares: page set-up, the two folders, formatting.

Not a page itself (streamlit_app.py lists the pages). The folders live in `st.session_state`
under `data_dir` and `artifacts_dir`, so they survive page switches. The cached loaders are in
`pages/_loaders.py`; the run picker of Compare and Predict in `pages/_run_picker.py`; the rules
about runs (test AUC, each family's default run) on `core.runs.artifacts.Run`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import streamlit as st

from core.data import demo, folders
from core.inference import ood
from core.runs import artifacts
from core.search import cost
from pages import _loaders as load

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


# --------------------------------------------------------------------------
# Page set-up
# --------------------------------------------------------------------------


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


def next_step(page: str, label: str, why: str) -> None:
    """A first-time user's way on: a link to `page` (e.g. "pages/tune.py") with one line on why."""
    with st.container(border=True):
        try:
            st.page_link(page, label=label, icon=":material/arrow_forward:")
        except st.errors.StreamlitAPIException:  # the page run on its own (tests): a plain link says the same
            st.markdown(f":material/arrow_forward: **{label}**")
        st.caption(why)


def quick_step() -> tuple[str, str]:
    """The next step of a user with no runs yet: the quick preset on Tune, with its estimated time."""
    from core.search import presets

    quick = presets.preset("quick")
    return (f"Start the quick search on Tune ({cost.about(quick.estimate_s())} on 2 cores)",
            "One fine-tuned MobileNetV2 run, the Tune form's default; the recipe box beside it trains the recommended preset twice and their ensemble.")


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


# --------------------------------------------------------------------------
# The two folders
# --------------------------------------------------------------------------


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
        return folders.find_data_root(folder), ""
    except folders.DataError as error:
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
            summary = load.summary_for(root)
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


# --------------------------------------------------------------------------
# Formatting, and the Grad-CAM class of three-class runs
# --------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """A time a run took (`cost.took`), or "–" when unknown."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    return cost.took(seconds)


def format_number(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and np.isfinite(value) else "–"


# The width a table may take on a 1,280 px screen: the main column is about 820 px there, beside the sidebar
TABLE_WIDTH = 790


def fitted_text_columns(columns: list[str], fixed: dict[str, int], total: int = TABLE_WIDTH, least: int = 70) -> dict:
    """Column configs for a table of text cells that fits `total` pixels: the `fixed` columns at their
    widths, the others sharing what is left (at least `least` each; a header that does not fit is shown
    whole on hover)."""
    rest = [c for c in columns if c not in fixed]
    share = max(least, (total - sum(fixed.values())) // max(1, len(rest)))
    return {c: st.column_config.TextColumn(c, width=fixed.get(c, share), help=None if c in fixed else c) for c in columns}


def table_height(n_rows: int, max_rows: int = 40) -> int:
    """The pixel height of an st.dataframe that shows `n_rows` rows (up to `max_rows`) without scrolling."""
    return 38 + 35 * min(max(n_rows, 1), max_rows)


def not_assessed_message(runs: list[str], reason: str, n_runs: int) -> str:
    """The warning above a flagged image's bars: what it means, which statistic is off (once), for which runs."""
    which = "" if len(runs) == n_runs else f" for {', '.join(runs)}"
    return (f"**{ood.NOT_ASSESSED[0].upper()}{ood.NOT_ASSESSED[1:]}**{which}: {reason}. "
            "The probability is greyed below: a model says little about images unlike those it learned from.")


def no_heatmap_caption(run_name: str, method_label: str, error: Exception) -> str:
    """Why a run shows no heatmap: the error alone when it already names the method (a method that does not
    apply to the run says so whole), else the method and the error."""
    text = str(error)
    return f"{run_name}: {text}" if text.startswith(method_label) else f"{run_name}: no {method_label} ({text})"


def heatmap_caption(run_name: str, probability: float, label: str, has_evidence: bool, explained: str = "pneumonia",
                    method: str = "Grad-CAM", region: dict | None = None) -> str:
    """`explained`: the class the heatmap is of (pneumonia, viral, or a three-class run's chosen class);
    `method`: the explanation's label; `region`: its `core.inference.regions.region_record`, when drawn."""
    shown = f"p = {probability:.3f}, {label}" if np.isfinite(probability) else "not scored"
    what = "" if explained == "pneumonia" else f" · regions pointing to {explained}"
    outlined = ""
    if region and region.get("box"):
        outlined = f" · green: {region['share']:.0%} of the heat in {region['area_fraction']:.0%} of the image"
    return f"{run_name} · {method} · {shown}{what}" + ("" if has_evidence else f" · no region points to {explained}") + outlined


class ExplanationChoice(NamedTuple):
    """What the explanation controls chose: a `core.inference.methods` name, the overlay's opacity,
    and the share of heat the outlined region holds (0: no region drawn)."""

    method: str
    opacity: float
    share: float


def explanation_controls(key_prefix: str, positive: str, runs: list[artifacts.Run] | None = None) -> ExplanationChoice:
    """The method, opacity and region controls above a row of heatmaps (Compare's selected image,
    Predict). The method starts where `run_kinds.default_method` says (Grad-CAM, attention rollout for
    transformers, occlusion for imported files without gradients)."""
    from core.inference import methods, run_kinds

    left, middle, right = st.columns(3)
    names = list(methods.METHODS)
    method = left.selectbox(
        "Explanation", names, index=names.index(run_kinds.default_method(runs or [])), key=f"{key_prefix}_method",
        format_func=lambda name: methods.METHODS[name].label,
        help="Where each run looks, by one of several methods (Compare's \"Where the models look\" says which to trust): "
        + " ".join(f"**{m.label}**: {m.summary}." for m in methods.METHODS.values()),
    )
    opacity = middle.slider(
        "Heatmap opacity", 0.0, 1.0, 0.4, step=0.05, key=f"{key_prefix}_opacity",
        help=f"The heatmap is blended over the X-ray: the regions that push each run towards {positive} (red: most). "
        "0 shows the X-ray alone, 1 the heatmap alone.",
    )
    share = right.slider(
        "Outlined region (share of the heat)", 0.0, 0.9, 0.5, step=0.1, key=f"{key_prefix}_region",
        help="Outlines in green the smallest area holding this share of the heat, with the box of its hottest part: "
        "where the run localises the finding. 0 draws no region.",
    )
    return ExplanationChoice(method, float(opacity), float(share))


GRADCAM_PREDICTED = "predicted class"


def gradcam_class_choice(runs: list[artifacts.Run], key: str) -> str | None:
    """A select box for the class three-class runs' Grad-CAM explains (shown only when one is picked):
    None for each run's predicted class, else a class of the three-class task."""
    from core.data import tasks
    from core.inference import run_kinds

    if not any(run_kinds.explains_each_class(r) for r in runs):
        return None
    task = tasks.THREE_CLASS
    shown = st.selectbox(
        "Grad-CAM class (three-class runs)", [GRADCAM_PREDICTED, *task.classes], key=key,
        format_func=lambda c: c if c == GRADCAM_PREDICTED else task.names[task.classes.index(c)],
        help="Which class the heatmap of a three-class run explains: by default the class it predicts. "
        "Two-class runs always explain their positive class (pneumonia, or viral), and so does a three-class run "
        "composed of pneumonia and bacterial-vs-viral runs (where its pneumonia runs look for pneumonia).",
    )
    return None if shown == GRADCAM_PREDICTED else shown


def class_to_explain(run: artifacts.Run, class_name: str | None, label: str = "") -> str | None:
    """The class a run's heatmap explains: the one chosen, else, for a three-class run, the class it
    called the image (`label`, by the two-step rule; the model's own argmax may differ), else None
    (a two-class run's positive class)."""
    from core.data import tasks
    from core.inference import run_kinds

    task = tasks.task_for(run.task)
    if not run_kinds.explains_each_class(run):
        return None
    if class_name:
        return class_name
    return label if label in task.classes else None


def explained_class(run: artifacts.Run, class_name: str | None, label: str = "") -> str:
    """What a run's Grad-CAM explains, in words: a two-class run's positive class, a three-class
    run's chosen class or (None) its predicted one (`label`)."""
    from core.data import tasks
    from core.inference import run_kinds

    task = tasks.task_for(run.task)
    if not run_kinds.explains_each_class(run):
        return task.binary_names[1]
    chosen = class_name or label
    return task.names[task.classes.index(chosen)] if chosen in task.classes else "its predicted class"
