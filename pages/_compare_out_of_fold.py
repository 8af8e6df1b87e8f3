"""Compare page: choose a run's threshold out of fold, in the background, and watch it.

`core.workflows.cross_fit` does the work (here started through `core.jobs`, or by `python -m core
cross-fit`); the point it saves joins the run's operating-point menu above and the list of saved
points in the site section.
"""

from __future__ import annotations

import streamlit as st

from core import jobs
from core.runs import artifacts
from core.workflows import cross_fit
from pages import _shared as ui
from pages._compare_runs import Picked


def out_of_fold_section(view: Picked) -> None:
    """The form that starts a cross-fit of one picked run, and its live progress while one runs."""
    st.header("A threshold out of fold")
    runs = {run.name: run for run in view.picked_runs if not cross_fit.source_problem(run)}
    running = [name for name, run in runs.items() if jobs.cross_fit_state(run) in jobs.CROSS_FIT_ACTIVE]
    if running:
        _progress_panel(view.folder, running)
    with st.expander("Choose a run's threshold on out-of-fold predictions", icon=":material/cycle:",
                     expanded="oof_message" in st.session_state):
        st.caption(
            "The run's validation split is one draw of patients, and its threshold moves with it. This trains each model of "
            "the run again on K−1 of K patient-grouped folds of its training and validation images, scores the held-out fold "
            "as it is and under the stress test's changes, and chooses the threshold on all of them by the run's own rule. "
            "It is saved as the operating point “out-of-fold” (the menu above then offers it, measured on test); the run "
            "itself does not change."
        )
        if not runs:
            st.info("None of the picked runs can be cross-fitted: it takes a finished two-class search, its kept runner-up, "
                    "or an ensemble of them.")
        else:
            left, right = st.columns(2)
            name = left.selectbox("Run", list(runs), key="oof_run")
            folds = int(right.number_input("Folds", min_value=2, max_value=cross_fit.MAX_FOLDS, value=cross_fit.FOLDS,
                                           step=1, key="oof_folds"))
            run = runs[name]
            estimate = cross_fit.estimated_s(run, folds)
            state = jobs.cross_fit_state(run)
            about = f"about {ui.format_duration(estimate)} on this machine" if estimate else "its time is not known"
            st.caption(f"{folds} folds × {len(cross_fit.models_of(run))} model(s): {about}. From a terminal: "
                       f"`python -m core cross-fit {name} --folds {folds}`."
                       + (" The folds saved before are kept: it goes on where it stopped." if state in ("stopped", "interrupted",
                                                                                                         "failed") else ""))
            st.button("Cross-fit" if state != "completed" else "Cross-fit again", key="oof_start", icon=":material/cycle:",
                      disabled=name in running, on_click=_start, args=(view.folder, name, folds))
            if state == "failed":
                st.error(f"The last cross-fit of {name} failed: {(cross_fit.progress_of(run) or {}).get('error')}")
        if message := st.session_state.pop("oof_message", None):
            (st.success if message[0] == "success" else st.error)(message[1])


def _start(folder: str, name: str, folds: int) -> None:
    try:
        jobs.start_cross_fit(folder, name, folds)
    except (artifacts.RunError, OSError) as error:
        st.session_state["oof_message"] = ("error", f"Not started: {error}")
        return
    st.session_state["oof_message"] = ("success", f"Cross-fitting {name} in the background: its progress shows above.")


@st.fragment(run_every="2s")
def _progress_panel(folder: str, names: list[str]) -> None:
    """Each running cross-fit's progress, re-read every two seconds, with a Stop button."""
    states = {}
    with st.container(border=True):
        for name in names:
            run = artifacts.load_run(folder, name)
            states[name] = jobs.cross_fit_state(run)
            progress = cross_fit.progress_of(run) or {}
            done, total = progress.get("folds_done") or 0, progress.get("folds_total")
            text = f"{name}: cross-fit {states[name]}" + (f" · {progress['message']}" if progress.get("message") else "")
            if total:
                st.progress(min(1.0, done / total), text=f"{text} ({done} of {total} folds)")
            else:
                st.caption(text)
            if st.button(f"Stop the cross-fit of {name}", key=f"oof_stop::{name}", help="The folds saved are kept."):
                cross_fit.stop(run)
    if not any(state in jobs.CROSS_FIT_ACTIVE for state in states.values()):
        st.rerun(scope="app")  # finished: the menu above offers the point
