"""The hybrid CNN-transformer family (core.models.transformer, builders.build_hybrid).

It builds for every task on cut-point activations and draws exactly its default space; the encoder
is deterministic at inference; the settings refuse what it cannot train in; a search runs end to end
with space edits reaching Keras Tuner, and its saved model takes pixels, reloads in a fresh process
with the saved probabilities, and is explained by attention rollout and by Grad-CAM on the stem.
"""

from __future__ import annotations

import json

import keras
import keras_tuner
import numpy as np
import pandas as pd
import pytest

from core.data import tasks
from core.inference import attention, evaluation, explanation, run_kinds
from core.models import backbone_cut, backbones, search_space, transformer
from core.models.engine import make_engine
from core.runs import artifacts
from core.search import hypermodel
from core.search.settings import SearchSettings, SettingsError
from tests.helpers import SHARED_DATA, make_dataset, run_cli

V2_WEIGHTS = SHARED_DATA.parent.parent / "keras_home" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
SIZE = 64  # block_12_add of MobileNetV2 at 64 px: a 4x4 grid of 96 channels


@pytest.fixture(scope="module")
def cut() -> backbone_cut.CutBackbone:
    keras.utils.set_random_seed(0)
    return backbone_cut.split_backbone(backbones.build_backbone(backbones.BackboneSpec("mobilenet_v2", SIZE, "none")), "block_12_add")


