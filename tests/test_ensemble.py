"""core.inference.ensemble: finished runs combined into a run, checked on hand-made runs and on real fixture runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core import files
from core.data import tasks
from core.evidence import multiclass, statistics, stress
from core.inference import ensemble, evaluation, explanation, methods, run_kinds
from core.reporting import report
from core.runs import artifacts
from tests.conftest import OTHER_SPLIT_RUN
from tests.helpers import run_cli

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
NORMAL_RUN_METRIC_KEYS = {"threshold", "threshold_rule", "val", "test", "confusion_matrix", "labels", "roc", "engine"}


# ---------------------------------------------------------------------------- hand-made runs


def _rows(prefix: str, y: np.ndarray, probability: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/data/{prefix}/{i:03d}.jpeg" for i in range(len(y))],
            "patient": [f"{prefix}{i}" for i in range(len(y))],
            "kind": ["bacteria" if t else "normal" for t in y],
            "class_name": ["PNEUMONIA" if t else "NORMAL" for t in y],
            "y_true": y,
            "probability": np.round(probability, 6),
            "prediction": ["PNEUMONIA" if p >= 0.5 else "NORMAL" for p in probability],
            "correct": (probability >= 0.5) == y.astype(bool),
        }
    )


def fake_run(root: Path, name: str, val: pd.DataFrame, test: pd.DataFrame, state: str = "completed", family: str = "custom_cnn") -> Path:
    """A run folder as a finished search leaves it (the model file is a placeholder)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"name": name, "family": family, "image_size": 32, "seed": 42}))
    (folder / "progress.json").write_text(json.dumps({"state": state, "started_at": "2026-01-01T00:00:00+00:00"}))
    (folder / "metrics.json").write_text(
        json.dumps({"threshold": 0.5, "test": {"auc": 0.5}, "parameters": 10, "timings": {"search_s": 2.0},
                    "inference": {"ms_per_image": 1.0, "single_image_ms": 2.0}})
    )
    val.to_csv(folder / "val_predictions.csv", index=False)
    test.to_csv(folder / "predictions.csv", index=False)
    splits = pd.concat([val.assign(split="val"), test.assign(split="test")])[["path", "class_name", "kind", "patient", "split"]]
    splits.assign(folder_split=splits["split"].map({"val": "train", "test": "test"})).to_csv(folder / "splits.csv", index=False)
    (folder / "data_summary.json").write_text(json.dumps({"total_images": len(splits)}))
    (folder / "model.keras").write_bytes(b"placeholder")
    return folder


@pytest.fixture
def two_runs(tmp_path) -> Path:
    """Members a and b on the same 40 validation and 60 test images, with noisy, different scores."""
    rng = np.random.default_rng(0)
    y_val, y_test = np.repeat([0, 1], 20), np.repeat([0, 1], 30)
    for name, noise in (("a", 0.3), ("b", 0.5)):
        val = _rows("val", y_val, np.clip(0.5 * y_val + 0.25 + rng.normal(0, noise, y_val.size), 0, 1))
        test = _rows("test", y_test, np.clip(0.5 * y_test + 0.25 + rng.normal(0, noise, y_test.size), 0, 1))
        fake_run(tmp_path, name, val, test)
    return tmp_path


def test_simplex_grid_covers_the_simplex():
    grid = ensemble.simplex_grid(3, 10)
    assert grid.shape == (math.comb(12, 2), 3)
    assert np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert len({tuple(row) for row in grid.round(9)}) == len(grid)
    for n in range(2, 9):
        assert math.comb(ensemble.grid_steps(n) + n - 1, n - 1) <= ensemble.MAX_GRID_POINTS
    assert ensemble.grid_steps(2) == 10


def test_combine_is_the_weighted_mean():
    scores = np.array([[0.2, 0.6], [1.0, 0.0]])
    assert np.allclose(ensemble.combine(scores, [0.25, 0.75]), [0.5, 0.25])
    assert np.allclose(ensemble.combine(scores, [1, 1]), [0.4, 0.5])  # weights are normalised


