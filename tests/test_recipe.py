"""The recommended recipe (core.workflows.recipe): its plan, the chain run end to end by the CLI, continuing
it, stopping it between steps, its refusals, and the Tune page's one-click start and recipe list."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import files, jobs
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.runs.progress import StopFlag
from core.search import loop, presets
from core.workflows import recipe, repeat, runner_up
from tests.helpers import TINY_RECIPE as TINY
from tests.helpers import run_cli
from tests.test_app import no_exception, page
from tests.test_finetune import V2_WEIGHTS


def test_plan_names_its_runs_and_merges_each_preset_with_the_overrides(tmp_path):
    plan = recipe.make_plan("mine", tmp_path, {"epochs": 2, "seed": 7, "task": None})
    assert plan["steps"] == ["mine-recommended", "mine-runner-up", "mine"]
    assert plan["overrides"] == {"epochs": 2, "seed": 7}  # options left out keep the presets' values
    # A default passed explicitly (the page passes every field) is the same plan as one left out.
    assert recipe.make_plan("mine", tmp_path, {"seed": 42, "task": "pneumonia"}) == recipe.make_plan("mine", tmp_path)
    recommended = recipe.search_settings(plan, recipe.first_search(plan), tmp_path)
    assert recommended.name == "mine-recommended"
    wanted = {**presets.preset("recommended").settings, "epochs": 2, "seed": 7}
    assert {key: getattr(recommended, key) for key in wanted} == wanted
    assert recipe.command(plan) == f"python -m core recipe --data {plan['data_dir']} --name mine --epochs 2 --seed 7"


def test_a_recipe_of_one_trial_repeats_its_best_instead_of_a_runner_up(tmp_path):
    plan = recipe.make_plan("one", tmp_path, {"trials": 1})
    assert recipe.steps_of(plan) == recipe.WITH_REPEAT
    assert plan["steps"] == ["one-recommended", "one-repeat", "one"]
    assert [row["what"] for row in recipe.status(tmp_path, plan)] == [
        "recommended preset", "recommended's best hyperparameters, next seed", "equal-weight ensemble of recommended, repeat"]
    assert recipe.steps_of(recipe.make_plan("two", tmp_path, {"trials": 2})) == recipe.STEPS
    # No training for the runner-up: it is estimated at its evaluation, far below a repeat's training.
    estimates = recipe.step_estimates(recipe.make_plan("r", tmp_path), 5528, 4470, 746)
    repeated = recipe.step_estimates(plan, 5528, 4470, 746)
    assert 0 < estimates["r-runner-up"] < repeated["one-repeat"] / 3


def test_the_three_class_recipe_asks_both_ways_and_averages_the_answers(tmp_path, monkeypatch):
    """Three searches (three classes; pneumonia; bacterial vs viral), each with its runner-up, then one ensemble of
    all six: each search answers its own question, and a name too long for the longest step is refused."""
    from types import SimpleNamespace

    from core.inference import ensemble

    plan = recipe.make_plan("tc", tmp_path, {"task": "three_class", "seed": 43})
    assert recipe.steps_of(plan) == recipe.THREE_CLASS_STEPS
    assert plan["steps"] == ["tc-recommended", "tc-runner-up", "tc-pneumonia", "tc-pneumonia-runner-up", "tc-kinds",
                             "tc-kinds-runner-up", "tc"]
    assert recipe.make_plan("tc", tmp_path, {"task": "three_class", "trials": 1})["steps"] == ["tc-recommended", "tc-repeat", "tc"]
    calls = []
    monkeypatch.setattr(loop, "run_search", lambda settings, log, resume: calls.append(
        ("search", settings.name, settings.task, settings.seed, settings.trials)) or {"state": "completed"})
    monkeypatch.setattr(runner_up, "keep_trial", lambda artifacts_dir, source, name, extra_json, log: calls.append(
        ("keep", name, source)) or {"state": "completed"})
    monkeypatch.setattr(recipe, "working_members", lambda artifacts_dir, members, log: members)
    built = SimpleNamespace(metrics={"test": {"auc": 0.9, "accuracy": 0.8}, "threshold": 0.5})
    monkeypatch.setattr(ensemble, "build_ensemble", lambda artifacts_dir, members, name: calls.append(("ensemble", name, members)) or built)
    assert recipe.run_recipe(tmp_path / "store", plan, log=lambda _: None) is built.metrics
    trials = presets.preset("recommended").settings["trials"]
    assert calls == [
        ("search", "tc-recommended", "three_class", 43, trials), ("keep", "tc-runner-up", "tc-recommended"),
        ("search", "tc-pneumonia", "pneumonia", 43, trials), ("keep", "tc-pneumonia-runner-up", "tc-pneumonia"),
        ("search", "tc-kinds", "bacterial_vs_viral", 43, trials), ("keep", "tc-kinds-runner-up", "tc-kinds"),
        ("ensemble", "tc", plan["steps"][:-1]),
    ]
    assert [row["what"] for row in recipe.status(tmp_path, plan)][2] == "recommended preset, normal vs pneumonia"
    with pytest.raises(RunError, match=f"at most {80 - len('-pneumonia-runner-up')} characters"):
        recipe.make_plan("x" * 62, tmp_path, {"task": "three_class"})
    recipe.make_plan("x" * 62, tmp_path)  # the same name fits the two-class chain


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("mine", {"family": "custom_cnn"}, "cannot change family"),
        ("bad name!", {}, "cannot name a recipe"),
        ("x" * 75, {}, "cannot name a recipe"),  # NAME-recommended would pass 80 characters
    ],
)
def test_bad_plans_are_refused(tmp_path, name, overrides, message):
    with pytest.raises(RunError, match=message):
        recipe.make_plan(name, tmp_path, overrides)


def test_the_recipe_makes_three_ordinary_runs_ending_in_their_ensemble(cooked):
    recommended, again, result = (artifacts.load_run(cooked, n) for n in ("r-recommended", "r-runner-up", "r"))
    assert all(run.state == "completed" for run in (recommended, again, result))
    assert not (cooked / "r-quick").exists()
    # The search is its preset, changed only where the recipe said.
    assert recommended.settings["augment"] == presets.preset("recommended").settings["augment"]
    assert recommended.settings["image_size"] == 32
    # The runner-up is the search's second-best trial, on its split; nothing trained for it.
    second = sorted(recommended.read(artifacts.TRIALS), key=lambda row: row["score"], reverse=True)[1]
    assert again.settings["kept_trial"] == {"source": "r-recommended", "rank": 2, "trial_id": second["trial_id"]}
    assert again.read(artifacts.BEST_HYPERPARAMETERS) == second["hyperparameters"] != recommended.read(artifacts.BEST_HYPERPARAMETERS)
    assert again.metrics["trials_completed"] == 0 and not (again.folder / artifacts.TUNER_DIR).exists()
    assert files.read_csv(again.folder / artifacts.SPLITS).equals(files.read_csv(recommended.folder / artifacts.SPLITS))
    # The result is the equal-weight ensemble of the two, its threshold chosen on validation.
    assert result.is_ensemble and result.members == ["r-recommended", "r-runner-up"]
    members = [run.predictions().set_index("path")["probability"] for run in (recommended, again)]
    mean = sum(members) / 2
    mine = result.predictions().set_index("path")["probability"]
    np.testing.assert_allclose(mine.to_numpy(), mean.loc[mine.index].to_numpy(), atol=1e-6)
    assert "validation" in result.metrics["threshold_rule"]
    # Every step knows its place in the chain.
    for number, run in enumerate((recommended, again, result), 1):
        plan = recipe.read_plan(run.folder)
        assert plan["recipe"] == "r" and plan["step"] == number and recipe.step_number(plan, run.name) == number


def test_a_finished_recipe_is_not_run_again(cooked):
    for args in (["resume", "r-recommended"], ["recipe", "--name", "r"]):
        done = run_cli(*args, "--artifacts", str(cooked))
        assert done.returncode == 2 and "already complete" in done.stderr and "Traceback" not in done.stderr


def test_running_it_again_continues_from_the_first_missing_step(cooked, tmp_path):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    # As if the process died while it evaluated the runner-up: it is evaluated again, to the same numbers.
    predictions = artifacts.load_run(store, "r-runner-up").predictions()
    (store / "r-runner-up" / artifacts.METRICS).unlink()
    shutil.rmtree(store / "r")
    kept = {n: (store / n / artifacts.METRICS).stat().st_mtime_ns for n in ("r-recommended",)}
    done = run_cli("recipe", "--name", "r", "--artifacts", str(store))  # no --data: its own settings
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 2 of 3" in done.stdout and "step 3 of 3" in done.stdout and "step 1 of 3" not in done.stdout
    assert {n: (store / n / artifacts.METRICS).stat().st_mtime_ns for n in kept} == kept  # finished steps untouched
    assert artifacts.load_run(store, "r").is_ensemble
    assert artifacts.load_run(store, "r-runner-up").predictions().equals(predictions)


def test_a_stopped_step_ends_the_chain_and_nothing_after_it_starts(cooked, tmp_path, monkeypatch):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    for name in ("r-runner-up", "r"):
        shutil.rmtree(store / name)
    (store / "r-recommended" / artifacts.METRICS).unlink()  # as if it had stopped mid-search
    plan = recipe.find_plan(store, "r")
    calls = []
    monkeypatch.setattr(loop, "run_search", lambda settings, log, resume: calls.append(settings.name) or {"state": "stopped"})
    assert recipe.run_recipe(store, plan, log=lambda _: None) == {"state": "stopped", "step": "r-recommended"}
    assert calls == ["r-recommended"]
    assert not (store / "r-runner-up").exists() and not (store / "r").exists()
    assert [row["state"] for row in recipe.status(store, plan)][1:] == ["not started", "not started"]


def test_a_recipe_started_with_the_quick_step_goes_on_as_it_began(cooked, tmp_path, monkeypatch):
    store = tmp_path / "artifacts"
    plan = {"recipe": "old", "data_dir": str(cooked.parent / "data"), "overrides": {},
            "steps": ["old-quick", "old-recommended", "old-repeat", "old"]}  # a plan written before 2026-12-04
    assert recipe.steps_of(plan) == recipe.WITH_QUICK and recipe.first_search(plan).preset == "quick"
    assert [row["what"] for row in recipe.status(store, plan)] == [
        "quick preset", "recommended preset", "recommended's best hyperparameters, next seed",
        "equal-weight ensemble of quick, recommended, repeat"]
    calls = []
    monkeypatch.setattr(loop, "run_search", lambda settings, log, resume: calls.append(settings.name) or {"state": "stopped"})
    assert recipe.run_recipe(store, plan, log=lambda _: None) == {"state": "stopped", "step": "old-quick"}
    assert calls == ["old-quick"] and recipe.find_plan(store, "old") == plan  # found by its quick step's recipe.json
    with pytest.raises(RunError, match="has steps this version does not know"):
        recipe.steps_of({**plan, "steps": ["old-a", "old"]})


def test_a_recipe_started_with_the_repeat_goes_on_as_it_began(cooked, tmp_path, monkeypatch):
    """A recipe planned before the runner-up (recommended, repeat, ensemble) repeats its search's best."""
    store = tmp_path / "artifacts"
    plan = {"recipe": "r", "data_dir": str(cooked.parent / "data"), "overrides": {}, "steps": ["r-recommended", "r-repeat", "r"]}
    shutil.copytree(cooked / "r-recommended", store / "r-recommended")
    files.write_json(store / "r-recommended" / recipe.PLAN_FILE, recipe.step_plan(plan, 1))  # its first step, finished
    assert recipe.steps_of(recipe.find_plan(store, "r")) == recipe.WITH_REPEAT
    repeated = []
    monkeypatch.setattr(repeat, "run_repeat", lambda artifacts_dir, name, log: repeated.append(name) or {"state": "stopped"})
    assert recipe.run_recipe(store, plan, log=lambda _: None) == {"state": "stopped", "step": "r-repeat"}
    again = artifacts.load_run(store, "r-repeat")  # planned as the recommended run's repeat, with the next seed
    assert repeated == ["r-repeat"] and again.settings["repeat"]["source"] == "r-recommended"
    assert again.settings["repeat"]["seeds"] == [artifacts.load_run(store, "r-recommended").settings["seed"] + 1]
    assert recipe.read_plan(again.folder)["step"] == 2 and not (store / "r-runner-up").exists()


