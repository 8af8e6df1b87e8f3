"""Predict page: score uploaded X-rays (or samples from the data folder, else the demo set) with saved runs, side by side,
and show where each run looks (any explanation method, with the region it outlines, downloadable as masks and boxes)."""

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from core import files
from core.data import demo, folders, tasks
from core.evidence import comparison
from core.inference import methods, run_kinds
from core.reporting import figures, wording
from core.runs import artifacts
from core.workflows import site
from pages import _loaders as load
from pages import _run_picker as run_picker
from pages import _shared as ui

ui.leave_pages_folder_mode()
st.title("Predict")
st.caption(
    "Research tool, not a medical device: these probabilities come from models trained on one public data set. An image far "
    "from a run's training X-rays (simple image statistics against the run's own training images) is flagged beside its probability."
)

folder = ui.artifacts_dir()
runs = run_picker.listed_runs(
    folder, run_picker.runs_with_model, "predict_archived",
    when_none=f"No saved models in `{folder}` yet: finish a search on the **Tune** page first.",
)
by_name = {r.name: r for r in runs}
picked = run_picker.pick_runs(
    runs, "Runs", key="predict_runs", help="Each picked run scores every image with its saved model and its own threshold.",
)

# Each picked run decides at its own threshold, or at an operating point chosen on a site's images (core.workflows.site).
points = {name: by_name[name].operating_points() for name in picked if by_name[name].operating_points()}
if points:
    point_columns = st.columns(min(len(points), 4))
    for i, (name, saved) in enumerate(points.items()):
        point_columns[i % len(point_columns)].selectbox(
            f"Operating point of {name}", [site.VALIDATION_POINT, *saved], key=f"predict_point::{name}",
            format_func=lambda key, saved=saved: "its own threshold (validation-chosen)" if key == site.VALIDATION_POINT
            else wording.point_option(key, saved[key]),
            help="A site operating point was chosen on a few labelled images of a site (Compare's 'Adapt to your site', or "
            "`python -m core adapt`); a recalibrated one also shows the calibrated probability. An out-of-fold point was "
            "chosen on every training image, scored by models that never saw it (`python -m core cross-fit`).",
        )


def chosen_point(name: str) -> dict | None:
    """The picked run's chosen site operating point, or None for its own threshold."""
    key = st.session_state.get(f"predict_point::{name}", site.VALIDATION_POINT)
    return points.get(name, {}).get(key)


left, right = st.columns([3, 2])
with left:
    uploads = st.file_uploader(
        "Upload chest X-rays (JPEG or PNG)", type=["jpg", "jpeg", "png"], accept_multiple_files=True, key="predict_upload",
    )
with right:
    root, problem = ui.check_data_dir(ui.data_dir())
    from_demo = False
    if root is None and demo.available():  # no usable data folder: the demo set's X-rays are the samples
        root, from_demo = demo.DEMO_DIR, True
    from_demo = from_demo or demo.is_demo(root)
    st.markdown("**…or take samples from the demo set**" if from_demo else "**…or take images from the data folder**")
    if root is None:
        st.caption(f"No usable data folder: {problem}")
    else:
        if from_demo:
            st.caption("Real X-rays shipped with the tool (CC BY 4.0, Kermany et al. 2018); the demo's training images "
                       "are flagged below for runs trained on them.")
        _, table = load.scan_for(root)
        c1, c2 = st.columns([1, 1], vertical_alignment="bottom")
        how_many = c1.number_input("How many", 1, 24, 4, key="predict_sample_count")
        if c2.button("Pick at random", icon=":material/shuffle:", key="predict_pick", disabled=table.empty):
            rng = random.Random()
            chosen = []
            for i, class_name in enumerate(folders.CLASS_NAMES):  # half of each class
                paths = list(table.loc[table["class_name"] == class_name, "path"])
                want = int(how_many) // 2 + (int(how_many) % 2 if i == len(folders.CLASS_NAMES) - 1 else 0)
                chosen += [(path, class_name) for path in rng.sample(paths, min(want, len(paths)))]
            st.session_state["predict_samples"] = chosen
        if st.session_state.get("predict_samples") and st.button("Clear the picked images", key="predict_clear"):
            st.session_state["predict_samples"] = []
