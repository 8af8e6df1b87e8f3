"""Compare page: the evidence behind "which run to trust".

ROC, precision-recall and calibration curves; each run on validation against test; confusion
matrices at a movable threshold (or a named operating point); metrics with patient-aware
intervals; runs combined into an ensemble; a paired test of two runs by patient; errors by kind
of image; per-image results with each run's Grad-CAM; and the whole comparison as one HTML report.
"""

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from core import (
    artifacts,
    comparison,
    curves,
    ensemble,
    evidence,
    figures,
    multiclass,
    repeat,
    report,
    shift,
    stress,
    wording,
)
from pages import _loaders as load
from pages import _shared as ui

ui.leave_pages_folder_mode()
st.title("Compare")

folder = ui.artifacts_dir()
runs = ui.runs_with_metrics(folder, archived=ui.archived_toggle(folder, "compare_archived"))
if not runs:
    st.info(
        f"No finished runs with test results in `{folder}` yet. Start a search on the **Tune** page, or point "
        "the **Artifacts folder** in the sidebar at a folder of saved runs.",
        icon=":material/inbox:",
    )
    st.stop()

by_name = {r.name: r for r in runs}
ui.forget_stale_choice("compare_runs", by_name)
top_left, top_right = st.columns([4, 1], vertical_alignment="bottom")
picked = top_left.multiselect(
    "Runs to compare", list(by_name), default=artifacts.best_per_family(runs), key="compare_runs",
    format_func=lambda name: ui.run_label(by_name[name]),
    help="Default: the run with the best validation AUC in each model family (chosen on validation, never on test).",
)
with top_right.popover("Intervals", icon=":material/tune:", width="stretch"):
    n_resamples = int(
        st.number_input(
            "Bootstrap resamples", min_value=100, max_value=20_000, value=evidence.N_RESAMPLES, step=100, key="compare_resamples",
            help="Each resample draws the test patients with replacement (all images of a drawn patient together).",
        )
    )
    seed = int(st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=evidence.SEED, step=1, key="compare_seed"))
    st.caption("95 % intervals: the AUC's is a patient bootstrap (the same seed gives the same interval); sensitivity, "
               "specificity and accuracy use Wilson's interval with the patients' design effect (no resampling).")
if not picked:
    st.info("Pick at least one run.")
    st.stop()

colors = figures.run_colors(picked)
predictions: dict[str, pd.DataFrame] = {}
for name in picked:
    try:
        predictions[name] = load.predictions_for(by_name[name])
    except (artifacts.RunError, OSError, ValueError) as error:
        st.error(f"Cannot read the predictions of {name}: {error}")
picked = [name for name in picked if name in predictions]
if not picked:
    st.stop()
# What each run answers (core.tasks): a three-class run is compared on its derived binary view.
run_tasks = {name: comparison.run_task(by_name[name]) for name in picked}
negative, positive = comparison.binary_names([by_name[n] for n in picked])
for note in comparison.question_notes([by_name[n] for n in picked]):
    st.info(note, icon=":material/help:")


# --------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------


def saved_threshold(name: str) -> float:
    return by_name[name].threshold


def threshold_key(name: str) -> str:
    return f"threshold::{name}"


def choice_key(name: str) -> str:
    return f"operating_point::{name}"


# The validation-chosen threshold and the operating points do not depend on the threshold in use.
at_saved = {name: load.evidence_for(by_name[name], saved_threshold(name), n_resamples, seed) for name in picked}
choices = {name: at_saved[name].choices for name in picked}


def apply_choice(name: str) -> None:
    """An operating point was picked: move the slider to its threshold."""
    picked_choice = at_saved[name].choice(st.session_state[choice_key(name)])
    if picked_choice is not None:
        st.session_state[threshold_key(name)] = picked_choice.threshold


def slider_moved(name: str) -> None:
    """The slider was moved by hand: the operating point becomes "custom" (unless it landed on one)."""
    value = float(st.session_state[threshold_key(name)])
    current = at_saved[name].choice(st.session_state.get(choice_key(name)))
    if current is None or abs(current.threshold - value) > 1e-9:
        st.session_state[choice_key(name)] = evidence.CUSTOM_CHOICE


