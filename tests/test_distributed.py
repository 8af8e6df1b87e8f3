"""Keras Tuner's distributed mode: one chief oracle and two workers on 127.0.0.1 share one run."""

import json
import os
import socket
import subprocess
import sys

from core import files
from core.runs import artifacts
from tests.helpers import REPO, make_dataset


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "core", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_chief_and_two_workers_share_the_trials_of_one_run(tmp_path):
    data = make_dataset(tmp_path / "chest_xray", {"train": 16, "test": 13}, size=40)
    store = tmp_path / "artifacts"
    oracle = f"127.0.0.1:{_free_port()}"
    chief = _start("tune", "--data", str(data), "--family", "custom_cnn", "--trials", "6", "--epochs", "1",
                   "--image-size", "32", "--name", "shared", "--artifacts", str(store),
                   "--distributed", "chief", "--oracle", oracle)
    workers = [_start("worker", "shared", "--oracle", oracle, "--id", f"w{i}", "--artifacts", str(store)) for i in (1, 2)]
    try:
        worker_output = [w.communicate(timeout=300)[0] for w in workers]
        chief_output = chief.communicate(timeout=120)[0]
    finally:
        for process in (chief, *workers):
            process.kill()
    assert all(w.returncode == 0 for w in workers), worker_output
    assert chief.returncode == 0, chief_output[-3000:]

    ran = {f"w{i}": json.loads((store / "shared" / "workers" / f"w{i}.json").read_text())["trials_run"] for i in (1, 2)}
    assert ran["w1"] and ran["w2"], f"both workers trained trials: {ran}"
    assert not set(ran["w1"]) & set(ran["w2"]), "no trial was trained twice"
    trials = files.read_json(store / "shared" / "trials.json")
    completed = {t["trial_id"] for t in trials if t["status"] == "COMPLETED"}
    assert completed == set(ran["w1"]) | set(ran["w2"]) and len(completed) == 6
    run = artifacts.load_run(store, "shared")
    assert run.state == "completed" and run.metrics["trials_completed"] == 6
    assert (run.folder / "model.keras").exists() and len(run.predictions()) == 52
