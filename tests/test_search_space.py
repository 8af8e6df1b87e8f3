"""core.models.search_space: the default space is what the models draw, edits narrow it or are refused,
and edited spaces reach Keras Tuner (from the settings and from the CLI)."""

from __future__ import annotations

import json
import math

import pytest

from core.models import search_space
from core.runs.progress import Progress, StopFlag
from core.search.settings import SearchSettings, SettingsError
from core.search.tuner import make_tuner
from tests.helpers import make_dataset, run_cli

CNN_32 = search_space.default_space("custom_cnn", "scratch", 32)


# ---------------------------------------------------------------------------- edits


def test_an_edit_fixes_narrows_or_keeps_choices():
    edited = search_space.apply_edits(
        CNN_32, {"filters": 16, "learning_rate": {"min": 1e-3, "max": 2e-3}, "dense_units": [128, 32], "batch_norm": [False]}
    )
    assert edited["filters"].fixed and edited["filters"].only_value == 16
    assert (edited["learning_rate"].low, edited["learning_rate"].high, edited["learning_rate"].log) == (1e-3, 2e-3, True)
    assert 1e-3 <= edited["learning_rate"].default <= 2e-3  # the default follows into the range
    assert edited["dense_units"].choices == (32, 128) and edited["dense_units"].default in (32, 128)
    assert edited["batch_norm"].fixed and edited["batch_norm"].only_value is False
    untouched = set(CNN_32) - {"filters", "learning_rate", "dense_units", "batch_norm"}
    assert all(edited[name] == CNN_32[name] for name in untouched)


def test_a_range_of_one_value_is_fixed_and_a_narrowed_grid_keeps_its_default_on_it():
    assert search_space.narrow(CNN_32["conv_blocks"], {"min": 2, "max": 2}).fixed
    dropout = search_space.narrow(CNN_32["dropout"], {"min": 0.1, "max": 0.25})
    assert dropout.step == 0.1 and math.isclose(dropout.default, 0.2)  # 0.3 moved into range, onto 0.1 + k·0.1


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"lr": 0.01}, r"unknown hyperparameter 'lr': this search has conv_blocks, .*learning_rate"),
        ({"learning_rate": {"min": 1e-2, "max": 1e-3}}, r"learning_rate: min 0.01 is above max 0.001; swap them"),
        ({"learning_rate": {"min": 1e-5, "max": 1e-3}}, r"1e-05 to 0.001 is outside its default range 0.0001 to 0.01"),
        ({"conv_blocks": 4}, r"conv_blocks: 4 is outside its default range 1 to 3"),  # 32 px fits 3 blocks
        ({"dense_units": []}, r"dense_units: the list of choices is empty; keep at least one of 32, 64, 128, 256"),
        ({"filters": [16, 48]}, r"filters: 48 is not among its choices 16, 32, 64"),
        ({"kernel_size": 4}, r"kernel_size: 4 is not among its choices 3, 5"),
        ({"conv_blocks": 2.5}, r"conv_blocks takes a whole number, got 2.5"),
        ({"conv_blocks": True}, r"conv_blocks takes a whole number, got True"),
        ({"dropout": "a lot"}, r"dropout takes a number, got 'a lot'"),
        ({"batch_norm": "maybe"}, r"batch_norm takes true or false"),
        ({"filters": {"min": 16, "max": 32}}, r"filters is a choice \(one of 16, 32, 64\): give one value or a list"),
        ({"dropout": [0.1, 0.2]}, r"dropout is a range \(0 to 0.5, step 0.1\): give min:max or one value"),
        ({"dropout": {"low": 0.1}}, r"a range for dropout needs exactly the keys min and max"),
    ],
)
def test_an_impossible_edit_is_refused_with_a_message_naming_it(edits, message):
    with pytest.raises(search_space.SpaceError, match=message) as caught:
        search_space.apply_edits(CNN_32, edits)
    assert caught.value.name == next(iter(edits))


def test_hyperparameters_of_another_mode_are_unknown_here():
    head = search_space.default_space("mobilenet", "frozen", 224)
    with pytest.raises(search_space.SpaceError, match="unknown hyperparameter 'unfreeze_layers'"):
        search_space.apply_edits(head, {"unfreeze_layers": 10})
    whole = search_space.default_space("mobilenet", "finetune", 224, augment="search", activation_cache=False)
    assert search_space.apply_edits(whole, {"unfreeze_layers": {"min": 10, "max": 30}, "augment": ["off", "light"]})


