"""Tune page: start a Keras Tuner search in the background, follow it live, stop and resume it."""

import streamlit as st

from core import jobs
from core.data import augmentation, demo, folders, tasks
from core.models import backbones, families
from core.runs import artifacts, catalog
from core.search import cost, presets
from core.search.settings import TUNERS, SearchSettings, SettingsError
from core.workflows import recipe, repeat
from pages import _loaders as load
from pages import _shared as ui
from pages._space_editor import space_editor
from pages._trials import trials_view

ui.leave_pages_folder_mode()
st.title("Tune")
st.caption(
    "Each search runs as its own background process (`python -m core resume NAME`): closing this tab or "
    "reloading the page does not stop it. Everything it does goes into its run folder."
)

folder = ui.artifacts_dir()
data_folder = ui.data_dir()

# --------------------------------------------------------------------------
# The form
# --------------------------------------------------------------------------


st.header("New search")
root, data_problem = ui.check_data_dir(data_folder)
if root is None:
    st.warning(f"Set a usable data folder in the sidebar first: {data_problem}", icon=":material/folder_off:")
summary = load.summary_for(root) if root is not None else None
on_demo = root is not None and demo.is_demo(root)
if on_demo:
    st.info(
        f"The data folder is the **demo set** ({summary['total_images'] if summary else 130} X-rays): the form starts with a "
        f"small search ({demo.SEARCH_DEFAULTS['trials']} trials × {demo.SEARCH_DEFAULTS['epochs']} epochs; the custom CNN at "
        f"{demo.IMAGE_PX} px) that finishes in under a minute on 2 cores. Its metrics say little: get the full data on the **Data** page.",
        icon=":material/science:",
    )


def apply_preset() -> None:
    """Fill the form's widgets with the chosen preset's settings (before they are drawn)."""
    name = st.session_state.get("tune_preset", "custom")
    if name == "custom":
        return
    chosen = presets.preset(name).settings
    family_name = chosen["family"]
    widget_keys = {
        "family": "tune_family", "tuner": "tune_tuner", "trials": f"tune_trials_{family_name}",
        "epochs": f"tune_epochs_{family_name}", "image_size": f"tune_size_{family_name}", "mode": "tune_mode",
        "weights": "tune_weights", "augment": "tune_augment", "augment_views": "tune_augment_views", "tta": "tune_tta",
    }
    defaults = {"tuner": "random", "weights": "imagenet", "augment": "off", "augment_views": 3, "tta": 1,
                "image_size": families.FAMILIES[family_name].default_image_size}
    for setting, key in widget_keys.items():
        if setting in chosen or setting in defaults:
            st.session_state[key] = chosen.get(setting, defaults.get(setting))


def _start_recipe() -> None:
    state = st.session_state
    try:
        if root is None:
            raise folders.DataError(data_problem)
        first = jobs.start_recipe(folder, str(state.get("tune_recipe_name") or "").strip(), str(root),
                                  {"task": state.get("tune_recipe_task"), "seed": int(state.get("tune_recipe_seed", 42))})
        state["tune_recipe_message"] = ("success", f"Started the recipe in the background: its first step, **{first}**, "
                                                   "is under Running searches.")
    except (SettingsError, artifacts.RunError, folders.DataError, backbones.WeightsError, OSError) as error:
        state["tune_recipe_message"] = ("error", f"Not started: {error}")


with st.container(border=True):
    st.markdown(f"**:material/recommend: One click: {recipe.TITLE}**")
    st.caption(recipe.DESCRIPTION + " The README gives what it measured on the official test split.")
    r1, r2, r3 = st.columns([2, 2, 1])
    recipe_name = r1.text_input("Recipe name", value="recipe", key="tune_recipe_name",
                                help="Its runs are NAME-quick, NAME-recommended, NAME-repeat and the ensemble NAME.")
    r2.selectbox("Task", list(tasks.TASKS), key="tune_recipe_task", format_func=lambda n: f"{n} — {tasks.DESCRIPTIONS[n]}")
    r3.number_input("Seed (split)", value=42, step=1, key="tune_recipe_seed")
    if summary and summary["total_images"]:
        try:
            planned = recipe.make_plan(recipe_name.strip() or "recipe", str(root), {
                "task": st.session_state.get("tune_recipe_task"), "seed": int(st.session_state.get("tune_recipe_seed", 42))})
            st.caption(f"Rough CPU time on {summary['total_images']:,} images: "
                       f"**{ui.format_duration(recipe.estimate_s(planned, summary['total_images']))}**. "
                       f"Same from a terminal: `{recipe.command(planned)}`")
        except artifacts.RunError as error:
            st.caption(f":material/error: {error}")
    st.button("Start the recipe", key="tune_recipe_start", icon=":material/play_arrow:", on_click=_start_recipe,
              disabled=root is None, help="Each step runs in the background after the one before; Stop ends the recipe, "
              "Resume (or Continue below) goes on with it.")
    if message := st.session_state.pop("tune_recipe_message", None):
        (st.success if message[0] == "success" else st.error)(message[1])

