"""Tune page, the runs: live panels of running searches, the finished runs with filters, and one run's details and housekeeping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from core import jobs
from core.reporting import export
from core.runs import artifacts, catalog, trials
from core.runs.progress import trials_finished
from core.search import cost
from core.workflows import recipe, repeat
from pages import _shared as ui
from pages._trials import trials_view

# --------------------------------------------------------------------------
# Live runs
# --------------------------------------------------------------------------


@st.fragment(run_every="2s")
def live_panel(folder: str, name: str) -> None:
    """One running search, re-read every two seconds (only this panel reruns)."""
    try:
        run = artifacts.load_run(folder, name)
    except artifacts.RunError:
        st.rerun(scope="app")
        return
    state, progress = run.state, run.progress
    if state not in artifacts.ACTIVE_STATES:
        st.rerun(scope="app")  # finished: move it to the list below
        return
    with st.container(border=True):
        st.markdown(
            f"**{ui.STATE_ICONS.get(state, '')} {name}** · {run.family} · {run.task} · {run.settings.get('tuner')} search · "
            f"state **{state}** · phase **{progress.get('phase') or state}**"
        )
        if plan := recipe.read_plan(run.folder):
            st.caption(f":material/recommend: Step {recipe.step_number(plan, name)} of {len(plan['steps'])} of recipe "
                       f"**{plan['recipe']}** ({' → '.join(plan['steps'])}). Stop ends the recipe after this step stops; "
                       "Resume goes on with it.")
        total, done = progress.get("trials_total"), progress.get("trials_done") or 0
        epoch, epochs = progress.get("epoch") or 0, progress.get("epochs")
        cols = st.columns(5)
        cols[0].metric("Trial", f"{progress.get('trial') or '–'} of {total or '?'}", help=f"{done} completed")
        cols[1].metric("Epoch", f"{epoch or '–'} of {epochs or '?'}")
        cols[2].metric("Best val AUC", ui.format_number(progress.get("best_val_auc")))
        cols[3].metric("Elapsed", ui.format_duration(run.elapsed_s()))
        cols[4].metric("Time left", ui.format_duration(cost.estimate_remaining_s(progress)), help="From the time the finished epochs took")
        finished = trials_finished(progress)
        if finished is not None:
            st.progress(min(1.0, finished / total), text=progress.get("message") or "")
        elif progress.get("message"):
            st.caption(progress["message"])
        log = run.log_tail(12)
        st.code(log or "(no log yet)", language=None, wrap_lines=True)
        with st.expander("Trials so far", expanded=True):
            trials_view(run, key=f"live_trials_{name}")
        c1, c2, _ = st.columns([1, 1, 4])
        if c1.button("Stop", key=f"stop_{name}", icon=":material/stop:", help="Stop after the current batch; completed trials are kept and it can be resumed."):
            st.toast(jobs.stop_search(folder, name))
        if c2.button("Kill now", key=f"kill_{name}", icon=":material/cancel:", help="Kill the process at once (SIGKILL). Completed trials are kept; resume continues."):
            st.toast(jobs.stop_search(folder, name, force=True))


def running_and_finished(runs: list[artifacts.Run]) -> tuple[list[artifacts.Run], list[artifacts.Run]]:
    """(the runs still running, the others), sorted at one moment: a run's state follows its process."""
    active = [r for r in runs if r.state in artifacts.ACTIVE_STATES]
    finished = [r for r in runs if r.state not in artifacts.ACTIVE_STATES]
    return active, finished


def running_searches(folder: str, active: list[artifacts.Run]) -> None:
    """The Running searches header and a live panel for each."""
    st.header("Running searches")
    if not active:
        st.caption("No search is running.")
    for run in active:
        live_panel(folder, run.name)


# --------------------------------------------------------------------------
# The buttons' actions: each leaves its outcome in "tune_message", shown above the finished runs, or for
# the run details' buttons in ADMIN_MESSAGE, shown beside those buttons
# --------------------------------------------------------------------------


def _resume(folder: str, name: str) -> None:
    try:
        jobs.resume_search(folder, name)
        st.session_state["tune_message"] = ("success", f"Resumed {name} in the background.")
    except (artifacts.RunError, OSError) as error:
        st.session_state["tune_message"] = ("error", f"Cannot resume {name}: {error}")


