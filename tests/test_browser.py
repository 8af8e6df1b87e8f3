"""One real-browser test: the dashboard served by `streamlit run`, every page opened in Chromium.

Uses the system Chromium (`apt-get install chromium`) through Playwright's Python package, so no
browser is downloaded. Screenshots of every page go to $CXR_SCREENSHOT_DIR (default
/tmp/cxr-screenshots/<artifacts kind>/<page>.png); their paths are printed.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
# url path -> text the page must show once rendered, with the fixture runs and without runs
# (Data is the default page: it lives at the app's root, "/").
PAGES = {
    "": ("Images per split and class", "Images per split and class"),
    "tune": ("Finished, stopped and failed runs", "No runs in"),
    "compare": ("ROC curves on the test split", "No finished runs with test results"),
    "predict": ("Upload chest X-rays", "No saved models in"),
}

WIDTH = 1280  # a common laptop screen: every page, every table on it and the report must fit it
NONE = re.compile(r"(?<![\w-])None(?![\w-])")  # a literal None leaking from Python into the page

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def _wait_until_rendered(page, expected: str, timeout_ms: int = 90_000) -> None:
    """Wait for the page's own text, then for the script run to finish (no 'Running' widget)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.get_by_text(expected, exact=False).first.wait_for(timeout=timeout_ms)
    quiet_since = None
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            break
        time.sleep(0.2)
    page.wait_for_timeout(500)  # let plotly finish drawing


def _select_first_row(page) -> None:
    """Tick the first row of the last table (a canvas grid: click where its checkbox is drawn)."""
    grid = page.locator('[data-testid="stDataFrame"]').last
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)
    page.locator('[data-testid="stImage"]').first.wait_for(timeout=30_000)
    _wait_until_rendered(page, "true: ")


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the viewport to fit it."""
    height = page.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stMainBlockContainer\"]']"
        ".map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight), 900)"
    )
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(600)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 900})


@contextmanager
def _served(env: dict) -> Iterator[str]:
    """`streamlit run` the dashboard on a free loopback port with `env`; yields its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"), "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.address", "127.0.0.1",
        ],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(base, server)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.mark.parametrize("kind", ["empty", "full"])
