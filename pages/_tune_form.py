"""Tune page, "New search": the data folder's notes, the search form with its presets and cost estimate, and Start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core import jobs
from core.data import augmentation, demo, folders, tasks
from core.models import backbones, families
from core.runs import artifacts
from core.search import cost, presets
from core.search.settings import TUNERS, SearchSettings, SettingsError
from pages import _loaders as load
from pages import _shared as ui
from pages._space_editor import space_editor


@dataclass(frozen=True)
class DataFolder:
    """The data folder as the page's two ways to start (the recipe box and the form) see it."""

    root: Path | None  # None: not usable
    problem: str  # why it is not usable ("" when it is)
    summary: dict | None  # its image counts (load.summary_for)

    @property
    def on_demo(self) -> bool:
        return self.root is not None and demo.is_demo(self.root)


def data_folder_notes(path: str) -> DataFolder:
    """Say when the data folder cannot be used, or is the demo set; the folder as the forms use it."""
    root, data_problem = ui.check_data_dir(path)
    if root is None:
        st.warning(f"Set a usable data folder in the sidebar first: {data_problem}", icon=":material/folder_off:")
    summary = load.summary_for(root) if root is not None else None
    data = DataFolder(root, data_problem, summary)
    if data.on_demo:
        st.info(
            f"The data folder is the **demo set** ({summary['total_images'] if summary else 130} X-rays): the form starts with a "
            f"small search ({demo.SEARCH_DEFAULTS['trials']} trials × {demo.SEARCH_DEFAULTS['epochs']} epochs; the custom CNN at "
            f"{demo.IMAGE_PX} px) that finishes in under a minute on 2 cores. Its metrics say little: get the full data on the **Data** page.",
            icon=":material/science:",
        )
    return data


def apply_preset() -> None:
    """Fill the form's widgets with the chosen preset's settings (before they are drawn)."""
    name = st.session_state.get("tune_preset", "custom")
    if name == "custom":
        return
    chosen = presets.preset(name).every_setting()
    family_name = chosen["family"]
    widget_keys = {
        "family": "tune_family", "tuner": "tune_tuner", "trials": f"tune_trials_{family_name}",
        "epochs": f"tune_epochs_{family_name}", "image_size": f"tune_size_{family_name}", "mode": "tune_mode",
        "weights": "tune_weights", "augment": "tune_augment", "augment_views": "tune_augment_views", "tta": "tune_tta",
    }
    for setting, key in widget_keys.items():
        st.session_state[key] = chosen[setting]


def _first_visit_preset(on_demo: bool) -> None:
    if "tune_preset" not in st.session_state:
        # The first visit starts from the quick preset (a fine-tuned MobileNetV2; docs/measurements.md gives its time);
        # on the demo set, from the small search that fits it.
        st.session_state["tune_preset"] = "custom" if on_demo else presets.DEFAULT
        if on_demo:
            st.session_state.setdefault("tune_family", "custom_cnn")  # needs no ImageNet weights (offline)
        apply_preset()


def search_form(folder: str, data: DataFolder) -> None:
    """The form of a new search, its rough CPU time and Start; a started search is announced after the rerun."""
    _first_visit_preset(data.on_demo)
    with st.container(border=True):
        _preset_choice()
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
        if data.on_demo:  # a small search that finishes in under a minute on 2 cores
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

        mode, weights = _transfer_settings(info, int(image_size))
        augment, views = _augmentation_settings(mode)
        space_edits = space_editor(family, mode, int(image_size), augment)
        more = _more_settings(info)
        _cost_estimate(data, family=family, mode=mode, image_size=int(image_size), trials=int(trials), epochs=int(epochs),
                       max_per_class=int(max_per_class), views=int(views) if augment != "off" else 0, version=more["mobilenet_version"])

        start = st.button("Start search", type="primary", icon=":material/play_arrow:", key="tune_start")

    if start:
        _start_search(data, dict(
            family=family, task=task, tuner=tuner, trials=int(trials), epochs=int(epochs),
            image_size=int(image_size), weights=weights, mode=mode if info.transfer else "frozen",
            max_per_class=int(max_per_class) or None, name=name.strip() or None, artifacts_dir=folder,
            augment=augment, augment_views=int(views), space=space_edits or None, **more,
        ))
    if started := st.session_state.pop("tune_started", None):
        st.success(f"Started search **{started}** in the background: follow it below.", icon=":material/rocket_launch:")