def reset_threshold(name: str) -> None:
    st.session_state[threshold_key(name)] = saved_threshold(name)
    st.session_state[choice_key(name)] = evidence.VALIDATION_CHOICE


thresholds: dict[str, float] = {}
items: dict[str, evidence.RunEvidence] = {}
for name in picked:
    st.session_state.setdefault(threshold_key(name), saved_threshold(name))
    st.session_state.setdefault(choice_key(name), evidence.VALIDATION_CHOICE)
    thresholds[name] = float(st.session_state[threshold_key(name)])
    items[name] = load.evidence_for(by_name[name], thresholds[name], n_resamples, seed)
evidences = [items[name] for name in picked]
scores = {name: items[name].metrics for name in picked}


number_column = st.column_config.NumberColumn


# --------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------


roc_col, pr_col, cal_col = st.columns(3)
roc_col.plotly_chart(figures.roc_figure(curves.roc_curves(evidences), colors), key="fig_roc")
pr_col.plotly_chart(figures.precision_recall_figure(curves.precision_recall_curves(evidences), colors), key="fig_pr")
cal_col.plotly_chart(figures.calibration_figure(curves.calibration_curves(evidences), colors, positive=positive), key="fig_calibration")
st.caption(
    "**ROC:** sensitivity against 1 − specificity over every threshold; the dot is the run's operating point at the "
    "threshold set below; the dashed diagonal is a coin toss. AUC intervals resample patients "
    f"({n_resamples:,} resamples, seed {seed}). **Precision-recall:** how many {positive} calls are right at each "
    f"sensitivity; AP = average precision; the dashed line is the share of {positive} images. **Calibration:** "
    f"observed share of {positive} in each band of predicted probability; on the diagonal a predicted 0.8 means "
    f"{positive} 8 times in 10. Brier = mean squared error of the probability; ECE = expected calibration error."
)
image_check = comparison.image_check({name: predictions[name] for name in picked})
if not image_check.same:
    st.warning(
        f"The picked runs were tested on different images ({wording.image_counts(image_check)}), e.g. a different "
        "image cap or seed: their numbers are not directly comparable."
    )


# --------------------------------------------------------------------------
# Confusion matrices
# --------------------------------------------------------------------------


st.header("Thresholds and confusion matrices")
st.caption(
    "Pick an operating point or move a run's threshold: its matrix, its dot on the ROC curve and the tables below "
    f"follow. {wording.VALIDATION_NOTE}"
    + (f" {wording.DESCRIPTIVE_NOTE}" if any(ev.points_on_test for ev in evidences) else "")
)
per_row = 3
for start in range(0, len(picked), per_row):
    cols = st.columns(per_row)
    for col, name in zip(cols, picked[start : start + per_row], strict=False):
        m = scores[name]
        options = [c.key for c in choices[name]] + [evidence.CUSTOM_CHOICE]
        if st.session_state.get(choice_key(name)) not in options:
            st.session_state[choice_key(name)] = evidence.CUSTOM_CHOICE
        with col.container(border=True):
            st.markdown(f"<span style='color:{colors[name]}'>●</span> **{name}**", unsafe_allow_html=True)
            st.selectbox(
                "Operating point", options, key=choice_key(name), on_change=apply_choice, args=(name,),
                format_func=lambda key, run=at_saved[name]: wording.choice_option(key, run.choice(key)),
                help="Validation-chosen: the search's own threshold (Youden's J on the validation split). The others "
                "(sens@spec90: the best sensitivity with specificity at least 90 %, and so on) are chosen on the "
                "validation split too and measured on test; a run saved without validation predictions gets them "
                "from the test images instead, marked 'on test' (descriptive only).",
            )
            # "Nothing positive" lies just above the top score, above 1.0 when a probability is exactly 1.0.
            top = max(1.0, saved_threshold(name), *(c.threshold for c in choices[name]))
            run_positive = run_tasks[name].binary_names[1]
            st.slider(
                f"Threshold (probability of {run_positive})", 0.0, top, step=0.001, format="%.3f", key=threshold_key(name),
                on_change=slider_moved, args=(name,),
                help=f"Validation-chosen threshold: {saved_threshold(name):.3f}. An image is called {run_positive} when its probability is at least this."
                + (" A three-class run's probability of pneumonia is P(bacterial) + P(viral)." if not run_tasks[name].is_binary else ""),
            )
            st.plotly_chart(
                figures.confusion_matrix_figure([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], by_name[name].metrics.get("labels", ["NORMAL", "PNEUMONIA"]), title=""),
                key=f"fig_cm_{name}",
            )
            st.markdown(
                f"Sensitivity **{ui.format_number(m['sensitivity'])}** · specificity **{ui.format_number(m['specificity'])}** · "
                f"accuracy **{ui.format_number(m['accuracy'])}**"
            )
            chosen = at_saved[name].choice(st.session_state[choice_key(name)])
            if chosen is not None and chosen.on_test:
                st.caption(":material/info: On test — descriptive; the validation-chosen threshold is the honest one.")
            if abs(thresholds[name] - saved_threshold(name)) > 1e-9:
                st.button("Back to the validation threshold", key=f"reset_{name}", on_click=reset_threshold, args=(name,))