def test_every_page_renders_in_a_browser(kind, browser, runs_dir, empty_dir, data_dir, capsys):
    artifacts_dir = runs_dir if kind == "full" else empty_dir
    env = dict(
        os.environ, CXR_ARTIFACTS_DIR=str(artifacts_dir), CXR_DATA_DIR=str(data_dir),
        PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
    )
    shots = Path(os.environ.get("CXR_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "cxr-screenshots") / kind
    shots.mkdir(parents=True, exist_ok=True)
    saved = []
    try:
        with _served(env) as base:
            _check_every_page(browser, base, kind, shots, saved, (str(data_dir), str(artifacts_dir)))
    finally:
        with capsys.disabled():
            for shot in saved:
                print(f"\nscreenshot: {shot}", end="")
            print()


def _check_every_page(browser, base: str, kind: str, shots: Path, saved: list[Path], folders: tuple[str, ...]) -> None:
    """Every page opened in Chromium: its text, no exception, a screenshot; then a wrong data folder."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    for path, texts in PAGES.items():
        expected = texts[0] if kind == "full" else texts[1]
        page.goto(f"{base}/{path}")
        _wait_until_rendered(page, expected)
        if kind == "full" and path == "predict":  # score two images of the data folder and a black one, flagged
            page.get_by_role("button", name="Pick at random").click()
            _wait_until_rendered(page, "All predictions")
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                files=[{"name": "black.jpeg", "mimeType": "image/jpeg", "buffer": _black_jpeg()}]
            )
            _wait_until_rendered(page, "Not assessed: unlike the training X-rays")
            assert page.get_by_text("· not assessed").count() > 0  # the grey bar's text, no class
        if kind == "full" and path == "compare":  # select the first image of the per-image table
            _select_first_row(page)
        shot = shots / f"{path or 'data'}.png"
        _screenshot(page, shot)
        saved.append(shot)
        errors = page.locator('[data-testid="stException"]')
        assert errors.count() == 0, f"{path or 'data'} page shows an exception: {errors.first.inner_text()[:2000]}"
        if kind == "full" and path == "compare":
            legend = page.locator(".js-plotly-plot .legendtext").evaluate_all("els => els.map(e => e.textContent)")
            assert any(text.startswith("cnn-") and "AUC" in text for text in legend), legend
            assert any(text.startswith("mobilenet-none (AUC") for text in legend), legend
        if kind == "full" and path == "tune":
            assert page.get_by_text("broken-search").count() > 0
        if kind == "full":
            _check_fits(page, path or "data")
        if kind == "full" and path == "compare":
            _check_report(page, shots, saved, folders)
    # The sidebar checks the folders: a wrong data folder says what is wrong with it.
    page.goto(base)
    _wait_until_rendered(page, PAGES[""][0])
    box = page.get_by_role("textbox", name="Data folder")
    box.fill("/no/such/folder")
    box.press("Enter")
    page.get_by_role("button", name="Download from Kaggle", exact=False).wait_for(timeout=30_000)
    assert "does not exist" in page.locator('[data-testid="stSidebar"] [data-testid="stAlert"]').first.inner_text()
    _wait_until_rendered(page, "Get the public data set")
    _screenshot(page, shots / "data-missing.png")
    saved.append(shots / "data-missing.png")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.close()


def _black_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (300, 300), 0).save(buffer, format="JPEG")
    return buffer.getvalue()


def _check_fits(page, name: str) -> None:
    """At WIDTH: the page body does not scroll sideways, no literal None shows, and every table shows
    all its columns without sideways scrolling."""
    widths = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return [document.documentElement.scrollWidth, m.scrollWidth, m.clientWidth]; }"
    )
    assert widths[0] <= WIDTH and widths[1] <= widths[2] + 1, f"{name} page overflows sideways: {widths}"
    text = page.inner_text("body")
    leaked = [text[max(0, m.start() - 60) : m.end() + 20] for m in NONE.finditer(text)]
    assert not leaked, f"{name} page shows a literal None: {leaked}"
    grids = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stDataFrame"]')].map(g => {
            const s = g.querySelector('.dvn-scroller');
            const header = [...g.querySelectorAll('th')].map(th => th.textContent.trim()).join(' | ');
            return [header, s ? s.scrollWidth : -1, s ? s.clientWidth : -1]; })"""
    )
    assert grids or name not in ("tune", "compare"), f"no tables on the {name} page"
    for header, scroll_width, client_width in grids:
        assert scroll_width <= client_width + 2, (
            f"the {name} page's table [{header}] scrolls sideways at {WIDTH} px: {scroll_width} > {client_width}")


def _check_report(page, shots: Path, saved: list[Path], folders: tuple[str, ...]) -> None:
    """The report downloaded from Compare: no absolute path, and it fits WIDTH."""
    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name="Download report (HTML)").click()
    path = shots / "report.html"
    download.value.save_as(path)
    html = path.read_text(encoding="utf-8")
    for folder in (*folders, str(REPO), tempfile.gettempdir() + "/"):
        assert folder not in html, f"the report shows the path {folder}"
    assert not re.search(r"<td>/[\w.-]+/", html)
    page.goto(path.as_uri(), wait_until="load")  # the same tab: the next page is opened by its URL
    page.wait_for_timeout(1000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= WIDTH, f"the report is {width} px wide in a {WIDTH} px window"
    page.screenshot(path=str(shots / "report.png"), full_page=True)
    saved.append(shots / "report.png")


def test_a_fresh_clone_runs_a_demo_search_compares_and_predicts_in_a_browser(browser, tmp_path, capsys):
    """No data folder set (as on a fresh clone): the demo set is picked up, a search started from the
    Tune form finishes, Compare draws it and Predict scores a demo sample."""
    artifacts_dir = tmp_path / "artifacts"
    if (REPO / "data" / "chest_xray").exists():
        pytest.skip("data/chest_xray exists in this checkout: the demo set is not the default here")
    env = {k: v for k, v in os.environ.items() if k != "CXR_DATA_DIR"}
    env.update(CXR_ARTIFACTS_DIR=str(artifacts_dir), CXR_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    shots = Path(os.environ.get("CXR_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "cxr-screenshots") / "demo"
    shots.mkdir(parents=True, exist_ok=True)
    with _served(env) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base)
        _wait_until_rendered(page, "demo set")
        page.goto(f"{base}/tune")
        _wait_until_rendered(page, "New search")
        for label in ("Trials", "Epochs per trial"):  # one trial of one epoch: the form, not the search's cost, is tested
            box = page.get_by_label(label, exact=True)
            box.fill("1")
            box.press("Enter")
        _wait_until_rendered(page, "New search")
        page.get_by_role("button", name="Start search").click()
        _wait_until_rendered(page, "Started search")
        deadline = time.monotonic() + 300
        while not list(artifacts_dir.glob("*/metrics.json")):
            assert time.monotonic() < deadline, "the demo search did not finish in 5 minutes"
            time.sleep(2)
        name = next(artifacts_dir.glob("*/metrics.json")).parent.name
        assert name.startswith("custom_cnn-")  # on the demo set the form starts with the custom CNN
        settings = json.loads((artifacts_dir / name / "settings.json").read_text())
        assert (settings["trials"], settings["epochs"]) == (1, 1)  # what was typed into the form
        page.goto(f"{base}/compare")
        _wait_until_rendered(page, "ROC curves on the test split")
        legend = page.locator(".js-plotly-plot .legendtext").evaluate_all("els => els.map(e => e.textContent)")
        assert any(text.startswith(f"{name} (AUC") for text in legend), legend
        _screenshot(page, shots / "compare.png")
        page.goto(f"{base}/predict")
        _wait_until_rendered(page, "Upload chest X-rays")
        page.get_by_role("button", name="Pick at random").click()
        _wait_until_rendered(page, "All predictions")
        _screenshot(page, shots / "predict.png")
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
    with capsys.disabled():
        print(f"\nscreenshots: {shots}")