ADMIN_MESSAGE = "tune_admin_message"


def act(folder: str, action: Callable[[str, str], object], name: str, done: str, where: str = "tune_message") -> None:
    """Run `action(folder, name)` for a button (archive, restore, delete, continue a recipe); `done` says it worked.
    The outcome waits in session state under `where` for the place that shows it."""
    try:
        action(folder, name)
        st.session_state[where] = ("success", done)
    except (artifacts.RunError, OSError) as error:
        st.session_state[where] = ("error", f"{name}: {error}")


def _save_notes(folder: str, name: str) -> None:
    state = st.session_state
    act(folder, lambda f, n: catalog.set_notes(f, n, note=state[f"tune_note_{n}"], tags=state[f"tune_tags_{n}"]),
        name, f"Saved the note and tags of {name}.", ADMIN_MESSAGE)


def _export(folder: str, name: str) -> None:
    try:
        st.session_state["tune_export"] = (name, export.export_bytes(folder, name))
    except (artifacts.RunError, OSError, ValueError) as error:
        st.session_state[ADMIN_MESSAGE] = ("error", f"Cannot export {name}: {error}")


def _repeat(folder: str, name: str) -> None:
    """The Repeat button: start the repeat in the background; it shows under "Running searches"."""
    state = st.session_state
    try:
        new = jobs.start_repeat(folder, name, int(state[f"tune_repeat_seeds_{name}"]), str(state.get(f"tune_repeat_name_{name}") or "").strip() or None)
        state["tune_message"] = ("success", f"Started **{new}** in the background: {name}'s best hyperparameters with other seeds.")
    except (artifacts.RunError, OSError, ValueError) as error:
        state["tune_message"] = ("error", f"Cannot repeat {name}: {error}")


# --------------------------------------------------------------------------
# Finished, stopped and failed runs
# --------------------------------------------------------------------------


def finished_runs(folder: str, all_finished: list[artifacts.Run], none_saved: bool) -> None:
    """The runs no longer running: the last action's outcome, filters, the table, the unfinished ones, one run's details.

    `none_saved`: the folder has no runs at all, running or not.
    """
    st.header("Finished, stopped and failed runs")
    if message := st.session_state.pop("tune_message", None):
        (st.success if message[0] == "success" else st.error)(message[1])
    finished = _filtered(all_finished) if all_finished else all_finished
    if not finished:
        st.caption(f"No runs in {folder} yet." if none_saved else "None yet." if not all_finished else "No run matches the filters.")
        return
    _runs_table(finished)
    for run in [r for r in finished if r.state != "completed"][:10]:
        _unfinished_panel(folder, run)
    _run_details(folder, finished)


def _filtered(finished: list[artifacts.Run]) -> list[artifacts.Run]:
    """The "Filter runs" expander (family, task, state, tag, archived) and the runs it keeps."""
    options = catalog.filter_options(finished)
    with st.expander("Filter runs", expanded=False):
        f1, f2, f3, f4 = st.columns(4)
        want_family = f1.multiselect("Family", options["family"], key="tune_filter_family")
        want_task = f2.multiselect("Task", options["task"], key="tune_filter_task", help="Runs saved without a task are the pneumonia task.")
        want_state = f3.multiselect("State", options["state"], key="tune_filter_state")
        want_tag = f4.multiselect("Tag", options["tag"], key="tune_filter_tag", help="Runs with any of these tags.")
        show_archived = st.toggle("Show archived runs", key="tune_show_archived", help="Archived runs keep their files; restore them below.")
    return catalog.filter_runs(
        finished, family=want_family, task=want_task, state=want_state, tag=want_tag, archived=None if show_archived else False
    )