# --------------------------------------------------------------------------
# Metrics table
# --------------------------------------------------------------------------


st.header("Metrics")
ci = wording.ci_label(evidence.CONFIDENCE)
metrics_table = wording.metrics_table(evidences)
extra = comparison.facts_table([by_name[n] for n in picked])
metrics_table = pd.concat([metrics_table, extra], axis=1)  # the evidence first, what the run is after it
number = st.column_config.NumberColumn
interval_help = wording.intervals_note(n_resamples, seed)
st.dataframe(
    metrics_table, hide_index=True, key="metrics_table",
    column_config={
        "threshold": number(format="%.3f"),
        **{k: number(format="%.3f") for k in (*wording.INTERVAL_TITLES.values(), *wording.POINT_METRIC_TITLES)},
        **{f"{k} {ci}": st.column_config.TextColumn(help=interval_help) for k in wording.INTERVAL_TITLES.values()},
        "parameters": number(format="localized"),
        "training time (s)": number(format="%.1f", help="Time of the hyperparameter search (all trials)"),
        "inference (ms/image)": number(format="%.2f", help="Batched, through the saved model's inference engine"),
        "single image (ms)": number(format="%.2f"),
    },
)
for name in picked:
    if items[name].intervals is None:
        st.warning(f"{name}: no intervals: {items[name].interval_problem}")
seed_spread = repeat.seed_summaries([by_name[n] for n in picked])  # repeated runs: the spread over their seeds
if not seed_spread.empty:
    st.subheader("Spread over training seeds")
    st.dataframe(seed_spread, hide_index=True, key="seed_spread",
                 column_config={k: number(format="%.3f") for k in ("mean", "SD", "min", "max")})
    st.caption(f"{repeat.NOTE} The rows above show each repeat's first seed, its main predictions.")
c1, c2 = st.columns([1, 1])
c1.download_button(
    "Download metrics (CSV)", metrics_table.to_csv(index=False).encode(), file_name="metrics.csv",
    mime="text/csv", icon=":material/download:", key="download_metrics",
)
report_runs = [by_name[n] for n in picked]
report_thresholds = dict(thresholds)
report_predictions = dict(predictions)


def report_html() -> bytes:
    """Built only when the button is clicked (Streamlit calls it then), with the page's current choices."""
    return report.build_report(
        report_runs, report_thresholds, predictions=report_predictions, n_resamples=n_resamples, seed=seed
    ).encode("utf-8")


c2.download_button(
    "Download report (HTML)", report_html, file_name=f"cxr-report-{datetime.now(UTC):%Y%m%d-%H%M}.html", mime="text/html",
    icon=":material/description:", key="download_report", on_click="ignore",
    help="One self-contained HTML file (opens offline): these curves, the metrics with intervals, paired tests, errors "
    "by kind, and each run's settings and data, at the thresholds set above.",
)


# --------------------------------------------------------------------------
# Validation against test
# --------------------------------------------------------------------------


st.header("Validation against test")
shifts = [
    shift.run_shift(n, load.val_predictions_for(by_name[n]), predictions[n], thresholds[n], load.splits_for(by_name[n])) for n in picked
]
for sentence in shift.shift_warnings(shifts):
    st.warning(f"Test is clearly worse than validation: {sentence}", icon=":material/trending_down:")
