"""Benchmark: time to first render of each dashboard page with 200 saved runs (BENCH_RUNS to change).

Run by hand from the repository root: `python bench/bench_dashboard.py`. It trains one tiny real
run (custom CNN, 32 px, on ../shared data), copies it to 200 runs (every tenth archived, every
third with a note and tags), and renders every page with
Streamlit's AppTest, first with cold caches (a fresh process-level cache) and then warm. Then it
adds a synthetic run of 100 trials (tests.helpers.make_trials_run: trials.json and a trial
history, no model) and times the Tune page with that run's Trials view open (target: < 2 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "chest_xray"
PAGES = ("data", "tune", "compare", "predict")
RUNS = int(os.environ.get("BENCH_RUNS", "200"))
TRIALS_RUN, TRIALS = "trials-100", 100


def make_runs(store: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "core", "tune", "--data", str(DATA), "--family", "custom_cnn", "--trials", "1",
         "--epochs", "1", "--image-size", "32", "--max-per-class", "40", "--name", "run-00", "--artifacts", str(store)],
        cwd=REPO, check=True, capture_output=True,
    )
    for i in range(1, RUNS):
        name = f"run-{i:02d}"
        shutil.copytree(store / "run-00", store / name)
        settings = json.loads((store / name / "settings.json").read_text())
        (store / name / "settings.json").write_text(json.dumps({**settings, "name": name}))
        if i % 3 == 0:
            (store / name / "notes.json").write_text(json.dumps({"note": f"copy {i}", "tags": ["bench", f"group{i % 4}"], "archived": i % 10 == 0}))


def render(page: str, store: Path, state: dict | None = None) -> float:
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "pages" / f"{page}.py"), default_timeout=300)
    app.session_state["data_dir"] = str(DATA)
    app.session_state["artifacts_dir"] = str(store)
    for key, value in (state or {}).items():
        app.session_state[key] = value
    start = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - start
    if app.exception:
        raise RuntimeError(f"{page}: {app.exception[0].value}")
    return elapsed


def main() -> None:
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)  # "missing ScriptRunContext" in bare mode
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder)
        make_runs(store)
        # A real server pays for Streamlit's own start-up (component discovery, ~0.6 s here) once,
        # when it starts, not on a page: pay it here on an empty script, outside the clock.
        from streamlit.testing.v1 import AppTest

        AppTest.from_string("import streamlit as st").run()
        print(f"{RUNS} saved runs, {os.cpu_count()} cores; seconds to render each page")
        print(f"{'page':<10}{'first':>10}{'again':>10}")
        for page in PAGES:
            first, again = render(page, store), render(page, store)
            print(f"{page:<10}{first:>10.2f}{again:>10.2f}")
        trials_view(store)


def trials_view(store: Path) -> None:
    """The Trials view of a 100-trial run: the Tune page with it open, minus the page without it."""
    from tests.helpers import make_trials_run

    open_it = {"tune_detail": TRIALS_RUN}
    without = min(render("tune", store) for _ in range(2))  # the page with another run's details open
    make_trials_run(store, TRIALS_RUN, TRIALS)
    first, again = render("tune", store, open_it), render("tune", store, open_it)
    print(f"Trials view of a {TRIALS}-trial run (Tune page with it open; target < 2 s): "
          f"first {first:.2f} s, again {again:.2f} s; the view alone about {first - without:.2f} s / {again - without:.2f} s")


if __name__ == "__main__":
    main()
