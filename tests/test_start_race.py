"""Start shows the search at once (issue 15, part 6).

The search's own process may take seconds to write its progress (importing TensorFlow on a busy
machine). Until it does, a page that lists the runs, right after Start or while Start is still
launching it, must see a starting search, never a run without progress ("None running").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from core import files, jobs
from core.runs import artifacts
from core.search.settings import SearchSettings
from tests.helpers import make_dataset
from tests.test_app import page, texts


@pytest.fixture
def slow_child(monkeypatch):
    """Launches stand in for a search that has not started yet: a process that sleeps and writes
    nothing. Records the states the run list shows while the launch is under way."""
    real_popen = subprocess.Popen
    seen: list[dict[str, str]] = []
    children: list[subprocess.Popen] = []

    def popen(command, **kwargs):
        artifacts_dir = command[command.index("--artifacts") + 1]
        seen.append({run.name: run.state for run in artifacts.list_runs(artifacts_dir)})
        child = real_popen([sys.executable, "-c", "import time; time.sleep(300)"], **kwargs)
        children.append(child)
        return child

    monkeypatch.setattr(jobs.subprocess, "Popen", popen)
    yield seen
    for child in children:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    jobs._reap()


def _settings(data_dir, artifacts_dir, name):
    return SearchSettings(
        data_dir=str(data_dir), family="custom_cnn", trials=1, epochs=1, image_size=32, name=name,
        artifacts_dir=str(artifacts_dir),
    )


def test_a_started_search_is_listed_as_running_during_and_right_after_the_launch(tmp_path, slow_child):
    data_dir = make_dataset(tmp_path / "data", {"train": 6, "test": 3})
    folder = tmp_path / "artifacts"
    name = jobs.start_search(_settings(data_dir, folder, "slow-start"))

    assert slow_child == [{"slow-start": "starting"}]  # while launching: listed, and starting
    run = artifacts.load_run(folder, name)
    assert run.state == "starting" and run.progress["pid"] == jobs._children[-1].pid
    assert jobs.LAUNCHING not in run.progress
    assert run.progress["started_at"]  # sorted among the runs like any other

    at = page("tune", data_dir, folder)  # the page's list of running searches, right after Start
    assert not at.exception
    assert "None running." not in texts(at.caption)
    assert any("slow-start** · custom_cnn" in m and "state **starting**" in m for m in texts(at.markdown).splitlines())


def test_start_from_the_form_shows_the_confirmation_and_the_live_panel_at_once(tmp_path, slow_child):
    data_dir = make_dataset(tmp_path / "data", {"train": 6, "test": 3})
    folder = tmp_path / "artifacts"
    at = page("tune", data_dir, folder)
    at.selectbox(key="tune_family").set_value("custom_cnn").run()
    at.number_input(key="tune_trials_custom_cnn").set_value(1)
    at.number_input(key="tune_size_custom_cnn").set_value(32)
    at.text_input(key="tune_name").input("form-start")
    at.run().button(key="tune_start").click().run()
    assert not at.exception
    assert "Started search **form-start**" in texts(at.success)
    assert "None running." not in texts(at.caption)
    assert any("form-start** · custom_cnn" in m for m in texts(at.markdown).splitlines())


def test_a_failed_launch_leaves_a_failed_run_not_a_starting_one(tmp_path, monkeypatch):
    data_dir = make_dataset(tmp_path / "data", {"train": 6, "test": 3})
    folder = tmp_path / "artifacts"

    def refuse(*args, **kwargs):
        raise OSError("no more processes")

    monkeypatch.setattr(jobs.subprocess, "Popen", refuse)
    with pytest.raises(OSError):
        jobs.start_search(_settings(data_dir, folder, "cannot-start"))
    run = artifacts.load_run(folder, "cannot-start")
    assert run.state == "failed" and "no more processes" in run.progress["error"]


def test_stop_while_launching_never_signals_the_launcher(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / artifacts.SETTINGS).write_text("{}")
    files.write_json(folder / artifacts.PROGRESS, {"state": "starting", "pid": os.getpid(), "host": artifacts.this_host(),
                                                      jobs.LAUNCHING: True})
    killed = []
    monkeypatch.setattr(jobs.os, "kill", lambda pid, sig: sig and killed.append(pid))  # signal 0 only probes
    jobs.stop_search(str(tmp_path), "run", force=True)
    assert killed == []