if "tune_preset" not in st.session_state:
    # The first visit starts from the quick preset (a fine-tuned MobileNetV2; README "Measured here" gives its time);
    # on the demo set, from the small search that fits it.
    st.session_state["tune_preset"] = "custom" if on_demo else presets.DEFAULT
    if on_demo:
        st.session_state.setdefault("tune_family", "custom_cnn")  # needs no ImageNet weights (offline)
    apply_preset()

with st.container(border=True):
    preset_names = ["custom", *presets.PRESETS]
    preset_name = st.selectbox(
        "Start from", preset_names, key="tune_preset", on_change=apply_preset,
        format_func=lambda n: "your own settings" if n == "custom" else presets.PRESETS[n].title,
        help="A preset fills in the settings below; change any of them before you start.",
    )
    if preset_name != "custom":
        st.caption(f":material/recommend: {presets.PRESETS[preset_name].description} Same from a terminal: "
                   f"`{presets.PRESETS[preset_name].command()}`")
    family = st.selectbox(
        "Model family", list(families.FAMILIES), key="tune_family",
        format_func=lambda name: f"{name} — {families.FAMILIES[name].description}",
    )
    info = families.FAMILIES[family]
    st.caption(f":material/lightbulb: {info.hint}")
    task = st.selectbox(
        "Task", list(tasks.TASKS), key="tune_task", format_func=lambda name: f"{name} — {tasks.DESCRIPTIONS[name]}",
        help="What the models learn to tell apart. Every family trains for every task: a sigmoid output for the two-class "
        "tasks, a softmax over three classes for three_class. The split is grouped by patient and stratified by the task's "
        "classes; class weights follow them. The Data page shows each task's split.",
    )

    c1, c2, c3 = st.columns(3)
    tuner = c1.selectbox(
        "Tuner", TUNERS, key="tune_tuner",
        help="random: independent draws. bayesian: learns from earlier trials. hyperband: many short trainings, "
        "the best trained longer (needs at least 2 epochs).",
    )
    default_trials, default_epochs = (5, 5) if not info.transfer else (10, 10)
    default_size = info.default_image_size
    if on_demo:  # a small search that finishes in under a minute on 2 cores
        default_trials, default_epochs = demo.SEARCH_DEFAULTS["trials"], demo.SEARCH_DEFAULTS["epochs"]
        default_size = default_size if info.transfer else demo.SEARCH_DEFAULTS["custom_cnn_image_size"]
    trials = c2.number_input("Trials", 1, 1000, default_trials, key=f"tune_trials_{family}", help="Hyperparameter sets to try.")
    epochs = c3.number_input("Epochs per trial", 1, 1000, default_epochs, key=f"tune_epochs_{family}")

    c1, c2, c3 = st.columns(3)
    image_size = c1.number_input(
        "Input size (pixels)", 32, 1024, default_size, step=1, key=f"tune_size_{family}",
        help=f"Images are resized to a square. {family}'s default: {info.default_image_size} px.",
    )
    max_per_class = c2.number_input(
        "Images per class and split (0 = all)", 0, 100_000, 0, step=50, key="tune_max_per_class",
        help="Cap for quick runs: at most this many images of each class in each split, drawn by patient.",
    )
    name = c3.text_input(
        "Run name", key="tune_name", placeholder=f"{family}-…-date (automatic)",
        help="1-80 letters, digits, '.', '_' or '-'. Empty: family-mode-date.",
    )

    mode, weights = "scratch", "none"
    if info.transfer:
        c1, c2 = st.columns(2)
        mode = c1.radio(
            "Transfer mode", families.MODES, horizontal=True, key="tune_mode",
            help="frozen: the ImageNet backbone is fixed and only a head is trained (the paper's protocol). "
            "finetune: the backbone's top layers train too (slower, often better).",
        )
        weights_choice = c2.radio(
            "Backbone weights", ["imagenet", "none", "file"], horizontal=True, key="tune_weights",
            help="imagenet: pretrained weights (downloaded once into ~/.keras/models). none: random weights "
            "(only for tests). file: a local .h5 weights file.",
        )
        weights = weights_choice
        if weights_choice == "file":
            weights = st.text_input("Weights file (.h5)", key="tune_weights_file").strip()
        elif weights_choice == "imagenet":
            spec = info.backbone(
                int(image_size), "imagenet", st.session_state.get("tune_mobilenet_version", info.default_version), st.session_state.get("tune_alpha", 1.0)
            )
            try:
                local = backbones.keras_models_dir() / spec.arch.weights_file(int(image_size), spec.alpha)
            except ValueError:
                st.caption(f"Keras publishes no ImageNet weights for {spec.architecture} at width {spec.alpha}: pick another width.")
            else:
                where = f"found in {local.parent}" if local.exists() else f"not in {local.parent} yet: downloaded on the first run (needs network)"
                st.caption(f"ImageNet weights ({local.name}): {where}.")

    augment, views = "off", 3
    if mode in ("finetune", "scratch"):
        c1, c2 = st.columns(2)
        choices = [*augmentation.AUGMENTATIONS, augmentation.SEARCH]
        augment = c1.selectbox(
            "Training augmentation", choices, key="tune_augment",
            format_func=lambda n: n if n == augmentation.SEARCH else f"{n} ({augmentation.AUGMENTATIONS[n].describe()})",
            help="Small rotations, zooms, shifts, contrast and brightness changes of the training images, so the "
            "model holds up on X-rays from other machines and periods. 'search' lets the tuner pick a preset "
            "(custom CNN, or fine-tuning without the activation cache).",
        )
        if mode == "finetune":
            views = c2.number_input(
                "Augmented views per image", 1, 16, 3, key="tune_augment_views",
                help="Fine-tuning trains the backbone's top on activations cached once per image; this many augmented "
                "copies of each training image are cached, and each epoch draws one.",
            )

    space_edits = space_editor(family, mode, int(image_size), augment)

    version, alpha = info.default_version or "v2", 1.0  # a family without versions ignores them
    with st.expander("More settings"):
        c1, c2, c3, c4 = st.columns(4)
        batch_size = c1.number_input("Batch size", 1, 4096, 32, key="tune_batch_size")
        seed = c2.number_input(
            "Seed", 0, 2**31 - 1, 42, key="tune_seed",
            help="Fixes the patient split, the image cap and the search's draws. Runs of different seeds are split differently, "
            "so they cannot be ensembled: to retrain on the same split with other seeds, use a finished run's "
            "'repeat the best with other seeds'.",
        )
        patience = c2.number_input(
            "Early stopping patience (epochs)", 0, 1000, 0, key="tune_patience",
            help="End a trial after this many epochs without a better validation AUC (0 = off). "
            "Each trial's history records the epochs it ran and whether it stopped early.",
        )
        tta = c1.number_input(
            "Test-time views", 1, augmentation.TTA_MAX_VIEWS, 1, key="tune_tta",
            help="Test-time augmentation: evaluation and predictions average the probability over this many fixed views "
            "of each image (the image, a small zoom, small shifts). 1 = off.",
        )
        if info.versions:
            versions = sorted(info.versions)
            version = c3.selectbox(
                f"{info.title} version", versions, index=versions.index(info.default_version), key="tune_mobilenet_version"
            )
        if widths := list(info.all_widths):
            alpha = c4.selectbox(
                "Width (alpha)", widths, index=widths.index(1.0), key="tune_alpha",
                help="; ".join(f"{v} takes {', '.join(map(str, info.widths(v)))}" for v in info.versions),
            )

    total_images = summary["total_images"] if summary else 0
    n_images = min(total_images, 6 * int(max_per_class)) if max_per_class else total_images
    if n_images:
        seconds = cost.estimate_search_s(
            family, mode, int(image_size), int(trials), int(epochs), n_images, views=int(views) if augment != "off" else 0
        )
        st.info(
            f"Rough CPU time for this search on about {n_images:,} images: **{ui.format_duration(seconds)}** "
            "(order of magnitude; the live panel below gives a real estimate once the first epoch ends).",
            icon=":material/timer:",
        )

    start = st.button("Start search", type="primary", icon=":material/play_arrow:", key="tune_start")