def test_refusals_are_one_clear_line(cooked, tmp_path):
    data = cooked.parent / "data"
    cases = [
        (["recipe", "--name", "nothing"], "no recipe named 'nothing'"),
        (["recipe", "--name", "r", "--data", str(data), "--epochs", "3"], "was started with other settings"),
        (["recipe", "--name", "r", "--epochs", "3"], "pass --data"),
    ]
    for args, message in cases:
        done = run_cli(*args, "--artifacts", str(cooked))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    # A name whose run exists but belongs to no recipe.
    store = tmp_path / "artifacts"
    shutil.copytree(cooked / "r-recommended", store / "other-recommended")
    (store / "other-recommended" / recipe.PLAN_FILE).unlink()
    done = run_cli("recipe", "--name", "other", "--data", str(data), *TINY, "--artifacts", str(store))
    assert done.returncode == 2 and "is not a step of recipe 'other'" in done.stderr


def test_tune_page_starts_a_recipe_in_one_click_and_lists_recipes(cooked, tmp_path, monkeypatch):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    launched = []
    # No process starts: the "child" is this test's process, so a started step reads as running.
    monkeypatch.setattr(jobs, "_launch", lambda folder, artifacts_dir, command=None: launched.append((folder.name, command)) or os.getpid())
    at = page("tune", cooked.parent / "data", store)
    no_exception(at)
    steps = next(d.value for d in at.dataframe if "step" in d.value.columns)
    assert list(steps["step"]) == ["r-recommended", "r-runner-up", "r"] and set(steps["state"]) == {"completed"}
    assert not [b for b in at.button if b.key == "tune_recipe_continue_r"]  # complete: nothing to continue
    at.selectbox(key="tune_detail").set_value("r-runner-up").run()  # the runner-up says whose trial it keeps
    no_exception(at)
    trial_id = artifacts.load_run(store, "r-runner-up").settings["kept_trial"]["trial_id"]
    assert any(f"**Runner-up**: trial {trial_id} of **r-recommended**, its number 2" in m.value for m in at.markdown)
    at.selectbox(key="tune_recipe_task").set_value("three_class").run()  # the box's command follows its widgets
    assert any(f"python -m core recipe --data {cooked.parent / 'data'} --name recipe --task three_class" in c.value for c in at.caption)
    at.selectbox(key="tune_recipe_task").set_value("pneumonia").run()

    at.text_input(key="tune_recipe_name").set_value("r").run()  # taken
    at.button(key="tune_recipe_start").click().run()
    assert any("Not started" in e.value and "already exists" in e.value for e in at.error)
    assert not launched

    # Offline without the ImageNet weights: the page names the file to place, and nothing is made.
    import keras

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    at.text_input(key="tune_recipe_name").set_value("fresh").run()
    at.button(key="tune_recipe_start").click().run()
    assert any("Not started" in e.value and "could not be downloaded" in e.value for e in at.error)
    assert not launched and not (store / "fresh-recommended").exists()

    if not V2_WEIGHTS.exists():
        pytest.skip("../shared/keras_home has no MobileNetV2 weights")
    monkeypatch.setenv("KERAS_HOME", str(V2_WEIGHTS.parent.parent))
    at.button(key="tune_recipe_start").click().run()
    no_exception(at)
    assert launched == [("fresh-recommended", None)]  # `resume fresh-recommended`, which goes on with the chain
    first = artifacts.load_run(store, "fresh-recommended")
    assert recipe.read_plan(first.folder)["step"] == 1 and first.settings["augment"] == presets.preset("recommended").settings["augment"]
    assert json.loads((first.folder / artifacts.PROGRESS).read_text())["state"] == "starting"
    at = page("tune", cooked.parent / "data", store)  # its live panel says where it is in the chain
    assert any("Step 1 of 3 of recipe **fresh**" in c.value for c in at.caption)

    # A recipe whose process ended between steps: Continue launches `recipe --name`.
    shutil.rmtree(store / "fresh-recommended")
    shutil.rmtree(store / "r")
    at = page("tune", cooked.parent / "data", store)
    at.button(key="tune_recipe_continue_r").click().run()
    no_exception(at)
    assert launched[-1] == ("r-recommended", ["recipe", "--name", "r"])