def test_equal_weight_ensemble_averages_the_saved_predictions(two_runs):
    run = ensemble.build_ensemble(two_runs, ["a", "b"], "ab")
    a, b = artifacts.load_run(two_runs, "a"), artifacts.load_run(two_runs, "b")
    for mine, theirs in ((run.predictions(), (a.predictions(), b.predictions())), (run.val_predictions(), (a.val_predictions(), b.val_predictions()))):
        expected = (theirs[0].set_index("path")["probability"] + theirs[1].set_index("path")["probability"]) / 2
        assert np.allclose(mine.set_index("path")["probability"], expected.loc[mine["path"]], atol=1e-6)
    # Same threshold rule as every run: Youden's J on the ensemble's validation probabilities.
    val = run.val_predictions()
    assert run.metrics["threshold"] == pytest.approx(statistics.youden_threshold(val["y_true"], val["probability"]), abs=1e-6)
    assert NORMAL_RUN_METRIC_KEYS <= set(run.metrics)
    assert run.metrics["test"]["auc"] == pytest.approx(roc_auc_score(run.predictions()["y_true"], run.predictions()["probability"]))
    assert run.settings["family"] == "ensemble" and run.members == ["a", "b"] and run.settings["weights"] == [0.5, 0.5]
    assert run.state == "completed" and run.has_model  # the members' model files
    assert ensemble.weights_text(run) == "a 0.50, b 0.50"
    assert run.metrics["parameters"] == 20 and run.metrics["inference"]["ms_per_image"] == 2.0
    assert (run.folder / "splits.csv").exists() and run.read("data_summary.json") == {"total_images": 100}
    assert not (run.folder / artifacts.LOCK).exists()
    assert "ab" in artifacts.runs_table(artifacts.list_runs(two_runs))["run"].tolist()


def _save_stressed(root: Path, name: str, shift: float) -> dict[str, np.ndarray]:
    """Give run `name` stressed validation probabilities: its own, shifted up for healthy images."""
    val = artifacts.load_run(root, name).val_predictions()
    y, p = val["y_true"].to_numpy(), val["probability"].to_numpy()
    stressed = {c: np.round(np.clip(p + shift * (k % 6 + 1) * (y == 0), 0, 1), 6) for k, c in enumerate(stress.PERTURBATIONS)}
    files.write_csv(root / name / artifacts.VAL_STRESS_PREDICTIONS, stress.scores_table(val["path"].iloc[::-1], {c: v[::-1] for c, v in stressed.items()}))
    return stressed


def test_members_stress_tests_choose_the_ensemble_threshold(two_runs):
    # Only one member has its stressed validation probabilities: the ensemble's threshold is plain Youden's J.
    _save_stressed(two_runs, "a", 0.04)
    plain = ensemble.build_ensemble(two_runs, ["a", "b"], "plain", weighted=True)
    assert plain.metrics["threshold_rule"] == evaluation.THRESHOLD_RULE and "stress" not in plain.metrics
    # Both have them: the threshold is chosen on the members' stressed probabilities combined with
    # the ensemble's weights, pooled with the images as they are, and its stress test is saved.
    stressed = {"a": _save_stressed(two_runs, "a", 0.04), "b": _save_stressed(two_runs, "b", 0.08)}
    run = ensemble.build_ensemble(two_runs, ["a", "b"], "robust", weighted=True)
    w = np.asarray(run.settings["weights"])
    combined = {c: (w[0] * stressed["a"][c] + w[1] * stressed["b"][c]) / w.sum() for c in stress.PERTURBATIONS}
    val = run.val_predictions()
    assert run.metrics["threshold_rule"] == stress.ROBUST_THRESHOLD_RULE
    assert run.metrics["threshold"] == pytest.approx(
        stress.robust_threshold(val["y_true"], val["probability"], {c: np.round(v, 6) for c, v in combined.items()}), abs=1e-9
    )
    assert [row["condition"] for row in run.metrics["stress"]] == ["as is", *stress.PERTURBATIONS]
    assert run.metrics["threshold"] != pytest.approx(plain.metrics["threshold"])  # the drift moved it
    # Beside it, the unchanged validation images' own Youden point (plain Youden's J, as the plain ensemble's).
    assert run.metrics["clean_threshold"] == pytest.approx(plain.metrics["threshold"], abs=1e-9)
    at_clean = statistics.binary_metrics(val["y_true"], val["probability"], run.metrics["clean_threshold"])
    assert run.metrics["clean_val"] == pytest.approx({k: at_clean[k] for k in ("sensitivity", "specificity")})
    assert "clean_threshold" not in plain.metrics