if start:
    try:
        if root is None:
            raise folders.DataError(data_problem)
        settings = SearchSettings(
            data_dir=str(root), family=family, task=task, tuner=tuner, trials=int(trials), epochs=int(epochs),
            image_size=int(image_size), weights=weights, mode=mode if info.transfer else "frozen",
            max_per_class=int(max_per_class) or None, name=name.strip() or None, artifacts_dir=folder,
            batch_size=int(batch_size), seed=int(seed), mobilenet_version=version, alpha=float(alpha),
            augment=augment, augment_views=int(views), tta=int(tta), space=space_edits or None, patience=int(patience),
        ).resolved()
        started = jobs.start_search(settings)
    except (SettingsError, artifacts.RunError, folders.DataError, OSError) as error:
        st.error(f"Not started: {error}", icon=":material/block:")
    else:
        # Rerun so the sidebar and the lists below see the new run; the message survives the rerun.
        st.session_state["tune_started"] = started
        st.rerun()
if started := st.session_state.pop("tune_started", None):
    st.success(f"Started search **{started}** in the background: follow it below.", icon=":material/rocket_launch:")


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
        if total and epochs:
            fraction = min(1.0, (done + min(max(epoch - 1, 0), epochs) / epochs) / total)
            st.progress(fraction, text=progress.get("message") or "")
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


