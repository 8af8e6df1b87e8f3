"""Screenshots of the Tune page's Trials view in headless Chromium, for a synthetic 20-trial run.

Run by hand from the repository root: `python tools/screenshot_trials.py [OUT_DIR]` (default
$TMPDIR/cxr-screenshots/trials). It writes a synthetic run (tests.helpers.make_trials_run: trials.json and a
trial history, no model) into a temporary artifacts folder, serves the dashboard with
`streamlit run` as tests/test_browser.py does, opens the Tune page in the system Chromium and
saves `trials.png` (the table and the first tab) and `trials_<tab>.png` for every other tab.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import make_trials_run  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _served, _wait_until_rendered  # noqa: E402

RUN = "synthetic-20-trials"
TABS = ("Parallel coordinates", "Score by hyperparameter", "Importance", "Learning curves")


def _grow_to_fit(page) -> None:
    """Streamlit scrolls inside its main block: make the viewport as tall as the page."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(int(height) + 40, 9000)})
    page.wait_for_timeout(800)


def _shot_from(page, anchor, path: Path, height: int = 1250) -> None:
    box = anchor.bounding_box()
    page.screenshot(path=str(path), clip={"x": 0, "y": max(box["y"] - 10, 0), "width": page.viewport_size["width"], "height": height})
    print(f"screenshot: {path}")


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "artifacts"
        store.mkdir()
        make_trials_run(store, RUN, 20, seed=3)
        env = dict(os.environ, CXR_ARTIFACTS_DIR=str(store), CXR_DATA_DIR=str(REPO / "demo_data" / "chest_xray"),
                   PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        with _served(env) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/tune")
            _wait_until_rendered(page, "Optimisation history")
            _grow_to_fit(page)
            anchor = page.get_by_text("Run details", exact=True).first
            _shot_from(page, anchor, out / "trials.png", height=1150)
            for tab in TABS:
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(1500)  # plotly draws the figure of a newly shown tab
                _grow_to_fit(page)  # a taller tab makes the page taller
                height = 1100 if tab == "Score by hyperparameter" else 800  # its panels take two rows
                _shot_from(page, page.get_by_role("tab", name=tab), out / f"trials_{tab.lower().replace(' ', '_')}.png", height=height)
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "cxr-screenshots" / "trials")