def test_members_saved_with_different_stress_conditions_pool_the_ones_they_share(two_runs):
    # "a" was saved before the acquisition conditions joined the stress test: only its first six columns.
    stressed = {"a": _save_stressed(two_runs, "a", 0.04), "b": _save_stressed(two_runs, "b", 0.08)}
    old = list(stress.PERTURBATIONS)[:6]
    table = files.read_csv(two_runs / "a" / artifacts.VAL_STRESS_PREDICTIONS)
    files.write_csv(two_runs / "a" / artifacts.VAL_STRESS_PREDICTIONS, table[["path", *old]])
    run = ensemble.build_ensemble(two_runs, ["a", "b"], "mixed")
    assert [row["condition"] for row in run.metrics["stress"]] == ["as is", *old]
    combined = {c: np.round((stressed["a"][c] + stressed["b"][c]) / 2, 6) for c in old}
    val = run.val_predictions()
    assert run.metrics["threshold"] == pytest.approx(stress.robust_threshold(val["y_true"], val["probability"], combined), abs=1e-9)


def _class_rows(prefix: str, y_class: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """A three-class run's predictions table: its binary view (pneumonia = P(bacterial) + P(viral)) and a column per class."""
    task = tasks.THREE_CLASS
    binary = _rows(prefix, (y_class > 0).astype(int), 1.0 - p[:, 0])
    binary["kind"] = [task.classes[c] for c in y_class]
    return pd.concat([binary, multiclass.prediction_columns(task, y_class, p)], axis=1)


def _three_class_run(root: Path, name: str, rng: np.random.Generator, y_val: np.ndarray, y_test: np.ndarray) -> Path:
    def noisy(y):
        logits = 2.0 * np.eye(3)[y] + rng.normal(0, 1.2, (y.size, 3))
        return np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 6)

    folder = fake_run(root, name, _class_rows("val", y_val, noisy(y_val)), _class_rows("test", y_test, noisy(y_test)))
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(json.dumps({**settings, "task": "three_class"}))
    return folder


def test_three_class_members_make_a_three_class_ensemble(tmp_path):
    rng = np.random.default_rng(4)
    y_val, y_test = np.repeat([0, 1, 2], 15), np.repeat([0, 1, 2], 20)
    for name in ("t1", "t2"):
        _three_class_run(tmp_path, name, rng, y_val, y_test)
    run = ensemble.build_ensemble(tmp_path, ["t1", "t2"], "t12", weighted=True)
    assert run.task == "three_class" and run.settings["task"] == "three_class"
    w = np.asarray(run.settings["weights"]) / sum(run.settings["weights"])
    members = [multiclass.from_predictions(artifacts.load_run(tmp_path, n).predictions(), tasks.THREE_CLASS)[1] for n in ("t1", "t2")]
    expected = w[0] * members[0] + w[1] * members[1]
    y, p, _ = multiclass.from_predictions(run.predictions(), tasks.THREE_CLASS)
    assert np.allclose(p, expected, atol=1e-6) and y.tolist() == y_test.tolist()
    # The binary view is P(bacterial) + P(viral); the averaged probabilities decide the class in two
    # steps: normal below the ensemble's threshold, else the likelier kind.
    block = run.metrics["multiclass"]["test"]
    assert np.allclose(run.predictions()["probability"], 1.0 - expected[:, 0], atol=2e-6)
    called = run.predictions()["probability"].to_numpy() >= run.threshold
    assert block["accuracy"] == pytest.approx(float(np.mean(np.where(called, 1 + expected[:, 1:].argmax(axis=1), 0) == y_test)))
    val = run.val_predictions()
    assert run.metrics["threshold"] == pytest.approx(statistics.youden_threshold(val["y_true"], val["probability"]), abs=1e-9)
    # With a two-class member (on the same images) the ensemble answers their shared binary question only.
    fake_run(tmp_path, "p1", _rows("val", (y_val > 0).astype(int), rng.uniform(size=y_val.size)),
             _rows("test", (y_test > 0).astype(int), rng.uniform(size=y_test.size)))
    mixed = ensemble.build_ensemble(tmp_path, ["t1", "p1"], "mixed")
    assert mixed.task == "pneumonia" and "multiclass" not in mixed.metrics
    assert "probability_virus" not in mixed.predictions().columns