def test_cli_text_becomes_the_same_typed_edits_as_json():
    edits = search_space.parse_hp_options(["filters=16", "learning_rate=1e-3:2e-3", "dense_units=32, 128", "batch_norm=off"])
    assert edits == {"filters": "16", "learning_rate": {"min": "1e-3", "max": "2e-3"}, "dense_units": ["32", "128"], "batch_norm": "off"}
    as_json = {"filters": 16, "learning_rate": {"min": 0.001, "max": 0.002}, "dense_units": [32, 128], "batch_norm": False}
    assert search_space.canonical_edits(CNN_32, edits) == search_space.canonical_edits(CNN_32, as_json) == as_json
    assert search_space.parse_hp_option("dense_units=") == ("dense_units", [])  # refused later as an empty list
    # Edits that change nothing are not saved: the run keeps the default space.
    assert search_space.canonical_edits(CNN_32, {"dropout": {"min": 0, "max": 0.5}, "kernel_size": [5, 3]}) == {}


@pytest.mark.parametrize(("options", "message"), [(["dropout"], "needs the form name=value"), (["=3"], "needs the form"),
                                                  (["dropout=0.1", "dropout=0.2"], "--hp dropout is given twice")])
def test_malformed_hp_options_are_refused(options, message):
    with pytest.raises(search_space.SpaceError, match=message):
        search_space.parse_hp_options(options)