precision = st.radio(
    "Inference", ["fp32", "int8"], horizontal=True, key="predict_engine",
    help="fp32: each run's own model (TF Lite, else Keras). int8: its full-integer quantised model, faster on a CPU, made by "
    "`python -m core quantize RUN` and kept only when it moved the validation AUC by at most 0.003; a run without one is "
    "scored in fp32, and the page says why.",
)
# The picked runs' positive class (pneumonia, or viral for bacterial vs viral runs); pneumonia before any is picked.
_, pushed_towards = comparison.binary_names([by_name[n] for n in picked]) if picked else tasks.PNEUMONIA.binary_names
choice = ui.explanation_controls("predict", pushed_towards, [by_name[n] for n in picked])
method_label = methods.METHODS[choice.method].label

images: list[tuple[str, bytes]] = []
truth: dict[str, str] = {}
sample_paths: dict[str, str] = {}
for upload in uploads or []:
    images.append((upload.name, upload.getvalue()))
for path, class_name in st.session_state.get("predict_samples", []):
    try:
        images.append((Path(path).name, Path(path).read_bytes()))
    except OSError as error:
        st.error(f"Cannot read {path}: {error}")
        continue
    truth[Path(path).name] = class_name
    sample_paths[Path(path).name] = path

if not picked:
    st.info("Pick at least one run.")
    st.stop()
if not images:
    st.info("Upload one or more X-rays, or pick images from the data folder.")
    st.stop()
run_tasks = {name: comparison.run_task(by_name[name]) for name in picked}
negative, positive = comparison.binary_names([by_name[n] for n in picked])
class_runs = [name for name in picked if not run_tasks[name].is_binary]
if class_runs:
    st.caption(
        f"Three-class runs ({', '.join(class_runs)}) give each class's probability; their bar below is P(pneumonia) = "
        "P(bacterial) + P(viral) at their validation-chosen threshold, and an image at or above it is called the likelier "
        "kind of pneumonia."
    )
gradcam_class = ui.gradcam_class_choice([by_name[n] for n in picked], "predict_gradcam_class")

engines = {name: "auto" for name in picked}
if precision == "int8":
    for name in picked:
        if problem := run_kinds.engine_problem(by_name[name], "int8"):
            st.caption(f":material/info: {name} is scored in fp32: {problem}")
        else:
            engines[name] = "int8"
    if int8_runs := [name for name, engine in engines.items() if engine == "int8"]:
        st.caption(f"Scored with their int8 models: {', '.join(int8_runs)} (agreement with fp32 in each run's int8.json).")

results: dict[str, pd.DataFrame] = {}
with st.spinner(f"Scoring {len(images)} image{'s' if len(images) != 1 else ''} with {len(picked)} run{'s' if len(picked) != 1 else ''}…"):
    for name in picked:
        try:
            results[name] = site.apply_point(load.predict_images(by_name[name], images, engines[name]), by_name[name], chosen_point(name))
        except artifacts.RunError as error:
            st.error(f"{name} cannot predict: {error}")
picked = [name for name in picked if name in results]
if not picked:
    st.stop()

# A file is unreadable for every run alike: report it once, with the first run's reason.
first = results[picked[0]]
bad = first[first["error"] != ""]
for _, row in bad.iterrows():
    st.error(f"**{row['image']}** was not scored: {row['error']}. Upload a JPEG or PNG chest X-ray.", icon=":material/block:")

colors = figures.run_colors(picked)
HEATMAPS_PER_ROW = 4
downloads: dict[str, bytes] = {}  # Predict's regions download: overlay, mask and box per image and run