def test_stop_by_the_recipes_name_stops_its_running_step(cooked, tmp_path):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    shutil.rmtree(store / "r")
    assert jobs.stop_search(str(store), "r") == "recipe 'r' is not running"
    step = store / "r-recommended"
    (step / artifacts.METRICS).unlink()
    # Running as far as the pages can tell; the pid is the launcher's, so nothing is signalled.
    files.write_json(step / artifacts.PROGRESS, {"state": "running", "phase": "searching", "pid": os.getpid(),
                                                     "host": artifacts.this_host(), jobs.LAUNCHING: True})
    assert "asked to stop: run 'r-recommended'" in jobs.stop_search(str(store), "r")
    assert (step / StopFlag.FILE).exists() and not (store / "r-runner-up" / StopFlag.FILE).exists()
    with pytest.raises(RunError, match="no run or recipe named 'nothing'"):
        jobs.stop_search(str(store), "nothing")


# --------------------------------------------------------------------------
# The runner-up (core.workflows.runner_up), on the tiny recipe's search
# --------------------------------------------------------------------------


def _layer_arrays(checkpoint: Path) -> list[np.ndarray]:
    """The layer weights Keras Tuner saved for a trial's best epoch (its optimizer's state left out)."""
    import h5py

    arrays = []
    with h5py.File(checkpoint, "r") as handle:
        handle.visititems(lambda name, item: arrays.append(np.asarray(item))
                          if isinstance(item, h5py.Dataset) and name.startswith("layers/") else None)
    return arrays