@pytest.mark.parametrize(("task", "width"), [(tasks.PNEUMONIA, 1), (tasks.TASKS["bacterial_vs_viral"], 1), (tasks.THREE_CLASS, 3)])
def test_builds_for_each_task_on_the_cut_activations(cut, task, width):
    hp = keras_tuner.HyperParameters()
    model = hypermodel.SearchSpace("hybrid", "finetune", SIZE, cut=cut, backbone=_spec(), task=task).build(hp)
    assert model.input_shape == (None, 4, 4, 96) and model.output_shape == (None, width)
    assert len(attention.attention_layers(model)) == hp.values["depth"] == 2
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert np.isclose(float(model.optimizer.weight_decay), 1e-2) and np.isclose(float(model.optimizer.learning_rate), 5e-4)
    if width > 1:  # one fit is enough to show it trains (each costs a few seconds of tracing)
        x = np.random.default_rng(0).normal(size=(6, 4, 4, 96)).astype("float32")
        history = model.fit(x, task.targets(np.arange(6) % task.n_classes), epochs=1, batch_size=3, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_the_hybrid_reads_tokens_at_the_cut_or_from_the_fine_tuned_blocks_above_it(cut):
    shapes = {}
    for tokens in ("cut", "top"):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("tokens", tokens)
        model = hypermodel.SearchSpace("hybrid", "finetune", SIZE, cut=cut, backbone=_spec()).build(hp)
        projection = next(layer for layer in model.layers + [inner for layer in model.layers for inner in getattr(layer, "layers", [])]
                          if layer.name == "encoder_tokens")
        shapes[tokens] = tuple(projection.output.shape[1:])
        trainable = {w.path for w in model.trainable_weights}
        # the MobileNet blocks above the cut train only when they make the tokens
        assert any("block_15" in path for path in trainable) == (tokens == "top"), tokens
        assert not any("BatchNormalization" in type(layer).__name__ and layer.trainable
                       for layer in model._flatten_layers() if layer.weights)  # batch norms stay frozen
    assert shapes == {"cut": (16, 96), "top": (4, 1280)}  # 4x4 positions at the cut, 2x2 at the top, at 64 px


def _spec() -> backbones.BackboneSpec:
    return backbones.BackboneSpec("mobilenet_v2", SIZE, "none")


def test_draws_exactly_its_default_space_whatever_the_mode(cut):
    hp = keras_tuner.HyperParameters()
    hypermodel.SearchSpace("hybrid", "finetune", SIZE, _spec(), cut=cut).build(hp)
    registered = {h.name: h.get_config() for h in hp.space}
    expected = search_space.default_space("hybrid", "finetune", SIZE)
    defined = {h.name: h.get_config() for h in search_space.registered_in_advance(expected.values()).space}
    assert list(registered) == list(expected) == [
        "tokens", "depth", "heads", "width", "mlp_ratio", "dropout", "stochastic_depth", "pooling", "learning_rate", "weight_decay"]
    assert registered == defined
    assert search_space.default_space("hybrid", "frozen", SIZE) == expected  # the Tune form's editor, whatever its mode radio


@pytest.mark.parametrize("pooling", ["token", "average"])
def test_the_encoder_is_deterministic_at_inference_and_drops_whole_branches_in_training(pooling):
    keras.utils.set_random_seed(0)
    grid = keras.Input((3, 3, 8))
    encoder = transformer.Encoder(depth=2, heads=2, width=16, dropout=0.0, stochastic_depth=0.5, pooling=pooling)
    model = keras.Model(grid, encoder(grid))
    assert model.output_shape == (None, 16)
    x = np.random.default_rng(1).normal(size=(64, 3, 3, 8)).astype("float32")
    inference = [np.asarray(model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)
    assert not np.allclose(np.asarray(model(x, training=True)), inference[0]), "stochastic depth acts while training"
    drop = model.get_layer("encoder_block2_drop_path2")  # the last block drops at the full rate, per example
    kept = np.asarray(drop(np.ones((400, 5, 4), "float32"), training=True))
    assert set(np.unique(kept)) == {0.0, 2.0} and all(len(np.unique(row)) == 1 for row in kept)  # whole rows, scaled by 1/(1-0.5)
    assert 0.4 < (kept[:, 0, 0] == 0).mean() < 0.6


def test_settings_need_finetune_with_the_activation_cache(tmp_path):
    from core import cli

    base = {"data_dir": str(tmp_path), "family": "hybrid", "weights": "none"}
    for wrong in ({"mode": "frozen"}, {"mode": "finetune", "activation_cache": False}):
        with pytest.raises(SettingsError, match="needs --mode finetune with the activation cache on"):
            SearchSettings(**base, **wrong).resolved()
    assert SearchSettings(**base, mode="finetune").resolved().uses_activation_cache
    settings = cli.tune_settings(cli.build_parser().parse_args(["tune", "--data", "D", "--family", "hybrid"]))
    assert settings.mode == "finetune"  # no --mode: the family's own
    assert cli.tune_settings(cli.build_parser().parse_args(["tune", "--data", "D", "--family", "mobilenet"])).mode == "frozen"


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    """One tiny search through the command line: real MobileNetV2 weights when ../shared has them
    (image-specific probabilities), random ones otherwise."""
    tmp = tmp_path_factory.mktemp("hybrid")
    dataset = make_dataset(tmp / "chest_xray", {"train": 8, "test": 4}, images_per_patient=2, size=SIZE)
    weights = str(V2_WEIGHTS) if V2_WEIGHTS.exists() else "none"
    result = run_cli(
        "tune", "--data", str(dataset), "--family", "hybrid", "--weights", weights, "--image-size", str(SIZE),
        "--trials", "1", "--epochs", "1", "--augment", "light", "--augment-views", "1", "--engine", "keras",
        "--hp", "depth=1", "--hp", "heads=2,8", "--hp", "pooling=average",
        "--name", "hybrid", "--artifacts", str(tmp / "runs"), env={"CXR_CACHE_DIR": str(tmp / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return artifacts.load_run(tmp / "runs", "hybrid"), tmp


def test_a_search_trains_on_the_activation_cache_with_the_edited_space(hybrid_run):
    run, _ = hybrid_run
    assert run.settings["mode"] == "finetune" and run.settings["space"] == {"depth": 1, "heads": [2, 8], "pooling": "average"}
    assert run.metrics["activation_cache"] == {"cut": "block_12_add", "augment": "light", "views": 1}
    trial = json.loads((run.folder / "trials.json").read_text())[0]["hyperparameters"]
    assert trial["depth"] == 1 and trial["heads"] in (2, 8) and trial["pooling"] == "average"
    model = evaluation.load_model(run.model_path)
    assert model.input_shape == (None, SIZE, SIZE, 3)  # the stem joined below: it takes pixels
    assert len(attention.attention_layers(model)) == 1  # depth=1 reached the model


def test_the_saved_model_reloads_in_a_fresh_process_with_the_saved_probabilities(hybrid_run):
    run, tmp = hybrid_run
    saved = run.predictions()
    out = tmp / "again.csv"
    result = run_cli("predict", "--run", "hybrid", *saved["path"], "--csv", str(out), "--engine", "keras",
                     "--artifacts", str(tmp / "runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = pd.read_csv(out).set_index("path").loc[saved["path"]]
    np.testing.assert_allclose(again["probability"], saved["probability"], atol=1e-4)
    if V2_WEIGHTS.exists():
        assert saved["probability"].std() > 1e-5, "real stem features give image-specific probabilities"


def test_rollout_and_gradcam_explain_the_saved_model(hybrid_run):
    run, _ = hybrid_run
    image = run.predictions()["path"].iloc[0]
    rollout, _ = run_kinds.heatmap(run, image, method="rollout")
    assert rollout.shape == (4, 4) and 0 <= rollout.min() and rollout.max() <= 1  # the cut's grid: one cell per token
    gradcam, _ = run_kinds.heatmap(run, image, method="gradcam")
    assert gradcam.shape == (4, 4) and 0 <= gradcam.min() and gradcam.max() <= 1
    assert explanation.find_last_feature_map(evaluation.load_model(run.model_path)).name == "block_12_add"  # on the stem


def test_the_inference_engine_runs_the_saved_model(hybrid_run):
    run, _ = hybrid_run
    model = evaluation.load_model(run.model_path)
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    engine = make_engine(model, "auto", threads=1)
    assert engine.name == "tflite", engine.fallback_reason  # the converter takes the encoder's layers
    np.testing.assert_allclose(engine.predict(x), model.predict(x, verbose=0), rtol=1e-3, atol=1e-4)


def test_a_repeat_retrains_the_hybrid_on_its_split_with_its_encoder(hybrid_run, monkeypatch):
    """`repeat` of a hybrid: its best encoder hyperparameters fixed, the next seed, the same split and cache."""
    from core.workflows import repeat

    run, tmp = hybrid_run
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp / "cache"))  # the search's activation cache
    settings = repeat.plan_repeat(tmp / "runs", "hybrid", 1, "hybrid-again")
    repeat.create_repeat(tmp / "runs", settings)
    repeat.run_repeat(tmp / "runs", "hybrid-again", log=None)  # in this process: `python -m core repeat` is tested in test_repeat
    again = artifacts.load_run(tmp / "runs", "hybrid-again")
    assert again.state == "completed" and again.is_repeat and again.settings["seed"] == run.settings["seed"] + 1
    assert again.settings["fixed_hyperparameters"]["depth"] == 1 and again.settings["mobilenet_version"] == "v2"
    assert sorted(again.predictions()["path"]) == sorted(run.predictions()["path"])
    model = evaluation.load_model(again.model_path)
    assert len(attention.attention_layers(model)) == 1  # the repeat's model is a hybrid with the fixed depth
    assert run_kinds.heatmap(again, again.predictions()["path"].iloc[0], method="rollout")[0].shape == (4, 4)


# ---------------------------------------------------------------------------- the plain ViT


VIT_SIZE = 32


@pytest.mark.parametrize(("task", "width"), [(tasks.PNEUMONIA, 1), (tasks.TASKS["bacterial_vs_viral"], 1), (tasks.THREE_CLASS, 3)])
def test_the_vit_builds_for_each_task_on_patches_of_the_pixels(task, width):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("patch", 8)
    model = hypermodel.SearchSpace("vit", "scratch", VIT_SIZE, task=task).build(hp)
    assert model.input_shape == (None, VIT_SIZE, VIT_SIZE, 3) and model.output_shape == (None, width)
    assert model.get_layer("patch_embedding").output.shape[1:3] == (4, 4)  # 32 px in 8 px patches: 16 tokens
    assert len(attention.attention_layers(model)) == hp.values["depth"] == 2
    assert {h.name for h in hp.space} == set(search_space.default_space("vit", "scratch", VIT_SIZE))
    assert isinstance(model.optimizer, keras.optimizers.AdamW)


def test_a_vit_weights_file_of_its_shape_is_loaded_and_another_is_refused(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("patch", 8)
    source = hypermodel.SearchSpace("vit", "scratch", VIT_SIZE).build(hp)
    path = tmp_path / "vit.weights.h5"
    source.save_weights(path)
    loaded = hypermodel.SearchSpace("vit", "scratch", VIT_SIZE, weights=str(path)).build(hp)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = keras_tuner.HyperParameters()
    other.Fixed("patch", 8)
    other.Fixed("depth", 1)
    with pytest.raises(ValueError, match="does not fit this ViT .* save it from a ViT of the same shape"):
        hypermodel.SearchSpace("vit", "scratch", VIT_SIZE, weights=str(path)).build(other)
    settings = SearchSettings(data_dir=str(tmp_path), family="vit", weights=str(path)).resolved()
    assert settings.weights == str(path) and settings.mode == "scratch"  # a file is kept; "imagenet" means from scratch
    assert SearchSettings(data_dir=str(tmp_path), family="vit").resolved().weights == "none"


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit")
    dataset = make_dataset(tmp / "chest_xray", {"train": 8, "test": 4}, images_per_patient=2, size=VIT_SIZE)
    result = run_cli(
        "tune", "--data", str(dataset), "--family", "vit", "--image-size", str(VIT_SIZE), "--trials", "1", "--epochs", "1",
        "--engine", "keras", "--hp", "patch=8", "--hp", "depth=1", "--name", "vit", "--artifacts", str(tmp / "runs"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return artifacts.load_run(tmp / "runs", "vit"), tmp


def test_a_vit_search_saves_a_model_that_takes_pixels_reloads_and_is_explained_by_rollout(vit_run):
    run, tmp = vit_run
    assert run.settings["family"] == "vit" and run.settings["space"] == {"patch": 8, "depth": 1}
    model = evaluation.load_model(run.model_path)
    assert model.input_shape == (None, VIT_SIZE, VIT_SIZE, 3) and len(attention.attention_layers(model)) == 1
    saved = run.predictions()
    again = run_kinds.predict_files(run, list(saved["path"]), engine="keras")
    np.testing.assert_allclose(again["probability"], saved["probability"], atol=1e-4)
    rollout, _ = run_kinds.heatmap(run, saved["path"].iloc[0], method="rollout")
    assert rollout.shape == (4, 4) and 0 <= rollout.min() and rollout.max() <= 1  # one cell per patch


def test_a_transformer_model_card_ships_its_layers_and_its_snippet_runs_without_this_project(vit_run, tmp_path):
    import zipfile

    from core.reporting import export
    from tests.test_export import _card_snippet_says

    run, tmp = vit_run
    with zipfile.ZipFile(export.export_run(tmp / "runs", "vit", tmp_path / "vit.zip")) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / "vit"
    card = (folder / "MODEL_CARD.md").read_text()
    assert (folder / export.LAYERS_MODULE).exists() and "import cxr_layers" in card
    assert "A vision transformer trained from scratch on about 5,000 X-rays" in card  # it says it is weak
    saved = run.predictions().head(3)
    said = _card_snippet_says(folder, list(saved["path"]))  # a fresh process, PYTHONPATH unset: only the zip's files
    np.testing.assert_allclose([float(line[0]) for line in said], saved["probability"], atol=1e-4)


def _page(name: str, data, runs):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO

    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state["data_dir"], at.session_state["artifacts_dir"] = str(data), str(runs)
    return at


def test_compare_and_predict_show_a_transformers_attention_map(vit_run):
    run, tmp = vit_run
    at = _page("compare", tmp / "chest_xray", tmp / "runs")
    at.session_state["image_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}  # as a click on row 0
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="compare_method").value == "rollout"  # a transformer's own explanation comes first
    captions = [c for element in at.get("image") for c in element.captions]
    assert any(c.startswith("vit · Attention rollout · p = ") for c in captions), captions

    at = _page("predict", tmp / "chest_xray", tmp / "runs").run()
    image = run.predictions()["path"].iloc[0]
    at.file_uploader(key="predict_upload").set_value([("chest.jpeg", open(image, "rb").read(), "image/jpeg")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c for element in at.get("image") for c in element.captions]
    assert any(c.startswith("vit · Attention rollout · p = ") for c in captions), captions
    at.selectbox(key="predict_method").set_value("gradcam").run()  # on a ViT, Grad-CAM reads the patch embeddings' grid
    assert not at.exception
    assert any(c.startswith("vit · Grad-CAM · p = ") for element in at.get("image") for c in element.captions)


@pytest.mark.parametrize(("stem", "architecture"), [("densenet121", "densenet121"), ("xception", "xception"), ("v1", "mobilenet_v1")])
def test_the_stem_is_any_backbone_with_a_cut(stem, architecture, tmp_path):
    """Every hybrid stem is a backbone with a default cut, taken by --stem, costed as its own family."""
    from core import cli
    from core.models import families
    from core.search import cost

    settings = cli.tune_settings(cli.build_parser().parse_args(["tune", "--data", str(tmp_path), "--family", "hybrid", "--stem", stem,
                                                                "--weights", "none"]))
    spec = settings.resolved().backbone()
    assert (settings.mobilenet_version, spec.architecture) == (stem, architecture)
    assert backbones.ARCHITECTURES[architecture].default_cut
    hybrid = families.FAMILIES["hybrid"]
    owner = next(f for f in families.FAMILIES.values() if architecture in (f.architecture, *f.versions.values()) and not f.hybrid)
    scale = (hybrid.default_image_size / owner.default_image_size) ** 2
    if owner.architecture == architecture:  # a backbone another family measured: its bottom pass, the encoder's step
        assert hybrid.cost_for(stem).bottom_pass_ms == pytest.approx(owner.cost.bottom_pass_ms * scale)
        assert hybrid.cost_for(stem).top_step_ms == hybrid.cost.top_step_ms
    heavier = cost.estimate_search_s("hybrid", "finetune", 224, 4, 4, 5000, version=stem)
    assert (heavier > cost.estimate_search_s("hybrid", "finetune", 224, 4, 4, 5000)) == (owner.name != "mobilenet")
    with pytest.raises(SettingsError, match="--stem chooses a hybrid's CNN"):
        cli.tune_settings(cli.build_parser().parse_args(["tune", "--data", "D", "--family", "mobilenet", "--stem", stem]))


def test_a_densenet_stem_feeds_the_encoder_its_cut_activations():
    keras.utils.set_random_seed(0)
    spec = backbones.BackboneSpec("densenet121", SIZE, "none")
    cut = backbone_cut.split_backbone(backbones.build_backbone(spec), backbones.ARCHITECTURES["densenet121"].default_cut)
    model = hypermodel.SearchSpace("hybrid", "finetune", SIZE, cut=cut, backbone=spec).build(keras_tuner.HyperParameters())
    assert model.input_shape == (None, *cut.activation_shape) and model.output_shape == (None, 1)
    joined = backbone_cut.join(cut, model)
    assert joined.input_shape == (None, SIZE, SIZE, 3)
    out = joined.predict(np.full((2, SIZE, SIZE, 3), 128.0, np.float32), verbose=0)
    assert out.shape == (2, 1) and np.all((out >= 0) & (out <= 1))