runs = artifacts.list_runs(folder)
active = [r for r in runs if r.state in artifacts.ACTIVE_STATES]
finished = [r for r in runs if r.state not in artifacts.ACTIVE_STATES]

st.header("Running searches")
if not active:
    st.caption("None running.")
for run in active:
    live_panel(folder, run.name)


# --------------------------------------------------------------------------
# Earlier runs
# --------------------------------------------------------------------------


def _resume(name: str) -> None:
    try:
        jobs.resume_search(folder, name)
        st.session_state["tune_message"] = ("success", f"Resumed {name} in the background.")
    except (artifacts.RunError, OSError) as error:
        st.session_state["tune_message"] = ("error", f"Cannot resume {name}: {error}")


def _do(action, name: str, done: str) -> None:
    try:
        action(folder, name)
        st.session_state["tune_message"] = ("success", done)
    except (artifacts.RunError, OSError) as error:
        st.session_state["tune_message"] = ("error", f"{name}: {error}")


def _save_notes(name: str) -> None:
    try:
        catalog.set_notes(folder, name, note=st.session_state[f"tune_note_{name}"], tags=st.session_state[f"tune_tags_{name}"])
        st.session_state["tune_message"] = ("success", f"Saved the note and tags of {name}.")
    except (artifacts.RunError, OSError) as error:
        st.session_state["tune_message"] = ("error", f"{name}: {error}")


def _export(name: str) -> None:
    from core.reporting import export

    try:
        st.session_state["tune_export"] = (name, export.export_bytes(folder, name))
    except (artifacts.RunError, OSError, ValueError) as error:
        st.session_state["tune_message"] = ("error", f"Cannot export {name}: {error}")


def _repeat(name: str) -> None:
    """The Repeat button: start the repeat in the background; it shows under "Running searches"."""
    state = st.session_state
    try:
        new = jobs.start_repeat(folder, name, int(state[f"tune_repeat_seeds_{name}"]), str(state.get(f"tune_repeat_name_{name}") or "").strip() or None)
        state["tune_message"] = ("success", f"Started **{new}** in the background: {name}'s best hyperparameters with other seeds.")
    except (artifacts.RunError, OSError, ValueError) as error:
        state["tune_message"] = ("error", f"Cannot repeat {name}: {error}")


def repeat_panel(run: artifacts.Run) -> None:
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
        r3.button("Repeat", key=f"tune_repeat_{name}", icon=":material/replay:", on_click=_repeat, args=(name,),
                  disabled=bool(problem), help=problem or "Runs in the background, one seed after another.")