def _runs_table(finished: list[artifacts.Run]) -> None:
    """Two tables that each fit 1,280 px: what a reader compares first, then what each run is and its bookkeeping."""
    table = artifacts.runs_table(finished)
    table.insert(0, "outcome", table["state"])
    table["started_at"] = pd.to_datetime(table["started_at"], errors="coerce", utc=True)
    results = ["outcome", "run", "test_auc", "sensitivity", "specificity", "accuracy", "threshold", "best_val_auc", "trials"]
    # the tuner is in the run's settings below: the table keeps to what fits beside the rest
    about = ["run", "family", "task", "mode", "image_size", "started_at", "tags", "note"]
    if table["archived"].any():
        about.append("archived")
    metric = {"format": "%.3f", "width": 80}
    st.dataframe(
        table[results], hide_index=True, key="tune_runs",
        column_config={
            "outcome": st.column_config.TextColumn("outcome", width=90),
            "run": st.column_config.TextColumn("run", width=160),
            "test_auc": st.column_config.NumberColumn("test AUC", **metric),
            "sensitivity": st.column_config.NumberColumn("sensitivity", **metric),
            "specificity": st.column_config.NumberColumn("specificity", **metric),
            "accuracy": st.column_config.NumberColumn("accuracy", **metric),
            "threshold": st.column_config.NumberColumn("threshold", **metric),
            "best_val_auc": st.column_config.NumberColumn("best val AUC", **metric, help="The search's best trial on validation"),
            "trials": st.column_config.TextColumn("trials", width=60, help="Trials done / planned"),
        },
    )
    st.caption("Test metrics at each run's saved threshold.")
    st.dataframe(
        table[about], hide_index=True, key="tune_runs_about",
        column_config={
            "run": st.column_config.TextColumn("run", width=150),
            "family": st.column_config.TextColumn("family", width=90),
            "task": st.column_config.TextColumn("task", width=90),
            "mode": st.column_config.TextColumn("mode", width=70),
            "image_size": st.column_config.TextColumn("input px", width=75, help="Image size the model reads (pixels per side); an ensemble's members have their own"),
            "started_at": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm", width=115),
            "tags": st.column_config.TextColumn("tags", width=70),
            "note": st.column_config.TextColumn("note", width=80, help="Hover a cell for the whole note; edit it under Run details"),
            "archived": st.column_config.CheckboxColumn("archived", width=50),
        },
    )


def _unfinished_panel(folder: str, run: artifacts.Run) -> None:
    """A stopped, failed or interrupted run: why it ended, its process output, and Resume."""
    with st.container(border=True):
        progress = run.progress
        st.markdown(
            f"**{ui.STATE_ICONS.get(run.state, '')} {run.name}** · {run.family} · {run.task} · **{run.state}** · "
            f"{progress.get('trials_done') or 0} of {progress.get('trials_total') or run.settings.get('trials', '?')} trials done · "
            f"ran {ui.format_duration(run.elapsed_s())}"
        )
        if run.state == "failed":
            st.error(progress.get("error") or "failed without an error message; see the process output below")
        elif run.state == "interrupted":
            st.warning("Its process ended without saying why (killed, or the machine restarted). Resume continues from the last completed trial.")
        elif run.state == "stopped":
            st.info(progress.get("message") or "stopped by request")
        output = run.log_tail(25, jobs.PROCESS_LOG)
        with st.expander("Process output (last lines)", expanded=run.state == "failed"):
            st.code(output or "(empty)", language=None, wrap_lines=True)
        st.button("Resume", key=f"resume_{run.name}", icon=":material/play_arrow:", on_click=_resume, args=(folder, run.name))


# --------------------------------------------------------------------------
# One run's details
# --------------------------------------------------------------------------


def _run_details(folder: str, finished: list[artifacts.Run]) -> None:
    """The chosen run's trials, settings and log, then its repeat and housekeeping panels."""
    st.subheader("Run details")
    if st.session_state.get("tune_detail") not in {r.name for r in finished}:
        st.session_state.pop("tune_detail", None)  # a deleted, archived or filtered-out run
    detail = st.selectbox("Run", [r.name for r in finished], key="tune_detail")
    run = next(r for r in finished if r.name == detail)
    if run.is_imported:
        imported_model(run)
    elif run.is_ensemble:
        ensemble_members(run)
    elif run.is_repeat:
        repeat_source(run)
    elif run.settings.get("kept_trial"):
        kept_trial_source(run)
    else:
        st.markdown("**Trials**")
        trials_view(run, key="tune_trials")
    log = run.log_tail(30)
    left, right = st.columns(2) if log else (st.container(), None)
    with left:
        st.caption("Settings")
        st.json(run.settings, expanded=False)
    if right is not None:  # an ensemble or an imported model trains nothing here: no log to show
        with right:
            st.caption("Log (last lines)")
            st.code(log, language=None, wrap_lines=True)
    repeat_panel(folder, run)
    run_admin(folder, run)


