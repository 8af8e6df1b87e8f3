"""Compare page: the evidence sections, each one function that lays out what `core` computed.

Curves (`core.reporting.curves`), the metrics table with intervals and the downloads, validation against
test (`core.evidence.shift`) and the stress test (`core.evidence.stress`), the three-class section
(`core.evidence.multiclass`), the paired test (`core.evidence`) and errors by kind of image; every
label and sentence they share with the HTML report comes from `core.reporting.wording`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from core.data import tasks
from core.evidence import comparison, run_evidence, shift, stress
from core.reporting import curves, figures, report, wording
from core.workflows import repeat
from pages import _loaders as load
from pages import _shared as ui
from pages._compare_runs import Picked

number_column = st.column_config.NumberColumn


def curves_section(view: Picked) -> None:
    """ROC, precision-recall and calibration curves, and a warning when the runs saw different test images."""
    evidences, colors, positive = view.evidences, view.colors, view.positive
    roc_col, pr_col, cal_col = st.columns(3)
    roc_col.plotly_chart(figures.roc_figure(curves.roc_curves(evidences), colors), key="fig_roc")
    pr_col.plotly_chart(figures.precision_recall_figure(curves.precision_recall_curves(evidences), colors), key="fig_pr")
    cal_col.plotly_chart(figures.calibration_figure(curves.calibration_curves(evidences), colors, positive=positive), key="fig_calibration")
    st.caption(
        "**ROC:** sensitivity against 1 − specificity over every threshold; the dot is the run's operating point at the "
        "threshold set below; the dashed diagonal is a coin toss. AUC intervals resample patients "
        f"({view.n_resamples:,} resamples, seed {view.seed}). **Precision-recall:** how many {positive} calls are right at each "
        f"sensitivity; AP = average precision; the dashed line is the share of {positive} images. **Calibration:** "
        f"observed share of {positive} in each band of predicted probability; on the diagonal a predicted 0.8 means "
        f"{positive} 8 times in 10. Brier = mean squared error of the probability; ECE = expected calibration error."
    )
    image_check = comparison.image_check(view.predictions)
    if not image_check.same:
        st.warning(
            f"The picked runs were tested on different images ({wording.image_counts(image_check)}), e.g. a different "
            "image cap or seed: their numbers are not directly comparable."
        )


def metrics_section(view: Picked) -> None:
    """The metrics table with intervals and run facts, the spread over seeds, and the CSV and report downloads."""
    st.header("Metrics")
    ci = wording.ci_label(run_evidence.CONFIDENCE)
    # the evidence first, what the run is after it
    metrics_only = wording.metrics_table(view.evidences)
    facts = comparison.facts_table(view.picked_runs)
    metrics_table = pd.concat([metrics_only, facts], axis=1)  # the CSV download: everything in one table
    interval_help = wording.intervals_note(view.n_resamples, view.seed)
    key_metrics, more_metrics = wording.split_metrics_table(metrics_only, ci)
    # pixel widths that keep each of the three tables within a 1,280 px screen (Compare's main column
    # is about 820 px there); headers that would not fit are shortened here, their full words in the help
    metric = {"format": "%.3f", "width": 80}
    column_config = {
        "run": st.column_config.TextColumn("run", width=150),
        "threshold": number_column(**metric),
        **{k: number_column(**metric) for k in (*wording.INTERVAL_TITLES.values(), *wording.POINT_METRIC_TITLES)},
        **{f"{k} {ci}": st.column_config.TextColumn(help=interval_help, width=110) for k in wording.INTERVAL_TITLES.values()},
        **{title: number_column(**metric, help=text) for title, text in wording.METRIC_HELP.items()},
        "average precision": number_column("avg precision", **metric, help=wording.METRIC_HELP["average precision"]),
        "family": st.column_config.TextColumn(width=80),
        "task": st.column_config.TextColumn(width=80),
        "mode": st.column_config.TextColumn(width=70),
        "input px": st.column_config.TextColumn(width=75, help="Image size the model reads (pixels per side)"),
        "parameters": number_column(format="localized", width=85),
        "training time (s)": number_column("training (s)", format="%.1f", width=80, help="Time of the hyperparameter search (all trials), in seconds"),
        "inference (ms/image)": number_column("ms/image", format="%.2f", width=85,
                                              help="Inference time per image in milliseconds, batched, through the saved model's inference engine"),
        "single image (ms)": number_column("ms, 1 image", format="%.2f", width=85, help="Latency of one image alone, in milliseconds"),
    }
    st.dataframe(key_metrics, hide_index=True, key="metrics_table", column_config=column_config)
    # the test's sizes are in "Validation against test" below (and in the CSV): this table keeps to the metrics
    st.dataframe(more_metrics.drop(columns=["test images", "test patients"], errors="ignore"), hide_index=True,
                 key="more_metrics_table", column_config=column_config)
    st.dataframe(pd.concat([metrics_only[["run"]], facts], axis=1), hide_index=True, key="run_facts_table", column_config=column_config)
    for item in view.evidences:
        if item.intervals is None:
            st.warning(f"{item.name}: no intervals: {item.interval_problem}")
    seed_spread = repeat.seed_summaries(view.picked_runs)  # repeated runs: the spread over their seeds
    if not seed_spread.empty:
        st.subheader("Spread over training seeds")
        st.dataframe(seed_spread, hide_index=True, key="seed_spread",
                     column_config={k: number_column(format="%.3f") for k in ("mean", "SD", "min", "max")})
        st.caption(f"{repeat.NOTE} The rows above show each repeat's first seed, its main predictions.")
    _downloads(view, metrics_table)


def _downloads(view: Picked, metrics_table: pd.DataFrame) -> None:
    c1, c2, c3 = st.columns([1, 1, 1])
    include_folders = c3.checkbox(
        "Folder paths in the report", key="report_folders",
        help="Off: the data and artifacts folders are named without their place on this machine, fit to share.",
    )
    c1.download_button(
        "Download metrics (CSV)", metrics_table.to_csv(index=False).encode(), file_name="metrics.csv",
        mime="text/csv", icon=":material/download:", key="download_metrics",
    )
    runs, thresholds, predictions = view.picked_runs, dict(view.thresholds), dict(view.predictions)

    def report_html() -> bytes:
        """Built only when the button is clicked (Streamlit calls it then), with the page's current choices."""
        return report.build_report(
            runs, thresholds, predictions=predictions, n_resamples=view.n_resamples, seed=view.seed,
            include_folders=include_folders,
        ).encode("utf-8")

    c2.download_button(
        "Download report (HTML)", report_html, file_name=f"cxr-report-{datetime.now(UTC):%Y%m%d-%H%M}.html", mime="text/html",
        icon=":material/description:", key="download_report", on_click="ignore",
        help="One self-contained HTML file (opens offline): these curves, the metrics with intervals, paired tests, errors "
        "by kind, and each run's settings and data, at the thresholds set above.",
    )


