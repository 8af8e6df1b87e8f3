"""Compare page: ROC curves, confusion matrices at a movable threshold, metrics and per-image results."""

import numpy as np
import pandas as pd
import streamlit as st

from core import artifacts, figures, statistics
from pages import _shared as ui

ui.leave_pages_folder_mode()
st.title("Compare")

folder = ui.artifacts_dir()
runs = ui.runs_with_metrics(folder)
if not runs:
    st.info(
        f"No finished runs with test results in `{folder}` yet. Start a search on the **Tune** page, or point "
        "the **Artifacts folder** in the sidebar at a folder of saved runs.",
        icon=":material/inbox:",
    )
    st.stop()

by_name = {r.name: r for r in runs}
ui.forget_stale_choice("compare_runs", by_name)
picked = st.multiselect(
    "Runs to compare", list(by_name), default=ui.best_per_family(runs), key="compare_runs",
    format_func=lambda name: ui.run_label(by_name[name]),
    help="Default: the run with the best test AUC in each model family.",
)
if not picked:
    st.info("Pick at least one run.")
    st.stop()

colors = figures.run_colors(picked)
predictions: dict[str, pd.DataFrame] = {}
for name in picked:
    try:
        predictions[name] = ui.predictions_for(by_name[name])
    except (artifacts.RunError, OSError, ValueError) as error:
        st.error(f"Cannot read the predictions of {name}: {error}")
picked = [name for name in picked if name in predictions]


def saved_threshold(name: str) -> float:
    return float(by_name[name].metrics.get("threshold", 0.5))


def threshold_key(name: str) -> str:
    return f"threshold::{name}"


def reset_threshold(name: str) -> None:
    st.session_state[threshold_key(name)] = saved_threshold(name)


thresholds = {}
scores = {}
for name in picked:
    st.session_state.setdefault(threshold_key(name), saved_threshold(name))
    thresholds[name] = float(st.session_state[threshold_key(name)])
    table = predictions[name]
    scores[name] = statistics.binary_metrics(table["y_true"].to_numpy(int), table["probability"].to_numpy(float), thresholds[name])


# ---------------------------------------------------------------------------- ROC curves


curves = []
for name in picked:
    metrics, m = by_name[name].metrics, scores[name]
    roc = metrics.get("roc") or {}
    curves.append(
        {
            "name": name,
            "fpr": roc.get("fpr", []),
            "tpr": roc.get("tpr", []),
            "auc": (metrics.get("test") or {}).get("auc", m["auc"]),
            "point": {"fpr": 1 - m["specificity"], "tpr": m["sensitivity"], "threshold": thresholds[name]}
            if np.isfinite(m["specificity"]) and np.isfinite(m["sensitivity"])
            else None,
        }
    )
left, right = st.columns([2, 1])
left.plotly_chart(figures.roc_figure(curves, colors), key="fig_roc")
with right:
    st.markdown("**How to read it**")
    st.markdown(
        "- Each curve shows sensitivity against 1 − specificity over every threshold on the test split.\n"
        "- The dot is the run's operating point at the threshold set below (by default the one chosen "
        "on the validation split with Youden's J, never on test).\n"
        "- The dashed diagonal is a coin toss (AUC 0.5)."
    )
    sizes = {name: len(predictions[name]) for name in picked}
    if len(set(sizes.values())) > 1 or len({frozenset(predictions[n]["path"]) for n in picked}) > 1:
        st.warning(
            "The picked runs were tested on different images ("
            + ", ".join(f"{n}: {k}" for n, k in sizes.items())
            + "), e.g. a different image cap or seed: their numbers are not directly comparable."
        )


# ---------------------------------------------------------------------------- confusion matrices


st.header("Confusion matrices")
st.caption("Move a run's threshold: its matrix, sensitivity and specificity, its dot on the ROC curve and the tables below follow.")
per_row = 3
for start in range(0, len(picked), per_row):
    cols = st.columns(per_row)
    for col, name in zip(cols, picked[start : start + per_row], strict=False):
        m = scores[name]
        with col.container(border=True):
            st.markdown(f"<span style='color:{colors[name]}'>●</span> **{name}**", unsafe_allow_html=True)
            st.slider(
                "Threshold (probability of pneumonia)", 0.0, 1.0, step=0.001, format="%.3f", key=threshold_key(name),
                help=f"Validation-chosen threshold: {saved_threshold(name):.3f}. An image is called pneumonia when its probability is at least this.",
            )
            st.plotly_chart(
                figures.confusion_matrix_figure([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], by_name[name].metrics.get("labels", ["NORMAL", "PNEUMONIA"]), title=""),
                key=f"fig_cm_{name}",
            )
            st.markdown(
                f"Sensitivity **{ui.format_number(m['sensitivity'])}** · specificity **{ui.format_number(m['specificity'])}** · "
                f"accuracy **{ui.format_number(m['accuracy'])}**"
            )
            if abs(thresholds[name] - saved_threshold(name)) > 1e-9:
                st.button("Back to the validation threshold", key=f"reset_{name}", on_click=reset_threshold, args=(name,))


