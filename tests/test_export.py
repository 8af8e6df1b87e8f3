"""Model cards (core.reporting.export, `python -m core export`): the zip, its card, and its model in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from core.data import tasks
from core.inference import ensemble
from core.reporting import export
from core.runs import artifacts
from tests.conftest import FAILED_RUN, INTERRUPTED_RUN
from tests.helpers import make_dataset, model_run, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


def test_export_zip_loads_in_a_fresh_process_and_gives_the_saved_probabilities(copy_runs, tmp_path):
    store = copy_runs(["cnn-small"])
    out = tmp_path / "cnn-small.zip"
    result = run_cli("export", "cnn-small", "--out", str(out), "--artifacts", str(store))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        assert {"cnn-small/model.keras", "cnn-small/model.tflite", "cnn-small/threshold.json", "cnn-small/MODEL_CARD.md"} <= names
        archive.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / "cnn-small"
    card = (folder / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "Not a medical device", "## Training data", "## Metrics", "95%", "## Validation against test",
                    "## Limitations", "## How to load it and predict", "safe_mode=True"):
        assert section in card, section
    run = artifacts.load_run(store, "cnn-small")
    threshold = run.metrics["threshold"]
    assert f"{threshold:.6f}" in card and export.json.loads((folder / "threshold.json").read_text())["threshold"] == threshold
    # The card's own snippet, run as written (file names substituted) in a new Python process.
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    saved = run.predictions().head(6)
    program = "\n".join(
        snippet.replace('"model.keras"', repr(str(folder / "model.keras"))).replace('"xray.jpeg"', repr(path)).replace("print(p, ", "print('P=%r' % p, ")
        for path in saved["path"]
    )
    output = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert output.returncode == 0, output.stderr[-2000:]
    probabilities = [float(line.split()[0][2:]) for line in output.stdout.splitlines() if line.startswith("P=")]
    np.testing.assert_allclose(probabilities, saved["probability"], atol=1e-4)


def test_export_refuses_unknown_unfinished_and_ensemble_runs(copy_runs, tmp_path):
    store = copy_runs(["cnn-small", "cnn-wide", FAILED_RUN, INTERRUPTED_RUN])
    for name, expected in (("nope", "no run named"), (FAILED_RUN, "not finished"), (INTERRUPTED_RUN, "not finished")):
        result = run_cli("export", name, "--out", str(tmp_path / "x.zip"), "--artifacts", str(store))
        lines = result.stderr.strip().splitlines()  # TensorFlow's start-up chatter may come first (not ours)
        errors = [line for line in lines if line.startswith("error: ")]
        assert result.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0] and expected in errors[0], result.stderr
    assert not (tmp_path / "x.zip").exists()
    ensemble.build_ensemble(store, ["cnn-small", "cnn-wide"], "duo")
    with pytest.raises(artifacts.RunError, match="is an ensemble.*export its members"):
        export.export_bytes(store, "duo")


def _export_of(store, name: str, tmp_path):
    """Export run `name` of `store` and unzip it: the folder with its files."""
    out = export.export_run(store, name, tmp_path / f"{name}.zip")
    with zipfile.ZipFile(out) as archive:
        archive.extractall(tmp_path / "unzipped")
    return tmp_path / "unzipped" / name


def _card_snippet_says(folder, paths: list[str]) -> list[list[str]]:
    """What the card's snippet prints for each image, run as written (file names substituted) in a new Python process."""
    snippet = re.search(r"```python\n(.*?)```", (folder / "MODEL_CARD.md").read_text(), re.S).group(1)
    program = "\n".join(
        snippet.replace('"model.keras"', repr(str(folder / "model.keras"))).replace('"xray.jpeg"', repr(path)).replace("print(p, ", "print('P=%r' % p, ")
        for path in paths
    )
    output = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=folder,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert output.returncode == 0, output.stderr[-2000:]
    return [line[2:].split(maxsplit=3) for line in output.stdout.splitlines() if line.startswith("P=")]


def _away_from(saved, threshold: float):
    """The rows whose probability is not within rounding of the threshold (their label cannot flip)."""
    rows = saved[(saved["probability"] - threshold).abs() > 1e-5]
    assert len(rows) >= len(saved) // 2
    return rows


def test_a_bacterial_vs_viral_export_names_viral_its_positive_class(tmp_path):
    data = make_dataset(tmp_path / "data", {"train": 6, "test": 3})
    model_run(tmp_path / "artifacts", "bv", data, task="bacterial_vs_viral", seed=2)  # a seed whose test images get both labels
    run = artifacts.load_run(tmp_path / "artifacts", "bv")
    folder = _export_of(tmp_path / "artifacts", "bv", tmp_path)
    rule = json.loads((folder / "threshold.json").read_text())
    assert rule["task"] == "bacterial_vs_viral" and rule["threshold"] == run.threshold
    assert rule["classes"] == ["bacteria", "virus"] and rule["class_names"] == ["bacterial", "viral"]
    assert rule["positive_class"] == "virus" and rule["decision"] == "probability >= threshold means virus, else bacteria"
    card = (folder / "MODEL_CARD.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert '"virus" if p >= ' in snippet and "PNEUMONIA" not in snippet and "`p` is the probability of viral" in card

    saved = run.predictions()
    said = _card_snippet_says(folder, list(saved["path"]))
    np.testing.assert_allclose([float(words[0]) for words in said], saved["probability"], atol=1e-4)
    labels = dict(zip(saved["path"], (words[1] for words in said), strict=True))
    away = _away_from(saved, run.threshold)
    assert [labels[p] for p in away["path"]] == away["prediction"].tolist()
    assert set(labels.values()) == {"bacteria", "virus"}


def test_a_three_class_export_gives_its_classes_and_the_two_step_rule(tmp_path):
    data = make_dataset(tmp_path / "data", {"train": 6, "test": 3})
    model_run(tmp_path / "artifacts", "three", data, task="three_class", seed=0)
    run = artifacts.load_run(tmp_path / "artifacts", "three")
    folder = _export_of(tmp_path / "artifacts", "three", tmp_path)
    rule = json.loads((folder / "threshold.json").read_text())
    assert rule["task"] == "three_class" and rule["classes"] == list(tasks.THREE_CLASS.classes)
    assert rule["decision"] == "normal when probability (the binary view) < threshold, else the likelier of bacteria, virus"
    assert rule["positive_class"] == "PNEUMONIA" and rule["binary_view"] == (
        "probability = 1 - P(normal) = P(bacteria) + P(virus); probability >= threshold means PNEUMONIA, else NORMAL")
    assert "one probability per class (normal, bacteria, virus, in this order)" in (folder / "MODEL_CARD.md").read_text()

    saved = run.predictions()
    said = _card_snippet_says(folder, list(saved["path"]))
    np.testing.assert_allclose([float(words[0]) for words in said], saved["probability"], atol=1e-4)
    columns = [tasks.probability_column(c) for c in tasks.THREE_CLASS.classes]
    np.testing.assert_allclose([json.loads(words[3]) for words in said], saved[columns].to_numpy(float), atol=1e-4)
    assert [words[2] for words in said] == saved["predicted_class"].tolist()  # normal below the threshold, else the likelier kind
    labels = dict(zip(saved["path"], (words[1] for words in said), strict=True))
    away = _away_from(saved, run.threshold)
    assert [labels[p] for p in away["path"]] == away["prediction"].tolist()  # the binary view
    assert set(labels.values()) == {"NORMAL", "PNEUMONIA"}
