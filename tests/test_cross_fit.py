"""The out-of-fold threshold (core.workflows.cross_fit): patient-grouped folds, the threshold chosen
on the pooled out-of-fold scores by the run's own rule, an ensemble's members combined with its
weights, a stopped cross-fit going on at its next fold, and its refusals. The end-to-end run uses
the tiny recipe of tests/conftest.py (`cooked`)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from core import cli, files
from core.data import folders, splitting
from core.evidence import stress
from core.inference import ensemble
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.workflows import cross_fit, site


def _patients(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pneumonia = p % 3 != 0  # a third healthy, as in train/
        for i in range(int(rng.integers(1, 5))):  # 1-4 images per patient
            rows.append({"path": f"p{p}-{i}.jpeg", "patient": f"{'virus' if pneumonia else 'normal'}{p}",
                         "class_name": "PNEUMONIA" if pneumonia else "NORMAL"})
    return pd.DataFrame(rows)


def test_folds_keep_each_patient_whole_and_the_classes_balanced():
    table = _patients(90)
    fold = splitting.patient_folds(table, 5, seed=42)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    assert (table.assign(fold=fold).groupby("patient")["fold"].nunique() == 1).all()  # no patient in two folds
    share = table.assign(fold=fold).groupby("fold")["class_name"].apply(lambda c: (c == "NORMAL").mean())
    overall = (table["class_name"] == "NORMAL").mean()
    assert (share - overall).abs().max() < 0.12  # stratified: every fold near the pool's share of healthy images
    assert np.array_equal(fold, splitting.patient_folds(table, 5, seed=42))  # the seed fixes them
    assert not np.array_equal(fold, splitting.patient_folds(table, 5, seed=43))
    with pytest.raises(folders.DataError, match="only 3 patients for 5 folds"):
        splitting.patient_folds(_patients(3), 5, seed=42)


def test_the_threshold_is_the_run_rule_on_the_pooled_out_of_fold_scores():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    scores = pd.DataFrame({"path": [f"{i}" for i in range(120)], "patient": [f"p{i // 2}" for i in range(120)],
                           "fold": np.arange(120) % 3, "y_true": y, "probability": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 120), 0, 1)})
    assert cross_fit.choose(scores) == pytest.approx(float(stress.clean_point(y, scores["probability"].to_numpy())["threshold"]))
    shifted = np.clip(scores["probability"] + 0.2, 0, 1)  # one stress change: the healthy images drift up
    with_stress = scores.assign(jpeg=shifted)
    expected = stress.robust_threshold(y, scores["probability"].to_numpy(), {"jpeg": shifted.to_numpy()})
    assert cross_fit.choose(with_stress) == pytest.approx(expected)
    assert cross_fit.choose(with_stress) > cross_fit.choose(scores)  # the stressed copies pull it up


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cross_fit_of_the_recipe_ensemble_saves_an_operating_point_and_goes_on_after_a_stop(cooked, tmp_path, capsys):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    for member in ("r-recommended", "r-runner-up"):  # Keras scores the fold models: no TF Lite conversion per fold
        settings = files.read_json(store / member / artifacts.SETTINGS)
        files.write_json(store / member / artifacts.SETTINGS, {**settings, "engine": "keras"})
    run = artifacts.load_run(store, "r")
    kept = {p: _digest(p) for name in ("r", "r-recommended", "r-runner-up") for p in (store / name).glob("*.*") if p.is_file()}

    assert cli.main(["cross-fit", "r", "--folds", "2", "--artifacts", str(store)]) == 0
    assert "threshold" in capsys.readouterr().out
    point = run.operating_point("out-of-fold")
    assert point["kind"] == cross_fit.KIND and point["folds"] == 2 and set(point["epochs"]) == {"r-recommended", "r-runner-up"}
    # The folds: every training and validation image of the run once, each patient in one fold.
    split = files.read_csv(run.folder / artifacts.SPLITS)
    pool = split[split["split"].isin(["train", "val"])]
    folds = files.read_csv(run.folder / cross_fit.OOF_DIR / cross_fit.FOLDS_FILE)
    assert sorted(folds["path"]) == sorted(pool["path"]) and (folds.groupby("patient")["fold"].nunique() == 1).all()
    # Each member scored each fold's images only, as they are and under every stress change.
    members = {}
    for member in ("r-recommended", "r-runner-up"):
        parts = [files.read_csv(cross_fit.fold_path(run.folder / cross_fit.OOF_DIR, member, k)) for k in (0, 1)]
        for k, part in enumerate(parts):
            assert set(part["path"]) == set(folds.loc[folds["fold"] == k, "path"])
            assert set(stress.PERTURBATIONS) <= set(part.columns)
        members[member] = pd.concat(parts).set_index("path").sort_index()
    # The ensemble's out-of-fold probability is its members' weighted mean; the point is the run's rule on it.
    oof = files.read_csv(run.folder / cross_fit.OOF_DIR / "out_of_fold_predictions.csv").set_index("path").sort_index()
    mean = ensemble.combine(np.column_stack([members[m]["probability"] for m in members]), ensemble.weights_of(run))
    np.testing.assert_allclose(oof["probability"].to_numpy(), mean, atol=1e-6)
    stressed = {name: oof[name].to_numpy() for name in stress.PERTURBATIONS}
    assert point["threshold"] == pytest.approx(stress.robust_threshold(oof["y_true"].to_numpy(), oof["probability"].to_numpy(), stressed))
    assert point["n_images"] == len(pool) and point["run_threshold"] == run.threshold
    # Nothing the runs had saved changed.
    assert {p: _digest(p) for p in kept} == kept
    # Predict decides at it.
    table = site.apply_point(pd.DataFrame({"probability": [point["threshold"] - 1e-6, point["threshold"]]}), run, point)
    assert table["label"].tolist() == ["NORMAL", "PNEUMONIA"] and (table["operating_point"] == "out-of-fold").all()

    # As if stopped during the runner-up's second fold: the same command trains that fold only.
    lost = cross_fit.fold_path(run.folder / cross_fit.OOF_DIR, "r-runner-up", 1)
    lost.unlink()
    saved = {p: p.stat().st_mtime_ns for p in (run.folder / cross_fit.OOF_DIR).glob("*/fold-*.csv")}
    with pytest.raises(RunError, match="already has an operating point named 'out-of-fold'"):
        cross_fit.cross_fit(store, "r", 2, log=lambda _: None)
    again = cross_fit.cross_fit(store, "r", 2, replace=True, log=lambda _: None)
    assert lost.exists() and {p: p.stat().st_mtime_ns for p in saved} == saved
    assert again["n_images"] == point["n_images"]
    # Folds of another size are not mixed with the saved ones.
    with pytest.raises(RunError, match="holds folds made with other settings .* or cross-fit with 2 folds"):
        cross_fit.cross_fit(store, "r", 3, point_name="three", log=lambda _: None)


@pytest.mark.parametrize(("folds", "message"), [(1, "folds must be a whole number from 2 to 10"), (11, "from 2 to 10")])
def test_bad_fold_counts_are_refused(cooked, folds, message):
    with pytest.raises(RunError, match=message):
        cross_fit.cross_fit(cooked, "r", folds, log=lambda _: None)


def test_runs_that_cannot_be_cross_fitted_say_why(cooked, tmp_path):
    store = tmp_path / "artifacts"
    shutil.copytree(cooked / "r-recommended", store / "r-recommended")
    run = artifacts.load_run(store, "r-recommended")
    files.write_json(run.folder / artifacts.BEST_HYPERPARAMETERS, {})
    with pytest.raises(RunError, match="no saved best hyperparameters"):
        cross_fit.cross_fit(store, "r-recommended", 2, log=lambda _: None)
    (run.folder / artifacts.METRICS).unlink()
    with pytest.raises(RunError, match="is not finished"):
        cross_fit.cross_fit(store, "r-recommended", 2, log=lambda _: None)
    assert not (run.folder / cross_fit.OOF_DIR).exists()  # refused before anything is written


def test_a_fold_model_at_chance_counts_as_collapsed_only_where_the_run_itself_worked():
    assert ensemble.fell_to_chance(0.50, 0.99)  # the seed-44 runner-up's first fold: trained again with another seed
    assert not ensemble.fell_to_chance(0.93, 0.99)
    assert not ensemble.fell_to_chance(0.50, 0.52)  # a run at chance itself (the tiny test runs): nothing to retry for
    assert not ensemble.fell_to_chance(0.50, None)
