"""Clean output (issue 15, part 2): no TensorFlow/absl start-up lines in what the command line
prints, in a run's log.txt or in a background search's process.log; `--help` imports no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core import cli, console, jobs
from core.runs import artifacts
from core.search.settings import TUNERS, SearchSettings
from tests.helpers import REPO, make_dataset, run_cli, wait_for

# What TensorFlow 2.21 writes to fd 2 at start-up on this machine, whatever TF_CPP_MIN_LOG_LEVEL says.
STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795966948.648796   24062 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795966895.045953   23671 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
MARKERS = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "XNNPACK delegate", "rebuild TensorFlow")


def no_startup_lines(text: str) -> None:
    found = [line for line in text.splitlines() if any(marker in line for marker in MARKERS)]
    assert not found, found


def test_startup_lines_are_noise_and_our_lines_and_warnings_are_not():
    assert all(console.is_noise(line) for line in STARTUP_LINES)
    for line in (
        "[12:00:01] decoding 72 images at 32 px (cached per size)",
        "error: data folder /x does not exist: pass the folder that holds train/ and test/",
        "W0000 00:00:1795966895.045953   23671 cpu_allocator_impl.cc:83] Allocation of 1234 exceeds 10% of free system memory.",
        "/x/core/models/families.py:12: UserWarning: something real",
    ):
        assert not console.is_noise(line), line


def test_help_does_not_import_tensorflow():
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['python -m core', 'tune', '--help']\n"
        "try:\n    runpy.run_module('core', run_name='__main__')\n"
        "except SystemExit as exit:\n    code = exit.code\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'keras_tuner')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    from core.models import families

    assert f"--family {{{','.join(sorted(families.FAMILIES))}}}" in done.stdout  # every registered family
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout[-500:] + done.stderr[-2000:]


def test_the_parsers_choices_are_the_librarys():
    from core.models import backbones, families

    assert cli.MODES == families.MODES and cli.TUNERS == TUNERS
    assert cli.MOBILENET_VERSIONS == tuple(sorted(backbones.MOBILENET_VERSIONS))
    from core.inference import methods

    assert list(cli.EXPLANATION_METHODS) == list(methods.METHODS)
    from core.models import imported

    assert list(cli.IMPORT_SCALINGS) == list(imported.SCALINGS)
    from core.inference import quantization
    from core.models import engine

    assert cli.SEARCH_ENGINES == engine.BUILT_ENGINES and cli.ENGINES == engine.ENGINES
    assert quantization.ENGINE == engine.INT8  # spelled out there so that asking about a run loads no TensorFlow
    from core.evidence import site_adaptation

    assert list(cli.SITE_RULES) == list(site_adaptation.RULES) and cli.SITE_CALIBRATIONS == site_adaptation.CALIBRATIONS
    assert cli.SITE_RULES[0] == site_adaptation.DEFAULT_RULE


def test_progress_bar_follows_the_long_steps():
    assert console.describe({"phase": "decoding images", "message": "decoded 200/400"}) == ("decoded 200/400", 0.5)
    label, fraction = console.describe({"phase": "searching", "trials_total": 4, "trials_done": 1, "trial": 2, "epoch": 2, "epochs": 2})
    assert label == "trial 2/4 epoch 2/2" and fraction == pytest.approx(1.5 / 4)
    assert console.describe({"phase": "evaluating", "message": "evaluating the best model"}) is None
    assert console.render_bar("x", 0.5, width=10) == "[#####.....]  50% x"
    assert not console.ProgressBar().enabled  # pytest's stderr is no terminal: logs stay line-based


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), {"train": 6, "test": 3})


def test_cli_output_and_run_log_have_no_tensorflow_startup_lines(tiny_data, tmp_path):
    # TensorFlow prints these lines whatever TF_CPP_MIN_LOG_LEVEL says (run_cli sets 2).
    done = run_cli(
        "tune", "--data", str(tiny_data), "--family", "custom_cnn", "--trials", "1", "--epochs", "1",
        "--image-size", "32", "--name", "clean", "--artifacts", str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    no_startup_lines(done.stdout + done.stderr)
    assert "searching: random search, 1 trials" in done.stdout and "test: AUC" in done.stdout  # ours are kept
    log = (tmp_path / "clean" / artifacts.LOG).read_text()
    no_startup_lines(log)
    assert "done: test AUC" in log
    evaluated = run_cli("evaluate", "--run", "clean", "--data", str(tiny_data), "--artifacts", str(tmp_path))
    # ^ the TF Lite engine runs here: its XNNPACK delegate line is gone too
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    no_startup_lines(evaluated.stdout + evaluated.stderr)
    assert json.loads((tmp_path / "clean" / "metrics.json").read_text())["test"]["auc"] >= 0


def test_a_background_searchs_process_log_is_clean(tiny_data, tmp_path):
    name = jobs.start_search(SearchSettings(
        data_dir=str(tiny_data), family="custom_cnn", trials=1, epochs=1, image_size=32, name="bg", artifacts_dir=str(tmp_path),
    ))
    run = wait_for(lambda: (r := artifacts.load_run(tmp_path, name)).state not in artifacts.ACTIVE_STATES and r, 180, what="the search")
    output = (run.folder / jobs.PROCESS_LOG).read_text()
    assert run.state == "completed", output[-3000:]
    no_startup_lines(output)
    assert "done: test AUC" in output