def shift_and_stress_section(view: Picked) -> None:
    """Each run on validation against test, then its saved stress test on validation."""
    st.header("Validation against test")
    shifts = [
        shift.run_shift(n, load.val_predictions_for(view.by_name[n]), view.predictions[n], view.thresholds[n], load.splits_for(view.by_name[n]))
        for n in view.names
    ]
    for sentence in shift.shift_warnings(shifts):
        st.warning(f"Test is clearly worse than validation: {sentence}", icon=":material/trending_down:")
    shift_rows = shift.shift_table(shifts)
    st.dataframe(
        shift_rows, hide_index=True, key="shift_table", height=ui.table_height(len(shift_rows)),
        column_config={
            "run": st.column_config.TextColumn("run", width="medium"),
            "validation": number_column(format="%.3f", help="On the validation split, where the threshold was chosen"),
            "test": number_column(format="%.3f", help="On the test split"),
            "test − validation": number_column(format="%+.3f", help="Test minus validation: negative is worse, except for ECE"),
        },
    )
    st.dataframe(
        shift.shift_runs_table(shifts), hide_index=True, key="shift_runs_table",
        column_config={
            "threshold": number_column(format="%.3f"),
            "validation images": number_column(format="localized"),
            "test images": number_column(format="localized"),
        },
    )
    st.caption(shift.source_note(shifts))
    st.plotly_chart(figures.shift_figure(shift.figure_rows(shifts), view.colors, shift.LOWER_IS_BETTER), key="fig_shift")
    st.caption(f"{shift.NOTE} At the thresholds set above.")

    stressed = stress.saved_results(view.picked_runs)
    st.subheader("Stress test on validation")
    if stressed:
        stress_rows = stress.stress_table(stressed)
        st.dataframe(
            stress_rows, hide_index=True, key="stress_table", height=ui.table_height(len(stress_rows)),
            column_config={
                **{column: number_column(format="%.3f") for column in ("sensitivity", "specificity")},
                **{f"{m} change": number_column(format="%+.3f", help="minus the images as they are") for m in ("sensitivity", "specificity")},
            },
        )
        st.caption(stress.NOTE)
    else:
        st.caption("The picked runs were saved before the stress test existed: start a new search to get one.")


def three_class_section(view: Picked) -> None:
    """The three-class runs at their decision: metrics with intervals, one-vs-rest ROC, matrices, per-class table."""
    class_runs = comparison.three_class_runs(view.predictions, view.run_tasks)
    if not class_runs:
        return
    st.header(f"Three classes: {tasks.THREE_CLASS.title}")
    st.caption(wording.MULTICLASS_NOTE)
    class_items = [load.class_evidence_for(view.by_name[n], view.n_resamples, view.seed) for n in class_runs]
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
            figures.confusion_matrix_figure(item.matrix, item.task.names, title=item.name), key=f"fig_class_cm_{item.name}"
        )
    st.dataframe(
        wording.per_class_table(class_items), hide_index=True, key="per_class_table",
        column_config={k: number_column(format="%.3f") for k in ("sensitivity", "specificity", "AUC (one vs rest)")},
    )
    st.caption("Confusion matrices: rows are the true classes; each cell gives the count and the share of its row.")


