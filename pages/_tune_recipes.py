"""Tune page, recipes (core.workflows.recipe): the one-click recipe box and the Recipes list of started ones."""

from __future__ import annotations

import streamlit as st

from core import jobs
from core.data import folders, tasks
from core.models import backbones
from core.runs import artifacts
from core.search import cost
from core.search.settings import SettingsError
from core.workflows import recipe
from pages._tune_form import DataFolder
from pages._tune_runs import act


def _start_recipe(folder: str, data: DataFolder) -> None:
    state = st.session_state
    try:
        if data.root is None:
            raise folders.DataError(data.problem)
        first = jobs.start_recipe(folder, str(state.get("tune_recipe_name") or "").strip(), str(data.root),
                                  {"task": state.get("tune_recipe_task"), "seed": int(state.get("tune_recipe_seed", 42))})
        state["tune_recipe_message"] = ("success", f"Started the recipe in the background: its first step, **{first}**, "
                                                   "is under Running searches.")
    except (SettingsError, artifacts.RunError, folders.DataError, backbones.WeightsError, OSError) as error:
        state["tune_recipe_message"] = ("error", f"Not started: {error}")


def recipe_box(folder: str, data: DataFolder) -> None:
    """The recipe in one click: its name, task and seed, its rough CPU time and command, and Start."""
    with st.container(border=True):
        st.markdown(f"**:material/recommend: One click: {recipe.title()}**")
        st.caption(f"{recipe.DESCRIPTION} {recipe.measured_note()} docs/measurements.md gives what it measured on the "
                   "official test split.")
        r1, r2, r3 = st.columns([2, 2, 1])
        recipe_name = r1.text_input("Recipe name", value="recipe", key="tune_recipe_name",
                                    help="Its runs are NAME-recommended, NAME-runner-up (and for three classes NAME-pneumonia, "
                                    "NAME-kinds and their runner-ups) and the ensemble NAME.")
        r2.selectbox("Task", list(tasks.TASKS), key="tune_recipe_task", format_func=lambda n: f"{n} — {tasks.DESCRIPTIONS[n]}")
        r3.number_input("Seed (split)", value=42, step=1, key="tune_recipe_seed")
        if data.summary and data.summary["total_images"]:
            try:
                planned = recipe.make_plan(recipe_name.strip() or "recipe", str(data.root), {
                    "task": st.session_state.get("tune_recipe_task"), "seed": int(st.session_state.get("tune_recipe_seed", 42))})
                n_images, n_train, n_val = cost.split_sizes(data.summary)
                st.caption(f"Estimated CPU time on {n_images:,} images: "
                           f"**{cost.about(recipe.estimate_s(planned, n_images, n_train, n_val))}** on 2 cores, "
                           f"{len(planned['steps'])} steps ({', '.join(planned['steps'])}). "
                           f"Same from a terminal: `{recipe.command(planned)}`")
            except artifacts.RunError as error:
                st.caption(f":material/error: {error}")
        st.button("Start the recipe", key="tune_recipe_start", icon=":material/play_arrow:", on_click=_start_recipe,
                  args=(folder, data), disabled=data.root is None,
                  help="Each step runs in the background after the one before; Stop ends the recipe, "
                  "Resume (or Continue below) goes on with it.")
        if message := st.session_state.pop("tune_recipe_message", None):
            (st.success if message[0] == "success" else st.error)(message[1])


def recipes_list(folder: str, runs: list[artifacts.Run]) -> None:
    """The Recipes header and each started recipe's steps, with Continue for one that stopped; nothing without recipes."""
    if recipe_plans := recipe.plans(runs):
        st.header("Recipes")
        for plan in recipe_plans:
            steps = recipe.status(folder, plan)
            complete, active = recipe.is_complete(folder, plan), bool(recipe.running_steps(steps))
            with st.container(border=True):
                st.markdown(f"**{plan['recipe']}** · {'complete: its result is the ensemble run ' + plan['recipe'] if complete else 'running' if active else 'not finished'}")
                st.dataframe(steps, hide_index=True, key=f"tune_recipe_steps_{plan['recipe']}")
                if not complete and not active:
                    st.button("Continue recipe", key=f"tune_recipe_continue_{plan['recipe']}", icon=":material/play_arrow:",
                              on_click=act, args=(folder, jobs.continue_recipe, plan["recipe"], f"Continuing recipe {plan['recipe']} in the background."),
                              help="Finished steps are kept; a stopped one resumes where it stopped.")