def test_weights_are_chosen_on_validation_only(tmp_path):
    """Validation prefers member a, test would prefer member b: the ensemble follows validation."""
    y_val, y_test = np.repeat([0, 1], 20), np.repeat([0, 1], 30)
    rng = np.random.default_rng(1)

    def separating(y):  # ranks the classes right
        return 0.6 * y + rng.uniform(0, 0.4, y.size)

    def backwards(y):  # ranks them wrong, with noise of its own
        return 1 - separating(y)

    val_a, val_b, test_a, test_b = separating(y_val), backwards(y_val), backwards(y_test), separating(y_test)
    fake_run(tmp_path, "a", _rows("val", y_val, val_a), _rows("test", y_test, test_a))
    fake_run(tmp_path, "b", _rows("val", y_val, val_b), _rows("test", y_test, test_b))
    run = ensemble.build_ensemble(tmp_path, ["a", "b"], "ab-weighted", weighted=True)
    weights = run.settings["weights"]
    on_val, _ = ensemble.choose_weights(y_val, np.column_stack([val_a, val_b]).round(6))
    on_test, _ = ensemble.choose_weights(y_test, np.column_stack([test_a, test_b]).round(6))
    assert weights == pytest.approx(on_val.tolist()) and weights[0] > weights[1]
    assert on_test[1] > on_test[0]  # had test labels chosen, b would have led
    assert "validation AUC" in run.settings["weight_rule"] and run.settings["weighted"] is True
    assert run.metrics["ensemble"]["weights"] == weights
    assert run.metrics["val"]["auc"] == pytest.approx(1.0)
    assert run.metrics["test"]["auc"] < 0.5  # the honest, bad, test figure


def test_weight_ties_go_to_equal_weights():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.1, 0.2], [0.2, 0.1], [0.8, 0.9], [0.9, 0.8]])  # every mix separates perfectly
    weights, auc = ensemble.choose_weights(y, scores)
    assert auc == 1.0 and np.allclose(weights, [0.5, 0.5])


def test_refuses_unfinished_runs_and_ensembles_as_members(two_runs):
    val, test = artifacts.load_run(two_runs, "a").val_predictions(), artifacts.load_run(two_runs, "a").predictions()
    fake_run(two_runs, "half", val, test, state="failed")
    with pytest.raises(artifacts.RunError, match=r"half is not finished \(state: failed\)"):
        ensemble.build_ensemble(two_runs, ["a", "half"], "x")
    ensemble.build_ensemble(two_runs, ["a", "b"], "ab")
    with pytest.raises(artifacts.RunError, match=r"ab is itself an ensemble \(of a, b\): pick its members instead"):
        ensemble.build_ensemble(two_runs, ["ab", "a"], "y")
    with pytest.raises(artifacts.RunError, match="already exists"):
        ensemble.build_ensemble(two_runs, ["a", "b"], "ab")
    with pytest.raises(artifacts.RunError, match="at least two"):
        ensemble.build_ensemble(two_runs, ["a"], "z")
    with pytest.raises(artifacts.RunError, match="a named twice"):
        ensemble.build_ensemble(two_runs, ["a", "b", "a"], "z")
    assert not (two_runs / "x" / "settings.json").exists() and not (two_runs / "z").exists()


@pytest.mark.parametrize("split", ["val", "test"])
def test_refuses_members_scored_on_different_images(two_runs, split):
    a = artifacts.load_run(two_runs, "a")
    val, test = a.val_predictions(), a.predictions()
    if split == "val":
        val = val.iloc[1:]
    else:
        test = test.assign(path=test["path"].str.replace("000.jpeg", "999.jpeg"))
    fake_run(two_runs, "c", val, test)
    what = "validated" if split == "val" else "tested"
    with pytest.raises(artifacts.RunError, match=rf"a and c were {what} on different images"):
        ensemble.build_ensemble(two_runs, ["a", "c"], "ac")


def test_combine_heatmaps_resizes_and_weights():
    small = np.zeros((2, 2), np.float32)
    small[0, 0] = 1.0
    large = np.ones((4, 4), np.float32)
    combined = explanation.combine_heatmaps([small, large], [0.5, 0.5])
    assert combined.shape == (4, 4) and combined.max() == pytest.approx(1.0) and combined.min() >= 0
    assert combined[0, 0] > combined[3, 3]  # the first member's hot corner shows
    assert not explanation.combine_heatmaps([np.zeros((3, 3))], [1.0]).any()


