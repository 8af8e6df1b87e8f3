"""Compare page: each run's threshold control (an operating point or a slider) and its confusion matrix.

The widgets' state lives under `threshold_key(run)` and `choice_key(run)`; which menu entries
exist and where the slider ends are `core.evidence.run_evidence.RunEvidence`'s rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from core.evidence import comparison, run_evidence, stress
from core.reporting import figures, wording
from core.runs import artifacts
from pages import _loaders as load
from pages import _shared as ui

if TYPE_CHECKING:
    from pages._compare_runs import Picked

PER_ROW = 3  # matrices side by side


def threshold_key(name: str) -> str:
    return f"threshold::{name}"


def choice_key(name: str) -> str:
    return f"operating_point::{name}"


def _apply_choice(name: str, at_saved: run_evidence.RunEvidence) -> None:
    """An operating point was picked: move the slider to its threshold."""
    picked_choice = at_saved.choice(st.session_state[choice_key(name)])
    if picked_choice is not None:
        st.session_state[threshold_key(name)] = picked_choice.threshold


def _slider_moved(name: str, at_saved: run_evidence.RunEvidence) -> None:
    """The slider was moved by hand: the operating point becomes "custom" (unless it landed on one)."""
    value = float(st.session_state[threshold_key(name)])
    key = at_saved.choice_after_move(st.session_state.get(choice_key(name)), value)
    if key == run_evidence.CUSTOM_CHOICE:
        st.session_state[choice_key(name)] = key


def _reset_threshold(name: str, saved_threshold: float) -> None:
    st.session_state[threshold_key(name)] = saved_threshold
    st.session_state[choice_key(name)] = run_evidence.VALIDATION_CHOICE


def confusion_matrices_section(view: Picked) -> None:
    """A box per run: operating point, threshold slider, confusion matrix and its three rates."""
    st.header("Thresholds and confusion matrices")
    st.caption(
        "Pick an operating point or move a run's threshold: its matrix, its dot on the ROC curve and the tables below "
        f"follow. {wording.VALIDATION_NOTE}"
        + (f" {wording.DESCRIPTIVE_NOTE}" if any(ev.points_on_test for ev in view.evidences) else "")
    )
    for start in range(0, len(view.names), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, name in zip(cols, view.names[start : start + PER_ROW], strict=False):
            with col.container(border=True):
                _run_threshold_box(view, name)


def _clean_point(run: artifacts.Run) -> None:
    """The saved threshold on the unchanged validation images beside their own Youden point, with a
    warning when it gives them up (`stress.clean_shortfall` above `stress.CLEAN_MARGIN`)."""
    at_saved = (run.metrics or {}).get("val")
    clean = stress.saved_clean_point(run.metrics, load.val_predictions_for(run))
    if not isinstance(at_saved, dict) or clean is None or not {"sensitivity", "specificity"} <= set(at_saved):
        return
    st.caption(wording.clean_point_note(run.threshold, at_saved, clean))
    if (shortfall := stress.clean_shortfall(at_saved, clean)) > stress.CLEAN_MARGIN + 1e-9:
        st.warning(wording.clean_point_warning(shortfall), icon=":material/warning:")


def _run_threshold_box(view: Picked, name: str) -> None:
    run, at_saved, item = view.by_name[name], view.at_saved[name], view.items[name]
    options = at_saved.choice_keys
    if st.session_state.get(choice_key(name)) not in options:
        st.session_state[choice_key(name)] = run_evidence.CUSTOM_CHOICE
    st.markdown(f"<span style='color:{view.colors[name]}'>●</span> **{name}**", unsafe_allow_html=True)
    rule = (run.metrics or {}).get("threshold_rule")
    st.selectbox(
        "Operating point", options, key=choice_key(name), on_change=_apply_choice, args=(name, at_saved),
        format_func=lambda key: wording.choice_option(key, at_saved.choice(key), rule),
        help="Saved: the run's own threshold (how it was chosen is in the slider's help: Youden's J on the "
        "validation split, pooled with the stress test's changed copies of it when the search ran one, kept where the "
        f"unchanged images lose at most {100 * stress.CLEAN_MARGIN:g} points of sensitivity or specificity). 'Youden's J, "
        "unchanged validation images only' is plain Youden's J on the validation images as they are. The others "
        "(sens@spec90: the best sensitivity with specificity at least 90 %, and so on) are chosen on the "
        "validation split too and measured on test; a run saved without validation predictions gets them "
        "from the test images instead, marked 'on test' (descriptive only).",
    )
    task = view.run_tasks[name]
    st.slider(
        f"Threshold (probability of {task.binary_names[1]})", 0.0, at_saved.highest_threshold, step=0.001, format="%.3f",
        key=threshold_key(name), on_change=_slider_moved, args=(name, at_saved), help=wording.threshold_help(task, run.threshold, (run.metrics or {}).get("threshold_rule")),
    )
    _clean_point(run)
    st.plotly_chart(
        figures.confusion_matrix_figure(item.confusion_matrix, comparison.matrix_labels(run), title=""), key=f"fig_cm_{name}"
    )
    m = item.metrics
    st.markdown(
        f"Sensitivity **{ui.format_number(m['sensitivity'])}** · specificity **{ui.format_number(m['specificity'])}** · "
        f"accuracy **{ui.format_number(m['accuracy'])}**"
    )
    chosen = at_saved.choice(st.session_state[choice_key(name)])
    if chosen is not None and (miss := wording.target_miss_warning(chosen)):
        st.warning(miss, icon=":material/warning:")
    if chosen is not None and chosen.on_test:
        st.caption(":material/info: On test — descriptive; the validation-chosen threshold is the honest one.")
    if abs(view.thresholds[name] - run.threshold) > 1e-9:
        st.button("Back to the validation threshold", key=f"reset_{name}", on_click=_reset_threshold, args=(name, run.threshold))
