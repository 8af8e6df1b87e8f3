"""Several searches at once: different names both finish, one name is one search, a shared
feature cache stays whole."""

import os
import subprocess
import sys

import numpy as np
import pytest

from core import jobs
from core.runs import artifacts
from core.search import features
from core.search.settings import SearchSettings
from tests.helpers import REPO, make_dataset, run_cli, wait_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "chest_xray", {"train": 16, "test": 13}, size=40)


def _settings(dataset, store, name, **extra):
    values = {"family": "custom_cnn", "trials": 2, "epochs": 1, "image_size": 32, **extra}
    return SearchSettings(data_dir=str(dataset), name=name, artifacts_dir=str(store), **values)


def test_two_searches_at_once_both_finish(dataset, tmp_path):
    jobs.start_search(_settings(dataset, tmp_path, "left"))
    jobs.start_search(_settings(dataset, tmp_path, "right", tuner="bayesian", seed=7))
    for name in ("left", "right"):
        wait_for(lambda n=name: artifacts.load_run(tmp_path, n).state in ("completed", "failed"), 240, what=name)
        run = artifacts.load_run(tmp_path, name)
        assert run.state == "completed", run.progress.get("error")
        assert run.metrics["trials_completed"] == 2 and len(run.predictions()) == 52
    assert artifacts.load_run(tmp_path, "right").settings["tuner"] == "bayesian"


def test_a_running_name_cannot_be_started_or_resumed_twice(dataset, tmp_path):
    # Long enough that it is still running when stopped, however slow or fast the machine.
    jobs.start_search(_settings(dataset, tmp_path, "busy", trials=50, epochs=5))
    wait_for(lambda: artifacts.load_run(tmp_path, "busy").state == "running", 120, what="running")
    with pytest.raises(artifacts.RunError, match="still running"):
        jobs.resume_search(str(tmp_path), "busy")
    second = run_cli("resume", "busy", "--artifacts", str(tmp_path))
    assert second.returncode == 2 and "already running in another process" in second.stderr
    jobs.stop_search(str(tmp_path), "busy")
    wait_for(lambda: artifacts.load_run(tmp_path, "busy").state == "stopped", 120, what="stopped")


EXTRACT = """
import sys, numpy as np, keras
from core.search import features
from core.models import backbones
keras.utils.set_random_seed(0)
spec = backbones.BackboneSpec("mobilenet_v2", 32, "none")
paths = sys.argv[3:]
values, errors = features.cached_features(backbones.build_backbone(spec), spec, paths, 32, sys.argv[1], seed=0, log=lambda m: None)
np.save(sys.argv[2], values)
"""


def test_two_processes_filling_one_feature_cache_agree(dataset, tmp_path):
    paths = sorted(str(p) for p in dataset.rglob("*.jpeg"))[:40]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    command = [sys.executable, "-c", EXTRACT, str(tmp_path)]
    # Overlapping image lists: each process has images the other needs too.
    processes = [subprocess.Popen([*command, str(tmp_path / "a.npy"), *paths[:30]], env=env, cwd=REPO),
                 subprocess.Popen([*command, str(tmp_path / "b.npy"), *paths[10:]], env=env, cwd=REPO)]
    assert [p.wait(timeout=240) for p in processes] == [0, 0]
    cache_files = list((tmp_path / "features").glob("*.npz"))
    assert len(cache_files) == 1
    with np.load(cache_files[0]) as stored:
        keys, values = stored["keys"], stored["features"]
    assert len(keys) == len(set(keys)) == 40, "every image once, none lost, none twice"
    assert set(keys) == {features.image_key(p) for p in paths}
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    shared = paths[10:30]
    from_a = a[[paths[:30].index(p) for p in shared]]
    from_b = b[[paths[10:].index(p) for p in shared]]
    np.testing.assert_allclose(from_a, from_b, atol=1e-5)
    index = {k: i for i, k in enumerate(keys)}
    np.testing.assert_allclose(values[[index[features.image_key(p)] for p in paths[:30]]], a, atol=1e-5)