# ---------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def real_ensemble(runs_dir, tmp_path_factory) -> Path:
    """cnn-small (32 px) and cnn-wide (40 px), same patient split, and their equal-weight ensemble."""
    folder = tmp_path_factory.mktemp("ensemble") / "artifacts"
    for name in ("cnn-small", "cnn-wide"):
        shutil.copytree(runs_dir / name, folder / name, ignore=shutil.ignore_patterns("search.lock"))
    result = run_cli("ensemble", "cnn-small", "cnn-wide", "--name", "duo", "--artifacts", str(folder))
    assert result.returncode == 0, result.stderr
    assert "ensemble duo: weights cnn-small 0.50, cnn-wide 0.50" in result.stdout and "test: AUC" in result.stdout
    return folder


def test_real_ensemble_predicts_with_each_member_at_its_own_size(real_ensemble, data_dir):
    duo = artifacts.load_run(real_ensemble, "duo")
    members = [artifacts.load_run(real_ensemble, n) for n in ("cnn-small", "cnn-wide")]
    assert [m.settings["image_size"] for m in members] == duo.settings["member_image_sizes"] == [32, 40]
    saved = duo.predictions()
    paths = list(saved["path"][:3]) + [str(real_ensemble / "duo" / "metrics.json")]  # and a file that is no image
    table = run_kinds.predict_files(duo, paths, engine="keras")
    parts = [evaluation.predict_files(m, paths, engine="keras") for m in members]
    expected = (parts[0]["probability"] + parts[1]["probability"]) / 2
    assert np.allclose(table["probability"][:3], expected[:3], atol=2e-6)
    # The same images scored during the searches give the same ensemble probability as the saved one.
    assert np.allclose(table["probability"][:3], saved["probability"][:3], atol=1e-4)
    threshold = duo.metrics["threshold"]
    assert table["label"][:3].tolist() == ["PNEUMONIA" if p >= threshold else "NORMAL" for p in table["probability"][:3]]
    assert table["error"].iat[3].startswith("cannot read image") and np.isnan(table["probability"].iat[3])

    result = run_cli("predict", "--run", "duo", "--artifacts", str(real_ensemble), "--engine", "keras", paths[0])
    assert result.returncode == 0, result.stderr
    assert f"{table['probability'].iat[0]:.4f}" in result.stdout


def test_real_ensemble_grad_cam_is_the_members_weighted_mean(real_ensemble):
    duo = artifacts.load_run(real_ensemble, "duo")
    image = duo.predictions()["path"].iat[0]
    heatmap, original = run_kinds.heatmap(duo, image)
    members = [methods.heatmap_for_run(artifacts.load_run(real_ensemble, n), image)[0] for n in duo.members]
    assert np.allclose(heatmap, explanation.combine_heatmaps(members, [0.5, 0.5]))
    assert heatmap.shape == tuple(max(m.shape[i] for m in members) for i in (0, 1)) and original.mode == "L"


def test_real_ensemble_in_the_report(real_ensemble):
    runs = [artifacts.load_run(real_ensemble, n) for n in ("duo", "cnn-small")]
    html = report.build_report(runs, n_resamples=100)
    assert "id='run-duo'" in html and "<td>family</td><td>ensemble</td>" in html
    assert "<td>members</td><td>cnn-small, cnn-wide</td>" in html  # the settings as a readable list
    assert "duo</b> vs <b>cnn-small</b>: not tested" not in html  # same test images: paired


def test_real_ensemble_cli_refuses_another_split(other_split_dir):
    result = run_cli("ensemble", "cnn-small", OTHER_SPLIT_RUN, "--name", "mixed", "--artifacts", str(other_split_dir))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # TensorFlow may log too
    assert len(errors) == 1 and errors[0].startswith("error: cannot combine: cnn-small and cnn-other-split were ")
    assert "different images" in errors[0] and "Traceback" not in result.stderr
    assert not (other_split_dir / "mixed").exists()


def test_cli_refuses_to_resume_an_ensemble(real_ensemble):
    result = run_cli("resume", "duo", "--artifacts", str(real_ensemble))
    assert result.returncode == 2 and "is an ensemble" in result.stderr


