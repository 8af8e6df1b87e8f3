"""Searches end to end through the CLI and the job runner: saved runs, resume, errors."""

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core import files, jobs
from core.evidence import stress
from core.inference import evaluation
from core.models import families
from core.runs import artifacts
from core.search import cost, presets
from core.search.cost import estimate_search_s
from core.search.settings import SearchSettings, SettingsError
from tests.helpers import make_dataset, run_cli, wait_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "chest_xray"
    return make_dataset(root, {"train": 24, "val": 1, "test": 13}, images_per_patient=2, size=40)


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    store = tmp_path_factory.mktemp("artifacts")
    result = run_cli(
        "tune", "--data", str(dataset), "--family", "custom_cnn", "--trials", "2", "--epochs", "2",
        "--image-size", "32", "--name", "cnn", "--artifacts", str(store),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return store, artifacts.load_run(store, "cnn"), result


def test_a_finished_run_has_every_file_and_consistent_metrics(finished_run):
    store, run, result = finished_run
    for name in ("settings.json", "data_summary.json", "splits.csv", "progress.json", "trials.json",
                 "best_hyperparameters.json", "metrics.json", "predictions.csv", "val_predictions.csv", "model.keras", "log.txt"):
        assert (run.folder / name).exists(), name
    assert run.state == "completed" and "test: AUC" in result.stdout
    trials = json.loads((run.folder / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    assert all(0 <= t["score"] <= 1 and "learning_rate" in t["hyperparameters"] for t in trials)
    # Each trial's history: 2 epochs each (no early stopping by default), its best epoch the one
    # Keras Tuner scored, and trials.json's facts agree with it.
    history = run.trial_history()
    assert history.groupby("trial_id").size().to_dict() == {t["trial_id"]: 2 for t in trials}
    for trial in trials:
        rows = history[history["trial_id"] == trial["trial_id"]]
        assert rows["val_auc"].max() == pytest.approx(trial["score"], abs=1e-6)
        assert rows.loc[rows["val_auc"].idxmax(), "epoch"] == trial["best_step"] + 1
        assert rows[["loss", "auc", "accuracy", "val_loss", "val_accuracy"]].notna().all().all()
        assert trial["epochs_run"] == 2 and trial["stopped_early"] is False
        assert trial["duration_s"] >= rows["epoch_s"].sum() > 0
    # The metrics are those of the saved per-image predictions, at the validation threshold.
    predictions = run.predictions()
    metrics = run.metrics
    assert metrics["test"]["auc"] == pytest.approx(roc_auc_score(predictions["y_true"], predictions["probability"]), abs=1e-4)
    predicted = (predictions["probability"] >= metrics["threshold"]).astype(int)
    assert metrics["test"]["accuracy"] == pytest.approx((predicted == predictions["y_true"]).mean())
    assert metrics["test"]["n"] == len(predictions) == 52  # the official test/ folder, all of it
    assert metrics["confusion_matrix"] == [[metrics["test"]["tn"], metrics["test"]["fp"]], [metrics["test"]["fn"], metrics["test"]["tp"]]]
    assert metrics["engine"] in ("tflite", "keras") and metrics["inference"]["ms_per_image"] > 0
    # The stress test runs the saved model on the validation images: as they are, it reproduces
    # the saved validation metrics; each change of the images has its row.
    stressed = {row["condition"]: row for row in metrics["stress"]}
    assert len(stressed) == 1 + len(stress.PERTURBATIONS)
    assert stressed["as is"]["specificity"] == pytest.approx(metrics["val"]["specificity"], abs=1e-9)
    assert stressed["as is"]["sensitivity"] == pytest.approx(metrics["val"]["sensitivity"], abs=1e-9)
    assert "stress test on validation: worst is" in (run.folder / "log.txt").read_text()
    # Those changed images chose the threshold with the images as they are: the saved threshold is
    # Youden's J over both, recomputed here from the two saved validation tables.
    val_stressed = stress.saved_scores(run.val_stress_predictions(), list(run.val_predictions()["path"]))
    assert list(val_stressed) == list(stress.PERTURBATIONS)
    assert metrics["threshold_rule"] == stress.ROBUST_THRESHOLD_RULE
    assert metrics["threshold"] == pytest.approx(
        stress.robust_threshold(run.val_predictions()["y_true"], run.val_predictions()["probability"], val_stressed), abs=1e-9
    )
    # The learnable synthetic opacity is found: far better than chance.
    assert metrics["test"]["auc"] > 0.8
    # The validation predictions are those the threshold was chosen on: the validation split's
    # images, whose saved metrics they reproduce, with no test patient among them.
    val = run.val_predictions()
    splits = pd.read_csv(run.folder / "splits.csv")
    assert set(val["path"]) == set(splits.loc[splits["split"] == "val", "path"])
    assert not set(val["patient"]) & set(predictions["patient"])
    assert metrics["val"]["auc"] == pytest.approx(roc_auc_score(val["y_true"], val["probability"]), abs=1e-4)


def test_splits_are_patient_disjoint_and_test_is_the_official_folder(finished_run):
    _, run, _ = finished_run
    splits = pd.read_csv(run.folder / "splits.csv")
    assert splits.groupby("patient")["split"].nunique().max() == 1
    assert (splits.loc[splits["split"] == "test", "folder_split"] == "test").all()
    summary = run.read("data_summary.json")
    assert summary["patients"]["test"] == 26 and summary["images"]["test"] == {"NORMAL": 26, "PNEUMONIA": 26}


def test_saved_model_reproduces_the_saved_predictions(finished_run):
    store, run, _ = finished_run
    saved = run.predictions().head(6)
    scored = evaluation.predict_files(run, list(saved["path"]), engine="keras")
    np.testing.assert_allclose(scored["probability"], saved["probability"], atol=1e-4)
    out = store / "scores.csv"
    result = run_cli("predict", "--run", "cnn", "--artifacts", str(store), "--csv", str(out), *saved["path"][:2])
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "probability", "label", "model_label", "error", "unusual", "unusual_reason", "ood_score"]
    np.testing.assert_allclose(table["probability"], saved["probability"][:2], atol=1e-4)


def test_runs_and_evaluate_commands(finished_run, dataset):
    store, run, _ = finished_run
    listing = run_cli("runs", "--artifacts", str(store))
    assert listing.returncode == 0 and "cnn" in listing.stdout and "completed" in listing.stdout
    evaluated = run_cli("evaluate", "--run", "cnn", "--data", str(dataset), "--artifacts", str(store))
    assert evaluated.returncode == 0, evaluated.stderr
    auc = float(next(line for line in evaluated.stdout.splitlines() if line.strip().startswith("auc:")).split(":")[1])
    assert auc == pytest.approx(run.metrics["test"]["auc"], abs=1e-3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tune", "--data", "/no/such/folder", "--family", "custom_cnn"], "does not exist"),
        (["tune", "--data", "{data}", "--family", "mobilenet", "--weights", "/no/weights.h5", "--image-size", "32"], "weights file"),
        (["tune", "--data", "{data}", "--family", "custom_cnn", "--name", "../escape"], "invalid run name"),
        (["tune", "--data", "{data}", "--family", "custom_cnn", "--name", "cnn"], "already exists"),
        (["predict", "--run", "nobody", "{data}"], "no run named 'nobody'"),
        (["resume", "cnn"], "already complete"),
        (["evaluate", "--run", "cnn", "--data", "{data}/test/NORMAL"], "no chest X-ray images found"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(finished_run, dataset, arguments, message, capsys):
    """In this process (`cli.main`, as `python -m core` calls it: a fresh interpreter per case would cost
    a TensorFlow import each; tests/test_console.py runs the real command line for its output)."""
    from core import cli

    store, _, _ = finished_run
    arguments = [a.replace("{data}", str(dataset)) for a in arguments] + ["--artifacts", str(store)]
    code = cli.main(arguments)  # an uncaught error would raise here: the user would see a traceback
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and pytest.importorskip("re").search(message, errors[0]), stderr[-500:]
    assert not (store / "escape").exists() and not (store.parent / "escape").exists()


def test_frozen_search_fills_the_feature_cache_once(dataset, tmp_path, capsys):
    """Two searches through `cli.main` in this process, as `python -m core tune` runs them (a fresh
    interpreter each would cost a TensorFlow import; tests/test_console.py runs the real command line)."""
    from core import cli

    common = ["--data", str(dataset), "--family", "mobilenet", "--weights", "none", "--image-size", "32",
              "--trials", "1", "--epochs", "1", "--artifacts", str(tmp_path)]
    assert cli.main(["tune", *common, "--name", "first"]) == 0, capsys.readouterr().err[-2000:]
    assert "backbone pass: 152 of 152 images" in capsys.readouterr().out
    assert cli.main(["tune", *common, "--name", "second", "--tuner", "bayesian"]) == 0, capsys.readouterr().err[-2000:]
    assert "backbone pass skipped: all 152 images are in the feature cache" in capsys.readouterr().out
    first_metrics = artifacts.load_run(tmp_path, "first").metrics
    assert first_metrics["feature_cache"] is True and first_metrics["timings"]["features_s"] >= 0
    # The saved model is the whole image classifier (backbone + head), not the head alone.
    model = evaluation.load_model(tmp_path / "first" / "model.keras")
    assert model.input_shape == (None, 32, 32, 3)


def _progress(store, name):
    return files.read_json(store / name / "progress.json", {})


def test_stop_then_resume_keeps_every_trial(dataset, tmp_path):
    settings = SearchSettings(
        data_dir=str(dataset), family="custom_cnn", trials=4, epochs=3, image_size=32, name="stoppable",
        artifacts_dir=str(tmp_path),
    )
    jobs.start_search(settings)
    wait_for(lambda: _progress(tmp_path, "stoppable").get("trials_done", 0) >= 1, 180, what="a first completed trial")
    message = jobs.stop_search(str(tmp_path), "stoppable")
    assert "asked to stop" in message
    wait_for(lambda: artifacts.load_run(tmp_path, "stoppable").state == "stopped", 120, what="the stopped state")
    kept = {t["trial_id"]: t for t in files.read_json(tmp_path / "stoppable" / "trials.json") if t["status"] == "COMPLETED"}
    assert 1 <= len(kept) < 4
    assert not (tmp_path / "stoppable" / "metrics.json").exists()

    jobs.resume_search(str(tmp_path), "stoppable")
    wait_for(lambda: artifacts.load_run(tmp_path, "stoppable").state in ("completed", "failed"), 240, what="completion")
    run = artifacts.load_run(tmp_path, "stoppable")
    assert run.state == "completed", run.progress.get("error")
    trials = files.read_json(run.folder / "trials.json")
    completed = {t["trial_id"]: t for t in trials if t["status"] == "COMPLETED"}
    assert len(completed) == 4
    for trial_id, trial in kept.items():  # trials done before the stop are kept, not redone
        assert completed[trial_id]["score"] == trial["score"]
        assert completed[trial_id]["hyperparameters"] == trial["hyperparameters"]
    assert run.metrics["trials_completed"] == 4


def test_a_killed_search_is_interrupted_and_resumes(dataset, tmp_path):
    settings = SearchSettings(
        data_dir=str(dataset), family="custom_cnn", trials=3, epochs=3, image_size=32, name="killed",
        artifacts_dir=str(tmp_path),
    )
    jobs.start_search(settings)
    wait_for(lambda: _progress(tmp_path, "killed").get("trials_done", 0) >= 1, 180, what="a first completed trial")
    os.kill(_progress(tmp_path, "killed")["pid"], signal.SIGKILL)
    wait_for(lambda: artifacts.load_run(tmp_path, "killed").state == "interrupted", 30, what="the interrupted state")
    assert len(artifacts.load_run(tmp_path, "killed").trial_history()) >= 3  # the kill leaves a readable history
    assert "stopped" not in artifacts.load_run(tmp_path, "killed").state
    result = run_cli("resume", "killed", "--artifacts", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run = artifacts.load_run(tmp_path, "killed")
    assert run.state == "completed" and run.metrics["trials_completed"] == 3
    history = run.trial_history()  # every trial once, 3 epochs each, a retried one not doubled
    assert history.groupby("trial_id")["epoch"].apply(list).to_dict() == {t["trial_id"]: [1, 2, 3] for t in run.trials()}


def test_one_name_is_one_search(dataset, tmp_path):
    settings = SearchSettings(data_dir=str(dataset), family="custom_cnn", trials=1, epochs=1, image_size=32,
                                     name="once", artifacts_dir=str(tmp_path))
    jobs.start_search(settings)
    with pytest.raises(artifacts.RunError, match="already exists"):
        jobs.start_search(settings)
    wait_for(lambda: artifacts.load_run(tmp_path, "once").state in ("completed", "failed"), 180, what="completion")
    with pytest.raises(artifacts.RunError, match="already complete"):
        jobs.resume_search(str(tmp_path), "once")


def test_progress_estimates_time_left():
    progress = {"phase": "searching", "trials_total": 4, "trials_done": 1, "epochs": 2, "epoch": 1, "elapsed_s": 30.0}
    assert cost.estimate_remaining_s(progress) == pytest.approx(90.0)
    assert cost.estimate_remaining_s({**progress, "phase": "decoding images"}) is None


# Searches measured on 2 cores over the 5,216 real training images (docs/measurements.md):
# (family, mode, input px, trials, epochs, images) -> wall seconds.
MEASURED_SEARCHES = {
    ("mobilenet", "frozen", 224, 10, 5, 5216): 36.0,
    ("custom_cnn", "frozen", 128, 3, 3, 5216): 215.0,
    ("mobilenet", "finetune", 224, 3, 2, 900, False): 71.0,  # --max-per-class 150 --no-activation-cache
    ("mobilenet", "finetune", 224, 1, 3, 5528, True, 1): 258.0,  # --preset quick, cold cache (docs/measurements.md)
    ("mobilenet", "finetune", 224, 4, 6, 5528, True, 3): 969.0,  # --preset recommended (docs/measurements.md)
}


@pytest.mark.parametrize(("search", "seconds"), MEASURED_SEARCHES.items())
def test_search_cost_estimate_is_within_3x_of_measured_runs(search, seconds):
    assert seconds / 3 < estimate_search_s(*search) < 3 * seconds


MEASURED_RECIPE = "cold"  # the name the measured recipe ran under: its runs are cold-recommended and cold-runner-up


def _measured_step_estimates() -> dict[str, float]:
    """The recipe's own estimate (`recipe.step_estimates`) of each measured step, on the measured data."""
    from core.workflows import recipe

    data = cost.MEASURED_DATA
    estimates = recipe.step_estimates(recipe.make_plan(MEASURED_RECIPE, "."), data["images"], data["train"], data["val"])
    return {run.name: estimates[run.name] for run in cost.MEASURED}


def test_the_estimate_is_calibrated_on_the_measured_recipe():
    """Measured (cost.MEASURED: progress.json elapsed_s of each step of a real recipe) against the one
    estimate the recipe box, the presets' titles and the form show: each within cost.TOLERANCE (15 %)."""
    estimates = _measured_step_estimates()
    table = {run.name: (run.elapsed_s, estimates[run.name]) for run in cost.MEASURED}
    for name, (measured, estimated) in table.items():
        assert abs(estimated - measured) <= cost.TOLERANCE * measured, (name, measured, estimated)
    whole_measured = sum(m for m, _ in table.values())
    assert whole_measured == cost.MEASURED_RECIPE_S
    assert abs(sum(e for _, e in table.values()) - whole_measured) <= cost.TOLERANCE * whole_measured
    # The phases the estimate is made of are named as the runs' own timings, and the training phase
    # (most of a long search) is within the tolerance too.
    data = cost.MEASURED_DATA
    for run in cost.MEASURED:
        phases = cost.estimate_phases("mobilenet", "finetune", 224, run.trials, run.epochs, data["images"], views=run.views,
                                      n_train=data["train"], n_val=data["val"], warm=run.warm, views_cached=run.views_cached)
        assert set(phases) <= set(run.timings)
        assert sum(phases.values()) == pytest.approx(estimates[run.name])
    recommended = next(run for run in cost.MEASURED if run.preset == "recommended")
    assert abs(cost.estimate_phases("mobilenet", "finetune", 224, 4, 6, data["images"], views=3, n_train=data["train"],
                                    n_val=data["val"], warm=True)["search_s"] / recommended.timings["search_s"] - 1) <= cost.TOLERANCE


def test_titles_text_and_estimate_quote_one_time():
    """The preset titles and the recipe's title round the same estimate the box shows; its text quotes the
    measured run; the old disagreeing figures are gone."""
    from core.workflows import recipe

    data = cost.MEASURED_DATA
    plan = recipe.make_plan("recipe", ".")
    assert recipe.title() == f"{recipe.LABEL} ({cost.about(recipe.estimate_s(plan, data['images'], data['train'], data['val']))} on 2 cores)"
    assert cost.took(cost.MEASURED_RECIPE_S) in recipe.measured_note()
    quick = presets.preset("quick")
    assert quick.title == f"Quick ({cost.about(estimate_search_s('mobilenet', 'finetune', 224, 1, 3, data['images'], views=1, n_train=data['train'], n_val=data['val']))} on 2 cores)"
    # The recipe starts with the recommended preset from an empty cache: the preset's own estimate.
    assert presets.preset("recommended").estimate_s() == pytest.approx(_measured_step_estimates()["cold-recommended"])
    assert presets.preset("recommended").estimate_s() > 10 * _measured_step_estimates()["cold-runner-up"]
    assert "about 1 h" not in presets.preset("recommended").title and "25 min" not in recipe.DESCRIPTION
    assert [cost.about(s) for s in (20, 245, 1534, 5400, 5700)] == [
        "under a minute", "about 4 min", "about 26 min", "about 1 h 30 min", "about 1 h 35 min"]
    assert cost.took(1527.5) == "25 min 28 s"


def test_the_manual_quotes_the_measured_and_estimated_times_of_the_code():
    """docs/measurements.md's table of the calibration is cost.MEASURED and the estimate, not a copy that drifts."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "measurements.md").read_text()
    section = text.split("### How long a search takes")[1].split("\n### ")[0]
    rows = {line.split(" | ")[0].lstrip("| ").split(" ")[0]: line for line in section.splitlines() if line.startswith(f"| {MEASURED_RECIPE}-")}
    for name, estimate in _measured_step_estimates().items():
        run = next(r for r in cost.MEASURED if r.name == name)
        assert f"| {cost.took(run.elapsed_s)} |" in rows[name] and f"| {cost.took(estimate)} |" in rows[name], name
    assert f"| {cost.took(cost.MEASURED_RECIPE_S)} |" in section and f"| {cost.took(sum(_measured_step_estimates().values()))} |" in section


def test_split_sizes_follow_the_folder():
    kept_test = {"total_images": 5528, "split_by": "folder_split", "images": {"train": {"a": 5216}, "test": {"a": 312}}}
    assert cost.split_sizes(kept_test) == (5528, round(5216 * 0.85), round(5216 * 0.15))
    split = {"total_images": 5528, "split_by": "split", "images": {"train": {"a": 4470}, "val": {"a": 746}, "test": {"a": 312}}}
    assert cost.split_sizes(split) == (5528, 4470, 746)
    assert cost.split_sizes({"total_images": 1000, "images": {"train": {"a": 1000}}}) == (1000, 700, 150)
    assert cost.split_sizes(split, 600) == (600, round(600 * 4470 / 5528), round(600 * 746 / 5528))


def test_search_cost_estimate_follows_the_cost_model():
    def cost(family: str = "mobilenet", mode: str = "frozen", size: int = 224, trials: int = 10) -> float:
        return estimate_search_s(family, mode, size, trials, 5, 5216)

    assert cost(trials=10) < 2 * cost(trials=1)  # frozen: the one backbone pass dominates
    assert cost(mode="finetune", trials=10) > 4 * cost(mode="finetune", trials=1)  # fine-tuning pays per trial
    uncached = estimate_search_s("mobilenet", "finetune", 224, 10, 5, 5216, activation_cache=False)
    # The cut-point cache saves the bottom's steps (3.1x an epoch's steps, docs/measurements.md); both ways
    # pay the same per-epoch bookkeeping (cost.FINETUNE_EPOCH_S) and the stress test.
    assert uncached > 1.8 * cost(mode="finetune", trials=10)
    views = estimate_search_s("mobilenet", "finetune", 224, 1, 5, 5216, views=3)
    assert views > cost(mode="finetune", trials=1)  # augmented views cost a bottom pass each
    assert cost("inception_v3", size=299) > 2 * cost("mobilenet", size=224)
    assert cost("custom_cnn", size=300) > 3 * cost("custom_cnn", size=150)  # pixels grow with the square


@pytest.mark.parametrize("family", families.FAMILIES)
def test_every_family_has_a_cost_estimate_that_grows_with_the_work(family):
    info = families.FAMILIES[family]
    for mode in families.MODES if info.transfer else ("scratch",):
        for cache in (True, False):
            one, many = (estimate_search_s(family, mode, info.default_image_size, t, 5, 5216, activation_cache=cache) for t in (1, 20))
            assert 0 < one < many < float("inf"), (mode, cache)
            assert estimate_search_s(family, mode, info.default_image_size, 1, 5, 500, activation_cache=cache) < one


def test_settings_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(SettingsError, match="hyperband needs at least 2 epochs"):
        SearchSettings(data_dir=str(tmp_path), tuner="hyperband", epochs=1).resolved()
    with pytest.raises(SettingsError, match="unknown family"):
        SearchSettings(data_dir=str(tmp_path), family="resnet").resolved()
    with pytest.raises(SettingsError, match="on cached augmented views only"):
        SearchSettings(data_dir=str(tmp_path), family="custom_cnn", augment="strong-border").resolved()
    resolved = SearchSettings(data_dir=str(tmp_path), family="inception_v3").resolved()
    assert resolved.image_size == 299 and resolved.name.startswith("inception_v3-frozen-")