def heatmaps(image_name: str, content: bytes, rows: pd.DataFrame) -> None:
    """A row of heatmap overlays under a prediction, one per picked run, each with its outlined region."""
    if choice.method == "rollout":  # class-blind: where the tokens draw from, not what speaks for a class
        st.caption(f"Where each run looks ({method_label}: {methods.METHODS[choice.method].summary}; red most)")
    else:
        st.caption(f"Where each run looks ({method_label}: regions that push it towards "
                   f"{positive if not class_runs else 'the class shown'}, red most)")
    for start in range(0, len(picked), HEATMAPS_PER_ROW):
        cols = st.columns(HEATMAPS_PER_ROW)
        for col, row in zip(cols, rows.iloc[start : start + HEATMAPS_PER_ROW].itertuples(), strict=False):
            with col:
                shown_class = ui.class_to_explain(by_name[row.run], gradcam_class, row.model_label)
                try:
                    picture, has_evidence, region = load.explanation_overlay(by_name[row.run], image_name, content, choice.opacity,
                                                                             shown_class, choice.method, choice.share)
                except (artifacts.RunError, ValueError, OSError) as error:
                    st.caption(ui.no_heatmap_caption(row.run, method_label, error))
                    continue
                explained = ui.explained_class(by_name[row.run], gradcam_class, row.model_label)
                caption = ui.heatmap_caption(row.run, float(row.probability), row.label, has_evidence, explained, method_label, region)
                st.image(picture, caption=caption, width="stretch")
                stem = f"{Path(image_name).stem}.{row.run}.{choice.method}"
                files_of_image = load.explanation_files(by_name[row.run], image_name, content, shown_class, choice.method,
                                                        choice.share, probability=float(row.probability), label=row.label)
                downloads.update({f"{stem}.{suffix}": data for suffix, data in files_of_image.items()})


def _flag(table: pd.DataFrame, column: str, index: int):
    """The out-of-distribution flag of one image (False / "" when the run has no reference)."""
    value = table[column].iat[index] if column in table.columns else None
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return False if column == "unusual" else ""
    return bool(value) if column == "unusual" else str(value)


long_rows = []
for index, (image_name, content) in enumerate(images):
    if first["error"].iat[index]:
        continue
    rows = pd.DataFrame(
        {
            "run": picked,
            "probability": [results[n]["probability"].iat[index] for n in picked],
            "label": [results[n]["label"].iat[index] for n in picked],
            "model_label": [results[n]["model_label"].iat[index] for n in picked],
            "threshold": [results[n]["threshold"].iat[index] for n in picked],
            "operating_point": [results[n]["operating_point"].iat[index] for n in picked],
            "calibrated": [results[n]["calibrated_probability"].iat[index] if "calibrated_probability" in results[n] else None
                           for n in picked],
            "unusual": [_flag(results[n], "unusual", index) for n in picked],
            "unusual_reason": [_flag(results[n], "unusual_reason", index) for n in picked],
        }
    )
    class_columns = {c: tasks.probability_column(c) for c in tasks.THREE_CLASS.classes}
    for row in rows.itertuples():
        found = results[row.run]
        each_class = {
            f"P({tasks.THREE_CLASS.names[i]})": found[column].iat[index] if column in found.columns else None
            for i, column in enumerate(class_columns.values())
        } if class_runs else {}
        long_rows.append({"image": image_name, "run": row.run, "task": run_tasks[row.run].name, "probability": row.probability,
                          "label": row.label, "model_label": row.model_label, "threshold": row.threshold,
                          "operating point": row.operating_point, "calibrated probability": row.calibrated, **each_class,
                          "unusual": bool(row.unusual), "unusual_reason": row.unusual_reason, "true class": truth.get(image_name, "")})
    with st.container(border=True):
        left, right = st.columns([1, 3], vertical_alignment="center")
        caption = image_name + (f" · true class {truth[image_name]}" if image_name in truth else "")
        left.image(content, caption=caption, width="stretch")
        with right:
            flagged = rows[rows["unusual"].astype(bool)]
            if not flagged.empty:
                st.warning(ui.not_assessed_message(list(flagged["run"]), flagged["unusual_reason"].iat[0], len(rows)),
                           icon=":material/report:")
            st.plotly_chart(figures.probability_figure(rows, colors, positive=positive), key=f"fig_predict_{index}")
            if class_runs:
                per_class = pd.DataFrame(
                    {"run": class_runs, **{name: [results[n][tasks.probability_column(c)].iat[index] for n in class_runs]
                                           for c, name in zip(tasks.THREE_CLASS.classes, tasks.THREE_CLASS.names, strict=True)}}
                )
                st.plotly_chart(
                    figures.class_probability_figure(per_class, list(tasks.THREE_CLASS.names), title="Each class (three-class runs)"),
                    key=f"fig_predict_classes_{index}",
                )
            seen = [n for n in picked if sample_paths.get(image_name) in load.trained_on(by_name[n])]
            if seen:
                st.caption(f":material/warning: {', '.join(seen)} trained or chose its threshold on this image: its score here is optimistic.")
        heatmaps(image_name, content, rows)

