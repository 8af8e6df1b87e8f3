"""The Trials view of one run (Tune page: run details and the live panel of a running search).

Only layout: the numbers come from `core.runs.trials`, the figures from `core.reporting.trial_figures`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.reporting import trial_figures
from core.runs import artifacts, trials
from pages import _shared as ui

OLD_RUN_NOTE = (
    "This run was saved before per-epoch histories were kept: the table and figures use trials.json only "
    "(no learning curves, epochs run or durations)."
)
MAX_CURVES_BY_DEFAULT = 5


@st.cache_data(max_entries=32, show_spinner=False)
def _importance(frame: pd.DataFrame, hyperparameters: tuple[str, ...]) -> trials.Importance | None:
    # Cached on the table's content: the live panel redraws every 2 s, the forest need not refit.
    return trials.hyperparameter_importance(trials.TrialTable(frame, hyperparameters))


def _default_curves(table: trials.TrialTable) -> list[str]:
    """The best trials by score, then the one training now, so the live panel follows it."""
    ranked = table.scored.sort_values(trials.SCORE, ascending=False)["trial_id"].tolist()[: MAX_CURVES_BY_DEFAULT - 1]
    running = table.frame.loc[table.frame["status"] == "RUNNING", "trial_id"].tolist()
    return list(dict.fromkeys([*ranked, *running[-1:]]))


def trials_view(run: artifacts.Run, key: str) -> None:
    """Every trial of `run`: table, parallel coordinates, score by hyperparameter, importance,
    learning curves and optimisation history. `key` keeps widget keys apart per place shown."""
    rows, history = run.trials(), run.trial_history()
    if not rows and history is None:
        st.caption("No trials yet.")
        return
    if history is None:
        st.info(OLD_RUN_NOTE, icon=":material/history:")
    table = trials.trial_table(rows, history)
    varied = trials.varied_hyperparameters(table)
    scored = len(table.scored)
    st.caption(f"{len(table.frame)} trials, {scored} with a validation AUC. Click a column header to sort.")
    # Two tables that each fit 1,280 px: each trial's outcome, then the hyperparameters it tried
    outcome = ["trial", trials.SCORE, "best_epoch", "epochs_run", "stopped_early", "duration_s", "status"]
    trial_column = st.column_config.NumberColumn("trial", format="%d", width=60)
    st.dataframe(
        table.frame[outcome], hide_index=True, key=f"{key}_table",
        column_config={
            "trial": trial_column,
            trials.SCORE: st.column_config.NumberColumn("best val AUC", format="%.4f", width=110),
            "best_epoch": st.column_config.NumberColumn("at epoch", format="%d", width=90),
            "epochs_run": st.column_config.NumberColumn("epochs run", format="%d", width=90),
            "stopped_early": st.column_config.CheckboxColumn("stopped early", width=110),
            "duration_s": st.column_config.NumberColumn("duration (s)", format="%.1f", width=110),
            "status": st.column_config.TextColumn("status", width=110),
        },
    )
    names = list(table.hyperparameters)
    if names:
        share = max(70, (ui.TABLE_WIDTH - 60) // len(names))
        st.dataframe(
            table.frame[["trial", *names]], hide_index=True, key=f"{key}_hyperparameters",
            column_config={
                "trial": trial_column,
                # human headers (the Keras Tuner names in the hover help and in the run's settings)
                **{name: (st.column_config.NumberColumn(trials.hyperparameter_label(name), format="%.2e", width=share, help=name)
                          if name == "learning_rate" else
                          st.column_config.Column(trials.hyperparameter_label(name), width=share, help=name)) for name in names},
            },
        )
    if not scored:
        st.caption("No trial has a validation AUC yet: the figures appear when the first trial ends.")
        return
    tabs = st.tabs(["Optimisation history", "Parallel coordinates", "Score by hyperparameter", "Importance", "Learning curves"])
    with tabs[0]:
        st.plotly_chart(trial_figures.optimisation_history_figure(table), key=f"{key}_history")
    with tabs[1]:
        st.plotly_chart(trial_figures.parallel_coordinates_figure(table, varied or table.hyperparameters), key=f"{key}_parallel")
        if len(varied) < len(table.hyperparameters):
            st.caption(f"Left out: hyperparameters that took one value in every trial ({', '.join(sorted(set(table.hyperparameters) - set(varied)))}).")
    with tabs[2]:
        st.plotly_chart(trial_figures.score_scatter_figure(table, varied or table.hyperparameters), key=f"{key}_scatter")
    with tabs[3]:
        importance = _importance(table.frame, table.hyperparameters)
        if importance is None:
            st.caption(
                f"Importance is shown from {trials.MIN_TRIALS_FOR_IMPORTANCE} scored trials with at least one varied "
                f"hyperparameter: this run has {scored} scored trials and {len(varied)} varied hyperparameters."
            )
        else:
            st.plotly_chart(trial_figures.importance_figure(importance), key=f"{key}_importance")
            st.caption(f"Method: {importance.method}. {importance.n_trials} trials; read the ranking, not the size.")
    with tabs[4]:
        if history is None or history.empty:
            st.caption("No per-epoch history in this run.")
        else:
            with_history = [t for t in table.frame["trial_id"] if t in set(history["trial_id"].astype(str))]
            labels = dict(zip(table.frame["trial_id"], table.frame["trial"], strict=True))
            c1, c2 = st.columns([3, 1])
            picked = c1.multiselect(
                "Trials", with_history, default=[t for t in _default_curves(table) if t in with_history], key=f"{key}_curves",
                format_func=lambda t: f"trial {labels.get(t, t)}", help="The best trial is drawn thick and red.",
            )
            metric = c2.radio("Metric", trials.METRICS, index=1, horizontal=True, key=f"{key}_metric")
            if picked:
                st.plotly_chart(trial_figures.learning_curves_figure(history, picked, table.best_trial_id, metric), key=f"{key}_curves_fig")