shift_left, shift_right = st.columns([3, 2])
shift_left.dataframe(
    shift.shift_table(shifts), hide_index=True, key="shift_table",
    column_config={
        "threshold": number_column(format="%.3f"),
        **{f"{title} {part}": number_column(format="%.3f") for title in shift.METRICS.values() for part in ("(val)", "(test)")},
        **{f"{title} test − val": number_column(format="%+.3f", help="test minus validation") for title in shift.METRICS.values()},
    },
)
shift_right.plotly_chart(figures.shift_figure(shift.figure_rows(shifts), colors), key="fig_shift")
st.caption(f"{shift.NOTE} At the thresholds set above.")

stressed = stress.saved_results(by_name[n] for n in picked)
st.subheader("Stress test on validation")
if stressed:
    st.dataframe(
        stress.stress_table(stressed), hide_index=True, key="stress_table",
        column_config={
            **{column: number_column(format="%.3f") for column in ("sensitivity", "specificity")},
            **{f"{m} change": number_column(format="%+.3f", help="minus the images as they are") for m in ("sensitivity", "specificity")},
        },
    )
    st.caption(stress.NOTE)
else:
    st.caption("The picked runs were saved before the stress test existed: start a new search to get one.")


# --------------------------------------------------------------------------
# Ensembles
# --------------------------------------------------------------------------


def build_ensemble() -> None:
    """The Combine button: save the ensemble as a run and add it to the comparison."""
    state = st.session_state
    name = str(state.get("ensemble_name") or "").strip()
    try:
        built = ensemble.build_ensemble(folder, list(state.get("ensemble_members") or []), name, bool(state.get("ensemble_weighted")))
    except (artifacts.RunError, OSError, ValueError) as error:
        state["ensemble_message"] = ("error", f"No ensemble saved: {error}")
        return
    weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(built.members, built.settings["weights"], strict=True))
    state["ensemble_message"] = ("success", f"Saved ensemble **{built.name}** (weights {weights}) and added it above.")
    state["compare_runs"] = [*state.get("compare_runs", []), built.name]
    del state["ensemble_name"]  # the next one gets a fresh default name