def _holds(weights: list[np.ndarray], arrays: list[np.ndarray]) -> bool:
    return all(any(w.shape == a.shape and np.array_equal(w, a) for w in weights) for a in arrays)


def test_keep_trial_keeps_that_trials_saved_weights_and_leaves_the_search_as_it_was(cooked, tmp_path, capsys):
    import keras

    from core import cli

    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    source = store / "r-recommended"
    before = {path: path.read_bytes() for path in source.rglob("*") if path.is_file()}
    assert cli.main(["keep-trial", "r-recommended", "--rank", "3", "--artifacts", str(store)]) == cli.EXIT_USAGE
    assert "has no number 3" in capsys.readouterr().err and not (store / "r-recommended-trial3").exists()
    assert cli.main(["keep-trial", "r-recommended", "--artifacts", str(store)]) == 0
    printed = capsys.readouterr().out
    assert {path: path.read_bytes() for path in source.rglob("*") if path.is_file()} == before
    kept = artifacts.load_run(store, "r-recommended-trial2")
    assert kept.state == "completed" and f"test: AUC {kept.metrics['test']['auc']:.4f}" in printed
    ranked = runner_up.finished_trials(artifacts.load_run(store, "r-recommended"))
    assert kept.settings["kept_trial"]["trial_id"] == ranked[1]["trial_id"] != ranked[0]["trial_id"]
    assert f"trial {ranked[1]['trial_id']} of r-recommended, its number 2" in printed
    # Its model is the second trial's best epoch, joined to the frozen bottom; not the best trial's.
    weights = keras.saving.load_model(kept.folder / artifacts.MODEL, compile=False).get_weights()
    checkpoint = source / artifacts.TUNER_DIR / "trial_{}" / "checkpoint.weights.h5"
    assert _holds(weights, _layer_arrays(Path(str(checkpoint).format(ranked[1]["trial_id"]))))
    assert not _holds(weights, _layer_arrays(Path(str(checkpoint).format(ranked[0]["trial_id"]))))
    # The same trial as the recipe's runner-up: the same predictions.
    assert kept.predictions().equals(artifacts.load_run(store, "r-runner-up").predictions())


def test_what_has_no_runner_up_is_refused_with_what_to_do(cooked, tmp_path):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    cases = [
        ("r", 2, "has no search folder"),  # the ensemble
        ("r-runner-up", 2, "has no search folder"),  # a kept trial
        ("r-recommended", 3, "finished 2 trials, so it has no number 3"),
        ("r-recommended", 1, "ranked 2 or more"),
        ("nothing", 2, "no run named 'nothing'"),
    ]
    for source, rank, message in cases:
        with pytest.raises(RunError, match=message):
            runner_up.plan(store, source, "x", rank)
    (store / "r-recommended" / artifacts.METRICS).unlink()
    with pytest.raises(RunError, match="is not finished"):
        runner_up.plan(store, "r-recommended", "x")
    with pytest.raises(RunError, match="already exists and keeps no trial"):
        runner_up.keep_trial(store, "r-recommended", "r")
    assert not (store / "x").exists()

