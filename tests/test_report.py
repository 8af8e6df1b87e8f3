"""core.reporting.report: one self-contained HTML file, checked as text and opened in headless Chromium."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import plotly.io
import pytest

from core.evidence import run_evidence, shift, statistics
from core.reporting import report, wording
from core.runs import artifacts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
RUNS = ("cnn-small", "cnn-wide", "mobilenet-none")


@pytest.fixture(scope="module")
def fixture_runs(runs_dir, other_split_dir) -> list[artifacts.Run]:
    """The three fixture runs plus one made on another patient split (a pair that cannot be paired)."""
    return [artifacts.load_run(runs_dir, name) for name in RUNS] + [artifacts.load_run(other_split_dir, "cnn-other-split")]


@pytest.fixture(scope="module")
def report_file(fixture_runs, tmp_path_factory) -> Path:
    html = report.build_report(fixture_runs, n_resamples=300, seed=4, generated_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_report_sets_validation_beside_test(fixture_runs, report_file):
    html = report_file.read_text(encoding="utf-8")
    section = html.split("<h2>Validation against test</h2>")[1].split("<h2>")[0]
    assert plotly.io.json.to_json_plotly("Validation → test")[1:-1] in section  # the figure
    assert "external = the download&#x27;s own test/ folder" in section  # the shared data's own test/, once
    for run in fixture_runs:
        expected = shift.for_run(run)
        rows = section.split(f"<td>{run.name}</td>")
        assert "<td>external</td>" in rows[-1].split("</tr>")[0]
        for metric, title in shift.METRICS.items():
            val, test, change = expected.val[metric], expected.test[metric], expected.change(metric)
            assert f"<td>{run.name}</td><td>{title}</td><td>{val:.3f}</td><td>{test:.3f}</td><td>{change:.3f}</td>" in section
    for sentence in shift.shift_warnings([shift.for_run(run) for run in fixture_runs]):
        assert f"<li>{report._e(sentence)}</li>" in section


def test_report_holds_the_evidence_of_every_run(fixture_runs, report_file):
    html = report_file.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "Generated 2026-01-02 03:04 UTC" in html
    assert "Youden&#x27;s J on the validation split" in html  # the tool's threshold rule
    assert "300 resamples, seed 4" in html
    for run in fixture_runs:
        ev = run_evidence.run_evidence(run.name, run.predictions(), run.metrics["threshold"], n_resamples=300, seed=4)
        auc = ev.interval("auc")
        # the metrics table row and the ROC legend carry the same interval
        assert f"{auc.estimate:.3f} <span class='nowrap'>({auc.low:.3f}–{auc.high:.3f})</span>" in html
        legend = f"{run.name} (AUC {auc.estimate:.3f},<br>95% CI {auc.low:.3f}–{auc.high:.3f})"
        assert plotly.io.json.to_json_plotly(legend)[1:-1] in html  # as plotly writes it into the page
        assert f"id='run-{run.name}'" in html  # its settings and data section
        assert f"<td>{run.settings['seed']}</td>" in html
        # its operating points, chosen on its validation predictions
        val = run.val_predictions()
        point = {p.name: p for p in statistics.operating_points(val["y_true"], val["probability"])}["sens@spec90"]
        assert f"<td>{point.threshold:.4f}</td>" in html.split(f"id='run-{run.name}'")[1].split("</section>")[0]
    assert html.count("(chosen on validation)") >= 4 * len(fixture_runs)
    assert "descriptive (optimistic" not in html
    # paired tests: every pair on the same images is tested by patient, Holm-adjusted over the three
    # pairs, with the sentences core.evidence writes; the other split's pairs are refused with the reason
    family, refused = run_evidence.pairwise_evidence([(r.name, r.predictions(), r.metrics["threshold"]) for r in fixture_runs])
    assert len(family) == 3 and len(refused) == 3 and all(p.n_comparisons == 3 for p in family)
    section = html.split("<h2>Paired tests</h2>")[1].split("<h2>")[0]
    for pair in family:
        sentences = f"{wording.auc_sentence(pair)} {wording.errors_sentence(pair)}"
        assert escape(sentences, quote=True) in section
        assert "Holm-adjusted over 3 pairs" in wording.auc_sentence(pair) or "undefined" in wording.auc_sentence(pair)
        assert f"<td>{wording.format_p(pair.p_auc_adjusted)}</td>" in section
    assert "Holm-adjusted over them" in section and "image-level p, DeLong / McNemar (images as independent)" in section
    assert "clustered by patient (Obuchowski 1997)" in section
    assert section.count("not tested: runs were evaluated on different test images") == 3
    assert "Errors by kind of image" in html and "missed pneumonia" in html


def test_report_is_self_contained(report_file):
    html = report_file.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src\s*=", html)  # plotly.js is inline, not fetched
    assert not re.search(r"<link[^>]+href\s*=\s*[\"']?https?:", html)
    assert html.count("Plotly.newPlot") == 5  # validation → test, ROC, precision-recall, calibration, errors by kind
    assert len(html) > 3_000_000  # the plotly.js bundle is in the file ...
    assert html.count("plotly.js v") <= 2  # ... once (its banner), not once per figure


def test_report_names_folders_without_their_place_on_disk(fixture_runs, report_file, runs_dir, data_dir):
    html = report_file.read_text(encoding="utf-8")
    # no absolute path of this machine: not the data folder, not the artifacts folder, not the temporary folders
    assert str(data_dir) not in html and str(runs_dir) not in html and "/tmp/" not in html
    assert not re.search(r"<td>/[\w.-]+/", html)
    assert f"<td>{data_dir.name}</td>" in html  # named: the settings' data dir and the data summary's folder
    assert "Folders are named without their place on disk." in html
    # nested settings are a list, not a JSON string
    assert report.without_folders({"a": ["/x/y/z.csv", "C:\\data\\chest_xray", "plain"]}) == {"a": ["z.csv", "chest_xray", "plain"]}
    assert "<ul class='value'><li>dropout: 0.1</li>" in report._key_values({"fixed": {"dropout": 0.1, "learning_rate": 1.715e-4}})
    assert "learning_rate: 1.72e-04" in report._key_values({"fixed": {"learning_rate": 1.716e-4}})
    # asked to, the report includes the folders
    full = report.build_report(fixture_runs[:1], n_resamples=50, include_folders=True)
    assert f"<td>{data_dir}</td>" in full and "Folders are given in full" in full


def test_report_uses_the_thresholds_it_is_given(fixture_runs):
    html = report.build_report(fixture_runs[:2], {"cnn-small": 0.0}, n_resamples=100)
    assert "0.0000 (set by hand)" in html  # cnn-small at the given threshold
    assert "(validation-chosen)" in html  # cnn-wide keeps its own
    # At threshold 0 every image is called pneumonia: sensitivity 1, and not the bootstrap's empty
    # 1.000–1.000 but Wilson's interval on the patients, which reaches below 1.
    small = fixture_runs[0].predictions()
    positives = small[small["y_true"] == 1]
    wilson = statistics.wilson_cluster_ci([1] * len(positives), positives["patient"])
    assert wilson.low < 1.0 and f"1.000 <span class='nowrap'>({wilson.low:.3f}–1.000)</span>" in html
    assert "(1.000–1.000)" not in html
    with pytest.raises(ValueError, match="at least one run"):
        report.build_report([])


# [the document's width, the right edge of the widest table or figure, or of a box scrolling sideways]
_WIDEST_BOX = """() => {
    const boxes = [...document.querySelectorAll('main table, main .figure, main .scroll')];
    const edge = e => e.classList.contains('scroll') && e.scrollWidth > e.clientWidth + 1
        ? e.getBoundingClientRect().left + e.scrollWidth : e.getBoundingClientRect().right;
    const widest = boxes.reduce((a, e) => edge(e) > edge(a) ? e : a, boxes[0]);
    return [document.documentElement.scrollWidth, {right: Math.round(edge(widest)), text: widest.innerText.slice(0, 60)}];
}"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`")
def test_report_draws_every_figure_offline_in_chromium(fixture_runs, report_file):
    from playwright.sync_api import sync_playwright

    html = report_file.read_text(encoding="utf-8")
    expected_figures = html.count("Plotly.newPlot")
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(report_file.as_uri(), wait_until="load")
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected_figures}", timeout=30_000
            )
            drawn = page.evaluate(
                """() => [...document.querySelectorAll('.js-plotly-plot')].map(plot => ({
                    svg: plot.querySelectorAll('svg.main-svg').length,
                    traces: plot.querySelectorAll('.scatterlayer .trace path.js-line, .barlayer .trace .point path').length,
                    title: (plot.querySelector('.gtitle') || {}).textContent || '',
                    legend: [...plot.querySelectorAll('.legendtext')].map(t => t.textContent),
                }))"""
            )
            text = page.inner_text("body")
            widths = {}  # the page's width and its widest box: at 1,280 and 1,920 px, and printed on A4 (703 px)
            for width, media in ((1280, "screen"), (1920, "screen"), (703, "print")):
                page.emulate_media(media=media)
                page.set_viewport_size({"width": width, "height": 900})
                page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
                page.wait_for_timeout(400)
                widths[(width, media)] = page.evaluate(_WIDEST_BOX)
        finally:
            browser.close()
    assert not errors, errors
    for (width, media), (page_width, widest) in widths.items():
        assert page_width <= width, f"the report is {page_width} px wide in a {width} px {media} window"
        assert widest["right"] <= width, f"{media} at {width} px: a box reaches {widest}"
    assert all(url.startswith(("file://", "data:", "blob:", "about:")) for url in requests), requests
    assert len(drawn) == expected_figures == 5
    for figure in drawn:
        assert figure["svg"] >= 1 and figure["traces"] >= len(fixture_runs), figure
    by_title = {f["title"].split(" ")[0]: f for f in drawn}
    assert {"Validation", "ROC", "Precision-recall", "Calibration"} <= set(by_title), [f["title"] for f in drawn]
    for run in fixture_runs:
        assert run.name in text
        roc = by_title["ROC"]["legend"]
        assert any(entry.startswith(f"{run.name} (AUC ") and "95% CI" in entry for entry in roc), roc
        assert any(entry.startswith(f"{run.name} (AP ") for entry in by_title["Precision-recall"]["legend"])
        assert any(entry.startswith(f"{run.name} (Brier ") and "ECE" in entry for entry in by_title["Calibration"]["legend"])
        assert any(entry.startswith(f"{run.name} · validation") for entry in by_title["Validation"]["legend"])