with st.expander("Combine runs into an ensemble", icon=":material/merge:", expanded="ensemble_message" in st.session_state):
    st.caption(
        "The ensemble's probability is the mean of its members' (each reads images at its own size); its threshold is "
        "chosen on validation like every run's (Youden's J). Weights: "
        f"{ensemble.EQUAL_RULE}, or with the box ticked {ensemble.WEIGHTED_RULE.format(steps='k')} (k = 10 for up to "
        "four members). Members must be finished runs split the same way (the same validation and test images); "
        "it is saved as a run of its own, for every page, the report and Predict."
    )
    candidates = [r.name for r in runs if not r.is_ensemble]
    if any(n not in candidates for n in st.session_state.get("ensemble_members", [])):
        del st.session_state["ensemble_members"]  # a run of another folder
    st.session_state.setdefault("ensemble_members", [n for n in picked if n in candidates])
    st.session_state.setdefault("ensemble_name", f"ensemble-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    e1, e2 = st.columns([3, 2])
    e1.multiselect("Members", candidates, key="ensemble_members", help="Ensembles cannot be members: pick their members instead.")
    e2.text_input("Name of the new run", key="ensemble_name")
    st.checkbox("Choose the weights on validation", key="ensemble_weighted", help=ensemble.WEIGHTED_RULE.format(steps="k"))
    st.button("Combine", key="ensemble_build", icon=":material/merge:", on_click=build_ensemble)
    if message := st.session_state.pop("ensemble_message", None):
        (st.success if message[0] == "success" else st.error)(message[1])


# --------------------------------------------------------------------------
# Three classes
# --------------------------------------------------------------------------


class_runs = [n for n in picked if not run_tasks[n].is_binary and multiclass.has_classes(predictions[n], run_tasks[n])]
if class_runs:
    st.header("Three classes: normal / bacterial / viral")
    st.caption(wording.MULTICLASS_NOTE)
    class_items = [load.class_evidence_for(by_name[n], n_resamples, seed) for n in class_runs]
    st.dataframe(wording.multiclass_table(class_items), hide_index=True, key="multiclass_table")
    for item in class_items:
        if item.intervals is None:
            st.warning(f"{item.name}: no three-class intervals: {item.interval_problem}")
    class_curves = [curve for item in class_items for curve in item.curves]
    matrix_cols = st.columns(min(3, len(class_items)) + 1)
    matrix_cols[0].plotly_chart(
        figures.roc_figure(class_curves, figures.run_colors([c["name"] for c in class_curves]), title="One-vs-rest ROC per class (test)"),
        key="fig_class_roc",
    )
    for col, item in zip(matrix_cols[1:], class_items, strict=False):
        col.plotly_chart(
            figures.confusion_matrix_figure(item.matrix, item.task.names, title=f"{item.name} (argmax)"), key=f"fig_class_cm_{item.name}"
        )
    st.dataframe(
        wording.per_class_table(class_items), hide_index=True, key="per_class_table",
        column_config={k: number_column(format="%.3f") for k in ("sensitivity", "specificity", "AUC (one vs rest)")},
    )
    st.caption("Confusion matrices: rows are the true classes; each cell gives the count and the share of its row.")


# --------------------------------------------------------------------------
# Paired test
# --------------------------------------------------------------------------


st.header("Paired test")
if len(picked) < 2:
    st.info("Pick two or more runs above to test one against another on the same test images.")
else:
    if st.session_state.get("paired_a") not in picked:  # a remembered run that is no longer picked
        st.session_state.pop("paired_a", None)
    c1, c2 = st.columns(2)
    run_a = c1.selectbox("Run A", picked, index=0, key="paired_a")
    others = [n for n in picked if n != run_a]
    if st.session_state.get("paired_b") not in others:
        st.session_state.pop("paired_b", None)
    run_b = c2.selectbox("Run B", others, index=0, key="paired_b")
    try:  # with more than two runs picked, Holm-adjusted over every pair of them that can be paired
        paired = evidence.paired_among(run_a, run_b, [(n, predictions[n], thresholds[n]) for n in picked], run_tasks=run_tasks)
    except ValueError as error:
        st.error(f"Cannot pair **{run_a}** and **{run_b}**: {error}", icon=":material/block:")
    else:
        d, mc = paired.delong_by_patient, paired.mcnemar_by_patient
        left, right = st.columns(2)
        with left.container(border=True):
            st.markdown(
                f"**AUCs, by patient** (DeLong's test clustered by patient) · {paired.n_images:,} shared test images "
                f"of {paired.n_patients:,} patients"
            )
            k1, k2, k3 = st.columns(3)
            k1.metric("AUC A", f"{d.auc_a:.3f}")
            k2.metric("AUC difference (A − B)", f"{d.difference:+.3f}")
            k3.metric("DeLong p (by patient)", wording.format_p(d.p_value))
            st.markdown(f"{ci} of the difference, by patient: **{wording.difference_interval(d)}** · AUC B {d.auc_b:.3f}")
            if paired.adjusted:
                st.metric("DeLong p, Holm-adjusted", wording.format_p(paired.p_auc_adjusted))
            st.caption(wording.auc_sentence(paired))
        with right.container(border=True):
            st.markdown(
                f"**Errors, by patient** (McNemar's test clustered by patient) · A at {paired.threshold_a:.3f}, "
                f"B at {paired.threshold_b:.3f} (the thresholds set above)"
            )
            k1, k2, k3 = st.columns(3)
            k1.metric("b: A right, B wrong", f"{mc.b:,}")
            k2.metric("c: A wrong, B right", f"{mc.c:,}")
            k3.metric("McNemar p (by patient)", wording.format_p(mc.p_value))
            if paired.adjusted:
                st.metric("McNemar p, Holm-adjusted", wording.format_p(paired.p_errors_adjusted))
            st.caption(
                f"{wording.errors_sentence(paired)} Method: {wording.mcnemar_method(mc, detailed=True)}; "
                f"{mc.n_discordant_patients:,} patients with a net disagreement."
            )
        if paired.adjusted:
            st.caption(
                f"{paired.n_comparisons} pairs among the picked runs: p-values are Holm-adjusted over them (AUC and error "
                "tests separately), and the sentences use the adjusted ones."
            )
        with st.expander("Image-level tests (every image treated as independent: for reference only)"):
            st.caption(
                "These ignore that a patient's images are alike, so with several images per patient their p-values are too "
                "small; the tests above keep each patient's images together and are the ones to read."
            )
            i1, i2 = st.columns(2)
            i1.metric("DeLong p (image-level)", wording.format_p(paired.delong.p_value))
            i2.metric("McNemar p (image-level)", wording.format_p(paired.mcnemar.p_value))


# --------------------------------------------------------------------------
# Errors by kind
# --------------------------------------------------------------------------


st.header("Errors by kind of image")
errors = evidence.errors_table(evidences)
if errors.empty:
    st.info("These predictions carry no kind of image (normal, bacteria, virus).")
else:
    st.caption(
        "At each run's threshold. For normal images an error is a false alarm; for bacterial and viral pneumonia a missed case"
        + ("; for a bacterial-vs-viral run, bacterial images are its negatives (false alarms) and viral ones its positives (missed)."
           if any(t.name == "bacterial_vs_viral" for t in run_tasks.values()) else ".")
    )
    left, right = st.columns([1, 1])
    left.plotly_chart(figures.error_breakdown_figure(errors, colors), key="fig_errors")
    with right:
        st.dataframe(
            wording.errors_by_kind_wide(evidences, positive), hide_index=True, key="errors_table",
            column_config={"images": st.column_config.TextColumn("images (error)")},
        )


# --------------------------------------------------------------------------
# Per-image predictions
# --------------------------------------------------------------------------


st.header("Per-image predictions")
joined = comparison.per_image_table({name: predictions[name] for name in picked}, thresholds)
column = {name: comparison.probability_column(name) for name in picked}

c1, c2, c3 = st.columns(3)
only_wrong = c1.checkbox("Misclassified by any run", key="filter_wrong")
only_disagree = c2.checkbox("Runs disagree", key="filter_disagree", disabled=len(picked) < 2, help="At the thresholds set above")
true_class = c3.selectbox("True class", ["all", "NORMAL", "PNEUMONIA"], key="filter_class")
shown = comparison.filter_images(
    joined, wrong=only_wrong, disagree=only_disagree, true_class=None if true_class == "all" else true_class
)
st.caption(f"{len(shown):,} of {len(joined):,} test images · probabilities of {positive} · select a row to see the image and where each run looks")
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
    try:
        content = Path(row["path"]).read_bytes()
    except OSError as error:  # the image may have moved since the run
        content = None
        st.error(f"Cannot show {row['path']}: {error}")
    detail = comparison.image_verdicts(
        row, {name: thresholds[name] for name in picked}, {name: run_tasks[name].binary_classes for name in picked}
    )
    st.plotly_chart(
        figures.probability_figure(detail, colors, title=f"{row['image']} (true: {row['class_name']}, {row['kind']})", positive=positive),
        key="fig_selected",
    )
    if content is not None:
        opacity = st.slider(
            "Grad-CAM opacity", 0.0, 1.0, 0.4, step=0.05, key="compare_opacity",
            help=f"Grad-CAM: the regions that push each run towards {positive} (red: most).",
        )
        gradcam_class = ui.gradcam_class_choice([by_name[n] for n in picked], "compare_gradcam_class")
        tiles = [("image", None)] + [("run", name) for name in picked]
        per_row = 4
        for start in range(0, len(tiles), per_row):
            cols = st.columns(per_row)
            for col, (what, name) in zip(cols, tiles[start : start + per_row], strict=False):
                with col:
                    if what == "image":
                        st.image(content, caption=f"{row['image']} · true class {row['class_name']} ({row['kind']})", width="stretch")
                        continue
                    try:
                        picture, has_evidence = load.gradcam_overlay(by_name[name], str(row["path"]), content, opacity, gradcam_class)
                    except (artifacts.RunError, ValueError, OSError) as error:
                        st.caption(f"{name}: no Grad-CAM ({error})")
                        continue
                    label = detail.loc[detail["run"] == name, "label"].iat[0]
                    probability = comparison.probability_of(row, name)
                    predicted = predictions[name].set_index("path")["predicted_class"].get(row["path"], "") if "predicted_class" in predictions[name] else ""
                    explained = ui.explained_class(by_name[name], gradcam_class, predicted)
                    st.image(picture, caption=ui.gradcam_caption(name, probability, label, has_evidence, explained), width="stretch")