if long_rows:
    st.header("All predictions")
    table = pd.DataFrame(long_rows)
    if table["calibrated probability"].isna().all():  # no run decides at a recalibrated site point
        table = table.drop(columns=["calibrated probability"])
    # Three tables that each fit 1,280 px (the CSV below has every column in one): the calls, how each
    # was decided and whether the image was assessed, and the three-class runs' class probabilities
    where = {"image": st.column_config.TextColumn("image", width=160), "run": st.column_config.TextColumn("run", width=130)}
    calls = ["image", "run", "true class", "probability", "threshold", "label"]
    st.dataframe(
        table[calls], hide_index=True, key="predict_table",
        column_config={
            **where,
            "true class": st.column_config.TextColumn("true class", width=90),
            "probability": st.column_config.NumberColumn(
                f"probability of {positive}", format="%.3f", width=130,
                help="Three-class runs: P(bacterial) + P(viral). Bacterial vs viral runs: P(viral)."),
            "threshold": st.column_config.NumberColumn("threshold", format="%.3f", width=80),
            "label": st.column_config.TextColumn("label", width=190, help="The call at the threshold, or \"not assessed\" "
                                                 "for an image unlike the training X-rays"),
        },
    )
    decided = ["image", "run", "task", "model_label", "operating point",
               *[c for c in ("calibrated probability",) if c in table.columns], "unusual", "unusual_reason"]
    st.dataframe(
        table[decided], hide_index=True, key="predict_decided_table",
        column_config={
            **where,
            "task": st.column_config.TextColumn("task", width=90),
            "model_label": st.column_config.TextColumn("model's call", width=90, help="What the model called the image, even when it is not assessed"),
            "operating point": st.column_config.TextColumn("operating point", width=100, help="The run's saved threshold, or a site's own"),
            "calibrated probability": st.column_config.NumberColumn(
                "calibrated", format="%.3f", width=80, help="A recalibrated site operating point's probability (Platt or temperature, fitted "
                "on the site's images): the same decision at its threshold, a probability closer to the site's rates."),
            "unusual": st.column_config.CheckboxColumn("unusual", width=70, help="Unlike the training X-rays: not assessed"),
            "unusual_reason": st.column_config.TextColumn("why unlike", width=70 if "calibrated probability" in decided else 150,
                                                          help="Which statistic is off; hover a cell for all of it"),
        },
    )
    class_columns = [f"P({name})" for name in tasks.THREE_CLASS.names if f"P({name})" in table.columns]
    if class_columns:
        class_rows = table.dropna(subset=class_columns, how="all")[["image", "run", *class_columns]]
        st.dataframe(class_rows, hide_index=True, key="predict_class_table",
                     column_config={**where, **{c: st.column_config.NumberColumn(c, format="%.3f", width=100) for c in class_columns}})
    csv_column, regions_column = st.columns(2)
    csv_column.download_button("Download (CSV)", table.to_csv(index=False).encode(), file_name="predictions.csv", mime="text/csv",
                               key="predict_download", icon=":material/download:")
    if downloads:
        share = choice.share or 0.5
        regions_column.download_button(
            f"Download the regions (zip: overlay, mask, box per image and run; {method_label}, {share:.0%} of the heat)",
            files.zip_bytes(downloads), file_name=f"regions-{choice.method}.zip", mime="application/zip",
            key="predict_regions_download", icon=":material/download:",
            help="For each image and run: IMAGE.RUN.METHOD.overlay.png (the heatmap and the region outlined), .mask.png "
            "(255 inside the region, at the image's own size) and .box.json (the box of its hottest part, in pixels, with "
            "the share of heat it holds). The same files as `python -m core explain RUN IMAGES --method M --out DIR`.",
        )
