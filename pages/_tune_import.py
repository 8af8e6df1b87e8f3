"""Tune page, "Import a model": a model trained elsewhere, uploaded or by path, scored as a run in the background."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from core import jobs
from core.data import folders, tasks
from core.models import model_files
from core.models.pixel_scaling import SCALINGS
from core.runs import artifacts
from core.workflows import importing
from pages._tune_form import DataFolder

FROM_FILE = "from the file"
UPLOADABLE = ["keras", "h5", "hdf5", "tflite", "onnx"]  # the file formats of core.models.model_files.FORMATS


def import_form(folder: str, data: DataFolder) -> None:
    """The Import form: the model, what the file cannot say, Import; the started import is announced beside the button."""
    with st.expander("Import a model trained elsewhere", icon=":material/upload_file:"):
        st.caption(
            "A Keras (.keras, .h5), TensorFlow SavedModel, TF Lite or ONNX classifier, scored on this data folder's "
            "validation and test images with the split, threshold rule and stress test of a search: it then appears "
            "among the runs, marked imported, for Compare, Predict, ensembles and the report. "
            + ", ".join(f.label for f in model_files.FORMATS.values()) + "."
        )
        source = st.radio("The model", ["Upload a file", "A path on this machine"], horizontal=True, key="import_source",
                          help="A SavedModel is a folder: give its path.")
        upload, path = None, ""
        if source == "Upload a file":
            upload = st.file_uploader("Model file", type=UPLOADABLE, key="import_upload")
        else:
            path = st.text_input("Path of a model file or SavedModel folder", key="import_path", placeholder="/models/cxr.onnx")
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("Run name", key="import_name", placeholder="e.g. colab-mobilenet")
        scaling = c2.selectbox(
            "Pixel scaling", list(SCALINGS), index=None, key="import_scaling", placeholder="How was it trained?",
            format_func=lambda s: f"{s}: {SCALINGS[s].description}",
            help="How the model expects pixels. A wrong choice gives a validation AUC near 0.5: the import then warns.",
        )
        task = c3.selectbox("Task", list(tasks.TASKS), key="import_task", format_func=lambda t: tasks.DESCRIPTIONS[t])
        st.caption("Only when the file leaves them open (a dynamic shape), or to check them against it:")
        c1, c2, c3, c4 = st.columns(4)
        size = c1.number_input("Input size (px, 0: from the file)", 0, 2048, 0, key="import_size")
        channels = c2.selectbox("Channels", [FROM_FILE, 1, 3], key="import_channels")
        layout = c3.selectbox("Layout", [FROM_FILE, "NHWC", "NCHW"], key="import_layout",
                              help="NHWC: channels last (Keras, TF Lite); NCHW: channels first (PyTorch exports).")
        positive = c4.number_input(
            "Positive output column (-1: default)", -1, 1000, -1, key="import_positive",
            help="Which output is the probability of the positive class: by default the only one, or column 1 of two. "
            "For a multi-label model (one output per finding), the finding's column.",
        )
        c1, c2, c3 = st.columns(3)
        logits = c1.checkbox("Outputs are logits", key="import_logits", help="No sigmoid or softmax at the end: it is applied here.")
        seed = c2.number_input("Split seed", 0, 2**31 - 1, 42, key="import_seed",
                               help="The seed of the searched runs to pair with: the same seed and data give the same test images.")
        cap = c3.number_input("Images per class and split (0: all)", 0, 100000, 0, key="import_cap",
                              help="As the runs to pair with were capped (quick runs).")
        if st.button("Import", type="primary", key="import_start", icon=":material/upload_file:"):
            chosen = {"name": name.strip(), "scaling": scaling, "task": task, "image_size": int(size) or None,
                      "channels": None if channels == FROM_FILE else int(channels), "layout": None if layout == FROM_FILE else layout,
                      "positive": None if positive < 0 else int(positive), "logits": bool(logits), "seed": int(seed),
                      "max_per_class": int(cap) or None}
            _start_import(folder, data, upload, path.strip(), chosen)
        if started := st.session_state.get("import_started"):
            st.success(f"Importing **{started}** in the background: it appears under Running searches, then among the finished runs.",
                       icon=":material/hourglass_top:")


def _start_import(folder: str, data: DataFolder, upload, path: str, chosen: dict) -> None:
    """Check everything and start the import, or say why not, here beside the button."""
    st.session_state.pop("import_started", None)
    try:
        if data.root is None:
            raise folders.DataError(data.problem)
        if not chosen["name"]:
            raise artifacts.RunError("give the run a name")
        if chosen["scaling"] is None:
            raise artifacts.RunError("choose the pixel scaling the model was trained with")
        if upload is None and not path:
            raise artifacts.RunError("upload a model file or give its path")
        with tempfile.TemporaryDirectory() as scratch:
            model = path
            if upload is not None:  # the upload is copied into the run folder before start_import returns
                model = str(Path(scratch) / Path(upload.name).name)
                Path(model).write_bytes(upload.getvalue())
            options = importing.ImportOptions(model=model, data_dir=str(data.root), artifacts_dir=folder,
                                              source=upload.name if upload is not None else None, **chosen)
            started = jobs.start_import(options)
    except (artifacts.RunError, folders.DataError, OSError) as error:
        st.error(f"Not imported: {error}", icon=":material/block:")
    else:
        st.session_state["import_started"] = started
        st.rerun()
