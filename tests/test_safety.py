"""Safe defaults on a shared machine: the dashboard listens on this machine only."""

from __future__ import annotations

import re
import tomllib

from tests.helpers import REPO


def test_the_dashboard_binds_to_localhost_by_default():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^ADDRESS \?= localhost$", makefile, re.MULTILINE)
    assert "--server.address $(ADDRESS)" in makefile
