"""The run picker Compare and Predict share: which saved runs are listed, the "Show archived runs" switch, and the multiselect.

Each page lists the runs it can use (`runs_with_metrics` for Compare, `runs_with_model` for
Predict) and picks among them with its own label and widget key; by default each family's run of
best validation AUC (`core.runs.artifacts.best_per_family`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.runs import artifacts, catalog
from pages import _shared as ui


def runs_with_metrics(folder: str, archived: bool | None = False) -> list[artifacts.Run]:
    """Runs with test predictions; archived ones only with `archived=None` (both) or True (only them)."""
    runs = [r for r in artifacts.list_runs(folder) if r.metrics and (r.folder / artifacts.PREDICTIONS).exists()]
    return catalog.filter_runs(runs, archived=archived)


def runs_with_model(folder: str, archived: bool | None = False) -> list[artifacts.Run]:
    """Runs with test metrics and a saved model; archived ones as in `runs_with_metrics`."""
    return catalog.filter_runs([r for r in artifacts.list_runs(folder) if r.metrics and r.has_model], archived=archived)


def archived_toggle(folder: str, key: str) -> bool | None:
    """A "show archived runs" switch, only where the folder has archived runs: None (show them too) or False."""
    if not any(r.archived for r in artifacts.list_runs(folder)):
        return False
    return None if st.toggle("Show archived runs", key=key, help="Archived runs are hidden by default; restore them on the Tune page.") else False


def listed_runs(
    folder: str, usable: Callable[..., list[artifacts.Run]], archived_key: str, when_none: str
) -> list[artifacts.Run]:
    """The folder's runs a page can use (`usable`: `runs_with_metrics` or `runs_with_model`), archived ones
    behind the switch `archived_key`; with none, `when_none` says what to do, a link leads to Tune, and the page stops."""
    runs = usable(folder, archived=archived_toggle(folder, archived_key))
    if not runs:
        st.info(when_none, icon=":material/inbox:")
        ui.next_step("pages/tune.py", *ui.quick_step())
        st.stop()
    return runs


def forget_stale_choice(key: str, options) -> None:
    """A multiselect whose remembered runs are gone (another folder, a deleted run) starts over
    from its default instead of silently showing fewer runs or none."""
    chosen = st.session_state.get(key)
    if chosen is not None and any(name not in options for name in chosen):
        del st.session_state[key]


def run_label(run: artifacts.Run) -> str:
    auc = run.test_auc
    shown = f"test AUC {auc:.3f}" if np.isfinite(auc) else run.state
    return f"{run.name} ({run.family}, {run.task}, {shown})"


def pick_runs(
    runs: list[artifacts.Run], label: str, key: str, help: str, where: DeltaGenerator | None = None
) -> list[str]:
    """The multiselect of `runs` (drawn in `where`, else the page): the names picked, each family's run of
    best validation AUC by default."""
    by_name = {r.name: r for r in runs}
    forget_stale_choice(key, by_name)
    return (st if where is None else where).multiselect(
        label, list(by_name), default=artifacts.best_per_family(runs), key=key,
        format_func=lambda name: run_label(by_name[name]), help=help,
    )
