"""A search belongs to no browser session: reloading, a second tab or a second user neither stops
nor duplicates it (issue 3, acceptance 2)."""

import os

import pytest

from core.runs import artifacts
from tests.helpers import SHARED_DATA, wait_for
from tests.test_app import page, set_tiny_search, texts


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_reload_and_a_second_tab_see_one_search_that_keeps_running(tmp_path):
    first = set_tiny_search(page("tune", SHARED_DATA, tmp_path), "shared-search")
    first.number_input(key="tune_trials_custom_cnn").set_value(40)  # long enough to outlive the checks
    first.button(key="tune_start").click().run()
    assert "Started search **shared-search**" in texts(first.success)
    wait_for(lambda: artifacts.load_run(tmp_path, "shared-search").state == "running", 120, what="running")
    pid = artifacts.load_run(tmp_path, "shared-search").progress["pid"]

    # The first tab goes away (a reload is a new session too); two new sessions open the page.
    del first
    second, third = page("tune", SHARED_DATA, tmp_path), page("tune", SHARED_DATA, tmp_path)
    for session in (second, third):
        assert not session.exception
        panels = [m for m in texts(session.markdown).splitlines() if "shared-search**" in m and "state **" in m]
        assert len(panels) == 1, panels  # one live panel for the one search

    # Starting the same name again from the new tab is refused; no second process appears.
    set_tiny_search(second, "shared-search").button(key="tune_start").click().run()
    assert "already exists" in texts(second.error)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["shared-search"]
    run = artifacts.load_run(tmp_path, "shared-search")
    assert run.state == "running" and run.progress["pid"] == pid and artifacts.pid_alive(pid)

    os.kill(pid, 15)  # stop it: SIGTERM is the stop request
    wait_for(lambda: artifacts.load_run(tmp_path, "shared-search").state == "stopped", 60, what="stopped")