def _preset_choice() -> None:
    """The "Start from" box: a preset fills in the form (apply_preset), with its command for a terminal."""
    preset_names = ["custom", *presets.PRESETS]
    preset_name = st.selectbox(
        "Start from", preset_names, key="tune_preset", on_change=apply_preset,
        format_func=lambda n: "your own settings" if n == "custom" else presets.PRESETS[n].title,
        help="A preset fills in the settings below; change any of them before you start.",
    )
    if preset_name != "custom":
        st.caption(f":material/recommend: {presets.PRESETS[preset_name].description} Same from a terminal: "
                   f"`{presets.PRESETS[preset_name].command()}`")


def _transfer_settings(info: families.Family, image_size: int) -> tuple[str, str]:
    """(transfer mode, backbone weights) of a transfer family, with where its ImageNet weights are; ("scratch", "none") otherwise
    (a ViT trained from a weights file of its shape takes it from the command line: `--weights FILE`)."""
    mode, weights = "scratch", "none"
    if info.versions and st.session_state.get("tune_mobilenet_version") not in info.versions:
        st.session_state.pop("tune_mobilenet_version", None)  # another family's version (a hybrid's Xception stem, for MobileNet)
    if info.transfer:
        c1, c2 = st.columns(2)
        if st.session_state.get("tune_mode") not in info.modes:
            st.session_state.pop("tune_mode", None)  # a mode the family does not train in (frozen, for the hybrid)
        mode = c1.radio(
            "Transfer mode", info.modes, horizontal=True, key="tune_mode",
            help="frozen: the ImageNet backbone is fixed and only a head is trained (the paper's protocol). "
            "finetune: the backbone's top layers train too (slower, often better). The hybrid CNN-transformer "
            "trains its encoder on the backbone's cut-point activations: finetune only.",
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
                image_size, "imagenet", st.session_state.get("tune_mobilenet_version", info.default_version), st.session_state.get("tune_alpha", 1.0)
            )
            try:
                local = backbones.keras_models_dir() / spec.arch.weights_file(image_size, spec.alpha)
            except ValueError:
                st.caption(f"Keras publishes no ImageNet weights for {spec.architecture} at width {spec.alpha}: pick another width.")
            else:
                where = f"found in {local.parent}" if local.exists() else f"not in {local.parent} yet: downloaded on the first run (needs network)"
                st.caption(f"ImageNet weights ({local.name}): {where}.")
    return mode, weights


def _augmentation_settings(mode: str) -> tuple[str, int]:
    """(training augmentation, augmented views per image) where the backbone trains; ("off", 3) for a frozen one."""
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
    return augment, views


def _more_settings(info: families.Family) -> dict:
    """The "More settings" expander: batch size, seed, patience, test-time views, version and width, as SearchSettings fields."""
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
                f"{info.title} {info.version_label}", versions, index=versions.index(info.default_version), key="tune_mobilenet_version"
            )
        if widths := list(info.all_widths):
            alpha = c4.selectbox(
                "Width (alpha)", widths, index=widths.index(1.0), key="tune_alpha",
                help="; ".join(f"{v} takes {', '.join(map(str, info.widths(v)))}" for v in info.versions),
            )
    return {"batch_size": int(batch_size), "seed": int(seed), "patience": int(patience), "tta": int(tta),
            "mobilenet_version": version, "alpha": float(alpha)}


def _cost_estimate(
    data: DataFolder, *, family: str, mode: str, image_size: int, trials: int, epochs: int, max_per_class: int, views: int,
    version: str | None = None,
) -> None:
    """The search's rough CPU time on the images it would read (`views`: augmented views per image, 0 without augmentation)."""
    if data.summary and data.summary["total_images"]:
        n_images, n_train, n_val = cost.split_sizes(data.summary, 6 * max_per_class if max_per_class else None)
        seconds = cost.estimate_search_s(family, mode, image_size, trials, epochs, n_images, views=views, version=version,
                                         n_train=n_train, n_val=n_val)
        st.info(
            f"Estimated CPU time for this search on about {n_images:,} images: **{cost.about(seconds)}** on 2 cores, from an "
            "empty cache (calibrated on measured runs, docs/measurements.md; the live panel below gives a real estimate once "
            "the first epoch ends).",
            icon=":material/timer:",
        )


def _start_search(data: DataFolder, chosen: dict) -> None:
    """Start: check the settings and start the search in the background, or say why not (`chosen`: SearchSettings fields)."""
    try:
        if data.root is None:
            raise folders.DataError(data.problem)
        settings = SearchSettings(data_dir=str(data.root), **chosen).resolved()
        started = jobs.start_search(settings)
    except (SettingsError, artifacts.RunError, folders.DataError, OSError) as error:
        st.error(f"Not started: {error}", icon=":material/block:")
    else:
        # Rerun so the sidebar and the lists below see the new run; the message survives the rerun.
        st.session_state["tune_started"] = started
        st.rerun()
