"""Where the models look (core.workflows.localisation, core.evidence.localisation, core.reporting.where_it_looks):
measured on tiny real runs (`tests.helpers.model_run`), stopped, refused, started in the background, shown.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import files, jobs
from core.data import tasks
from core.evidence import localisation as saved_evidence
from core.inference import ensemble
from core.reporting import report, where_it_looks
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.runs.progress import SearchStopped
from core.workflows import localisation
from tests.helpers import make_dataset, model_run, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
OPTIONS = {"method_names": ["gradcam", "occlusion"], "per_class": 2, "synthetic": 2, "steps": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("looks")
    data = make_dataset(root / "data", {"train": 6, "test": 3}, images_per_patient=2, size=64)
    folder = root / "artifacts"
    model_run(folder, "plain", data, size=32, seed=0)
    model_run(folder, "wide", data, size=40, seed=1)
    model_run(folder, "three", data, task="three_class", size=32, seed=2)
    ensemble.build_ensemble(folder, ["plain", "wide"], "duo")
    return folder


@pytest.fixture(scope="module")
def measured(store) -> saved_evidence.Saved:
    return localisation.measure(artifacts.load_run(store, "plain"), **OPTIONS)


def test_a_measurement_saves_every_method_baseline_and_opacity(store, measured):
    saved = saved_evidence.read(store / "plain")
    assert saved is not None
    images = saved.images
    assert set(images["method"]) == {"gradcam", "occlusion", *saved_evidence.BASELINES}
    assert len(images) == 4 * 4  # 2 images per class × (2 methods + 2 baselines)
    assert images.groupby("method")["path"].nunique().eq(4).all()
    for column in ("deletion", "insertion", "border_share", "mark_area"):
        values = images[column].to_numpy(dtype=float)
        assert np.all((values[np.isfinite(values)] >= 0) & (values[np.isfinite(values)] <= 1)), column
    assert len(saved.synthetic) == 2 * 2  # 2 healthy images × 2 methods
    assert (saved.synthetic["iou"].between(0, 1)).all()
    curves = saved_evidence.mean_curves(saved)
    assert set(curves) == set(images["method"])
    assert all(len(c["deletion"]) == OPTIONS["steps"] + 1 for c in curves.values())
    # the deletion curve starts at the untouched images' mean probability
    start = images[images["method"] == "gradcam"]["probability"].mean()
    assert curves["gradcam"]["deletion"][0] == pytest.approx(start, abs=1e-4)
    assert saved.about["methods"] == ["gradcam", "occlusion"] and saved.about["per_class"] == 2
    assert files.read_json(store / "plain" / saved_evidence.PROGRESS_FILE)["state"] == "completed"


def test_the_summary_has_intervals_per_method_and_class(measured):
    summary = saved_evidence.method_summary(measured, n_resamples=200)
    gradcam = summary[(summary["method"] == "gradcam") & (summary["images"] == "all")].iloc[0]
    assert gradcam["deletion_low"] <= gradcam["deletion_mean"] <= gradcam["deletion_high"]
    assert gradcam["n"] == 4 and gradcam["synthetic_n"] == 2
    assert set(summary["images"]) == {"all", "negative", "positive"}
    table = where_it_looks.summary_table({"plain": summary}, {"plain": tasks.PNEUMONIA})
    assert list(table["method"])[-2:] == ["random (baseline)", "centred blob (baseline)"]
    assert table.filter(like="border heat").shape[1] == 2
    assert table.loc[table["method"] == "Grad-CAM", "gain ↑"].iat[0].startswith(f"{gradcam['gain_mean']:.3f} (")
    details = where_it_looks.detail_table({"plain": summary}, {"plain": tasks.PNEUMONIA})
    assert list(details.columns[:4]) == ["run", "method", "deletion ↓", "insertion ↑"] and len(details) == len(table)
    assert gradcam["gain_mean"] == pytest.approx(gradcam["insertion_mean"] - gradcam["deletion_mean"])


def test_a_stop_keeps_the_evidence_saved_before(store, measured, tmp_path):
    run = artifacts.load_run(store, "plain")
    before = {name: (store / "plain" / name).read_bytes() for name in (saved_evidence.SUMMARY_FILE, saved_evidence.IMAGES_FILE)}
    localisation.stop(run)
    with pytest.raises(SearchStopped):
        localisation.measure(run, **OPTIONS)
    assert {name: (store / "plain" / name).read_bytes() for name in before} == before
    assert files.read_json(store / "plain" / saved_evidence.PROGRESS_FILE)["state"] == "stopped"
    assert not (store / "plain" / saved_evidence.STOP_FILE).exists()  # served: the next measurement may start


def test_three_class_runs_and_unknown_methods_are_refused(store):
    with pytest.raises(RunError, match="two-class"):
        localisation.measure(artifacts.load_run(store, "three"), **OPTIONS)
    with pytest.raises(ValueError, match="gradcam"):
        localisation.measure(artifacts.load_run(store, "plain"), method_names=["nope"], per_class=1, synthetic=0)


def test_an_ensemble_is_measured_through_its_members(store):
    saved = localisation.measure(artifacts.load_run(store, "duo"), method_names=["gradcam"], per_class=1, synthetic=1, steps=2)
    assert saved.about["canvas_px"] == 40  # its largest member's input size
    assert len(saved.images) == 2 * 3 and len(saved.synthetic) == 1


def test_moved_test_images_are_a_clear_error(store, tmp_path):
    target = tmp_path / "artifacts"
    shutil.copytree(store / "plain", target / "plain")
    predictions = files.read_csv(target / "plain" / artifacts.PREDICTIONS)
    files.write_csv(target / "plain" / artifacts.PREDICTIONS, predictions.assign(path="/nowhere/" + predictions["path"].map(lambda p: Path(p).name)))
    with pytest.raises(RunError, match="moved or is missing"):
        localisation.measure(artifacts.load_run(target, "plain"), **OPTIONS)


def test_the_report_shows_the_measured_runs_and_tells_how_to_measure_the_others(store, measured):
    html = report.build_report([artifacts.load_run(store, "plain")])
    assert "Where the models look" in html and "Deletion area" in html and "random (baseline)" in html
    html = report.build_report([artifacts.load_run(store, "wide")])
    assert "python -m core where-it-looks wide" in html


def test_the_background_job_measures_and_the_page_shows_it(store, tmp_path):
    from streamlit.testing.v1 import AppTest

    target = tmp_path / "artifacts"
    shutil.copytree(store / "wide", target / "wide")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "compare.py"), default_timeout=120)
    at.session_state["artifacts_dir"] = str(target)
    at.run()
    assert not at.exception
    assert any("Not measured yet: wide" in info.value for info in at.info)
    jobs.start_where_it_looks(str(target), ["wide"])
    with pytest.raises(RunError, match="already being measured"):
        jobs.start_where_it_looks(str(target), ["wide"])  # a second start is refused while the first runs
    run = artifacts.load_run(target, "wide")
    wait_for(lambda: jobs.localisation_state(run) in ("completed", "failed", "interrupted"), timeout=240, what="the measurement")
    assert jobs.localisation_state(run) == "completed", (target / "wide" / jobs.LOCALISATION_LOG).read_text()
    at.run()
    assert not at.exception
    assert any(frame.value.shape[0] >= 3 for frame in at.dataframe)
    assert not any("Not measured yet" in info.value for info in at.info)


def test_validation_is_measured_beside_test_and_never_over_it(store, measured):
    test_file = store / "plain" / saved_evidence.SUMMARY_FILE
    before = test_file.read_bytes()
    saved = localisation.measure(artifacts.load_run(store, "plain"), method_names=["gradcam"], per_class=2, synthetic=0, steps=2, split="val")
    assert saved.about["split"] == "val" and test_file.read_bytes() == before
    val_paths = set(artifacts.load_run(store, "plain").val_predictions()["path"])
    assert set(saved.images["path"]) <= val_paths
    assert saved_evidence.read(store / "plain", "val").about["split"] == "val"
    assert saved_evidence.read(store / "plain").about["split"] == "test"
    with pytest.raises(ValueError, match="split must be one of"):
        saved_evidence.read(store / "plain", "train")


def test_the_time_estimate_counts_an_ensembles_members(store):
    plain, duo = artifacts.load_run(store, "plain"), artifacts.load_run(store, "duo")
    assert localisation.estimated_s([duo]) == 2 * localisation.estimated_s([plain]) == 2 * localisation.SECONDS_PER_MODEL
    assert localisation.estimated_s([plain], per_class=8, synthetic=8) == pytest.approx(localisation.SECONDS_PER_MODEL / 2)


def test_a_killed_measurement_reads_as_interrupted_and_can_start_again(store, tmp_path):
    target = tmp_path / "artifacts"
    shutil.copytree(store / "wide", target / "wide")
    run = artifacts.load_run(target, "wide")
    dead = {"state": "running", "done": 3, "total": 10, "pid": 2**22 + 12345, "host": artifacts.this_host()}
    files.write_json(target / "wide" / saved_evidence.PROGRESS_FILE, dead)
    assert jobs.localisation_state(run) == "interrupted"
    assert saved_evidence.read(target / "wide") is None  # nothing half-written to show
    files.write_json(target / "wide" / saved_evidence.PROGRESS_FILE, {**dead, "pid": os.getpid()})
    with pytest.raises(RunError, match="already being measured"):  # a live one is not started twice
        jobs.start_where_it_looks(str(target), ["wide"])