# ---------------------------------------------------------------------------- metrics table


st.header("Metrics")
rows = []
for name in picked:
    run, m = by_name[name], scores[name]
    metrics = run.metrics
    timings, inference = metrics.get("timings") or {}, metrics.get("inference") or {}
    rows.append(
        {
            "run": name,
            "family": run.family,
            "mode": run.settings.get("mode"),
            "input px": run.settings.get("image_size"),
            "threshold": thresholds[name],
            "accuracy": m["accuracy"],
            "AUC": m["auc"],
            "sensitivity": m["sensitivity"],
            "specificity": m["specificity"],
            "precision": m["precision"],
            "F1": m["f1"],
            "test images": m["n"],
            "parameters": metrics.get("parameters"),
            "training time (s)": timings.get("search_s"),
            "inference (ms/image)": inference.get("ms_per_image"),
            "single image (ms)": inference.get("single_image_ms"),
        }
    )
metrics_table = pd.DataFrame(rows)
number = st.column_config.NumberColumn
st.dataframe(
    metrics_table, hide_index=True, key="metrics_table",
    column_config={
        "threshold": number(format="%.3f"),
        **{k: number(format="%.3f") for k in ("accuracy", "AUC", "sensitivity", "specificity", "precision", "F1")},
        "parameters": number(format="localized"),
        "training time (s)": number(format="%.1f", help="Time of the hyperparameter search (all trials)"),
        "inference (ms/image)": number(format="%.2f", help="Batched, through the saved model's inference engine"),
        "single image (ms)": number(format="%.2f"),
    },
)
st.download_button(
    "Download metrics (CSV)", metrics_table.to_csv(index=False).encode(), file_name="metrics.csv",
    mime="text/csv", icon=":material/download:", key="download_metrics",
)


# ---------------------------------------------------------------------------- per-image predictions


st.header("Per-image predictions")
column = {name: f"p:{name}" for name in picked}  # run names may be anything: keep them off the fixed columns
joined = None
for name in picked:
    table = predictions[name]
    part = table[["path", "class_name", "kind", "probability"]].rename(columns={"probability": column[name]})
    if joined is None:
        joined = part
    else:
        joined = joined.merge(part, on=["path", "class_name", "kind"], how="outer")
joined = joined.sort_values("path").reset_index(drop=True)
truth = (joined["class_name"] == "PNEUMONIA").to_numpy()
called = pd.DataFrame({name: joined[column[name]] >= thresholds[name] for name in picked})
scored = pd.DataFrame({name: joined[column[name]].notna() for name in picked})
wrong = (called.ne(truth, axis=0) & scored).sum(axis=1)
disagree = (called.where(scored).nunique(axis=1, dropna=True) > 1)
joined.insert(0, "image", joined["path"].map(lambda p: str(p).rsplit("/", 1)[-1]))
joined["wrong in"] = wrong.astype(int)

c1, c2, c3 = st.columns(3)
only_wrong = c1.checkbox("Misclassified by any run", key="filter_wrong")
only_disagree = c2.checkbox("Runs disagree", key="filter_disagree", disabled=len(picked) < 2, help="At the thresholds set above")
true_class = c3.selectbox("True class", ["all", "NORMAL", "PNEUMONIA"], key="filter_class")
mask = pd.Series(True, index=joined.index)
if only_wrong:
    mask &= joined["wrong in"] > 0
if only_disagree:
    mask &= disagree
if true_class != "all":
    mask &= joined["class_name"] == true_class
shown = joined[mask].reset_index(drop=True)
st.caption(f"{len(shown):,} of {len(joined):,} test images · probabilities of pneumonia · select a row to see the image")
event = st.dataframe(
    shown, hide_index=True, key="image_table", on_select="rerun", selection_mode="single-row",
    column_order=["image", "class_name", "kind", *column.values(), "wrong in"],
    column_config={
        "class_name": st.column_config.TextColumn("true class"),
        **{column[name]: st.column_config.ProgressColumn(name, min_value=0.0, max_value=1.0, format="%.3f") for name in picked},
    },
)
selected = event.selection.rows if event is not None and hasattr(event, "selection") else []
if selected and selected[0] < len(shown):
    row = shown.iloc[selected[0]]
    left, right = st.columns([1, 2])
    with left:
        try:
            st.image(row["path"], caption=f"{row['image']} · true class {row['class_name']} ({row['kind']})", width="stretch")
        except Exception as error:  # the image may have moved since the run
            st.error(f"Cannot show {row['path']}: {error}")
    with right:
        detail = pd.DataFrame(
            {
                "run": picked,
                "probability": [row[column[name]] for name in picked],
                "threshold": [thresholds[name] for name in picked],
                "label": [
                    ("PNEUMONIA" if row[column[name]] >= thresholds[name] else "NORMAL") if pd.notna(row[column[name]]) else ""
                    for name in picked
                ],
            }
        )
        st.plotly_chart(figures.probability_figure(detail, colors, title=f"{row['image']} (true: {row['class_name']})"), key="fig_selected")