def paired_test_section(view: Picked) -> None:
    """Two picked runs tested against each other by patient (DeLong for AUC, McNemar for errors)."""
    st.header("Paired test")
    picked = view.names
    if len(picked) < 2:
        st.info("Pick two or more runs above to test one against another on the same test images.")
        return
    if st.session_state.get("paired_a") not in picked:  # a remembered run that is no longer picked
        st.session_state.pop("paired_a", None)
    c1, c2 = st.columns(2)
    run_a = c1.selectbox("Run A", picked, index=0, key="paired_a")
    others = [n for n in picked if n != run_a]
    if st.session_state.get("paired_b") not in others:
        st.session_state.pop("paired_b", None)
    run_b = c2.selectbox("Run B", others, index=0, key="paired_b")
    try:  # with more than two runs picked, Holm-adjusted over every pair of them that can be paired
        paired = run_evidence.paired_among(
            run_a, run_b, [(n, view.predictions[n], view.thresholds[n]) for n in picked], run_tasks=view.run_tasks
        )
    except ValueError as error:
        st.error(f"Cannot pair **{run_a}** and **{run_b}**: {error}", icon=":material/block:")
        return
    left, right = st.columns(2)
    with left.container(border=True):
        _auc_test(paired)
    with right.container(border=True):
        _error_test(paired)
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


def _test_box(heading: str, figures: list[tuple[str, str]], interval: str, adjusted: tuple[str, float] | None, caption: str) -> None:
    """One paired test: what it compares, three figures, the interval if any, the Holm-adjusted p if any, the verdict."""
    st.markdown(heading)
    for col, (label, value) in zip(st.columns(3), figures, strict=True):
        col.metric(label, value)
    if interval:
        st.markdown(interval)
    if adjusted is not None:
        st.metric(adjusted[0], wording.format_p(adjusted[1]))
    st.caption(caption)


def _auc_test(paired: run_evidence.PairedEvidence) -> None:
    d = paired.delong_by_patient
    _test_box(
        f"**AUCs, by patient** (DeLong's test clustered by patient) · {paired.n_images:,} shared test images "
        f"of {paired.n_patients:,} patients",
        [("AUC A", f"{d.auc_a:.3f}"), ("AUC difference (A − B)", f"{d.difference:+.3f}"), ("DeLong p (by patient)", wording.format_p(d.p_value))],
        f"{wording.ci_label(run_evidence.CONFIDENCE)} of the difference, by patient: **{wording.difference_interval(d)}** · AUC B {d.auc_b:.3f}",
        ("DeLong p, Holm-adjusted", paired.p_auc_adjusted) if paired.adjusted else None,
        wording.auc_sentence(paired),
    )


def _error_test(paired: run_evidence.PairedEvidence) -> None:
    mc = paired.mcnemar_by_patient
    _test_box(
        f"**Errors, by patient** (McNemar's test clustered by patient) · A at {paired.threshold_a:.3f}, "
        f"B at {paired.threshold_b:.3f} (the thresholds set above)",
        [("b: A right, B wrong", f"{mc.b:,}"), ("c: A wrong, B right", f"{mc.c:,}"), ("McNemar p (by patient)", wording.format_p(mc.p_value))],
        "",
        ("McNemar p, Holm-adjusted", paired.p_errors_adjusted) if paired.adjusted else None,
        f"{wording.errors_sentence(paired)} Method: {wording.mcnemar_method(mc, detailed=True)}; "
        f"{mc.n_discordant_patients:,} patients with a net disagreement.",
    )


def errors_by_kind_section(view: Picked) -> None:
    """Each run's error rate per kind of image (normal, bacterial, viral) at its threshold."""
    st.header("Errors by kind of image")
    errors = run_evidence.errors_table(view.evidences)
    if errors.empty:
        st.info("These predictions carry no kind of image (normal, bacteria, virus).")
        return
    st.caption(f"At each run's threshold. {wording.errors_by_kind_note(view.run_tasks.values())}")
    st.plotly_chart(figures.error_breakdown_figure(errors, view.colors), key="fig_errors")
    # under the chart, not beside it: one column per run, narrower as runs are added, so it fits 1,280 px
    table = wording.errors_by_kind_wide(view.evidences, view.positive)
    st.dataframe(
        table, hide_index=True, key="errors_table",
        column_config={**ui.fitted_text_columns(list(table.columns), {"images": 200}),
                       "images": st.column_config.TextColumn("images (error)", width=200)},
    )
