"""Data page: what is in the data folder, and how to get the public data set when there is none."""

import random

import pandas as pd
import streamlit as st

from core.data import demo, folders, splitting, tasks
from core.data.download import DOWNLOAD_SIZE, KAGGLE_URL, DownloadError, download_public_dataset
from core.reporting import figures
from core.runs import artifacts
from pages import _loaders as load
from pages import _shared as ui

ui.leave_pages_folder_mode()
st.title("Data")

folder = ui.data_dir()
root, problem = ui.check_data_dir(folder)


def _download_button() -> None:
    """One click: download the full data set with kagglehub and point the app at it."""
    if st.button(f"Download from Kaggle ({DOWNLOAD_SIZE})", type="primary", icon=":material/download:", key="download"):
        with st.spinner("Downloading the data set from Kaggle… this can take several minutes."):
            try:
                path = download_public_dataset()
            except DownloadError as error:
                st.session_state["download_error"] = str(error)
            else:
                st.session_state.pop("download_error", None)
                ui.use_data_dir(path)
                st.rerun()
    if st.session_state.get("download_error"):
        st.error(f"Download failed: {st.session_state['download_error']}")


def _get_the_data(problem: str) -> None:
    st.error(f"The data folder cannot be used: {problem}", icon=":material/folder_off:")
    st.header("Get the public data set")
    st.markdown(
        "The models are trained on the public **Chest X-Ray Images (Pneumonia)** data set "
        f"(Kermany et al., 2018; 5,863 JPEG X-rays of children, {DOWNLOAD_SIZE} zipped), "
        f"hosted on Kaggle: [{KAGGLE_URL}]({KAGGLE_URL})."
    )
    left, right = st.columns(2, border=True)
    with left:
        st.subheader("Download it now")
        st.markdown(
            "One click downloads it with `kagglehub` into its cache (`~/.cache/kagglehub`) and points the app "
            "at it. It needs network access; Kaggle may ask for an account (`KAGGLE_USERNAME` / `KAGGLE_KEY`)."
        )
        _download_button()
        if demo.available() and not ui.using_demo():
            if st.button("Use the demo set instead", icon=":material/science:", key="use_demo"):
                ui.use_data_dir(demo.DEMO_DIR)
                st.rerun()
    with right:
        st.subheader("Use a copy you already have")
        st.markdown(
            "Type its folder in **Data folder** in the sidebar, or start the app with "
            "`CXR_DATA_DIR=/path/to/chest_xray streamlit run streamlit_app.py`. The folder must look like the "
            "download (a parent folder is fine, it is searched a few levels down):"
        )
        st.code("chest_xray/\n  train/  NORMAL/  PNEUMONIA/\n  val/    NORMAL/  PNEUMONIA/   (optional)\n  test/   NORMAL/  PNEUMONIA/   (optional)", language=None)
        st.caption("Without train/val/test folders, NORMAL/ and PNEUMONIA/ directly inside also work: splits are then made by patient.")


if root is None:
    _get_the_data(problem)
    st.stop()

try:
    summary, table = load.scan_for(root)
except folders.DataError as error:
    _get_the_data(str(error))
    st.stop()

st.caption(f"Data folder: `{root}`")
if demo.is_demo(root):
    with st.container(border=True):
        st.markdown(f":material/science: {demo.describe()}")
        st.markdown(
            f"**Get the full data**: one click downloads it from Kaggle ({DOWNLOAD_SIZE}, needs network access) and "
            "points the app at it; or type the folder of a copy you have in **Data folder** in the sidebar. "
            "The demo's images are CC BY 4.0 (Kermany, Zhang and Goldbaum 2018, doi:10.17632/rscbjbr9sj.2)."
        )
        _download_button()
if summary["total_images"] == 0:
    st.warning("No .jpeg/.jpg/.png images in NORMAL/ or PNEUMONIA/ folders here.")

