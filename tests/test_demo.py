"""The demo data set in the repository (issue 15, part 1): what it holds, and the dashboard on it
when no data folder is set, from the sidebar to a finished search, Compare and Predict."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import files
from core.data import demo, folders, splitting
from core.runs import artifacts
from tests.test_app import REPO, TIMEOUT, no_exception, page, texts, trace_names, wait_until_done

HOOK_SKIPS = re.compile(r"(^|/)demo[^/]*/")  # the repository hook that flags tracked images skips these


def test_the_demo_set_is_small_real_and_split_by_patient():
    files = sorted(p for p in demo.DEMO_DIR.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 3_000_000
    dataset = folders.scan_folder(demo.DEMO_DIR)
    assert not dataset.unreadable and not dataset.notes
    table = dataset.table
    counts = table.groupby(["folder_split", "class_name"]).size().to_dict()
    assert counts == {("test", "NORMAL"): 25, ("test", "PNEUMONIA"): 25, ("train", "NORMAL"): 40, ("train", "PNEUMONIA"): 40}
    for split in ("train", "test"):
        assert set(table.loc[table["folder_split"] == split, "kind"]) == {"normal", "bacteria", "virus"}
    numbers = {split: {p.split("_")[0] for p in table.loc[table["folder_split"] == split, "patient"]} for split in ("train", "test")}
    assert not numbers["train"] & numbers["test"]  # no patient (nor patient number) in both parts
    # A search keeps the demo's test/ as its test split, as it keeps the full download's.
    split, _ = splitting.assign_splits(table)
    assert (split.loc[split["split"] == "test", "folder_split"] == "test").all()
    assert (split["split"] == "test").sum() == 50
    for path in files:
        if path.suffix == ".jpeg":
            with Image.open(path) as image:
                assert max(image.size) <= demo.IMAGE_PX and image.mode == "L"
    manifest = pd.read_csv(REPO / "demo_data" / "MANIFEST.csv")
    assert sorted(manifest["file"]) == sorted(str(p.relative_to(REPO / "demo_data")) for p in files if p.suffix == ".jpeg")
    licence = (REPO / "demo_data" / "LICENSE.txt").read_text()
    assert "CC BY 4.0" in licence and "10.17632/rscbjbr9sj.2" in licence and "Kermany" in licence


def test_every_demo_file_is_under_one_folder_the_image_hook_skips():
    listed = subprocess.run(["git", "ls-files", "demo_data"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = listed.stdout.split()
    assert tracked, "the demo set is committed"
    assert all(HOOK_SKIPS.search(path) for path in tracked)
    images = subprocess.run(["git", "ls-files", "*.jpeg", "*.jpg", "*.png"], cwd=REPO, capture_output=True, text=True).stdout.split()
    # The one other place for an image is the manual's screenshots of the dashboard (docs/img/),
    # kept small so no X-ray set hides there.
    screenshots = [p for p in images if p.startswith("docs/img/") and p.endswith(".png")]
    assert all((REPO / p).stat().st_size < 300_000 for p in screenshots), screenshots
    assert all(HOOK_SKIPS.search(path) for path in images if path not in screenshots)


def test_the_demo_set_is_the_default_only_when_no_data_folder_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    monkeypatch.setattr(demo, "FULL_DATA_DIR", str(tmp_path / "no-data"))
    assert demo.default_data_dir() == str(demo.DEMO_DIR) and demo.is_demo(demo.default_data_dir())
    (tmp_path / "no-data").mkdir()
    assert demo.default_data_dir() == str(tmp_path / "no-data")  # a downloaded copy in data/chest_xray wins
    monkeypatch.setenv("CXR_DATA_DIR", "/somewhere/else")
    assert demo.default_data_dir() == "/somewhere/else" and not demo.is_demo("/somewhere/else")


def test_a_missing_data_folder_offers_the_demo_set(tmp_path, empty_dir):
    at = page("data", tmp_path / "missing", empty_dir)
    at.button(key="use_demo").click().run()
    no_exception(at)
    assert at.session_state["data_dir"] == str(demo.DEMO_DIR)
    assert "This is the **demo set**" in texts(at.markdown)


def test_with_no_data_folder_the_demo_set_runs_a_search_compare_and_predict(monkeypatch, tmp_path):
    folder = tmp_path / "artifacts"
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    monkeypatch.setattr(demo, "FULL_DATA_DIR", str(tmp_path / "no-data"))  # as on a fresh clone
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(folder))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.text_input(key="data_dir").value == str(demo.DEMO_DIR)  # the sidebar's default
    assert "**Demo set**: 130 images" in texts(at.sidebar.info)
    assert "This is the **demo set**" in texts(at.markdown)  # the Data page says so ...
    assert at.button(key="download").label.startswith("Download from Kaggle")  # ... and offers the full data
    assert {m.label: m.value for m in at.metric}["Images"] == "130"

    # The pages, run on their own with the folders the sidebar now holds (as in tests/test_app.py).
    data_dir = at.session_state["data_dir"]

    # Tune: a custom CNN search from the form, with the form's demo defaults (3 trials x 3 epochs, 128 px).
    tune = page("tune", data_dir, folder)
    tune.selectbox(key="tune_family").set_value("custom_cnn").run()
    no_exception(tune)
    assert "**demo set**" in texts(tune.info)
    sizes = (tune.number_input(key="tune_trials_custom_cnn").value, tune.number_input(key="tune_epochs_custom_cnn").value,
             tune.number_input(key="tune_size_custom_cnn").value)
    assert sizes == (3, 3, 128)
    # one trial of one epoch: the form's defaults are checked above, and their cost is not what is tested here
    tune.number_input(key="tune_trials_custom_cnn").set_value(1)
    tune.number_input(key="tune_epochs_custom_cnn").set_value(1)
    tune.text_input(key="tune_name").input("demo-cnn")
    tune.run().button(key="tune_start").click().run()
    no_exception(tune)
    assert "Started search **demo-cnn**" in texts(tune.success), texts(tune.error)
    run = wait_until_done(folder, "demo-cnn", 300)
    assert run.state == "completed", (run.folder / "process.log").read_text()[-3000:]
    assert run.settings["data_dir"] == str(demo.DEMO_DIR)
    splits = files.read_csv(run.folder / artifacts.SPLITS)
    assert (splits["split"] == "test").sum() == 50  # the demo's own test/ is the test split

    # Compare draws it.
    compare = page("compare", data_dir, folder)
    no_exception(compare)
    auc = run.metrics["test"]["auc"]
    assert any(name.startswith(f"demo-cnn (AUC {auc:.3f}") for name in trace_names(compare))

    # Predict offers the demo's X-rays as samples and scores them.
    predict = page("predict", data_dir, folder)
    no_exception(predict)
    assert "**…or take samples from the demo set**" in texts(predict.markdown)
    predict.number_input(key="predict_sample_count").set_value(2)
    predict.button(key="predict_pick").click().run()
    no_exception(predict)
    table = next(d.value for d in predict.dataframe if "true class" in d.value.columns)
    assert sorted(set(table["true class"])) == ["NORMAL", "PNEUMONIA"]
    assert table["probability"].between(0, 1).all() and set(table["run"]) == {"demo-cnn"}
