"""Compare page: which runs are compared, at which thresholds, and adding an ensemble of them.

`pick_runs` lays out the run picker (`pages._run_picker`) and the interval settings and gathers what every section
needs into one `Picked`: the runs, their predictions and tasks, and their evidence at the
thresholds set on the page (the threshold controls themselves are `pages._compare_thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from core.data import tasks
from core.evidence import comparison, run_evidence, stress
from core.inference import ensemble
from core.reporting import figures, wording
from core.runs import artifacts
from pages import _loaders as load
from pages import _run_picker as run_picker
from pages._compare_thresholds import choice_key, threshold_key


@dataclass(frozen=True)
class Picked:
    """The compared runs and their evidence at the page's thresholds, in the order picked."""

    folder: str
    runs: list[artifacts.Run]  # every listed run of the folder (the ensemble's candidates)
    by_name: dict[str, artifacts.Run]
    names: list[str]  # the picked runs whose predictions could be read
    predictions: dict[str, pd.DataFrame]
    run_tasks: dict[str, tasks.Task]
    positive: str  # the picked runs' positive class, as a reader sees it
    colors: dict[str, str]
    n_resamples: int
    seed: int
    at_saved: dict[str, run_evidence.RunEvidence]  # at the validation-chosen threshold: its operating points
    thresholds: dict[str, float]  # the thresholds in use
    items: dict[str, run_evidence.RunEvidence]  # at the thresholds in use

    @property
    def picked_runs(self) -> list[artifacts.Run]:
        return [self.by_name[name] for name in self.names]

    @property
    def evidences(self) -> list[run_evidence.RunEvidence]:
        return [self.items[name] for name in self.names]


def pick_runs(folder: str, runs: list[artifacts.Run]) -> Picked:
    """The run picker and the interval settings; stops the page when nothing can be compared."""
    by_name = {r.name: r for r in runs}
    top_left, top_right = st.columns([4, 1], vertical_alignment="bottom")
    picked = run_picker.pick_runs(
        runs, "Runs to compare", key="compare_runs", where=top_left,
        help="Default: the run with the best validation AUC in each model family (chosen on validation, never on test).",
    )
    n_resamples, seed = _interval_settings(top_right)
    if not picked:
        st.info("Pick at least one run.")
        st.stop()
    predictions = _read_predictions(by_name, picked)
    picked = [name for name in picked if name in predictions]
    if not picked:
        st.stop()
    # What each run answers (core.data.tasks): a three-class run is compared on its derived binary view.
    run_tasks = {name: comparison.run_task(by_name[name]) for name in picked}
    _, positive = comparison.binary_names([by_name[n] for n in picked])
    for note in comparison.question_notes([by_name[n] for n in picked]):
        st.info(note, icon=":material/help:")
    # The validation-chosen threshold and the operating points do not depend on the threshold in use.
    # A run's saved site operating points (core.workflows.site) join its menu, measured on test.
    at_saved = {
        name: run_evidence.with_site_points(
            load.evidence_for(by_name[name], by_name[name].threshold, n_resamples, seed), predictions[name],
            {point: record["threshold"] for point, record in by_name[name].operating_points().items()},
            out_of_fold={point for point, record in by_name[name].operating_points().items() if record.get("folds")},
        )
        for name in picked
    }
    thresholds, items = {}, {}
    for name in picked:
        st.session_state.setdefault(threshold_key(name), by_name[name].threshold)
        st.session_state.setdefault(choice_key(name), run_evidence.VALIDATION_CHOICE)
        thresholds[name] = float(st.session_state[threshold_key(name)])
        items[name] = load.evidence_for(by_name[name], thresholds[name], n_resamples, seed)
    return Picked(
        folder=folder, runs=runs, by_name=by_name, names=picked, predictions=predictions, run_tasks=run_tasks, positive=positive,
        colors=figures.run_colors(picked), n_resamples=n_resamples, seed=seed, at_saved=at_saved, thresholds=thresholds, items=items,
    )


