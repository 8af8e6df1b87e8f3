"""Tune page: start a Keras Tuner search in the background, follow it live, stop and resume it.

The sections live in `pages/_tune_*.py`: the search form (`_tune_form`), the Import form (`_tune_import`), the recipe box and the
Recipes list (`_tune_recipes`), the live panels and the finished runs (`_tune_runs`).
"""

import streamlit as st

from core.runs import artifacts
from pages import _shared as ui
from pages._tune_form import data_folder_notes, search_form
from pages._tune_import import import_form
from pages._tune_recipes import recipe_box, recipes_list
from pages._tune_runs import finished_runs, running_and_finished, running_searches

ui.leave_pages_folder_mode()
st.title("Tune")
st.caption(
    "Each search runs as its own background process (`python -m core resume NAME`): closing this tab or "
    "reloading the page does not stop it. Everything it does goes into its run folder."
)

folder = ui.artifacts_dir()

runs = artifacts.list_runs(folder)
if not runs:
    st.info("First time here? Press **Start the recipe** in the box below for the recommended runs, or start the form's "
            "quick search (the form starts from it) for a first run in minutes; finished runs then appear on **Compare**.",
            icon=":material/waving_hand:")

st.header("New search")
data = data_folder_notes(ui.data_dir())
recipe_box(folder, data)
search_form(folder, data)
import_form(folder, data)

runs = artifacts.list_runs(folder)  # again: a search started above is listed below
active, finished = running_and_finished(runs)
running_searches(folder, active)
recipes_list(folder, runs)
finished_runs(folder, finished, none_saved=not runs)