def run_admin(run: artifacts.Run) -> None:
    """Note, tags, archive or restore, delete (with a confirmation) and the model-card download of one run."""
    name = run.name
    with st.container(border=True):
        st.markdown(f"**{name}** · note, tags and housekeeping" + (" · *archived*" if run.archived else ""))
        n1, n2 = st.columns([3, 2])
        n1.text_area("Note", value=run.notes["note"], key=f"tune_note_{name}", height=68)
        n2.text_input("Tags (comma-separated)", value=", ".join(run.tags), key=f"tune_tags_{name}")
        b1, b2, b3, b4 = st.columns(4)
        b1.button("Save note and tags", key=f"tune_save_notes_{name}", on_click=_save_notes, args=(name,), icon=":material/save:")
        if run.archived:
            b2.button("Restore", key=f"tune_restore_{name}", icon=":material/unarchive:",
                      on_click=_do, args=(catalog.restore, name, f"Restored {name}."))
        else:
            b2.button("Archive", key=f"tune_archive_{name}", icon=":material/archive:", help="Hide it from the default lists; its files stay.",
                      on_click=_do, args=(catalog.archive, name, f"Archived {name}: it is hidden from the default lists."))
        exportable = run.state == "completed" and not run.is_ensemble and run.model_path.exists()
        b3.button("Prepare model card (zip)", key=f"tune_export_{name}", icon=":material/inventory_2:", on_click=_export, args=(name,),
                  disabled=not exportable,
                  help="The model (.keras, .tflite), its threshold and MODEL_CARD.md in one zip."
                  if exportable else "Only a completed run with its own model (not an ensemble) can be exported.")
        if b4.button("Delete…", key=f"tune_delete_{name}", icon=":material/delete:"):
            st.session_state["tune_confirm_delete"] = name
        prepared = st.session_state.get("tune_export")
        if prepared and prepared[0] == name:
            st.download_button(f"Download {name}.zip", prepared[1], file_name=f"{name}.zip", mime="application/zip",
                               key=f"tune_download_{name}", icon=":material/download:")
        if st.session_state.get("tune_confirm_delete") == name:
            st.warning(f"Delete **{name}** and every file in its folder for good? Other runs and the shared caches stay.", icon=":material/warning:")
            c1, c2, _ = st.columns([1, 1, 3])
            if c1.button("Yes, delete it", key=f"tune_confirm_delete_{name}", type="primary"):
                st.session_state.pop("tune_confirm_delete", None)
                _do(catalog.delete, name, f"Deleted {name}.")
                st.rerun()
            if c2.button("Cancel", key=f"tune_cancel_delete_{name}"):
                st.session_state.pop("tune_confirm_delete", None)
                st.rerun()


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
                          on_click=_do, args=(jobs.continue_recipe, plan["recipe"], f"Continuing recipe {plan['recipe']} in the background."),
                          help="Finished steps are kept; a stopped one resumes where it stopped.")

st.header("Finished, stopped and failed runs")
if message := st.session_state.pop("tune_message", None):
    (st.success if message[0] == "success" else st.error)(message[1])
all_finished = finished
if finished:
    options = catalog.filter_options(finished)
    with st.expander("Filter runs", expanded=False):
        f1, f2, f3, f4 = st.columns(4)
        want_family = f1.multiselect("Family", options["family"], key="tune_filter_family")
        want_task = f2.multiselect("Task", options["task"], key="tune_filter_task", help="Runs saved without a task are the pneumonia task.")
        want_state = f3.multiselect("State", options["state"], key="tune_filter_state")
        want_tag = f4.multiselect("Tag", options["tag"], key="tune_filter_tag", help="Runs with any of these tags.")
        show_archived = st.toggle("Show archived runs", key="tune_show_archived", help="Archived runs keep their files; restore them below.")
    finished = catalog.filter_runs(
        finished, family=want_family, task=want_task, state=want_state, tag=want_tag, archived=None if show_archived else False
    )
if not finished:
    st.caption(f"No runs in {folder} yet." if not runs else "None yet." if not all_finished else "No run matches the filters.")
else:
    table = artifacts.runs_table(finished)
    table.insert(0, "outcome", table["state"])
    if not table["archived"].any():
        table = table.drop(columns=["archived"])
    st.dataframe(
        table.drop(columns=["state"]), hide_index=True, key="tune_runs",
        column_config={
            "best_val_auc": st.column_config.NumberColumn("best val AUC", format="%.3f"),
            "test_auc": st.column_config.NumberColumn("test AUC", format="%.3f"),
            "accuracy": st.column_config.NumberColumn(format="%.3f"),
            "sensitivity": st.column_config.NumberColumn(format="%.3f"),
            "specificity": st.column_config.NumberColumn(format="%.3f"),
            "threshold": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    unfinished = [r for r in finished if r.state != "completed"][:10]
    for run in unfinished:
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
            st.button("Resume", key=f"resume_{run.name}", icon=":material/play_arrow:", on_click=_resume, args=(run.name,))

    st.subheader("Run details")
    if st.session_state.get("tune_detail") not in {r.name for r in finished}:
        st.session_state.pop("tune_detail", None)  # a deleted, archived or filtered-out run
    detail = st.selectbox("Run", [r.name for r in finished], key="tune_detail")
    run = next(r for r in finished if r.name == detail)
    st.markdown("**Trials**")
    trials_view(run, key="tune_trials")
    left, right = st.columns(2)
    with left:
        st.caption("Settings")
        st.json(run.settings, expanded=False)
    with right:
        st.caption("Log (last lines)")
        st.code(run.log_tail(30) or "(no log)", language=None, wrap_lines=True)
    repeat_panel(run)
    run_admin(run)