def test_space_files_are_read_or_refused_with_the_reason(tmp_path):
    good = tmp_path / "space.json"
    good.write_text('{"dropout": 0.2, "dense_units": [64]}')
    assert search_space.read_edits_file(good) == {"dropout": 0.2, "dense_units": [64]}
    with pytest.raises(search_space.SpaceError, match="does not exist"):
        search_space.read_edits_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{dropout: 0.2")
    with pytest.raises(search_space.SpaceError, match="is not readable JSON"):
        search_space.read_edits_file(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(search_space.SpaceError, match="must hold a JSON object"):
        search_space.read_edits_file(tmp_path / "list.json")


# ---------------------------------------------------------------------------- settings


def test_settings_check_the_space_and_save_it_typed(tmp_path):
    base = {"data_dir": str(tmp_path), "family": "custom_cnn", "image_size": 32}
    with pytest.raises(SettingsError, match="search space: conv_blocks: 4 is outside its default range 1 to 3"):
        SearchSettings(**base, space={"conv_blocks": 4}).resolved()
    with pytest.raises(SettingsError, match="search space: unknown hyperparameter 'unfreeze_layers'"):
        SearchSettings(**base, space={"unfreeze_layers": 10}).resolved()
    resolved = SearchSettings(**base, space={"conv_blocks": "2", "dropout": {"min": "0.1", "max": "0.1"}}).resolved()
    assert resolved.space == {"conv_blocks": 2, "dropout": 0.1}
    assert json.loads(json.dumps(resolved.to_dict()))["space"] == resolved.space
    # A run saved before the space was editable has no `space`: it searches the default space.
    old = dict(resolved.to_dict())
    old.pop("space")
    assert SearchSettings.from_dict(old).hyperparameters() == search_space.default_space("custom_cnn", "scratch", 32)


# ---------------------------------------------------------------------------- the models draw the default space


def _registered(build) -> dict:
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    build(hp)
    return {h.name: h.get_config() for h in hp.space}


def _defined(space: dict) -> dict:
    return {h.name: h.get_config() for h in search_space.registered_in_advance(space.values()).space}


def test_each_model_draws_exactly_its_default_space():
    """The space shown and edited is the one the builders register, name by name and range by range."""
    from core.models import backbones
    from core.search import hypermodel

    spec = backbones.BackboneSpec("mobilenet_v2", 32, "none")
    cases = {
        ("custom_cnn", "scratch", "off", True): hypermodel.SearchSpace("custom_cnn", "scratch", 32).build,
        ("custom_cnn", "scratch", "search", True): hypermodel.SearchSpace("custom_cnn", "scratch", 32, augment="search").build,
        ("mobilenet", "frozen", "off", True): hypermodel.SearchSpace("mobilenet", "frozen", 32, spec, n_features=8).build,
        ("mobilenet", "finetune", "search", False): hypermodel.SearchSpace("mobilenet", "finetune", 32, spec, augment="search").build,
    }
    for (family, mode, augment, activation_cache), build in cases.items():
        expected = search_space.default_space(family, mode, 32, augment, activation_cache)
        registered = _registered(build)
        assert list(registered) == list(expected), (family, mode, augment)
        assert registered == _defined(expected), (family, mode, augment)


# ---------------------------------------------------------------------------- edits reach Keras Tuner


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "chest_xray"
    return make_dataset(root, {"train": 8, "test": 4}, images_per_patient=2, size=32)


def _trial_values(folder) -> list[dict]:
    trials = json.loads((folder / "trials.json").read_text())
    assert trials and all(t["status"] == "COMPLETED" for t in trials), trials
    return [t["hyperparameters"] for t in trials]


def test_the_tuners_oracle_searches_the_edited_space(tmp_path):
    """What Keras Tuner will draw from: fixed values are Fixed, ranges and choices the edited ones."""
    settings = SearchSettings(
        data_dir=str(tmp_path), family="custom_cnn", image_size=32, tuner="bayesian", name="oracle",
        space={"filters": 16, "learning_rate": {"min": 1e-3, "max": 2e-3}, "dense_units": [32, 128]},
    ).resolved()
    oracle_space = settings.hyperparameters()
    from core.runs import trials
    from core.search.hypermodel import SearchSpace

    hypermodel = SearchSpace("custom_cnn", "scratch", 32)
    recorder = trials.HistoryRecorder(tmp_path / "trial_history.csv")
    tuner = make_tuner(settings, hypermodel, tmp_path, Progress(tmp_path), StopFlag(tmp_path), print, recorder)
    space = {h.name: h for h in tuner.oracle.hyperparameters.space}
    assert type(space["filters"]).__name__ == "Fixed" and space["filters"].value == 16
    assert (space["learning_rate"].min_value, space["learning_rate"].max_value) == (1e-3, 2e-3)
    assert list(space["dense_units"].values) == [32, 128]
    assert {h.name: h.get_config() for h in tuner.oracle.hyperparameters.space} == _defined(oracle_space)


def test_cli_edits_reach_every_trial_and_are_saved(tiny_data, tmp_path):
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"filters": [16, 32], "dense_units": [32, 64]}))
    store = tmp_path / "artifacts"
    result = run_cli(
        "tune", "--data", str(tiny_data), "--family", "custom_cnn", "--image-size", "32", "--trials", "3", "--epochs", "1",
        "--no-stress-test", "--name", "edited", "--artifacts", str(store), "--space", str(space_file),
        "--hp", "filters=16", "--hp", "learning_rate=0.002:0.004", "--hp", "conv_blocks=1:2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads((store / "edited" / "settings.json").read_text())
    # --hp overrides the file for filters; the file's dense_units stays.
    assert settings["space"] == {"filters": 16, "dense_units": [32, 64], "learning_rate": {"min": 0.002, "max": 0.004},
                                 "conv_blocks": {"min": 1, "max": 2}}
    values = _trial_values(store / "edited")
    assert len(values) == 3
    assert {v["filters"] for v in values} == {16}
    assert all(0.002 <= v["learning_rate"] <= 0.004 and v["conv_blocks"] in (1, 2) and v["dense_units"] in (32, 64) for v in values)
    # Drawn from the ranges, not stuck at one value: three trials differ in their learning rate.
    assert len({v["learning_rate"] for v in values}) == 3
    # Without the stress test there are no changed images: the threshold is plain Youden's J.
    metrics = json.loads((store / "edited" / "metrics.json").read_text())
    assert metrics["threshold_rule"] == "Youden's J on the validation split" and "stress" not in metrics
    assert not (store / "edited" / "val_stress_predictions.csv").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hp", "learning_rate=0.01:0.001"], "learning_rate: min 0.01 is above max 0.001"),
        (["--hp", "depth=3"], "unknown hyperparameter 'depth'"),
        (["--hp", "dense_units="], "dense_units: the list of choices is empty"),
        (["--hp", "filters=12"], "filters: 12 is not among its choices 16, 32, 64"),
        (["--hp", "dropout=0.9"], "dropout: 0.9 is outside its default range 0 to 0.5"),
        (["--hp", "conv_blocks=two"], "conv_blocks takes a whole number"),
        (["--space", "{missing}"], "search space file .* does not exist"),
    ],
)
def test_cli_refuses_a_bad_edit_before_the_search_starts(tiny_data, tmp_path, capsys, options, message):
    from core import cli

    store = tmp_path / "artifacts"
    options = [o.replace("{missing}", str(tmp_path / "nowhere.json")) for o in options]
    status = cli.main(["tune", "--data", str(tiny_data), "--family", "custom_cnn", "--image-size", "32", "--name", "bad",
                       "--artifacts", str(store), *options])
    errors = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert pytest.importorskip("re").search(message, errors[0]), errors
    assert not (store / "bad").exists()


