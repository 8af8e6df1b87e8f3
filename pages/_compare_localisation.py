"""Compare page: "Where the models look": each explanation method's evidence for the picked runs.

What it shows is measured by `core.workflows.localisation` (here started in the background through
`core.jobs`, or by `python -m core where-it-looks`) and laid out by `core.reporting.where_it_looks`.
"""

from __future__ import annotations

import streamlit as st

from core import jobs
from core.reporting import where_it_looks
from core.runs import artifacts
from core.workflows import localisation
from pages import _loaders as load
from pages import _shared as ui
from pages._compare_runs import Picked

RUNNING = (jobs.QUEUED, "running")


def where_they_look_section(view: Picked) -> None:
    """The evidence of runs already measured; a button that measures the others, with live progress."""
    st.header("Where the models look")
    runs = view.picked_runs
    binary = [run for run in runs if view.run_tasks[run.name].is_binary]
    states = {run.name: jobs.localisation_state(run) for run in binary}
    if any(state in RUNNING for state in states.values()):
        _progress_panel(view.folder, [name for name, state in states.items() if state in RUNNING])
    saved = load.localisation_for(view.folder, [run.name for run in binary])
    missing = [run.name for run in binary if run.name not in saved and states[run.name] not in RUNNING]
    _measure_form(view.folder, binary, missing, [run.name for run in binary if run.name in saved])
    if len(binary) < len(runs):
        st.caption("Three-class runs are not measured here: their heatmap explains a different class on each image.")
    if not saved:
        return
    summaries = load.localisation_summaries(view.folder, tuple(saved), view.n_resamples, view.seed)
    for line in where_it_looks.warnings_text(summaries, view.run_tasks):
        st.warning(line, icon=":material/warning:")
    table = where_it_looks.summary_table(summaries, view.run_tasks)
    # pixel widths that fit 1,280 px: the intervals' columns wide enough to read whole, the rest sharing what is left
    st.dataframe(table, hide_index=True, key="where_it_looks_table", width="stretch",
                 column_config=ui.fitted_text_columns(list(table.columns), {"run": 140, "method": 115, "gain ↑": 135,
                                                                           "opacity hit": 75, "opacity IoU": 75}),
                 height=min(38 + 35 * len(table), 38 + 35 * 24))  # every row of up to four runs, no inner scrolling
    with st.expander("Deletion, insertion, marks, and how many X-rays look at the border"):
        details = where_it_looks.detail_table(summaries, view.run_tasks)
        # two tables, the intervals first: together they would not fit 1,280 px
        for part, columns in enumerate((list(details.columns[:5]), ["run", "method", *details.columns[5:]])):
            fixed = {"run": 140, "method": 115, **{c: 135 for c in columns[2:] if part == 0}}
            st.dataframe(details[columns], hide_index=True, key=f"where_it_looks_details_{part}", width="stretch",
                         column_config=ui.fitted_text_columns(columns, fixed), height=min(38 + 35 * len(details), 38 + 35 * 24))
    first = next(iter(saved.values())).about
    st.caption(
        f"{first.get('n_images', '?')} test images per run ({first.get('per_class', '?')} per class, seed "
        f"{first.get('seed', '?')}), {first.get('synthetic', 0)} healthy validation images with an inserted opacity. "
        + where_it_looks.explained_text()
    )
    st.plotly_chart(where_it_looks.border_figure(summaries, view.run_tasks, view.colors), key="fig_border_heat")
    shown = st.selectbox("Curves of", list(saved), key="where_it_looks_run",
                         help="Mean deletion and insertion curves of one run, each method against the two baselines.")
    st.plotly_chart(where_it_looks.curves_figure(saved[shown], shown, view.positive), key="fig_deletion_insertion")
    skipped = {name: item.about.get("skipped") for name, item in saved.items() if item.about.get("skipped")}
    for name, reasons in skipped.items():
        st.caption(f"{name}: not measured: " + "; ".join(f"{where_it_looks.method_label(m)} ({why})" for m, why in reasons.items()))


def _measure_form(folder: str, runs: list[artifacts.Run], missing: list[str], measured: list[str]) -> None:
    """Start a measurement of the runs without evidence (or again, of all)."""
    if not missing and not measured:
        return
    names = missing or measured
    verb = "Measure" if missing else "Measure again"
    estimate = ui.format_duration(localisation.estimated_s([run for run in runs if run.name in names]))
    if missing:
        st.info(f"Not measured yet: {', '.join(missing)}. Each run's explanations are checked on "
                f"{2 * localisation.PER_CLASS} test images and {localisation.SYNTHETIC} synthetic opacities, in the "
                f"background (about {estimate} on 2 cores). The same from a terminal: "
                f"`python -m core where-it-looks {' '.join(names)}`.", icon=":material/info:")
    if st.button(f"{verb} where {', '.join(names)} look{'s' if len(names) == 1 else ''}", key="where_it_looks_start",
                 type="primary" if missing else "secondary"):
        try:
            jobs.start_where_it_looks(folder, names)
        except (OSError, ValueError) as error:
            st.error(f"Could not start: {error}")
            return
        st.rerun()


@st.fragment(run_every="2s")
def _progress_panel(folder: str, names: list[str]) -> None:
    """The background measurement's progress, re-read every two seconds, with a Stop button."""
    states = {}
    with st.container(border=True):
        for name in names:
            run = artifacts.load_run(folder, name)
            state, progress = jobs.localisation_state(run), localisation.progress_of(run) or {}
            states[name] = state
            done, total = progress.get("done") or 0, progress.get("total")
            message = str(progress.get("message") or "").removeprefix(f"{name}: ")
            text = f"{name}: {state}" + (f" · {message}" if message else "")
            if total:
                st.progress(min(1.0, done / total), text=text)
            else:
                st.caption(text)
        if st.button("Stop measuring", key="where_it_looks_stop", help="What each run saved before is kept."):
            jobs.stop_where_it_looks(folder, names)
    if not any(state in RUNNING for state in states.values()):
        st.rerun(scope="app")  # finished: show the evidence

