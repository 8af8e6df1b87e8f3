"""The dashboard under Streamlit's AppTest: every page, empty and with real runs, and the workflows.

Pages are run on their own (`AppTest.from_file("pages/x.py")`) with the two folders put in
session state, as the sidebar of streamlit_app.py would; the main app is run too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import files
from core.data import download
from core.evidence import run_evidence, shift, site_adaptation, statistics, stress
from core.inference import evaluation, run_kinds
from core.reporting import figures, wording
from core.runs import artifacts
from pages import _loaders as load
from tests.conftest import FAILED_ERROR, FAILED_RUN, INTERRUPTED_RUN, OTHER_SPLIT_RUN, REPO
from tests.helpers import predictions_shown

# Loading a saved model without compiling it makes Keras say it skips the optimizer's state.
pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
PAGES = ("data", "tune", "compare", "predict")
TIMEOUT = 90  # the first page to import TensorFlow pays for it


def page(name: str, data_dir, artifacts_dir) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=TIMEOUT)
    at.session_state["data_dir"] = str(data_dir)
    at.session_state["artifacts_dir"] = str(artifacts_dir)
    return at.run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, "\n".join(e.value for e in at.exception)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(at: AppTest) -> list[str]:
    return [trace.get("name") or "" for spec in charts(at) for trace in spec["data"]]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def chart(at: AppTest, title: str) -> dict:
    """The plotly figure whose title starts with `title`."""
    specs = [spec for spec in charts(at) if (spec["layout"].get("title") or {}).get("text", "").startswith(title)]
    assert specs, f"no figure titled {title!r}: {[(s['layout'].get('title') or {}).get('text') for s in charts(at)]}"
    return specs[0]


def confusion_matrices(at: AppTest) -> list[dict]:
    return [spec for spec in charts(at) if spec["data"] and spec["data"][0].get("type") == "heatmap"]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first st.dataframe that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def image_captions(at: AppTest) -> list[str]:
    return [caption for element in at.get("image") for caption in element.captions]


def image_urls(at: AppTest) -> dict[str, str]:
    return {caption: img.url for element in at.get("image") for caption, img in zip(element.captions, element.proto.imgs, strict=True)}


def image_count(data_dir: Path) -> str:
    """The images in the data folder's splits, counted from the files, as the pages print it."""
    files = [p for p in Path(data_dir).glob("*/*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return f"{len(files):,}"


def metrics_of(runs_dir: Path, name: str) -> dict:
    return json.loads((runs_dir / name / "metrics.json").read_text())


def best_per_family(runs_dir: Path) -> set[str]:
    """The default runs: the best validation AUC of each family (never chosen on test)."""
    best: dict[str, tuple[float, str]] = {}
    for folder in runs_dir.iterdir():
        if (folder / "metrics.json").exists():
            family = json.loads((folder / "settings.json").read_text())["family"]
            auc = metrics_of(runs_dir, folder.name)["val"]["auc"]
            if family not in best or auc > best[family][0]:
                best[family] = (auc, folder.name)
    return {name for _, name in best.values()}


# ---------------------------------------------------------------------------- every page renders


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_on_an_empty_artifacts_folder(name, data_dir, empty_dir):
    at = page(name, data_dir, empty_dir)
    no_exception(at)
    if name == "data":
        assert {m.label: m.value for m in at.metric}["Images"] == image_count(data_dir)
    elif name == "tune":
        assert "No search is running." in texts(at.caption)
        assert f"No runs in {empty_dir}" in texts(at.caption)
    elif name == "compare":
        assert "No finished runs with test results" in texts(at.info)
    else:
        assert "No saved models" in texts(at.info)


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_with_runs(name, data_dir, runs_dir):
    at = page(name, data_dir, runs_dir)
    no_exception(at)
    if name == "data":
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Images"] == image_count(data_dir) and metrics["Unreadable files"] == "0"
        titles = [spec["layout"]["title"]["text"] for spec in charts(at)]
        assert titles == ["Images per split and class", "Patients per split", "Pneumonia kinds per split", "Class balance"]
        for spec in charts(at):
            assert spec["layout"]["xaxis"]["title"]["text"] and spec["layout"]["yaxis"]["title"]["text"]
        rows = at.get("image")  # one row of sample images per class, 6 by default
        assert len(rows) == 2 and [len(row.value) for row in rows] == [6, 6]
        assert all(caption.startswith("normal") for caption in rows[0].captions)
        assert all(caption.split(" ")[0] in ("bacteria", "virus") for caption in rows[1].captions)
        # The split a search would make: patient-grouped train/val/test carved out of train/.
        at.radio(key="data_view").set_value("As a search splits them (by patient)").run()
        no_exception(at)
        images, patients = charts(at)[0], charts(at)[1]
        assert images["data"][0]["x"] == ["train", "val", "test"]
        assert sum(patients["data"][0]["y"]) == int(metrics["Patients"].replace(",", ""))  # no patient in two splits
    elif name == "tune":
        table = at.dataframe[0].value
        assert set(table["run"]) == {"cnn-small", "cnn-wide", "mobilenet-none", FAILED_RUN, INTERRUPTED_RUN}
        outcome = dict(zip(table["run"], table["outcome"], strict=True))
        assert outcome[FAILED_RUN] == "failed" and outcome[INTERRUPTED_RUN] == "interrupted"
        assert outcome["cnn-small"] == "completed"
        assert FAILED_ERROR in texts(at.error)  # the failed run's error, from progress.json
        assert "line 300, in prepare_split" in texts(at.code)  # and the tail of its process.log
        assert "Its process ended without saying why" in texts(at.warning)
        assert {b.key for b in at.button} >= {f"resume_{FAILED_RUN}", f"resume_{INTERRUPTED_RUN}"}
    elif name == "compare":
        assert set(at.multiselect(key="compare_runs").value) == best_per_family(runs_dir)
        roc = charts(at)[0]
        assert roc["layout"]["xaxis"]["title"]["text"] == "False positive rate (1 − specificity)"
        assert roc["layout"]["yaxis"]["title"]["text"] == "True positive rate (sensitivity)"
        names = [t.get("name", "") for t in roc["data"]]
        for run in best_per_family(runs_dir):
            auc = metrics_of(runs_dir, run)["test"]["auc"]
            assert any(n.startswith(f"{run} (AUC {auc:.3f},<br>95% CI ") for n in names), names
    else:
        assert set(at.multiselect(key="predict_runs").value) == best_per_family(runs_dir)
        assert at.file_uploader[0].accept_multiple_files


def test_main_app_sidebar_checks_the_folders(data_dir, runs_dir, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.text_input(key="data_dir").value == str(data_dir)
    assert f"{image_count(data_dir)} images" in texts(at.sidebar.caption)
    assert "5 saved runs" in texts(at.sidebar.caption)
    for name in PAGES[1:]:
        at.switch_page(f"pages/{name}.py").run()
        no_exception(at)
        assert at.text_input(key="artifacts_dir").value == str(runs_dir)  # kept across pages

    at.text_input(key="data_dir").input("/no/such/folder").run()
    assert "does not exist" in texts(at.sidebar.error)
    at.text_input(key="artifacts_dir").input(str(runs_dir / "cnn-small" / "settings.json")).run()
    assert "is a file, not a folder" in texts(at.sidebar.error)


def test_a_first_visit_straight_to_a_page_runs_under_the_app_navigation(data_dir, empty_dir, monkeypatch):
    """A server that has not called `st.navigation` yet runs a pages/ file on its own (Streamlit's
    old pages-folder mode): no app sidebar, no page config. The page must go through the app.
    AppTest starts every run like a fresh server, so with pages/ beside streamlit_app.py this run
    starts in that mode; the last line fails if Streamlit renames or stops clearing its flag."""
    from streamlit.runtime.pages_manager import PagesManager

    monkeypatch.setenv("CXR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(empty_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/predict.py").run()
    no_exception(at)
    assert [title.value for title in at.title] == ["Predict"]  # the page asked for, not the default one
    assert at.text_input(key="artifacts_dir").value == str(empty_dir)  # the app's sidebar is there
    assert PagesManager.uses_pages_directory is False  # st.navigation left the old mode for every session


# ---------------------------------------------------------------------------- Data page


def test_data_page_without_data_offers_the_download(tmp_path, runs_dir, monkeypatch):
    at = page("data", tmp_path / "missing", runs_dir)
    no_exception(at)
    assert "does not exist" in texts(at.error)
    assert download.KAGGLE_URL in texts(at.markdown)

    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    at.button(key="download").click().run()
    no_exception(at)
    shown = texts(at.error)
    assert "Download failed" in shown and download.KAGGLE_URL in shown and "Without network access" in shown


def test_data_page_download_points_the_app_at_the_data(tmp_path, data_dir, runs_dir, monkeypatch):
    fake = tmp_path / "kaggle" / "chest_xray"  # the download's layout: chest_xray/{train,test}/{NORMAL,PNEUMONIA}
    for split in ("train", "test"):
        for class_name in ("NORMAL", "PNEUMONIA"):
            target = fake / split / class_name
            target.mkdir(parents=True)
            for source in sorted((data_dir / "train" / class_name).glob("*.jpeg"))[:3]:
                shutil.copy(source, target / source.name)
    (fake / "train" / "NORMAL" / "broken.jpeg").write_text("not an image")

    import kagglehub

    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: str(tmp_path / "kaggle"))
    at = page("data", tmp_path / "missing", runs_dir)
    at.button(key="download").click().run()
    no_exception(at)
    assert at.session_state["data_dir"] == str(fake)
    assert {m.label: m.value for m in at.metric}["Images"] == "12"
    assert "broken.jpeg" in at.dataframe[0].value["path"].iloc[0]  # the unreadable file is listed


def test_download_errors_say_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # as if not installed
    with pytest.raises(download.DownloadError, match="pip install kagglehub") as error:
        download.download_public_dataset()
    assert download.KAGGLE_URL in str(error.value)


# ---------------------------------------------------------------------------- Tune page


def wait_until_done(folder: Path, name: str, seconds: float) -> artifacts.Run:
    deadline = time.monotonic() + seconds
    while True:
        run = artifacts.load_run(folder, name)
        if run.state not in artifacts.ACTIVE_STATES:
            return run
        assert time.monotonic() < deadline, f"search still {run.state} after {seconds} s: {run.progress}"
        time.sleep(0.5)


def set_tiny_search(at: AppTest, name: str) -> AppTest:
    at.selectbox(key="tune_family").set_value("custom_cnn").run()
    at.number_input(key="tune_trials_custom_cnn").set_value(1)
    at.number_input(key="tune_epochs_custom_cnn").set_value(1)
    at.number_input(key="tune_size_custom_cnn").set_value(32)
    at.number_input(key="tune_max_per_class").set_value(12)
    at.text_input(key="tune_name").input(name)
    return at.run()


def test_tune_form_adapts_to_each_family(data_dir, empty_dir):
    from core.models import families
    from core.search import presets
    from core.workflows import recipe

    at = page("tune", data_dir, empty_dir)
    # The recipe box's title and its text quote the one estimate and the one measured time (core.search.cost).
    assert f"One click: {recipe.title()}" in texts(at.markdown)
    assert recipe.measured_note() in texts(at.caption) and "Estimated CPU time on" in texts(at.caption)
    # On the full data folder the box's estimate is the title's (the issue: "about 25 min", "took 22 min", "17 min 42 s").
    title_estimate = recipe.title().split("(")[1].split(" on ")[0]
    assert f"images: **{title_estimate}** on 2 cores" in texts(at.caption)
    quick = presets.preset("quick").title.split("(")[1].split(" on ")[0]
    assert f"**{quick}** on 2 cores" in texts(at.info)  # the form starts from the quick preset
    listed = at.selectbox(key="tune_family").options
    assert [option.split(" — ")[0] for option in listed] == list(families.FAMILIES)  # every registered family
    for family, info in families.FAMILIES.items():
        at.selectbox(key="tune_family").set_value(family).run()
        no_exception(at)
        assert info.hint in texts(at.caption)
        assert at.number_input(key=f"tune_size_{family}").value == info.default_image_size
        search_radios = [r for r in at.radio if r.key in ("tune_mode", "tune_weights")]
        assert bool(search_radios) == info.transfer  # transfer mode and weights only for backbones
        if info.transfer:  # only the modes it trains in: finetune alone for the hybrid
            assert tuple(at.radio(key="tune_mode").options) == info.modes and at.radio(key="tune_mode").value in info.modes
        assert "Estimated CPU time" in texts(at.info)
    at.selectbox(key="tune_family").set_value("mobilenet").run()
    at.selectbox(key="tune_mobilenet_version").set_value("v1")
    at.selectbox(key="tune_alpha").set_value(0.35).run()  # a width Keras has no v1 weights for
    no_exception(at)
    assert "no ImageNet weights for mobilenet_v1 at width 0.35" in texts(at.caption)
    at.radio(key="tune_weights").set_value("file").run()
    at.text_input(key="tune_weights_file").input("/nowhere/weights.h5")
    at.button(key="tune_start").click().run()
    assert "weights file /nowhere/weights.h5 does not exist" in texts(at.error)
    assert list(empty_dir.iterdir()) == []


def test_tune_form_refuses_a_bad_name(data_dir, empty_dir):
    at = set_tiny_search(page("tune", data_dir, empty_dir), "bad name!")
    at.button(key="tune_start").click().run()
    no_exception(at)
    assert "invalid run name 'bad name!'" in texts(at.error)
    assert list(empty_dir.iterdir()) == []


def test_tune_form_refuses_a_missing_data_folder(tmp_path, empty_dir):
    at = page("tune", tmp_path / "nowhere", empty_dir)
    assert "does not exist" in texts(at.warning)
    set_tiny_search(at, "ok-name").button(key="tune_start").click().run()
    assert "Not started" in texts(at.error)
    assert list(empty_dir.iterdir()) == []


def test_search_started_from_tune_finishes_and_shows_on_compare(data_dir, copy_runs):
    folder = copy_runs(["cnn-small"])
    at = set_tiny_search(page("tune", data_dir, folder), "from-the-ui")
    at.button(key="tune_start").click().run()
    no_exception(at)
    assert "Started search **from-the-ui**" in texts(at.success)
    settings = json.loads((folder / "from-the-ui" / "settings.json").read_text())
    assert (settings["family"], settings["trials"], settings["epochs"], settings["image_size"], settings["max_per_class"]) == (
        "custom_cnn", 1, 1, 32, 12,
    )
    assert settings["task"] == "pneumonia"  # the Tune form's task, saved with the run

    at.run()  # the live panel of the running search
    no_exception(at)
    assert " from-the-ui** · custom_cnn · pneumonia · random search · state **" in texts(at.markdown)
    assert [m.label for m in at.metric] == ["Trial", "Epoch", "Best val AUC", "Elapsed", "Time left"]

    # Stop it at once (it may still be starting: then it is killed and shows as interrupted) ...
    at.button(key="stop_from-the-ui").click().run()
    no_exception(at)
    run = wait_until_done(folder, "from-the-ui", 60)
    assert run.state in ("stopped", "interrupted"), run.progress
    at.run()
    assert not (folder / "from-the-ui" / "metrics.json").exists()
    # ... and resume it from its own row in the list of unfinished runs.
    at.button(key="resume_from-the-ui").click().run()
    no_exception(at)
    assert "Resumed from-the-ui in the background." in texts(at.success)
    run = wait_until_done(folder, "from-the-ui", 120)
    assert run.state == "completed", (run.progress, (run.folder / "process.log").read_text()[-2000:])

    at.run()
    table = at.dataframe[0].value
    assert dict(zip(table["run"], table["outcome"], strict=True))["from-the-ui"] == "completed"

    compare = page("compare", data_dir, folder)
    no_exception(compare)
    compare.multiselect(key="compare_runs").set_value(["from-the-ui", "cnn-small"]).run()
    auc = run.metrics["test"]["auc"]
    assert any(n.startswith(f"from-the-ui (AUC {auc:.3f}") for n in trace_names(compare))


# ---------------------------------------------------------------------------- Compare page


def test_compare_threshold_moves_the_confusion_matrix(data_dir, runs_dir):
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small"]).run()
    saved = metrics_of(runs_dir, "cnn-small")
    test = saved["test"]
    # At the validation-chosen threshold the page shows exactly the saved test metrics.
    assert f"Sensitivity **{test['sensitivity']:.3f}** · specificity **{test['specificity']:.3f}**" in texts(at.markdown)
    matrix = confusion_matrices(at)[0]["data"][0]["text"]
    assert matrix[0][0].startswith(f"{test['tn']}<br>") and matrix[1][1].startswith(f"{test['tp']}<br>")

    at.slider(key="threshold::cnn-small").set_value(0.0).run()  # everything is called pneumonia
    no_exception(at)
    assert "Sensitivity **1.000** · specificity **0.000**" in texts(at.markdown)
    table = at.dataframe[0].value
    assert table.loc[0, "threshold"] == 0.0 and table.loc[0, "sensitivity"] == 1.0
    point = next(t for t in chart(at, "ROC")["data"] if t.get("name", "").startswith("cnn-small at threshold"))
    assert (point["x"], point["y"]) == ([1.0], [1.0])
    assert any(b.key == "reset_cnn-small" for b in at.button)


@pytest.mark.parametrize("name", ["compare", "predict"])
def test_run_choice_starts_over_in_another_artifacts_folder(name, data_dir, runs_dir, copy_runs):
    at = page(name, data_dir, runs_dir)
    assert set(at.multiselect[0].value) == best_per_family(runs_dir)
    at.session_state["artifacts_dir"] = str(copy_runs(["cnn-wide"]))
    at.run()
    no_exception(at)
    assert at.multiselect[0].value == ["cnn-wide"]  # the new folder's default, not an empty choice


def test_compare_per_image_filters(data_dir, runs_dir):
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide"]).run()
    a = pd.read_csv(runs_dir / "cnn-small" / "predictions.csv").set_index("path")
    b = pd.read_csv(runs_dir / "cnn-wide" / "predictions.csv").set_index("path")
    ta, tb = (metrics_of(runs_dir, n)["threshold"] for n in ("cnn-small", "cnn-wide"))
    both = a.join(b, lsuffix="_a", rsuffix="_b", how="inner")
    assert len(both) == len(a) == len(b)  # same seed and cap: the same test images
    called_a, called_b = both["probability_a"] >= ta, both["probability_b"] >= tb
    wrong_a, wrong_b = called_a != (both["y_true_a"] == 1), called_b != (both["y_true_b"] == 1)
    images = frame_with(at, "wrong in")
    assert len(images) == len(both)
    assert (images["wrong in"].to_numpy() == (wrong_a.astype(int) + wrong_b.astype(int)).loc[images["path"]].to_numpy()).all()
    assert set(images.columns) >= {"image", "class_name", "kind", "p:cnn-small", "p:cnn-wide", "wrong in"}

    at.checkbox(key="filter_wrong").check().run()
    assert len(frame_with(at, "wrong in")) == int((wrong_a | wrong_b).sum())
    at.checkbox(key="filter_wrong").uncheck()
    at.checkbox(key="filter_disagree").check().run()
    assert len(frame_with(at, "wrong in")) == int((called_a != called_b).sum())


# ---------------------------------------------------------------------------- Compare page: evidence


def fixture_predictions(runs_dir: Path, name: str) -> pd.DataFrame:
    return files.read_csv(runs_dir / name / "predictions.csv")


def test_compare_shows_intervals_and_the_evidence_figures(data_dir, runs_dir):
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide"]).run()
    no_exception(at)
    for resamples, seed in ((1000, 0), (300, 5)):  # the default, then other interval settings
        # the key metrics in a table narrow enough for 1,280 px, accuracy and the rest in the next
        table = frame_with(at, "AUC 95% CI").set_index("run").join(frame_with(at, "accuracy 95% CI").set_index("run"))
        roc_names = [t.get("name", "") for t in chart(at, "ROC")["data"]]
        for name in ("cnn-small", "cnn-wide"):
            table_p = fixture_predictions(runs_dir, name)
            threshold = metrics_of(runs_dir, name)["threshold"]
            expected = statistics.metric_intervals(
                table_p["y_true"], table_p["probability"], threshold, groups=table_p["patient"], n_resamples=resamples, seed=seed
            )
            for metric, column in (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("accuracy", "accuracy")):
                interval = expected[metric]
                assert table.loc[name, f"{column} 95% CI"] == f"{interval.low:.3f}–{interval.high:.3f}"
                assert interval.low <= table.loc[name, column] <= interval.high
            auc = expected["auc"]
            assert f"{name} (AUC {auc.estimate:.3f},<br>95% CI {auc.low:.3f}–{auc.high:.3f})" in roc_names
        at.number_input(key="compare_resamples").set_value(300)
        at.number_input(key="compare_seed").set_value(5).run()
        no_exception(at)

    pr, calibration = chart(at, "Precision-recall"), chart(at, "Calibration")
    assert pr["layout"]["xaxis"]["title"]["text"] == "Recall (sensitivity)"
    assert calibration["layout"]["xaxis"]["title"]["text"] == "Mean predicted probability of pneumonia"
    assert any(t.get("name") == "perfectly calibrated" and t["x"] == [0, 1] and t["y"] == [0, 1] for t in calibration["data"])
    small = fixture_predictions(runs_dir, "cnn-small")
    y, s = small["y_true"].to_numpy(), small["probability"].to_numpy()
    ap = statistics.precision_recall(y, s)["average_precision"]
    assert f"cnn-small (AP {ap:.3f})" in [t.get("name") for t in pr["data"]]
    brier, ece = statistics.brier_score(y, s), statistics.expected_calibration_error(y, s)
    assert f"cnn-small (Brier {brier:.3f},<br>ECE {ece:.3f})" in [t.get("name") for t in calibration["data"]]

    errors = frame_with(at, "images").set_index("images")  # errors by kind and class, at each run's threshold
    expected = statistics.error_breakdown(small, metrics_of(runs_dir, "cnn-small")["threshold"]).set_index("kind")
    assert list(errors.columns) == ["cnn-small", "cnn-wide"]

    def share(count, total):
        return f"{count}/{total} ({100 * count / total:.1f} %)"

    got = errors["cnn-small"]
    assert got["normal (false alarms)"] == share(expected.loc["normal", "false_positives"], expected.loc["normal", "n"])
    for kind in ("bacteria", "virus"):
        assert got[f"{kind} (missed)"] == share(expected.loc[kind, "false_negatives"], expected.loc[kind, "n"])
    assert got["pneumonia, all kinds (missed)"] == share(expected.loc["all", "false_negatives"], expected.loc["all", "n_positive"])
    assert got["all images"] == share(expected.loc["all", "errors"], expected.loc["all", "n"])
    assert chart(at, "Errors by kind")["layout"]["yaxis"]["title"]["text"] == "Images misclassified (%)"


def paired_metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_compare_paired_test_of_two_runs_on_the_same_images(data_dir, runs_dir):
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide"]).run()
    assert (at.selectbox(key="paired_a").value, at.selectbox(key="paired_b").value) == ("cnn-small", "cnn-wide")
    small, wide = fixture_predictions(runs_dir, "cnn-small"), fixture_predictions(runs_dir, "cnn-wide")
    paired = statistics.align_paired(small, wide)
    patients = small["patient"].to_numpy()  # both runs share the split, so the same patient per image
    delong = statistics.clustered_delong_test(paired.y_true, paired.score_a, paired.score_b, patients)
    shown = paired_metrics(at)
    assert shown["DeLong p (by patient)"] == wording.format_p(delong.p_value)
    assert shown["DeLong p (image-level)"] == wording.format_p(statistics.delong_test(paired.y_true, paired.score_a, paired.score_b).p_value)
    assert shown["AUC difference (A − B)"] == f"{delong.difference:+.3f}"
    assert f"95% CI of the difference, by patient: **{delong.ci_low:+.3f} to {delong.ci_high:+.3f}**" in texts(at.markdown)
    assert "DeLong p, Holm-adjusted" not in shown  # one pair: nothing to adjust

    def mcnemar(threshold_a: float) -> statistics.ClusteredMcNemarResult:
        threshold_b = metrics_of(runs_dir, "cnn-wide")["threshold"]
        pred_a, pred_b = (paired.score_a >= threshold_a).astype(int), (paired.score_b >= threshold_b).astype(int)
        return statistics.clustered_mcnemar_test(paired.y_true, pred_a, pred_b, patients)

    expected = mcnemar(metrics_of(runs_dir, "cnn-small")["threshold"])
    assert (shown["b: A right, B wrong"], shown["c: A wrong, B right"], shown["McNemar p (by patient)"]) == (
        str(expected.b), str(expected.c), wording.format_p(expected.p_value),
    )
    pair = run_evidence.paired_evidence("cnn-small", small, metrics_of(runs_dir, "cnn-small")["threshold"], "cnn-wide", wide, metrics_of(runs_dir, "cnn-wide")["threshold"])
    assert wording.auc_sentence(pair) in texts(at.caption)
    assert wording.errors_sentence(pair) in texts(at.caption)
    at.slider(key="threshold::cnn-small").set_value(0.0).run()  # McNemar follows A's threshold
    moved = mcnemar(0.0)
    shown = paired_metrics(at)
    assert (shown["b: A right, B wrong"], shown["c: A wrong, B right"]) == (str(moved.b), str(moved.c))
    assert not at.error

    # Three runs: three pairs, so the p-values are Holm-adjusted over them and the sentences say so.
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide", "mobilenet-none"]).run()
    no_exception(at)
    runs = [(n, fixture_predictions(runs_dir, n), at.slider(key=f"threshold::{n}").value) for n in ("cnn-small", "cnn-wide", "mobilenet-none")]
    family, _ = run_evidence.pairwise_evidence(runs)
    shown = paired_metrics(at)
    assert shown["DeLong p, Holm-adjusted"] == wording.format_p(family[0].p_auc_adjusted)
    assert shown["McNemar p, Holm-adjusted"] == wording.format_p(family[0].p_errors_adjusted)
    assert wording.auc_sentence(family[0]) in texts(at.caption)
    assert "3 pairs among the picked runs: p-values are Holm-adjusted" in texts(at.caption)


def test_compare_sentence_follows_the_patient_level_test(data_dir, copy_runs):
    """Six near-identical images per patient: by image the runs differ (p < 0.05), by patient they do not."""
    from tests.helpers import clustered_pair

    folder = copy_runs(["cnn-small", "cnn-wide"])
    for name, table in zip(("cnn-small", "cnn-wide"), clustered_pair(), strict=True):
        files.write_csv(folder / name / artifacts.PREDICTIONS, table)
        metrics = json.loads((folder / name / "metrics.json").read_text())
        (folder / name / "metrics.json").write_text(json.dumps({**metrics, "threshold": 0.6}))
    at = page("compare", data_dir, folder)
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide"]).run()
    no_exception(at)
    shown = paired_metrics(at)
    assert shown["DeLong p (image-level)"] == "< 0.001" and shown["McNemar p (image-level)"] == "0.007"
    # 40 patients, fewer than 25 of them with a net disagreement: McNemar by patient is the exact sign-flip test
    assert (shown["DeLong p (by patient)"], shown["McNemar p (by patient)"]) == ("0.120", "0.241")
    captions = texts(at.caption)
    assert "No evidence at the 5 % level that the AUCs differ (by patient: p = 0.120); this does not show that they are equal." in captions
    assert (
        "No evidence at the 5 % level that the error rates differ at the thresholds in use "
        "(73 vs 54 errors of 240 images; by patient: p = 0.241)." in captions
    )
    # The method's name is explained where it appears.
    assert "Method: Exact sign-flip: every way of flipping the sign of each patient's net disagreement" in captions
    assert "AUC is higher" not in captions and "makes fewer errors" not in captions


def test_compare_refuses_to_pair_runs_tested_on_different_images(data_dir, other_split_dir):
    at = page("compare", data_dir, other_split_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small", OTHER_SPLIT_RUN]).run()
    no_exception(at)
    message = texts(at.error)
    assert f"Cannot pair **cnn-small** and **{OTHER_SPLIT_RUN}**" in message
    # With the official test/ folder both runs test on it; the other seed caps it to other patients.
    a, b = (set(pd.read_csv(other_split_dir / run / "predictions.csv")["path"]) for run in ("cnn-small", OTHER_SPLIT_RUN))
    assert a != b
    assert f"runs were evaluated on different test images: {len(a - b)} only in A, {len(b - a)} only in B" in message
    assert "DeLong p (by patient)" not in paired_metrics(at)
    assert "tested on different images" in texts(at.warning)


def test_compare_operating_point_sets_the_threshold(data_dir, runs_dir):
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(["cnn-small"]).run()
    saved = metrics_of(runs_dir, "cnn-small")["threshold"]
    choice = at.selectbox(key="operating_point::cnn-small")
    assert choice.value == "validation" and at.slider(key="threshold::cnn-small").value == pytest.approx(saved)
    assert choice.options[0].startswith(("validation-chosen", wording.POOLED_LABEL)) and choice.options[-1].startswith("custom")

    # The operating points are chosen on the run's validation predictions and measured on test.
    small = fixture_predictions(runs_dir, "cnn-small")
    val = files.read_csv(runs_dir / "cnn-small" / artifacts.VAL_PREDICTIONS)
    points = {p.name: p for p in statistics.operating_points(val["y_true"], val["probability"])}
    for key in ("sens@spec90", "spec@sens95"):
        at.selectbox(key="operating_point::cnn-small").set_value(key).run()
        no_exception(at)
        threshold = points[key].threshold
        on_test = statistics.binary_metrics(small["y_true"], small["probability"], threshold)
        assert at.slider(key="threshold::cnn-small").value == pytest.approx(threshold)
        assert frame_with(at, "AUC 95% CI").loc[0, "threshold"] == pytest.approx(threshold)
        assert f"Sensitivity **{on_test['sensitivity']:.3f}** · specificity **{on_test['specificity']:.3f}**" in texts(at.markdown)
        assert "On test — descriptive" not in texts(at.caption)

    at.slider(key="threshold::cnn-small").set_value(0.25).run()  # a hand-set threshold is "custom"
    assert at.selectbox(key="operating_point::cnn-small").value == "custom"
    at.button(key="reset_cnn-small").click().run()
    assert at.selectbox(key="operating_point::cnn-small").value == "validation"
    assert at.slider(key="threshold::cnn-small").value == pytest.approx(saved)


def test_compare_names_a_damaged_predictions_file_and_compares_the_other_runs(tmp_path):
    from tests.test_ensemble import _rows, fake_run

    rng = np.random.default_rng(0)
    y_val, y_test = np.repeat([0, 1], 20), np.repeat([0, 1], 30)
    for name in ("sound", "bad-test", "bad-val"):
        val = _rows("val", y_val, np.clip(0.5 * y_val + 0.25 + rng.normal(0, 0.3, y_val.size), 0, 1))
        test = _rows("test", y_test, np.clip(0.5 * y_test + 0.25 + rng.normal(0, 0.3, y_test.size), 0, 1))
        fake_run(tmp_path, name, val, test)
    for name, file_name, column, value in (
        ("bad-test", artifacts.PREDICTIONS, "probability", math.nan),  # a cell emptied by hand
        ("bad-val", artifacts.VAL_PREDICTIONS, "y_true", "pneumonia"),
    ):
        table = pd.read_csv(tmp_path / name / file_name)
        table[column] = table[column].astype(object)
        table.loc[4, column] = value
        table.to_csv(tmp_path / name / file_name, index=False)

    at = page("compare", tmp_path / "no-data", tmp_path)
    at.multiselect(key="compare_runs").set_value(["sound", "bad-test", "bad-val"]).run()
    no_exception(at)
    errors = texts(at.error)
    assert f"Cannot read the predictions of bad-test: {tmp_path / 'bad-test' / artifacts.PREDICTIONS} is damaged: " \
        "column 'probability' holds an empty cell on line 6" in errors
    assert f"Cannot read the predictions of bad-val: {tmp_path / 'bad-val' / artifacts.VAL_PREDICTIONS} is damaged: " \
        "column 'y_true' holds 'pneumonia' on line 6" in errors
    assert errors.count("run the search again") == 2
    assert frame_with(at, "AUC 95% CI")["run"].tolist() == ["sound"]  # the sound run is still compared


def test_compare_shows_the_threshold_on_the_unchanged_images_and_warns_when_it_gives_them_up(tmp_path):
    from tests.test_ensemble import _rows, fake_run
    from tests.test_stress import _weak_model

    y, as_is, stressed = _weak_model(3, n=200)
    y_test = np.repeat([0, 1], 30)
    test = _rows("test", y_test, np.round(0.48 + 0.02 * y_test + np.random.default_rng(0).normal(0, 0.0167, 60), 6))
    old_rule = float(statistics.youden_threshold(np.tile(y, 1 + len(stressed)), np.concatenate([as_is, *stressed.values()])))
    for name, threshold in (("old-rule", old_rule), ("new-rule", stress.robust_threshold(y, as_is, stressed))):
        folder = fake_run(tmp_path, name, _rows("val", y, as_is), test)
        metrics = files.read_json(folder / "metrics.json")
        val = statistics.binary_metrics(y, as_is, threshold)
        metrics.update(threshold=threshold, val={"sensitivity": val["sensitivity"], "specificity": val["specificity"], "auc": val["auc"]})
        if name == "new-rule":  # saved since the clean point is kept; the old run's is computed from its predictions
            clean = stress.clean_point(y, as_is)
            metrics.update(clean_threshold=clean["threshold"], clean_val={k: clean[k] for k in ("sensitivity", "specificity")})
        files.write_json(folder / "metrics.json", metrics)

    at = page("compare", tmp_path / "no-data", tmp_path)
    at.multiselect(key="compare_runs").set_value(["old-rule", "new-rule"]).run()
    no_exception(at)
    clean = stress.clean_point(y, as_is)
    own = f"on them alone plain Youden's J would choose {clean['threshold']:.3f} ({100 * clean['sensitivity']:.1f} % · {100 * clean['specificity']:.1f} %)"
    captions = texts(at.caption)
    assert captions.count(own) == 2
    old_val = statistics.binary_metrics(y, as_is, old_rule)
    assert f"at the saved {old_rule:.3f} sensitivity {100 * old_val['sensitivity']:.1f} %" in captions
    warnings = [w.value for w in at.warning if "unchanged validation images" in w.value]
    assert len(warnings) == 1 and f"{100 * (clean['sensitivity'] - old_val['sensitivity']):.1f} points" in warnings[0]


def test_compare_falls_back_to_test_operating_points_for_runs_without_validation_predictions(data_dir, runs_dir, tmp_path):
    shutil.copytree(runs_dir / "cnn-small", tmp_path / "cnn-small")
    (tmp_path / "cnn-small" / artifacts.VAL_PREDICTIONS).unlink()  # as saved by an older version
    at = page("compare", data_dir, tmp_path)
    at.selectbox(key="operating_point::cnn-small").set_value("sens@spec90").run()
    no_exception(at)
    small = fixture_predictions(runs_dir, "cnn-small")
    point = {p.name: p for p in statistics.operating_points(small["y_true"], small["probability"])}["sens@spec90"]
    assert at.slider(key="threshold::cnn-small").value == pytest.approx(point.threshold)
    assert "On test — descriptive" in texts(at.caption)
    assert "descriptive (optimistic for this test set)" in texts(at.caption)


def test_compare_report_download_holds_every_run(data_dir, runs_dir, monkeypatch):
    from streamlit.runtime.media_file_manager import MediaFileManager

    reports: list = []  # the page hands Streamlit a callable that builds the report on click
    original = MediaFileManager.add_deferred

    def spy(self, data_callable, *args, **kwargs):
        if str(kwargs.get("file_name", "")).startswith("cxr-report-"):
            reports.append(data_callable)
        return original(self, data_callable, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    names = ["cnn-small", "cnn-wide", "mobilenet-none"]
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(names).run()
    at.number_input(key="compare_resamples").set_value(200)
    at.slider(key="threshold::cnn-wide").set_value(0.0).run()
    no_exception(at)
    assert [b.label for b in at.get("download_button") if b.key == "download_report"] == ["Download report (HTML)"]
    html = reports[-1]().decode("utf-8")
    assert html.startswith("<!DOCTYPE html>") and "200 resamples, seed 0" in html
    for name in names:
        assert f"id='run-{name}'" in html
    assert "0.0000 (set by hand)" in html  # the report uses the page's thresholds


# ---------------------------------------------------------------------------- validation against test, ensembles


def test_compare_sets_validation_beside_test(data_dir, runs_dir):
    names = ["cnn-small", "mobilenet-none"]
    at = page("compare", data_dir, runs_dir)
    at.multiselect(key="compare_runs").set_value(names).run()
    no_exception(at)
    table = frame_with(at, "test − validation").set_index(["run", "metric"])
    facts = frame_with(at, "validation images").set_index("run")
    expected = [shift.for_run(artifacts.load_run(runs_dir, name)) for name in names]
    for item in expected:
        assert facts.loc[item.name, "test split"] == "external"
        for metric, title in shift.METRICS.items():
            row = table.loc[(item.name, title)]
            assert row["validation"] == pytest.approx(item.val[metric])
            assert row["test"] == pytest.approx(item.test[metric])
            assert row["test − validation"] == pytest.approx(item.change(metric))
    assert "external = the download's own test/ folder" in texts(at.caption)
    figure = chart(at, "Validation → test")
    assert figure["layout"]["yaxis"]["title"]["text"] == "Value on the split (0–1)"
    for sentence in shift.shift_warnings(expected):
        assert sentence in texts(at.warning)


def test_compare_combines_two_runs_into_an_ensemble_every_page_uses(data_dir, copy_runs, sample_image):
    folder = copy_runs(["cnn-small", "cnn-wide"])
    at = page("compare", data_dir, folder)
    at.multiselect(key="compare_runs").set_value(["cnn-small", "cnn-wide"]).run()
    at.multiselect(key="ensemble_members").set_value(["cnn-small", "cnn-wide"])
    at.text_input(key="ensemble_name").set_value("duo")
    at.button(key="ensemble_build").click().run()
    no_exception(at)
    assert "Saved ensemble **duo** (weights cnn-small 0.50, cnn-wide 0.50)" in texts(at.success)
    assert at.multiselect(key="compare_runs").value == ["cnn-small", "cnn-wide", "duo"]
    duo = artifacts.load_run(folder, "duo")
    mean = (fixture_predictions(folder, "cnn-small")["probability"] + fixture_predictions(folder, "cnn-wide")["probability"]) / 2
    assert duo.predictions()["probability"].to_numpy() == pytest.approx(mean.to_numpy(), abs=1e-6)
    metrics = frame_with(at, "AUC 95% CI").set_index("run")
    assert metrics.loc["duo", "AUC"] == pytest.approx(duo.metrics["test"]["auc"])
    assert metrics.loc["duo", "threshold"] == pytest.approx(duo.metrics["threshold"])
    assert frame_with(at, "input px").set_index("run").loc["duo", "family"] == "ensemble"  # the run facts' table
    shifted = frame_with(at, "test − validation").set_index(["run", "metric"])
    assert shifted.loc[("duo", "AUC"), "validation"] == pytest.approx(duo.metrics["val"]["auc"])
    assert "Cannot pair" not in texts(at.error)  # same test images as its members

    at = page("predict", data_dir, folder)
    at.multiselect(key="predict_runs").set_value(["duo"])
    at.file_uploader(key="predict_upload").set_value([("chest.jpeg", sample_image.read_bytes(), "image/jpeg")])
    at.run()
    no_exception(at)
    table = at.dataframe[0].value
    expected = run_kinds.predict_files(duo, [str(sample_image)]).iloc[0]
    assert table.loc[0, "probability"] == pytest.approx(expected["probability"], abs=1e-6)
    assert table.loc[0, "label"] == expected["label"]
    assert image_captions(at)[1].startswith(f"duo · Grad-CAM · p = {expected['probability']:.3f}")


def test_compare_refuses_an_ensemble_of_runs_split_differently(data_dir, other_split_dir, tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(other_split_dir, folder, ignore=shutil.ignore_patterns("search.lock"))
    at = page("compare", data_dir, folder)
    at.multiselect(key="ensemble_members").set_value(["cnn-small", OTHER_SPLIT_RUN])
    at.text_input(key="ensemble_name").set_value("mixed")
    at.button(key="ensemble_build").click().run()
    no_exception(at)
    assert f"No ensemble saved: cannot combine: cnn-small and {OTHER_SPLIT_RUN} were " in texts(at.error)
    assert "on different images" in texts(at.error) and not (folder / "mixed").exists()


# ---------------------------------------------------------------------------- Grad-CAM


def test_compare_selected_image_shows_each_runs_grad_cam(data_dir, runs_dir):
    at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=TIMEOUT)
    at.session_state["data_dir"], at.session_state["artifacts_dir"] = str(data_dir), str(runs_dir)
    at.session_state["compare_runs"] = ["cnn-small", "mobilenet-none"]
    at.session_state["image_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}  # as a click on row 0
    at.run()
    no_exception(at)
    first = frame_with(at, "wrong in").iloc[0]
    captions = image_captions(at)
    assert captions[0].startswith(first["image"])
    assert [c.split(" · ")[:2] for c in captions[1:]] == [["cnn-small", "Grad-CAM"], ["mobilenet-none", "Grad-CAM"]]
    assert at.slider(key="compare_opacity").value == 0.4
    before = image_urls(at)
    at.slider(key="compare_opacity").set_value(0.9).run()
    after = image_urls(at)
    assert after[captions[0]] == before[captions[0]]  # the X-ray itself is unchanged
    assert all(after[c] != before[c] for c in captions[1:])  # each overlay is blended anew


def test_predict_shows_a_grad_cam_per_run_and_none_for_a_bad_file(data_dir, runs_dir, sample_image):
    at = page("predict", data_dir, runs_dir)
    slider = at.slider(key="predict_opacity")
    assert (slider.value, slider.min, slider.max) == (0.4, 0.0, 1.0)
    at.multiselect(key="predict_runs").set_value(["cnn-small", "mobilenet-none"])
    at.file_uploader(key="predict_upload").set_value(
        [("chest.jpeg", sample_image.read_bytes(), "image/jpeg"), ("notes.jpeg", b"not an image", "image/jpeg")]
    )
    at.run()
    no_exception(at)
    assert "**notes.jpeg** was not scored" in texts(at.error)
    table = at.dataframe[0].value
    captions = image_captions(at)
    assert captions[0] == "chest.jpeg" and len(captions) == 1 + len(table)  # the X-ray, then one overlay per run; none for notes.jpeg
    for caption, row in zip(captions[1:], table.itertuples(), strict=True):
        assert caption.startswith(f"{row.run} · Grad-CAM · p = {row.probability:.3f}, {row.label}")
    before = image_urls(at)
    at.slider(key="predict_opacity").set_value(0.0).run()
    after = image_urls(at)
    assert all(after[c] != before[c] for c in captions[1:]) and after["chest.jpeg"] == before["chest.jpeg"]


# ---------------------------------------------------------------------------- Predict page


def test_predict_scores_uploads_and_reports_a_bad_file(data_dir, runs_dir, sample_image):
    at = page("predict", data_dir, runs_dir)
    at.multiselect(key="predict_runs").set_value(["cnn-small", "mobilenet-none"])
    at.file_uploader(key="predict_upload").set_value(
        [("chest.jpeg", sample_image.read_bytes(), "image/jpeg"), ("notes.jpeg", b"this is a text file, not an X-ray", "image/jpeg")]
    )
    at.run()
    no_exception(at)
    assert "**notes.jpeg** was not scored: cannot read image: cannot identify image file 'notes.jpeg'" in texts(at.error)
    assert "chest.jpeg" not in texts(at.error)

    table = at.dataframe[0].value
    assert list(table["image"]) == ["chest.jpeg", "chest.jpeg"] and list(table["run"]) == ["cnn-small", "mobilenet-none"]
    run = artifacts.load_run(runs_dir, "cnn-small")
    expected = evaluation.predict_files(run, [str(sample_image)]).iloc[0]
    assert table.loc[0, "probability"] == pytest.approx(expected["probability"], abs=1e-6)
    assert table.loc[0, "label"] == expected["label"]

    figure = charts(at)[0]
    assert figure["layout"]["xaxis"]["title"]["text"] == "Probability of pneumonia"
    assert figure["layout"]["xaxis"]["range"][0] == 0
    thresholds = next(t for t in figure["data"] if t.get("name") == "run's threshold")["x"]
    assert thresholds[0] == pytest.approx(metrics_of(runs_dir, "cnn-small")["threshold"])


def test_predict_scores_with_int8_models_where_runs_keep_one_and_says_why_not_elsewhere(data_dir, copy_runs, sample_image):
    from core.inference import quantization

    store = copy_runs(["cnn-small", "mobilenet-none"])
    quantization.quantize_run(artifacts.load_run(store, "cnn-small"), n_images=8, tolerance=1.0, max_changed=1.0)  # kept whatever it measures
    at = page("predict", data_dir, store)
    at.multiselect(key="predict_runs").set_value(["cnn-small", "mobilenet-none"])
    at.file_uploader(key="predict_upload").set_value([("chest.jpeg", sample_image.read_bytes(), "image/jpeg")])
    at.radio(key="predict_engine").set_value("int8")
    at.run()
    no_exception(at)
    assert "mobilenet-none is scored in fp32: run 'mobilenet-none' has no int8 model" in texts(at.caption)
    assert "Scored with their int8 models: cnn-small" in texts(at.caption)
    table = at.dataframe[0].value.set_index("run")
    for name, engine in (("cnn-small", "int8"), ("mobilenet-none", "auto")):
        expected = run_kinds.predict_files(artifacts.load_run(store, name), [str(sample_image)], engine=engine).iloc[0]
        assert table.loc[name, "probability"] == pytest.approx(expected["probability"], abs=1e-6)


def test_predict_samples_from_the_data_folder(data_dir, runs_dir):
    at = page("predict", data_dir, runs_dir)
    at.number_input(key="predict_sample_count").set_value(2)
    at.button(key="predict_pick").click().run()
    no_exception(at)
    table = at.dataframe[0].value
    assert sorted(set(table["true class"])) == ["NORMAL", "PNEUMONIA"]
    assert table["probability"].between(0, 1).all()
    assert len(charts(at)) == 2  # one figure per image


def test_tune_preset_fills_the_form(data_dir, empty_dir):
    from core.search import presets

    at = page("tune", data_dir, empty_dir)
    quick = presets.preset(presets.DEFAULT).settings  # the first visit starts from the quick preset
    assert at.selectbox(key="tune_preset").value == presets.DEFAULT
    assert (at.radio(key="tune_mode").value, at.selectbox(key="tune_augment").value) == (quick["mode"], quick["augment"])
    assert at.number_input(key=f"tune_epochs_{quick['family']}").value == quick["epochs"]
    at.selectbox(key="tune_preset").set_value("recommended").run()
    no_exception(at)
    chosen = presets.preset("recommended").settings
    family = chosen["family"]
    assert at.selectbox(key="tune_family").value == family
    assert at.number_input(key=f"tune_trials_{family}").value == chosen["trials"]
    assert at.number_input(key=f"tune_epochs_{family}").value == chosen["epochs"]
    assert at.radio(key="tune_mode").value == chosen["mode"]
    assert at.selectbox(key="tune_augment").value == chosen["augment"]
    assert at.number_input(key="tune_augment_views").value == chosen["augment_views"]
    assert "--preset recommended" in texts(at.caption)


def test_compare_shows_the_stress_test_of_each_run(data_dir, runs_dir):
    from core.evidence import stress

    at = page("compare", data_dir, runs_dir)
    no_exception(at)
    picked = at.multiselect(key="compare_runs").value
    table = frame_with(at, "specificity change")
    assert sorted(set(table["run"])) == sorted(picked)
    assert list(table.loc[table["run"] == picked[0], "condition"]) == ["as is", *stress.PERTURBATIONS]
    saved = {row["condition"]: row for row in metrics_of(runs_dir, picked[0])["stress"]}
    shown = table[table["run"] == picked[0]].set_index("condition")
    assert shown.loc["framed 30 % tighter", "specificity"] == pytest.approx(saved["framed 30 % tighter"]["specificity"])
    assert stress.NOTE in texts(at.caption)


def test_predict_flags_an_image_unlike_the_training_xrays(data_dir, runs_dir, sample_image):
    import io

    from PIL import Image

    black = io.BytesIO()
    Image.new("L", (300, 300), 0).save(black, format="JPEG")
    at = page("predict", data_dir, runs_dir)
    at.multiselect(key="predict_runs").set_value(["cnn-small"])
    at.file_uploader(key="predict_upload").set_value(
        [("black.jpeg", black.getvalue(), "image/jpeg"), ("chest.jpeg", sample_image.read_bytes(), "image/jpeg")]
    )
    at.run()
    no_exception(at)
    warnings = [w.value for w in at.warning if "Not assessed: unlike the training X-rays" in str(w.value)]
    assert len(warnings) == 1 and "near-black pixels (below 10 of 255): 100 % of the image" in warnings[0]
    # each detector that fired says so once (the statistic with its range, the model's features): no repeated "not like ..."
    assert warnings[0].count("near-black pixels") == 1 and warnings[0].count("Not assessed") == 1
    table = predictions_shown(at).set_index("image")
    assert bool(table.loc["black.jpeg", "unusual"]) and not bool(table.loc["chest.jpeg", "unusual"])
    # the table (what the CSV download writes) gives no diagnosis for the flagged image, but keeps the model's call
    assert table.loc["black.jpeg", "label"] == "not assessed: unlike the training X-rays"
    assert table.loc["black.jpeg", "model_label"] in ("NORMAL", "PNEUMONIA")
    assert table.loc["chest.jpeg", "label"] == table.loc["chest.jpeg", "model_label"]
    bars = [spec["data"][0] for spec in charts(at) if spec["data"] and spec["data"][0].get("type") == "bar"]
    flagged_bar = next(bar for bar in bars if bar["text"][0].endswith("· not assessed"))
    assert flagged_bar["marker"]["color"][0] == figures.NOT_ASSESSED_COLOR


def test_tune_page_notes_tags_filters_archive_restore_delete_and_export(data_dir, copy_runs):
    store = copy_runs(["cnn-small", "cnn-wide", "mobilenet-none", FAILED_RUN])
    cache = store / ".cache" / "features"
    cache.mkdir(parents=True)
    (cache / "kept.npz").write_bytes(b"cache")
    at = page("tune", data_dir, store)
    no_exception(at)
    at.selectbox(key="tune_detail").set_value("cnn-wide").run()
    at.text_area(key="tune_note_cnn-wide").input("wider input")
    at.text_input(key="tune_tags_cnn-wide").input("Keep, 40px")
    at.button(key="tune_save_notes_cnn-wide").click().run()
    no_exception(at)
    assert json.loads((store / "cnn-wide" / artifacts.NOTES).read_text())["tags"] == ["keep", "40px"]
    table = frame_with(at, "note").set_index("run")
    assert table.loc["cnn-wide", "note"] == "wider input" and table.loc["cnn-wide", "tags"] == "keep, 40px"

    at.multiselect(key="tune_filter_tag").set_value(["keep"]).run()
    assert set(frame_with(at, "note")["run"]) == {"cnn-wide"}
    at.multiselect(key="tune_filter_tag").set_value([]).run()

    at.button(key="tune_archive_cnn-wide").click().run()
    no_exception(at)
    assert "cnn-wide" not in set(frame_with(at, "note")["run"])
    assert "cnn-wide" not in at.selectbox(key="tune_detail").options
    compare = page("compare", data_dir, store)  # archived runs leave the other pages' lists too
    def offered(at_compare) -> set[str]:  # the options are labels: "name (family, test AUC ...)"
        return {option.split(" ")[0] for option in at_compare.multiselect(key="compare_runs").options}

    assert offered(compare) == {"cnn-small", "mobilenet-none"}
    compare.toggle(key="compare_archived").set_value(True).run()
    assert offered(compare) == {"cnn-small", "cnn-wide", "mobilenet-none"}
    at.toggle(key="tune_show_archived").set_value(True).run()
    assert "cnn-wide" in set(frame_with(at, "note")["run"])
    at.selectbox(key="tune_detail").set_value("cnn-wide").run()
    at.button(key="tune_restore_cnn-wide").click().run()
    no_exception(at)
    assert not artifacts.load_run(store, "cnn-wide").archived

    at.button(key="tune_export_cnn-wide").click().run()
    no_exception(at)
    assert any(b.proto.label == "Download cnn-wide.zip" for b in at.get("download_button"))

    at.selectbox(key="tune_detail").set_value("cnn-small").run()
    at.button(key="tune_delete_cnn-small").click().run()
    assert "for good" in texts(at.warning) and (store / "cnn-small").exists()  # asks first
    at.button(key="tune_confirm_delete_cnn-small").click().run()
    no_exception(at)
    assert not (store / "cnn-small").exists()
    assert {p.name for p in store.iterdir()} == {".cache", "cnn-wide", "mobilenet-none", FAILED_RUN}
    assert (cache / "kept.npz").read_bytes() == b"cache"
    assert "cnn-small" not in set(frame_with(at, "note")["run"])


def test_predict_explains_by_the_chosen_method_and_downloads_masks_and_boxes(data_dir, runs_dir, sample_image):
    import io
    import zipfile

    from PIL import Image

    at = page("predict", data_dir, runs_dir)
    at.multiselect(key="predict_runs").set_value(["cnn-small", "mobilenet-none"])
    at.file_uploader(key="predict_upload").set_value([("chest.jpeg", sample_image.read_bytes(), "image/jpeg")])
    at.selectbox(key="predict_method").set_value("occlusion")
    at.slider(key="predict_region").set_value(0.3)
    at.run()
    no_exception(at)
    captions = image_captions(at)[1:]
    assert len(captions) == 2 and all(" · Occlusion · " in c for c in captions), captions
    # a heatmap with heat gets its region outlined; an untrained run that nothing moves gets none, and says so
    assert all(("green: 30% of the heat" in c) != ("no region points to" in c) for c in captions), captions
    assert captions[0].startswith("cnn-small") and "green: 30% of the heat" in captions[0]
    button = at.get("download_button")
    assert any("Download the regions" in b.proto.label and "Occlusion, 30% of the heat" in b.proto.label for b in button)
    # what the button serves: per image and run an overlay, a mask at the image's own size and a box
    content = sample_image.read_bytes()
    saved = load.explanation_files(artifacts.load_run(runs_dir, "cnn-small"), "chest.jpeg", content, None, "occlusion", 0.3)
    assert set(saved) == {"overlay.png", "mask.png", "box.json"}
    mask = np.asarray(Image.open(io.BytesIO(saved["mask.png"])))
    assert mask.shape == Image.open(sample_image).size[::-1] and set(np.unique(mask)) <= {0, 255}
    box = json.loads(saved["box.json"])
    x0, y0, x1, y1 = (box["box"][k] for k in ("x0", "y0", "x1", "y1"))
    assert mask[y0:y1, x0:x1].max() == 255 and box["method"] == "occlusion" and box["share"] == 0.3
    assert zipfile.ZipFile(io.BytesIO(files.zip_bytes({"a.box.json": saved["box.json"]}))).read("a.box.json") == saved["box.json"]


# ---------------------------------------------------------------------------- site adaptation


def test_compare_adapts_a_run_to_a_site_and_predict_decides_at_its_point(tmp_path, monkeypatch):
    """Compare's Adapt form scores a labelled site folder, saves the point and picks it in the run's menu,
    measured on test; Predict then decides at it. The run's probabilities drifted up at this site
    (every healthy image 0.55-0.77: the run's own 0.5 calls them all pneumonia)."""
    from tests.test_site import _drifted_scores, _site_folder, plain_run

    a_run = plain_run(tmp_path / "artifacts")
    site_folder = _site_folder(tmp_path / "site")
    monkeypatch.setattr(run_kinds, "predict_files", _drifted_scores)
    monkeypatch.setattr(load, "model_for", lambda run: None)
    at = page("compare", tmp_path, a_run.folder.parent)
    at.multiselect(key="compare_runs").set_value(["plain"]).run()
    no_exception(at)
    assert "No site operating points saved" in texts(at.caption)
    at.text_input(key="site_folder").set_value(str(site_folder))
    at.text_input(key="site_name").set_value("clinic-a")
    at.selectbox(key="site_calibration").set_value("platt")
    at.button(key="site_adapt").click().run()
    no_exception(at)
    assert "Saved operating point **clinic-a** of plain" in texts(at.success)

    record = a_run.operating_point("clinic-a")
    assert record["calibration"]["method"] == "platt" and record["intervals"]["specificity"]["estimate"] == 1.0
    assert at.selectbox(key="operating_point::plain").value == "site:clinic-a"
    assert at.slider(key="threshold::plain").value == pytest.approx(record["threshold"])
    test = a_run.predictions()
    on_test = statistics.binary_metrics(test["y_true"], test["probability"], record["threshold"])
    assert f"Sensitivity **{on_test['sensitivity']:.3f}** · specificity **{on_test['specificity']:.3f}**" in texts(at.markdown)
    saved = frame_with(at, "its specificity there")
    assert saved.loc[0, "operating point"] == "clinic-a" and saved.loc[0, "specificity there"].startswith("1.000 (")
    assert saved.loc[0, "its specificity there"].startswith("0.000 (")  # the run's own threshold at this site
    curve = chart(at, "How many site images it takes")
    assert curve["layout"]["xaxis"]["title"]["text"] == "Labelled site images (count)"
    assert curve["layout"]["yaxis"]["title"]["text"] == "On the site's images (%)"
    assert {t["name"] for t in curve["data"]} >= {"sensitivity, median", "specificity, 5-95 % of draws"}

    at.button(key="site_adapt").click().run()  # the same name again
    assert "No operating point saved" in texts(at.error) and "pick another name, or replace it" in texts(at.error)
    at.text_input(key="site_folder").set_value(str(tmp_path / "nowhere"))
    at.text_input(key="site_name").set_value("clinic-b")
    at.button(key="site_adapt").click().run()
    assert "does not exist" in texts(at.error) and list(a_run.operating_points()) == ["clinic-a"]

    # Predict: the run's own threshold, then the site point (and its calibrated probability).
    image = site_folder / "NORMAL" / "IM-0003-0001.jpeg"

    def scored(run, images, engine="auto"):
        table = _drifted_scores(run, [str(image)], unusual=True).drop(columns=["path"])
        return table.assign(image=[name for name, _ in images])

    monkeypatch.setattr(load, "predict_images", scored)
    at = page("predict", tmp_path, a_run.folder.parent)
    at.multiselect(key="predict_runs").set_value(["plain"])
    at.file_uploader(key="predict_upload").set_value([("chest.jpeg", image.read_bytes(), "image/jpeg")])
    at.run()
    no_exception(at)
    own = predictions_shown(at)
    assert (own.loc[0, "label"], own.loc[0, "threshold"], own.loc[0, "operating point"]) == ("PNEUMONIA", 0.5, "validation")
    assert "calibrated probability" not in own.columns
    at.selectbox(key="predict_point::plain").set_value("clinic-a").run()
    no_exception(at)
    table = predictions_shown(at)
    assert (table.loc[0, "label"], table.loc[0, "operating point"]) == ("NORMAL", "clinic-a")
    assert table.loc[0, "threshold"] == pytest.approx(record["threshold"])
    calibration = site_adaptation.Calibration.from_dict(record["calibration"])
    assert table.loc[0, "calibrated probability"] == pytest.approx(float(calibration.apply(0.61)))
    thresholds = next(t for t in charts(at)[0]["data"] if t.get("name") == "run's threshold")["x"]
    assert thresholds[0] == pytest.approx(record["threshold"])


def test_an_out_of_fold_point_joins_compare_and_predict_as_what_it_is(tmp_path, monkeypatch):
    """A point saved by `python -m core cross-fit` (core.workflows.cross_fit) is offered in Compare's menu,
    measured on test and named for how it was chosen; it is listed without a site curve; Predict offers it."""
    from core.workflows import cross_fit, site
    from tests.test_site import plain_run

    a_run = plain_run(tmp_path / "artifacts")
    record = {"name": "out-of-fold", "kind": cross_fit.KIND, "run": "plain", "threshold": 0.62, "folds": 5,
              "site": "out-of-fold: 5 patient-grouped folds of plain's training and validation images", "rule": cross_fit.KIND,
              "n_images": 5216, "n_patients": 2900, "n_positive": 3875, "run_threshold": a_run.threshold, "calibration": None,
              "intervals": {}, "at_run_threshold": {}, "fold_thresholds": [0.6, 0.61, 0.62, 0.63, 0.64]}
    files.write_json(site.point_path(a_run, "out-of-fold"), record)
    at = page("compare", tmp_path, a_run.folder.parent)
    at.multiselect(key="compare_runs").set_value(["plain"]).run()
    no_exception(at)
    menu = at.selectbox(key="operating_point::plain")
    assert any(o.startswith("out-of-fold point out-of-fold · on train/ by fold models — 0.620") for o in menu.options)
    menu.set_value("oof:out-of-fold").run()
    no_exception(at)
    assert at.slider(key="threshold::plain").value == pytest.approx(0.62)
    test = a_run.predictions()
    on_test = statistics.binary_metrics(test["y_true"], test["probability"], 0.62)
    assert f"Sensitivity **{on_test['sensitivity']:.3f}** · specificity **{on_test['specificity']:.3f}**" in texts(at.markdown)
    listed = frame_with(at, "chosen on")
    assert listed.loc[0, "chosen on"].startswith("out-of-fold: 5 patient-grouped folds")
    titles = [(spec["layout"].get("title") or {}).get("text", "") for spec in charts(at)]
    assert not any(t.startswith("How many site images it takes") for t in titles)  # no site images, no curve

    at = page("predict", tmp_path, a_run.folder.parent)
    at.multiselect(key="predict_runs").set_value(["plain"]).run()
    no_exception(at)
    point = at.selectbox(key="predict_point::plain")
    assert point.options == ["its own threshold (validation-chosen)", "out-of-fold point out-of-fold — 0.620"]


def test_compare_starts_a_cross_fit_in_the_background_and_can_stop_it(cooked, tmp_path, monkeypatch):
    """The out-of-fold form offers the runs that can be cross-fitted, starts `python -m core cross-fit` as a
    background process (here none starts: this test's process stands in), shows its progress and stops it."""
    from core import jobs
    from core.workflows import cross_fit

    store = tmp_path / "artifacts"
    shutil.copytree(cooked, store)
    launched = []
    monkeypatch.setattr(jobs, "_launch", lambda folder, artifacts_dir, command=None, log_name=None: launched.append(command) or 0)
    at = page("compare", tmp_path, store)
    at.multiselect(key="compare_runs").set_value(["r", "r-recommended"]).run()
    no_exception(at)
    assert at.selectbox(key="oof_run").options == ["r", "r-recommended"]
    at.selectbox(key="oof_run").set_value("r").run()
    at.number_input(key="oof_folds").set_value(3).run()
    assert "3 folds × 2 model(s)" in texts(at.caption) and "`python -m core cross-fit r --folds 3`" in texts(at.caption)
    at.button(key="oof_start").click().run()
    no_exception(at)
    assert launched == [["cross-fit", "r", "--folds", "3", "--replace"]]
    assert "Cross-fitting r in the background" in texts(at.success)
    run = artifacts.load_run(store, "r")
    files.write_json(run.folder / cross_fit.OOF_DIR / cross_fit.PROGRESS_FILE,  # as the child writes it, mid-way
                     {"state": "running", "message": "r-recommended: fold 2 of 3", "folds_done": 1, "folds_total": 6,
                      "pid": os.getpid(), "host": artifacts.this_host()})
    at.run()
    no_exception(at)
    assert any("r: cross-fit running · r-recommended: fold 2 of 3 (1 of 6 folds)" in p.proto.text for p in at.get("progress"))
    at.button(key="oof_stop::r").click().run()
    assert (run.folder / cross_fit.OOF_DIR / cross_fit.STOP_FILE).exists()
    # A second start while it runs is refused, with the reason.
    with pytest.raises(artifacts.RunError, match="already being cross-fitted"):
        jobs.start_cross_fit(store, "r", 3)


def test_a_first_time_user_is_led_to_the_next_page(data_dir, empty_dir):
    """Data, Compare and Predict with no runs lead to the quick search on Tune, with its time; Tune says where to start."""
    from core.search import cost, presets

    about = cost.about(presets.preset("quick").estimate_s())
    for name in ("data", "compare", "predict"):
        at = page(name, data_dir, empty_dir)
        no_exception(at)
        links = [e.proto.label for e in at.get("page_link")]  # or the plain link when the page runs alone
        shown = " ".join(links) + texts(at.markdown)
        assert f"Start the quick search on Tune ({about} on 2 cores)" in shown, name
        assert "the recipe box beside it" in texts(at.caption), name
    at = page("tune", data_dir, empty_dir)
    assert "First time here?" in texts(at.info)


def test_a_missing_heatmap_names_its_method_once():
    from pages import _shared as ui

    not_applicable = ValueError("Attention rollout does not apply to run 'cnn': no attention layers")
    assert ui.no_heatmap_caption("cnn", "Attention rollout", not_applicable) == (
        "cnn: Attention rollout does not apply to run 'cnn': no attention layers")
    assert ui.no_heatmap_caption("cnn", "Grad-CAM", OSError("cannot read chest.jpeg")) == "cnn: no Grad-CAM (cannot read chest.jpeg)"