# ---------------------------------------------------------------------------- from the Tune form


def _tune_form(data, store, name: str):
    from tests.test_app import page, set_tiny_search

    at = set_tiny_search(page("tune", data, store), name)
    at.number_input(key="tune_trials_custom_cnn").set_value(3)
    return at.run()


def test_the_form_shows_every_hyperparameter_and_refuses_bad_edits(tiny_data, tmp_path):
    from tests.test_app import no_exception, texts

    store = tmp_path / "artifacts"
    store.mkdir()
    at = _tune_form(tiny_data, store, "bad-space")
    no_exception(at)
    shown = texts(at.markdown)
    for hp in CNN_32.values():  # each with its range or choices and its help
        assert f"**{hp.name}** · {hp.describe()}" in shown and hp.help in texts(at.caption)
    at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_min").set_value(3)
    at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_max").set_value(1).run()
    assert "conv_blocks: min 3 is above max 1; swap them" in texts(at.error)  # at once, before Start
    at.button(key="tune_start").click().run()
    no_exception(at)
    assert "Not started: search space: conv_blocks: min 3 is above max 1" in texts(at.error)
    at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_min").set_value(1)
    at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_max").set_value(5)
    at.multiselect(key="tune_hp_custom_cnn_scratch_dense_units_choices").set_value([])
    at.button(key="tune_start").click().run()
    assert "Not started: search space: conv_blocks: 1 to 5 is outside its default range 1 to 3" in texts(at.error)
    at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_max").set_value(3)
    at.button(key="tune_start").click().run()
    assert "Not started: search space: dense_units: the list of choices is empty" in texts(at.error)
    assert list(store.iterdir()) == []
    # A new input size changes the default range of conv_blocks: the editor starts again from it.
    at.number_input(key="tune_size_custom_cnn").set_value(128).run()
    assert "**conv_blocks** · 1 to 5" in texts(at.markdown)
    assert at.number_input(key="tune_hp_custom_cnn_scratch_conv_blocks_max").value == 5
    # Another family shows its own space; coming back shows the default space again, not empty boxes.
    at.selectbox(key="tune_family").set_value("mobilenet").run()
    assert "**conv_blocks**" not in texts(at.markdown) and "**learning_rate** · 0.0001 to 0.01 (log scale)" in texts(at.markdown)
    at.radio(key="tune_mode").set_value("finetune").run()  # fine-tuning moves pretrained layers: smaller rates
    assert "**learning_rate** · 1e-05 to 0.001 (log scale)" in texts(at.markdown)
    at.selectbox(key="tune_family").set_value("custom_cnn").run()
    no_exception(at)
    assert at.number_input(key="tune_hp_custom_cnn_scratch_learning_rate_min").value == pytest.approx(1e-4)
    assert at.multiselect(key="tune_hp_custom_cnn_scratch_filters_choices").value == [16, 32, 64]


def test_form_edits_reach_every_trial_of_the_background_search(tiny_data, tmp_path):
    from tests.test_app import no_exception, texts, wait_until_done

    store = tmp_path / "artifacts"
    store.mkdir()
    at = _tune_form(tiny_data, store, "from-the-form")
    at.multiselect(key="tune_hp_custom_cnn_scratch_filters_choices").set_value([16])
    at.multiselect(key="tune_hp_custom_cnn_scratch_kernel_size_choices").set_value([5])
    at.number_input(key="tune_hp_custom_cnn_scratch_learning_rate_min").set_value(0.002)
    at.number_input(key="tune_hp_custom_cnn_scratch_learning_rate_max").set_value(0.004).run()
    assert "Edited: filters fixed at 16; kernel_size fixed at 5; learning_rate 0.002 to 0.004 (log scale)" in texts(at.caption)
    at.button(key="tune_start").click().run()
    no_exception(at)
    assert "Started search **from-the-form**" in texts(at.success)
    settings = json.loads((store / "from-the-form" / "settings.json").read_text())
    assert settings["space"] == {"filters": 16, "kernel_size": 5, "learning_rate": {"min": 0.002, "max": 0.004}}
    run = wait_until_done(store, "from-the-form", 240)
    assert run.state == "completed", (run.progress, (run.folder / "process.log").read_text()[-2000:])
    values = _trial_values(run.folder)
    assert len(values) == 3 and {(v["filters"], v["kernel_size"]) for v in values} == {(16, 5)}
    assert all(0.002 <= v["learning_rate"] <= 0.004 for v in values) and len({v["learning_rate"] for v in values}) == 3