view = st.radio(
    "Splits", ["As stored in the folders", "As a search splits them (by patient)"], horizontal=True, key="data_view",
    help="A search keeps test/ when it has enough images, folds a tiny val/ into training, and carves "
    "validation (and test, if missing) out of train/ so that no patient is in two splits.",
)
shown = summary
task = tasks.PNEUMONIA
if view.startswith("As a search"):
    task = tasks.task_for(st.selectbox(
        "Task", list(tasks.TASKS), key="data_task", format_func=lambda name: f"{name} — {tasks.DESCRIPTIONS[name]}",
        help="Which images a search of this task uses and how it splits them: stratified by the task's classes, grouped by patient.",
    ))
    split_summary, split_problem = load.split_summary_for(root, task.name)
    if split_summary is None:
        st.warning(f"A search of the {task.name} task could not split this folder: {split_problem}")
        task = tasks.PNEUMONIA
    else:
        shown = split_summary
        st.caption("Default split fractions (15 % validation, 15 % test when carved) and seed 42, as `python -m core tune` uses"
                   f" for the {task.name} task.")

images = shown["images"]
total_patients = int(table["patient"].nunique()) if len(table) else 0
negative, positive = task.binary_names  # the task's classes: a bacterial-vs-viral split shows viral : bacterial
ratio = splitting.positive_per_negative(shown.get("task_images") or {}, task)
cols = st.columns(4)
cols[0].metric("Images", f"{shown['total_images']:,}")
cols[1].metric("Patients", f"{total_patients:,}")
cols[2].metric(f"{positive.capitalize()} : {negative}, all splits", f"{ratio:.2f} : 1" if ratio is not None else "–",
               help="Over every split shown together; the caption under the class balance gives the training split's own ratio.")
cols[3].metric("Unreadable files", f"{len(summary['unreadable']):,}")
if summary["total_images"] and not artifacts.list_runs(ui.artifacts_dir()):
    ui.next_step("pages/tune.py", *ui.quick_step())

if images:
    left, right = st.columns(2)
    left.plotly_chart(figures.images_per_split_figure(images), key="fig_images")
    right.plotly_chart(figures.patients_per_split_figure(shown["patients"]), key="fig_patients")
    left, right = st.columns(2)
    left.plotly_chart(figures.kinds_figure(shown["kinds"]), key="fig_kinds")
    with right:
        task_images = shown.get("task_images") if shown is not summary else None
        st.plotly_chart(
            figures.class_balance_figure(task_images or images, list(task.names) if task_images else None,
                                         title=f"Class balance ({task.name})" if task_images else "Class balance"),
            key="fig_balance",
        )
        weights = shown.get("class_weights") or {}
        if weights:
            train_ratio = splitting.positive_per_negative(shown.get("task_images") or {}, task, ["train"])
            st.caption(
                "Training split only: "
                + (f"{train_ratio:.2f} {positive} images per {negative} one (all splits: {ratio:.2f}); " if train_ratio and ratio else
                   f"{train_ratio:.2f} {positive} images per {negative} one; " if train_ratio else "")
                + "class weights used in training "
                + ", ".join(f"{task.names[task.classes.index(name)] if name in task.classes else name} {value:.2f}" for name, value in weights.items())
                + " (each class counts equally)."
            )

st.header("Sample images")
per_class = st.slider("Images per class", 2, 12, 6, key="data_samples")
if st.button("Show other images", icon=":material/shuffle:"):
    st.session_state["data_sample_seed"] = st.session_state.get("data_sample_seed", 0) + 1
rng = random.Random(st.session_state.get("data_sample_seed", 0))
for value, class_name in zip(task.classes, task.names, strict=True):  # the classes of the task shown above
    rows = table[table[task.column] == value]
    st.subheader(f"{class_name.capitalize()} ({len(rows):,} images)")
    if rows.empty:
        st.caption("none")
        continue
    picked = rows.iloc[sorted(rng.sample(range(len(rows)), min(per_class, len(rows))))]
    captions = [f"{kind} · {patient}" for kind, patient in zip(picked["kind"], picked["patient"], strict=True)]
    st.image(list(picked["path"]), caption=captions, width=150)

st.header("Unreadable files")
if summary["unreadable"]:
    st.warning(f"{len(summary['unreadable'])} files are skipped by every search:")
    st.dataframe(pd.DataFrame(summary["unreadable"]), hide_index=True, key="unreadable")
else:
    st.success("Every image file reads fine.", icon=":material/check_circle:")

notes = list(dict.fromkeys(summary["notes"] + (shown["notes"] if shown is not summary else [])))
if notes:
    st.header("Notes")
    st.markdown("\n".join(f"- {note}" for note in notes))
