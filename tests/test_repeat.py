"""core.workflows.repeat: a finished run's best hyperparameters trained again with other seeds, as one new run.

The spread table is checked against numbers worked out by hand; bad sources and seed counts are
refused with a message before anything is written; and one tiny real repeat (36 images at 32 px,
one epoch, two seeds) goes through the CLI, is saved as an ordinary run and shows its spread on
Compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import files
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.workflows import repeat
from tests.helpers import make_dataset, run_cli
from tests.test_app import charts, frame_with, no_exception, page

# ---------------------------------------------------------------------------- the spread over seeds


def test_summary_of_synthetic_seeds_matches_hand_computed_numbers():
    per_seed = pd.DataFrame(
        {
            "seed": [43, 44, 45],
            "test_auc": [0.90, 0.94, 0.95],
            "test_sensitivity": [0.80, 1.00, 0.90],
            "test_specificity": [0.70, 0.70, 0.70],
        }
    )
    table = repeat.summarize_seeds(per_seed).set_index("metric")
    auc = table.loc["test AUC"]
    # mean (0.90 + 0.94 + 0.95) / 3 = 0.93; deviations -0.03, 0.01, 0.02; SD sqrt(0.0014 / 2) = 0.026458
    assert auc["seeds"] == 3
    assert auc["mean"] == pytest.approx(0.93)
    assert auc["SD"] == pytest.approx(math.sqrt(0.0014 / 2))
    assert (auc["min"], auc["max"]) == pytest.approx((0.90, 0.95))
    assert auc["mean ± SD"] == "0.930 ± 0.026" and auc["range"] == "0.900–0.950"
    sensitivity = table.loc["test sensitivity"]  # mean 0.9, deviations -0.1, 0.1, 0: SD sqrt(0.02 / 2) = 0.1
    assert (sensitivity["mean"], sensitivity["SD"]) == pytest.approx((0.9, 0.1))
    specificity = table.loc["test specificity"]  # every seed the same: no spread
    assert (specificity["SD"], specificity["min"], specificity["max"]) == pytest.approx((0.0, 0.7, 0.7))


def test_summary_of_one_seed_has_no_sd_and_a_missing_value_is_left_out():
    one = repeat.summarize_seeds(pd.DataFrame({"seed": [43], "test_auc": [0.9]}), {"test_auc": "test AUC"}).iloc[0]
    assert one["seeds"] == 1 and one["mean"] == pytest.approx(0.9) and math.isnan(one["SD"])
    assert one["mean ± SD"] == "0.900 (one seed)"
    gap = repeat.summarize_seeds(pd.DataFrame({"seed": [1, 2, 3], "test_auc": [0.8, None, 0.6]}), {"test_auc": "AUC"}).iloc[0]
    assert gap["seeds"] == 2 and gap["mean"] == pytest.approx(0.7) and gap["SD"] == pytest.approx(math.sqrt(0.02))


def test_seeds_are_the_ones_after_the_sources():
    assert repeat.other_seeds(42, 3) == [43, 44, 45]


# ---------------------------------------------------------------------------- refusals


def _fake_run(folder: Path, name: str, settings: dict, progress: dict, metrics: dict | None = None, best: dict | None = None) -> None:
    run = folder / name
    run.mkdir(parents=True)
    files.write_json(run / artifacts.SETTINGS, {"name": name, "family": "custom_cnn", "seed": 42, **settings})
    files.write_json(run / artifacts.PROGRESS, progress)
    if metrics is not None:
        files.write_json(run / artifacts.METRICS, metrics)
    if best is not None:
        files.write_json(run / artifacts.BEST_HYPERPARAMETERS, best)


@pytest.fixture
def refusals(tmp_path) -> Path:
    done = {"state": "completed"}
    _fake_run(tmp_path, "half-done", {}, {"state": "stopped"}, best={"filters": 16})
    _fake_run(tmp_path, "duo", {"family": "ensemble", "members": ["a", "b"]}, done, {"test": {"auc": 0.9}})
    _fake_run(tmp_path, "again", {"repeat": {"source": "orig", "seeds": [43]}}, done, {"test": {"auc": 0.9}}, {"filters": 16})
    _fake_run(tmp_path, "no-hp", {}, done, {"test": {"auc": 0.9}})
    return tmp_path


@pytest.mark.parametrize(
    ("source", "seeds", "message"),
    [
        ("nowhere", 2, "no run named 'nowhere'"),
        ("half-done", 2, "half-done is not finished (state: stopped)"),
        ("duo", 2, "duo is an ensemble: it has no hyperparameters of its own; repeat one of its members (a, b)"),
        ("again", 2, "again is itself a repeat of orig: repeat that run instead"),
        ("no-hp", 2, "no-hp has no saved best hyperparameters"),
        ("half-done", 0, "seeds must be a whole number from 1 to 20, got 0"),
        ("half-done", -3, "seeds must be a whole number from 1 to 20, got -3"),
        ("half-done", 2.5, "seeds must be a whole number from 1 to 20, got 2.5"),
    ],
)
def test_bad_sources_and_seed_counts_are_refused_before_anything_is_written(refusals, source, seeds, message):
    before = sorted(p.name for p in refusals.iterdir())
    with pytest.raises(RunError) as caught:
        repeat.plan_repeat(refusals, source, seeds, "new-run")
    assert message in str(caught.value)
    assert sorted(p.name for p in refusals.iterdir()) == before


def test_cli_refusals_are_one_error_line(refusals):
    for args, message in (
        (["nowhere", "--seeds", "2"], "no run named 'nowhere'"),
        (["duo", "--seeds", "2"], "duo is an ensemble"),
        (["half-done", "--seeds", "0"], "seeds must be a whole number from 1 to 20"),
    ):
        done = run_cli("repeat", *args, "--artifacts", str(refusals))
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr.strip().splitlines()[-1] and done.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- a real repeat, end to end


@pytest.fixture(scope="module")
def repeated(tmp_path_factory) -> Path:
    """A tiny search (2 trials, 1 epoch, 32 px) and its repeat with 2 other seeds, both made with the CLI."""
    root = tmp_path_factory.mktemp("repeat")
    data = make_dataset(root / "data", {"train": 6, "test": 3})
    store = root / "artifacts"
    searched = run_cli(
        "tune", "--data", str(data), "--family", "custom_cnn", "--trials", "2", "--epochs", "1", "--image-size", "32",
        "--no-stress-test", "--name", "source", "--artifacts", str(store),
    )
    assert searched.returncode == 0, searched.stderr[-3000:]
    done = run_cli("repeat", "source", "--seeds", "2", "--name", "source-again", "--artifacts", str(store))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "over seeds 43, 44" in done.stdout and "test AUC" in done.stdout
    return store


def test_repeat_is_an_ordinary_run_with_every_seed_saved(repeated):
    source, run = artifacts.load_run(repeated, "source"), artifacts.load_run(repeated, "source-again")
    best = json.loads((source.folder / artifacts.BEST_HYPERPARAMETERS).read_text())
    assert run.state == "completed" and run.is_repeat
    assert run.settings["repeat"]["source"] == "source" and run.settings["repeat"]["seeds"] == [43, 44]
    assert run.settings["fixed_hyperparameters"] == best
    assert "source-again" in set(artifacts.runs_table(artifacts.list_runs(repeated))["run"])
    pd.testing.assert_frame_equal(files.read_csv(run.folder / artifacts.SPLITS), files.read_csv(source.folder / artifacts.SPLITS))

    seed_runs = [artifacts.load_run(run.folder / repeat.SEEDS_DIR, f"seed-{s}") for s in (43, 44)]
    for seed, seed_run in zip((43, 44), seed_runs, strict=True):
        assert seed_run.settings["seed"] == seed
        assert seed_run.settings["views_seed"] == 42  # cut-point runs reuse the source's cached augmented views
        trials = json.loads((seed_run.folder / artifacts.TRIALS).read_text())
        assert [t["hyperparameters"] for t in trials] == [best]  # the fixed values reached Keras Tuner, and only they
        assert set(seed_run.predictions()["path"]) == set(source.predictions()["path"])  # same split: same test images
        assert set(seed_run.val_predictions()["path"]) == set(source.val_predictions()["path"])
    # The run's own predictions, metrics and model are the first seed's.
    pd.testing.assert_frame_equal(run.predictions(), seed_runs[0].predictions())
    assert run.metrics["test"] == seed_runs[0].metrics["test"] and run.metrics["threshold"] == seed_runs[0].metrics["threshold"]
    assert run.has_model
    # seeds.csv holds each seed's test metrics at its own validation-chosen threshold.
    per_seed = repeat.read_seed_table(run.folder)
    assert per_seed["seed"].tolist() == [43, 44]
    for row, seed_run in zip(per_seed.itertuples(), seed_runs, strict=True):
        assert (row.threshold, row.test_auc, row.test_sensitivity, row.test_specificity) == (
            seed_run.metrics["threshold"], *(seed_run.metrics["test"][k] for k in ("auc", "sensitivity", "specificity"))
        )
    spread = repeat.seed_summary(run).set_index("metric")
    aucs = [r.metrics["test"]["auc"] for r in seed_runs]
    assert spread.loc["test AUC", "mean"] == pytest.approx(np.mean(aucs))
    assert spread.loc["test AUC", "SD"] == pytest.approx(np.std(aucs, ddof=1))
    assert spread.loc["test AUC", "seed list"] == "43, 44"


def test_a_finished_repeat_is_not_resumed_and_cannot_be_repeated(repeated):
    done = run_cli("resume", "source-again", "--artifacts", str(repeated))
    assert done.returncode == 2 and "already complete" in done.stderr
    with pytest.raises(RunError, match="itself a repeat of source"):
        repeat.plan_repeat(repeated, "source-again", 2)
    with pytest.raises(RunError, match="already exists"):
        repeat.plan_repeat(repeated, "source", 2, "source-again")


def test_compare_shows_the_spread_over_seeds(repeated):
    at = page("compare", repeated.parent / "data", repeated)
    at.multiselect(key="compare_runs").set_value(["source-again", "source"]).run()
    no_exception(at)
    spread = frame_with(at, "mean ± SD")
    assert set(spread["run"]) == {"source-again"}  # the plain search has no seeds to spread over
    assert list(spread["metric"]) == ["test AUC", "test sensitivity", "test specificity"]
    expected = repeat.seed_summary(artifacts.load_run(repeated, "source-again"))
    assert list(spread["mean ± SD"]) == list(expected["mean ± SD"]) and list(spread["range"]) == list(expected["range"])
    roc = next(spec for spec in charts(at) if (spec["layout"].get("title") or {}).get("text", "").startswith("ROC"))
    curve = next(trace for trace in roc["data"] if trace.get("legendgroup") == "source-again" and trace.get("mode") == "lines")
    assert "threshold %{customdata[0]" in curve["hovertemplate"] and len(curve["customdata"]) == len(curve["x"])


def test_tune_page_offers_the_repeat_and_shows_a_repeats_spread(repeated):
    at = page("tune", repeated.parent / "data", repeated)
    at.selectbox(key="tune_detail").set_value("source").run()
    no_exception(at)
    assert not at.button(key="tune_repeat_source").disabled
    assert at.number_input(key="tune_repeat_seeds_source").value == 3
    at.selectbox(key="tune_detail").set_value("source-again").run()
    no_exception(at)
    assert list(frame_with(at, "mean ± SD")["metric"]) == ["test AUC", "test sensitivity", "test specificity"]
