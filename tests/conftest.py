"""Shared fixtures of the dashboard tests: real runs made once per session with the CLI.

The runs are tiny (32 px, 12 images per class and split, 1 trial of 1 epoch) but real: trained,
evaluated and saved by `python -m core tune` on the shared data set. Beside them, two runs are
written by hand to stand for a failed and an interrupted search. One more real run, made on another
patient split (another seed), lives in a folder of its own with a copy of cnn-small: a pair whose
test images differ, which paired tests must refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_RECIPE, make_dataset, run_cli

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = (REPO / ".." / "shared" / "data" / "chest_xray").resolve()

# name -> extra CLI arguments; two families so "best of each family" has something to choose.
FIXTURE_RUNS = {
    "cnn-small": ["--family", "custom_cnn", "--image-size", "32", "--seed", "42"],
    "cnn-wide": ["--family", "custom_cnn", "--image-size", "40", "--seed", "42"],  # same seed: same test images
    "mobilenet-none": ["--family", "mobilenet", "--weights", "none", "--image-size", "32", "--seed", "42"],
}
# Another seed splits the patients differently: its test images are not those of the runs above.
OTHER_SPLIT_RUN = "cnn-other-split"
OTHER_SPLIT_ARGS = ["--family", "custom_cnn", "--image-size", "32", "--seed", "7"]
FAILED_RUN = "broken-search"
INTERRUPTED_RUN = "cut-short"
FAILED_ERROR = "DataError: the val split has no NORMAL images: add images, or raise --max-per-class"


def _tune_command(name: str, extra: list[str], artifacts_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "core", "tune", "--data", str(DATA_DIR), "--trials", "1", "--epochs", "1",
        "--max-per-class", "12", "--name", name, "--artifacts", str(artifacts_dir), *extra,
    ]


def make_runs(artifacts_dir: Path, other_split_dir: Path | None = None) -> Path:
    """Train the fixture runs (in parallel) and add a failed and an interrupted one.

    With `other_split_dir`, the run on another patient split is trained there at the same time.
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    jobs = {name: (extra, artifacts_dir) for name, extra in FIXTURE_RUNS.items()}
    if other_split_dir is not None:
        other_split_dir.mkdir(parents=True, exist_ok=True)
        jobs[OTHER_SPLIT_RUN] = (OTHER_SPLIT_ARGS, other_split_dir)
    processes = {
        name: subprocess.Popen(
            _tune_command(name, extra, folder), cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name, (extra, folder) in jobs.items()
    }
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            raise RuntimeError(f"fixture run {name} failed:\n{output[-3000:]}")

    template = json.loads((artifacts_dir / "cnn-small" / "settings.json").read_text())
    for name, progress, log in (
        (
            FAILED_RUN,
            {"state": "failed", "phase": "failed", "trials_done": 0, "trials_total": 3, "elapsed_s": 2.5, "error": FAILED_ERROR},
            "Traceback (most recent call last):\n  File \"core/search/loop.py\", line 300, in prepare_split\n" + FAILED_ERROR + "\n",
        ),
        (
            INTERRUPTED_RUN,  # "running" with a process that is gone: shown as interrupted
            {"state": "running", "phase": "searching", "trials_done": 1, "trials_total": 3, "trial": 2, "epoch": 1,
             "epochs": 2, "elapsed_s": 40.0, "pid": 2**22 + 12345, "host": socket.gethostname()},
            "trial 2/3 epoch 1\n",
        ),
    ):
        folder = artifacts_dir / name
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps({**template, "name": name, "trials": 3}))
        (folder / "progress.json").write_text(json.dumps({**progress, "started_at": "2020-01-01T00:00:00+00:00"}))
        (folder / "process.log").write_text(log)
    return artifacts_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "train").is_dir():
        pytest.skip(f"the shared data set is not at {DATA_DIR}")
    return DATA_DIR


def once_per_session(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """`make(root)` run once per test session, into a folder every worker reads: under xdist the first
    worker makes it in the session's shared temporary folder while the others wait on a file lock (as
    a run without xdist makes it once). What it makes is read, never changed: tests that change it copy it."""
    from core import files

    if worker_id == "master":  # no xdist
        root = tmp_path_factory.mktemp(name)
        make(root)
        return root
    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with files.file_lock(root.with_name(f"shared-{name}.lock")):
        if not (root / "ready").exists():
            shutil.rmtree(root, ignore_errors=True)  # what a worker killed halfway left
            make(root)
            (root / "ready").touch()
    return root


@pytest.fixture(scope="session")
def _fixture_runs(tmp_path_factory, data_dir, worker_id) -> Path:
    """The fixture runs, made once per test session (`once_per_session`); tests that change runs work on a
    copy (`copy_runs`)."""
    return once_per_session(tmp_path_factory, worker_id, "fixture-runs", _make_fixture_runs)


def _make_fixture_runs(root: Path) -> None:
    make_runs(root / "artifacts", root / "other-split")
    shutil.copytree(root / "artifacts" / "cnn-small", root / "other-split" / "cnn-small", ignore=shutil.ignore_patterns("search.lock"))


@pytest.fixture(scope="session")
def runs_dir(_fixture_runs) -> Path:
    """An artifacts folder with three real finished runs, one failed and one interrupted."""
    return _fixture_runs / "artifacts"


@pytest.fixture(scope="session")
def other_split_dir(_fixture_runs, runs_dir) -> Path:
    """cnn-small beside a real run made on another patient split: their test images differ."""
    return _fixture_runs / "other-split"  # cnn-small copied there when the runs were made


@pytest.fixture
def empty_dir(tmp_path) -> Path:
    folder = tmp_path / "empty-artifacts"
    folder.mkdir()
    return folder


@pytest.fixture
def sample_image(data_dir) -> Path:
    return next((data_dir / "train" / "PNEUMONIA").glob("*.jpeg"))


@pytest.fixture
def copy_runs(runs_dir, tmp_path):
    """A private copy of the fixture runs, for tests that add or change runs."""

    def copy(names=None) -> Path:
        target = tmp_path / "artifacts"
        target.mkdir(exist_ok=True)
        for folder in runs_dir.iterdir():
            if folder.is_dir() and (names is None or folder.name in names):
                shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("search.lock"))
        return target

    return copy


@pytest.fixture(scope="session")
def cooked(tmp_path_factory, worker_id) -> Path:
    """The whole recipe, tiny, run once per session by the CLI (tests/test_recipe.py, tests/test_cross_fit.py,
    `once_per_session`); tests that change it copy it."""
    return once_per_session(tmp_path_factory, worker_id, "recipe", _cook) / "artifacts"


def _cook(root: Path) -> None:
    data = make_dataset(root / "data", {"train": 6, "test": 3})
    done = run_cli("recipe", "--data", str(data), "--name", "r", *TINY_RECIPE, "--artifacts", str(root / "artifacts"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "recipe r: r-recommended -> r-runner-up -> r" in done.stdout