def test_real_weighted_ensemble_takes_its_weights_from_validation(real_ensemble):
    result = run_cli("ensemble", "cnn-wide", "cnn-small", "--name", "duo-weighted", "--weighted", "--artifacts", str(real_ensemble))
    assert result.returncode == 0, result.stderr
    run = artifacts.load_run(real_ensemble, "duo-weighted")
    members = [artifacts.load_run(real_ensemble, n) for n in ("cnn-wide", "cnn-small")]
    paths = members[0].val_predictions()["path"]
    val = np.column_stack([m.val_predictions().set_index("path").loc[paths, "probability"] for m in members])
    y_val = members[0].val_predictions()["y_true"].to_numpy()
    expected, _ = ensemble.choose_weights(y_val, val)
    assert run.settings["weights"] == pytest.approx(expected.tolist()) and run.members == ["cnn-wide", "cnn-small"]
    assert f"weights cnn-wide {expected[0]:.2f}, cnn-small {expected[1]:.2f}" in result.stdout


def test_an_ensemble_whose_member_is_gone_or_misnamed_cannot_predict(two_runs):
    ensemble.build_ensemble(two_runs, ["a", "b"], "ab")
    shutil.rmtree(two_runs / "b")
    run = artifacts.load_run(two_runs, "ab")
    assert not run.has_model
    with pytest.raises(artifacts.RunError, match="ensemble 'ab' cannot use its members: no run named 'b'"):
        run_kinds.predict_files(run, ["x.jpeg"])
    settings = json.loads((two_runs / "ab" / "settings.json").read_text())
    (two_runs / "ab" / "settings.json").write_text(json.dumps({**settings, "members": ["a", "../outside"]}))
    run = artifacts.load_run(two_runs, "ab")
    assert not run.has_model  # a member name that is not a plain run name is never followed
    with pytest.raises(artifacts.RunError, match="invalid run name '../outside'"):
        run_kinds.predict_files(run, ["x.jpeg"])


def test_a_member_whose_training_collapsed_is_left_out_of_a_recipes_ensemble(tmp_path):
    """A repeat that diverged (validation AUC 0.50 beside members at 0.99) would dilute the recipe's
    ensemble by a third: the recipe leaves it out, saying why, while two members remain."""
    from core.workflows import recipe

    rng = np.random.default_rng(1)
    y_val, y_test = np.repeat([0, 1], 20), np.repeat([0, 1], 30)
    for name, auc in (("q", 0.99), ("r", 0.985), ("dead", 0.50)):
        folder = fake_run(tmp_path, name, _rows("val", y_val, rng.uniform(size=y_val.size)), _rows("test", y_test, rng.uniform(size=y_test.size)))
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "val": {"auc": auc}}))
    runs = [artifacts.load_run(tmp_path, n) for n in ("q", "r", "dead")]
    collapsed = ensemble.collapsed_members(runs)
    assert list(collapsed) == ["dead"] and "validation AUC is 0.50, at chance, where q's is 0.99" in collapsed["dead"]
    logged: list[str] = []
    assert recipe.working_members(tmp_path, ["q", "r", "dead"], logged.append) == ["q", "r"]
    assert logged == [f"left out of the ensemble: {collapsed['dead']}"]
    assert recipe.working_members(tmp_path, ["q", "dead"], logged.append) == ["q", "dead"]  # an ensemble needs two
    assert logged[-1] == f"kept in the ensemble, which needs two members: {collapsed['dead']}; compare the ensemble with q"
    # In a three-class recipe each question needs a member: the only one answering its question stays.
    settings = json.loads((tmp_path / "dead" / "settings.json").read_text())
    (tmp_path / "dead" / "settings.json").write_text(json.dumps({**settings, "task": "bacterial_vs_viral"}))
    assert recipe.working_members(tmp_path, ["q", "r", "dead"], logged.append) == ["q", "r", "dead"]
    assert logged[-1] == f"kept in the ensemble, where no other member answers its question (bacterial_vs_viral): {collapsed['dead']}"
    # When no member works (a tiny or hard data set) nothing is compared, nothing is left out.
    weak = [artifacts.Run(n, tmp_path / n, {}, {"val": {"auc": a}}, None) for n, a in (("x", 0.70), ("y", 0.52))]
    assert ensemble.collapsed_members(weak) == {}