def ensemble_members(run: artifacts.Run) -> None:
    """An ensemble trains nothing: its members, their weights, and how its threshold was chosen."""
    settings = run.settings
    members = list(settings.get("members") or [])
    st.markdown("**Ensemble** (its members' probabilities combined: no trials of its own)")

    def each(key: str) -> list:
        values = list(settings.get(key) or [])
        return values + [None] * (len(members) - len(values))

    st.dataframe(
        pd.DataFrame({"member": members, "family": each("member_families"), "input px": each("member_image_sizes"),
                      "weight": each("weights")}),
        hide_index=True, key=f"tune_ensemble_{run.name}",
        column_config={"weight": st.column_config.NumberColumn(format="%.3f"),
                       "input px": st.column_config.NumberColumn(help="Image size each member reads (pixels per side)")},
    )
    rule = (run.metrics or {}).get("threshold_rule")
    st.caption(f"Weights: {settings.get('weight_rule') or 'as listed'}. Threshold {run.threshold:.3f}, chosen by "
               f"{rule or 'the rule of its time'} on the ensemble's own validation predictions.")


def repeat_source(run: artifacts.Run) -> None:
    """A repeat searches nothing: whose hyperparameters it trained again, with which seeds, and those values."""
    record = run.settings.get("repeat") or {}
    seeds = ", ".join(str(s) for s in record.get("seeds") or [run.settings.get("seed")])
    st.markdown(f"**Repeat** of **{record.get('source', '?')}**'s best hyperparameters, trained again with seed(s) {seeds}: "
                "no search of its own.")
    _fixed_hyperparameters(run)


def kept_trial_source(run: artifacts.Run) -> None:
    """A runner-up (core.workflows.runner_up) trains nothing: which trial of which search it keeps, and its values."""
    kept = run.settings["kept_trial"]
    st.markdown(f"**Runner-up**: trial {kept.get('trial_id', '?')} of **{kept.get('source', '?')}**, its number "
                f"{kept.get('rank', '?')} by validation AUC, kept as a run of its own: nothing trained here; the trials "
                f"are {kept.get('source', '?')}'s.")
    _fixed_hyperparameters(run)


def _fixed_hyperparameters(run: artifacts.Run) -> None:
    """The hyperparameters a repeat or a runner-up took over, as a table."""
    fixed = run.settings.get("fixed_hyperparameters") or {}
    if fixed:
        st.dataframe(pd.DataFrame({"hyperparameter": [trials.hyperparameter_label(k) for k in fixed],
                                   "value": [str(v) for v in fixed.values()]}),
                     hide_index=True, key=f"tune_fixed_{run.name}",
                     column_config={"hyperparameter": st.column_config.TextColumn(width=200),
                                    "value": st.column_config.TextColumn(width=300)})


def imported_model(run: artifacts.Run) -> None:
    """Where an imported run's model came from and how it is read, and what to check after the import."""
    record = run.settings[artifacts.IMPORTED]
    st.markdown("**Imported model** (trained elsewhere: no trials here)")
    adapter = record.get("adapter") or {}
    st.markdown(
        f"- File: `{Path(record['source']).name}` ({record['format']}), sha256 `{record['sha256'][:16]}…`, imported "
        f"{record.get('imported_at', '?')}\n"
        f"- Read as: input {adapter.get('size')}×{adapter.get('size')} px, {adapter.get('channels')} channel(s), "
        f"{adapter.get('layout')}, pixel scaling {adapter.get('scaling')}; output {adapter.get('outputs')} column(s)"
        + (f", positive class column {adapter['positive']}" if adapter.get("outputs", 1) > 1 and adapter.get("positive") is not None else "")
        + (", logits" if adapter.get("logits") else "")
    )
    for warning in (run.metrics or {}).get("warnings") or []:
        st.warning(warning, icon=":material/warning:")