def _interval_settings(column) -> tuple[int, int]:
    """The Intervals popover: bootstrap resamples and seed."""
    with column.popover("Intervals", icon=":material/tune:", width="stretch"):
        n_resamples = int(
            st.number_input(
                "Bootstrap resamples", min_value=100, max_value=20_000, value=run_evidence.N_RESAMPLES, step=100, key="compare_resamples",
                help="Each resample draws the test patients with replacement (all images of a drawn patient together).",
            )
        )
        seed = int(st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=run_evidence.SEED, step=1, key="compare_seed"))
        st.caption("95 % intervals: the AUC's is a patient bootstrap (the same seed gives the same interval); sensitivity, "
                   "specificity and accuracy use Wilson's interval with the patients' design effect (no resampling). "
                   + wording.glossary("design effect"))
    return n_resamples, seed


def _read_predictions(by_name: dict[str, artifacts.Run], picked: list[str]) -> dict[str, pd.DataFrame]:
    """Each picked run's test predictions; a run whose test or validation predictions cannot be read
    (missing, or damaged by hand: `artifacts.check_predictions`) gets an error and is left out."""
    predictions = {}
    for name in picked:
        try:
            load.val_predictions_for(by_name[name])  # read here so that a damaged file is named, not raised later
            predictions[name] = load.predictions_for(by_name[name])
        except (artifacts.RunError, OSError, ValueError) as error:
            st.error(f"Cannot read the predictions of {name}: {error}")
    return predictions


# --------------------------------------------------------------------------
# Combining runs into an ensemble
# --------------------------------------------------------------------------


def _build_ensemble(folder: str) -> None:
    """The Combine button: save the ensemble as a run and add it to the comparison."""
    state = st.session_state
    name = str(state.get("ensemble_name") or "").strip()
    try:
        built = ensemble.build_ensemble(folder, list(state.get("ensemble_members") or []), name, bool(state.get("ensemble_weighted")))
    except (artifacts.RunError, OSError, ValueError) as error:
        state["ensemble_message"] = ("error", f"No ensemble saved: {error}")
        return
    state["ensemble_message"] = ("success", f"Saved ensemble **{built.name}** (weights {ensemble.weights_text(built)}) and added it above.")
    state["compare_runs"] = [*state.get("compare_runs", []), built.name]
    del state["ensemble_name"]  # the next one gets a fresh default name


def ensemble_section(view: Picked) -> None:
    """The expander that combines runs into an ensemble, saved as a run of its own."""
    with st.expander("Combine runs into an ensemble", icon=":material/merge:", expanded="ensemble_message" in st.session_state):
        st.caption(
            "The ensemble's probability is the mean of its members' (each reads images at its own size; three-class "
            "members alone make a three-class ensemble, the mean of their class probabilities); its threshold is "
            f"chosen on validation like every run's (Youden's J, pooled with the members' stress-test copies, within {100 * stress.CLEAN_MARGIN:g} points "
            "of the unchanged images' own Youden point, when they all "
            "kept them). Weights: "
            f"{ensemble.EQUAL_RULE}, or with the box ticked {ensemble.WEIGHTED_RULE.format(steps='k')} (k = 10 for up to "
            "four members). Members must be finished runs split the same way (the same validation and test images: the "
            "same seed; add seeds with a run's 'repeat the best with other seeds'); "
            "it is saved as a run of its own, for every page, the report and Predict."
        )
        candidates = [r.name for r in view.runs if not r.is_ensemble]
        if any(n not in candidates for n in st.session_state.get("ensemble_members", [])):
            del st.session_state["ensemble_members"]  # a run of another folder
        st.session_state.setdefault("ensemble_members", [n for n in view.names if n in candidates])
        st.session_state.setdefault("ensemble_name", f"ensemble-{datetime.now(UTC):%Y%m%d-%H%M%S}")
        e1, e2 = st.columns([3, 2])
        e1.multiselect("Members", candidates, key="ensemble_members", help="Ensembles cannot be members: pick their members instead.")
        e2.text_input("Name of the new run", key="ensemble_name")
        st.checkbox("Choose the weights on validation", key="ensemble_weighted", help=ensemble.WEIGHTED_RULE.format(steps="k"))
        st.button("Combine", key="ensemble_build", icon=":material/merge:", on_click=_build_ensemble, args=(view.folder,))
        if message := st.session_state.pop("ensemble_message", None):
            (st.success if message[0] == "success" else st.error)(message[1])
