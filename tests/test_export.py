"""Model cards (core.reporting.export, `python -m core export`): the zip, its card, and its model in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from core.inference import ensemble
from core.reporting import export
from core.runs import artifacts
from tests.conftest import FAILED_RUN, INTERRUPTED_RUN
from tests.helpers import run_cli

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