def repeat_panel(folder: str, run: artifacts.Run) -> None:
    """Repeat the run's best hyperparameters with other seeds (core.workflows.repeat); for a repeat, its spread over the seeds."""
    name = run.name
    with st.container(border=True):
        st.markdown(f"**{name}** · repeat the best with other seeds")
        if run.is_repeat:
            spread = repeat.seed_summary(run)
            if spread.empty:
                st.caption("Its seeds are not all trained yet.")
            else:
                st.dataframe(spread, hide_index=True, key=f"tune_seed_spread_{name}",
                             column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("mean", "SD", "min", "max")})
                st.caption(repeat.NOTE)
            return
        problem = repeat.source_problem(run)
        st.caption("Trains its best hyperparameters again with other seeds, on its own split (only the training seed "
                   "changes), into one new run; Compare then shows the spread of its test metrics over the seeds.")
        r1, r2, r3 = st.columns([1, 2, 1], vertical_alignment="bottom")
        r1.number_input("Other seeds", min_value=1, max_value=repeat.MAX_SEEDS, value=3, step=1, key=f"tune_repeat_seeds_{name}")
        r2.text_input("Name of the new run", key=f"tune_repeat_name_{name}", placeholder=f"{name}-x3seeds (default)")
        r3.button("Repeat", key=f"tune_repeat_{name}", icon=":material/replay:", on_click=_repeat, args=(folder, name),
                  disabled=bool(problem), help=problem or "Runs in the background, one seed after another.")


def run_admin(folder: str, run: artifacts.Run) -> None:
    """Note, tags, archive or restore, delete (with a confirmation) and the model-card download of one run."""
    name = run.name
    with st.container(border=True):
        st.markdown(f"**{name}** · note, tags and housekeeping" + (" · *archived*" if run.archived else ""))
        n1, n2 = st.columns([3, 2])
        n1.text_area("Note", value=run.notes["note"], key=f"tune_note_{name}", height=68)
        n2.text_input("Tags (comma-separated)", value=", ".join(run.tags), key=f"tune_tags_{name}")
        b1, b2, b3, b4 = st.columns(4)
        b1.button("Save note and tags", key=f"tune_save_notes_{name}", on_click=_save_notes, args=(folder, name), icon=":material/save:")
        if run.archived:
            b2.button("Restore", key=f"tune_restore_{name}", icon=":material/unarchive:",
                      on_click=act, args=(folder, catalog.restore, name, f"Restored {name}.", ADMIN_MESSAGE))
        else:
            b2.button("Archive", key=f"tune_archive_{name}", icon=":material/archive:", help="Hide it from the default lists; its files stay.",
                      on_click=act, args=(folder, catalog.archive, name, f"Archived {name}: it is hidden from the default lists.",
                                          ADMIN_MESSAGE))
        not_exportable = export.export_problem(run)
        b3.button("Prepare model card (zip)", key=f"tune_export_{name}", icon=":material/inventory_2:", on_click=_export, args=(folder, name),
                  disabled=bool(not_exportable),
                  help=not_exportable.capitalize() if not_exportable else "The model (.keras, .tflite), its threshold and MODEL_CARD.md in one zip.")
        if b4.button("Delete…", key=f"tune_delete_{name}", icon=":material/delete:"):
            st.session_state["tune_confirm_delete"] = name
        if message := st.session_state.pop(ADMIN_MESSAGE, None):  # beside the button that caused it
            (st.success if message[0] == "success" else st.error)(message[1])
        prepared = st.session_state.get("tune_export")
        if prepared and prepared[0] == name:
            st.download_button(f"Download {name}.zip", prepared[1], file_name=f"{name}.zip", mime="application/zip",
                               key=f"tune_download_{name}", icon=":material/download:")
        refused = catalog.delete_problem(folder, name) if st.session_state.get("tune_confirm_delete") == name else ""
        if refused:  # said before any confirmation is offered
            st.error(f"{name} cannot be deleted: {refused}.", icon=":material/block:")
            if st.button("OK", key=f"tune_refused_delete_{name}"):
                st.session_state.pop("tune_confirm_delete", None)
                st.rerun()
        elif st.session_state.get("tune_confirm_delete") == name:
            st.warning(f"Delete **{name}** and every file in its folder for good? Other runs and the shared caches stay.", icon=":material/warning:")
            c1, c2, _ = st.columns([1, 1, 3])
            if c1.button("Yes, delete it", key=f"tune_confirm_delete_{name}", type="primary"):
                st.session_state.pop("tune_confirm_delete", None)
                act(folder, catalog.delete, name, f"Deleted {name}.", ADMIN_MESSAGE)
                st.rerun()
            if c2.button("Cancel", key=f"tune_cancel_delete_{name}"):
                st.session_state.pop("tune_confirm_delete", None)
                st.rerun()
