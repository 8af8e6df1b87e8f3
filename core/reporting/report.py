"""One self-contained HTML file with the evidence behind a comparison of runs.

``build_report(runs)`` returns the whole page as a string: interactive plotly figures (plotly.js
inlined once, so the file opens offline), the metrics with their patient-aware intervals,
paired tests of every pair of runs, errors by kind of image, operating points, and each run's
settings and data summary, with the generation date and how thresholds were chosen. Pure: no
Streamlit, no network, nothing written; the dashboard offers the string as a download.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.data import tasks
from core.evidence import comparison, multiclass, shift, stress
from core.evidence import run_evidence as ev
from core.inference.evaluation import THRESHOLD_RULE
from core.reporting import curves, figures, where_it_looks, wording
from core.runs import artifacts
from core.runs.artifacts import Run

TITLE = "Pneumonia classifiers compared"
# core.evidence.statistics.error_breakdown's columns -> the report's headers ("missed" gets the positive class's name)
_ERROR_COLUMNS = {
    "run": "run", "threshold": "threshold", "kind": "kind", "n": "images", "errors": "errors", "error_rate": "error rate",
    "false_negatives": "missed", "false_negative_rate": "missed rate",
    "false_positives": "false alarms", "false_positive_rate": "false alarm rate",
}
_WRAP_AFTER = 16  # characters: longer text in a table cell wraps, so that wide tables fit the page
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2933; margin: 0;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; box-sizing: border-box; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.35rem; margin-top: 2.2rem; border-bottom: 1px solid #e4e7eb; padding-bottom: 0.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.4rem; }
.meta { color: #52606d; font-size: 0.92rem; }
.note { background: #f0f4f8; border-left: 4px solid #829ab1; padding: 8px 12px; font-size: 0.92rem; margin: 10px 0; }
.warn { background: #fff8e1; border-left: 4px solid #f0b429; padding: 8px 12px; font-size: 0.92rem; margin: 10px 0; }
table { border-collapse: collapse; font-size: 0.86rem; margin: 8px 0 14px; }
th, td { border: 1px solid #d9e2ec; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f4f8; text-align: center; white-space: normal; }
td:first-child, th:first-child { text-align: left; }
td.text { white-space: normal; min-width: 6.5em; }
.nowrap { white-space: nowrap; }
/* auto-fill keeps empty tracks: a figure drawn while the page is still loading already has its final width */
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.figure { border: 1px solid #e4e7eb; border-radius: 6px; padding: 6px; min-width: 0; }
.run { border: 1px solid #e4e7eb; border-radius: 6px; padding: 4px 14px 10px; margin-bottom: 16px; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(420px, 100%), 1fr)); gap: 4px 24px; }
.columns > div { min-width: 0; }
/* key-value lists (facts, settings): as wide as their box, long values wrap */
table.kv { width: 100%; table-layout: fixed; }
table.kv td { white-space: normal; overflow-wrap: anywhere; text-align: left; vertical-align: top; }
table.kv td:first-child { width: 38%; color: #52606d; }
ul.value { margin: 0; padding-left: 1.1em; }
details.value summary { cursor: pointer; color: #334e68; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 50%; margin-right: 0.4em; }
.scroll { overflow-x: auto; max-width: 100%; }
@page { size: A4; margin: 12mm; }
@media print {
  body { background: #fff; font-size: 10pt; }
  main { max-width: none; padding: 0; }
  .scroll { overflow: visible; }
  table { font-size: 7.5pt; max-width: 100%; }
  th, td { white-space: normal; padding: 2px 3px; overflow-wrap: anywhere; }
  td.text { min-width: 0; }
  .figures, .columns { display: block; }
  .figure, .run, tr, .note, .warn { break-inside: avoid; }
  h2, h3, h4 { break-after: avoid; }
  details > summary { list-style: none; }
}
"""


# Figures are drawn as the page is parsed; once everything is laid out, fit each to its box.
# Before printing, fit them to the paper's width (and back afterwards).
_RESIZE = (
    "<script>function fitFigures() {"
    " document.querySelectorAll('.js-plotly-plot').forEach(function (p) { Plotly.Plots.resize(p); }); }"
    " window.addEventListener('load', fitFigures); window.addEventListener('beforeprint', fitFigures);"
    " window.addEventListener('afterprint', fitFigures);</script>"
)


# --------------------------------------------------------------------------
# Small HTML helpers
# --------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    if isinstance(value, (dict, list)):
        return _e(json.dumps(value, ensure_ascii=False))
    return _e(value)


def _wrapped(text: str) -> str:
    """Long text for a cell that may wrap, but an estimate and its interval "0.974 (0.962–0.987)" only
    before the bracket."""
    head, bracket, rest = text.partition(" (")
    if bracket and rest.endswith(")") and " " not in head:
        return f"{_e(head)} <span class='nowrap'>({_e(rest)}</span>"
    return _e(text)


def _table(frame: pd.DataFrame, digits: int = 3, class_name: str = "") -> str:
    """A DataFrame as an HTML table, numbers with ``digits`` decimals, every value escaped."""
    if frame.empty:
        return "<p class='meta'>Nothing to show.</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for value in record:
            if hasattr(value, "item") and not isinstance(value, (str, bytes)):
                value = value.item()  # numpy scalar -> python
            if isinstance(value, float) and value.is_integer() and abs(value) > 1e6:
                value = int(value)
            long_text = isinstance(value, str) and len(value) > _WRAP_AFTER
            cells.append(f"<td class='text'>{_wrapped(value)}</td>" if long_text else f"<td>{_cell(value, digits)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table class='{class_name}'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _value(value: Any) -> str:
    """One value of a key-value list: a nested mapping as its own short list, a long list folded."""
    if isinstance(value, Mapping) and value:
        return "<ul class='value'>" + "".join(f"<li>{_e(k)}: {_value(v)}</li>" for k, v in value.items()) + "</ul>"
    if isinstance(value, (list, tuple)) and value:
        items = ", ".join(_value(v) for v in value)
        if len(value) > 6:
            return f"<details class='value'><summary>{len(value)} values</summary>{items}</details>"
        return items
    if isinstance(value, float) and math.isfinite(value) and value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.2e}"  # a learning rate as 1.72e-04, as the dashboard's tables show it
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return _cell(value)


def _key_values(items: Mapping[str, Any]) -> str:
    """A readable list of ``items``: names on the left, values wrapped within the box."""
    rows = "".join(f"<tr><td>{_e(str(k).replace('_', ' '))}</td><td>{_value(v)}</td></tr>" for k, v in items.items())
    return f"<table class='kv'><tbody>{rows}</tbody></table>"


def _folder_name(value: str) -> str:
    """An absolute path by its last part only: ``/home/me/data/chest_xray`` -> ``chest_xray``."""
    windows = PureWindowsPath(value)
    return (windows.name if windows.drive else PurePath(value).name) or value


def without_folders(value: Any) -> Any:
    """``value`` with every absolute path (a string, at any depth) cut to its folder's or file's name:
    what a report shows of a run's settings unless asked to include the folders."""
    if isinstance(value, str):
        return _folder_name(value) if value.startswith("/") or PureWindowsPath(value).drive else value
    if isinstance(value, Mapping):
        return {k: without_folders(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_folders(v) for v in value]
    return value


class _Figures:
    """Turns figures into <div>s; the first one carries plotly.js inline, the rest reuse it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: go.Figure) -> str:
        self.count += 1
        div = fig.to_html(
            full_html=False, include_plotlyjs=self.count == 1, config=_PLOTLY_CONFIG,
            div_id=f"figure-{self.count}", default_width="100%",
        )
        return f"<div class='figure'>{div}</div>"


# --------------------------------------------------------------------------
# Report parts
# --------------------------------------------------------------------------


def _threshold_rule(runs: Sequence[Run]) -> str:
    rules = {str((r.metrics or {}).get("threshold_rule") or "") for r in runs} - {""}
    if not rules:
        rules = {THRESHOLD_RULE}
    return "; ".join(sorted(rules))


def _threshold_source(evidence: ev.RunEvidence) -> str:
    if abs(evidence.threshold - evidence.saved_threshold) <= 1e-12:
        return "validation-chosen"
    for choice in evidence.choices[1:]:
        if abs(choice.threshold - evidence.threshold) <= 1e-12:
            return f"{choice.key} ({wording.ON_TEST if choice.on_test else wording.ON_VALIDATION})"
    return "set by hand"


def _data_summary(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "<p class='meta'>No data summary saved.</p>"
    parts = []
    images = summary.get("images") or {}
    patients = summary.get("patients") or {}
    kinds = summary.get("kinds") or {}
    splits = [s for s in ("train", "val", "test") if s in images] + [s for s in images if s not in ("train", "val", "test")]
    if splits:
        kind_names = sorted({k for split in kinds.values() for k in split})
        rows = []
        for split in splits:
            row = {"split": split, **{c: int(n) for c, n in images[split].items()}, "patients": patients.get(split)}
            row.update({f"{k}": (kinds.get(split) or {}).get(k, 0) for k in kind_names})
            rows.append(row)
        parts.append(_table(pd.DataFrame(rows)))
    facts = {
        "data folder": summary.get("root"),
        "total images": summary.get("total_images"),
        "pneumonia : normal": summary.get("pneumonia_to_normal_ratio"),
        "class weights": summary.get("class_weights"),
        "unreadable files skipped": len(summary.get("unreadable") or []),
    }
    parts.append(_key_values({k: v for k, v in facts.items() if v is not None}))
    for note in summary.get("notes") or []:
        parts.append(f"<p class='meta'>{_e(note)}</p>")
    return "".join(parts)


def _imported_from(run: Run) -> str | None:
    """An imported run's model file, by name, format and hash (None for other runs)."""
    if not run.is_imported:
        return None
    record = run.settings[artifacts.IMPORTED]
    return f"{Path(record['source']).name} ({record['format']}, sha256 {record['sha256'][:12]}…), trained elsewhere"


def _run_section(run: Run, evidence: ev.RunEvidence, color: str, include_folders: bool = False) -> str:
    choices = pd.DataFrame(
        [
            {"operating point": wording.choice_label(c), "threshold": c.threshold, "sensitivity on test": c.sensitivity, "specificity on test": c.specificity}
            for c in evidence.choices
        ]
    )
    run_facts = comparison.run_facts(run)
    task = comparison.run_task(run)
    shown = (lambda value: value) if include_folders else without_folders
    facts = {
        "family": run_facts.family,
        "imported from": _imported_from(run),
        "task": f"{task.name} ({task.title}; positive: {task.binary_names[1]}"
        + (", the derived P(bacterial) + P(viral)" if not task.is_binary else "") + ")",
        "threshold in use": f"{evidence.threshold:.4f} ({_threshold_source(evidence)})",
        "validation-chosen threshold": evidence.saved_threshold,
        "validation AUC": run_facts.validation_auc,
        "test images / patients": f"{evidence.n_images:,} / {evidence.n_patients:,}",
        "parameters": run_facts.parameters,
        "search time (s)": run_facts.search_s,
        "inference (ms/image)": run_facts.ms_per_image,
    }
    return (
        f"<section class='run' id='run-{_e(run.name)}'>"
        f"<h3><span class='swatch' style='background:{_e(color)}'></span>{_e(run.name)}</h3>"
        "<div class='columns'><div>"
        + _key_values({k: v for k, v in facts.items() if v is not None})
        + "<h4>Operating points</h4>" + _table(choices, 4)
        + "<h4>Data</h4>" + _data_summary(shown(run.read("data_summary.json")))
        + "</div><div><h4>Settings</h4>" + _key_values(shown(run.settings or {}))
        + "</div></div></section>"
    )


def _paired_section(runs: Sequence[Run], evidence: Mapping[str, ev.RunEvidence], predictions: Mapping[str, pd.DataFrame]) -> str:
    if len(runs) < 2:
        return "<p class='meta'>Paired tests need two runs; this report has one.</p>"
    family, refused = ev.pairwise_evidence(
        [(r.name, predictions[r.name], evidence[r.name].threshold) for r in runs], confidence=evidence[runs[0].name].confidence,
        run_tasks={r.name: comparison.run_task(r) for r in runs},
    )
    out = [f"<p class='meta'>{_e(wording.PAIRED_NOTE)} Only runs scored on exactly the same test images are paired.</p>"]
    if len(family) > 1:
        out.append(
            f"<div class='note'>{len(family)} pairs are compared: the p-values are also given Holm-adjusted over them "
            "(separately for the AUC tests and the error tests), and the sentences below use the adjusted ones.</div>"
        )
    if family:
        out.append(_table(pd.DataFrame([wording.paired_row(p, compact=True) for p in family])))
        out.append(
            "<ul class='verdicts'>"
            + "".join(
                f"<li><b>{_e(p.name_a)}</b> vs <b>{_e(p.name_b)}</b>: {_e(wording.auc_sentence(p))} {_e(wording.errors_sentence(p))}</li>"
                for p in family
            )
            + "</ul>"
        )
    if refused:
        out.append(
            "<div class='warn'><ul>"
            + "".join(f"<li><b>{_e(a)}</b> vs <b>{_e(b)}</b>: not tested: {_e(reason)}</li>" for a, b, reason in refused)
            + "</ul></div>"
        )
    return "".join(out)


def _multiclass_section(runs: Sequence[Run], predictions: Mapping[str, pd.DataFrame], figure: _Figures, n_resamples: int, seed: int,
                        confidence: float) -> str:
    """The three-class runs at their decision: accuracy and AUCs with intervals, per-class table, matrices, one-vs-rest ROC."""
    run_tasks = {run.name: comparison.run_task(run) for run in runs}
    items = [
        multiclass.class_evidence(name, predictions[name], run_tasks[name], n_resamples, seed, confidence)
        for name in comparison.three_class_runs({run.name: predictions[run.name] for run in runs}, run_tasks)
    ]
    if not items:
        return ""
    out = [f"<h2>Three classes: {_e(tasks.THREE_CLASS.title)}</h2>", f"<p class='meta'>{_e(wording.MULTICLASS_NOTE)}</p>",
           _table(wording.multiclass_table(items)), _table(wording.per_class_table(items))]
    problems = [f"<li>{_e(item.name)}: no interval ({_e(item.interval_problem)})</li>" for item in items if item.intervals is None]
    if problems:
        out.append("<div class='warn'><ul>" + "".join(problems) + "</ul></div>")
    class_curves = [curve for item in items for curve in item.curves]
    shown = [figure(figures.roc_figure(class_curves, figures.run_colors([c["name"] for c in class_curves]), title="One-vs-rest ROC per class (test)"))]
    shown += [figure(figures.confusion_matrix_figure(item.matrix, item.task.names, title=item.name)) for item in items]
    out.append("<div class='figures'>" + "".join(shown) + "</div>")
    for item in items:
        out.append(f"<h4>{_e(item.name)}: confusion matrix (rows: true class; count and row %)</h4>" + _table(wording.matrix_table(item)))
    return "".join(out)


def _stress_section(runs) -> str:
    stressed = stress.saved_results(runs)
    if not stressed:
        return "<p class='meta'>The runs were saved before the stress test existed.</p>"
    return f"<p class='meta'>{_e(stress.NOTE)}</p>" + _table(stress.stress_table(stressed))


def _shift_section(shifts: Sequence[shift.Shift], figure: _Figures, colors: Mapping[str, str]) -> str:
    """Each run on validation and on test side by side, the change, and a warning for large drops."""
    out = [f"<p class='meta'>{_e(shift.NOTE)}</p>"]
    warnings = shift.shift_warnings(shifts)
    if warnings:
        out.append(
            f"<div class='warn'><b>Test is clearly worse than validation</b> (by {shift.FLAG_AT:.2f} or more):<ul>"
            + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>"
        )
    out.append("<div class='columns'><div>" + _table(shift.shift_table(shifts)) + "</div><div>"
               + _table(shift.shift_runs_table(shifts), 4) + f"<p class='meta'>{_e(shift.source_note(shifts))}</p></div></div>")
    out.append("<div class='figures'>" + figure(figures.shift_figure(shift.figure_rows(shifts), colors, shift.LOWER_IS_BETTER)) + "</div>")
    return "".join(out)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def _where_they_look_section(runs: Sequence[Run], figure: _Figures, colors: Mapping[str, str]) -> str:
    """Each explanation method's evidence for the runs measured (`core.workflows.localisation`); a hint when none was."""
    saved = where_it_looks.runs_with_evidence({run.name: run.folder for run in runs})
    parts = ["<h2>Where the models look</h2>"]
    if not saved:
        names = " ".join(run.name for run in runs)
        return parts[0] + (f"<p class='meta'>Not measured for these runs: <code>python -m core where-it-looks {_e(names)}</code> "
                           "(or Compare's \"Where the models look\") measures each explanation method.</p>")
    summaries = where_it_looks.summaries_of(saved)
    run_tasks = {run.name: comparison.run_task(run) for run in runs if run.name in saved}
    parts += [f"<div class='warn'>{_e(line)}</div>" for line in where_it_looks.warnings_text(summaries, run_tasks)]
    parts.append(_table(where_it_looks.summary_table(summaries, run_tasks)))
    parts.append(f"<details><summary>Deletion, insertion, marks, and how many X-rays look at the border</summary>"
                 f"{_table(where_it_looks.detail_table(summaries, run_tasks))}</details>")
    parts.append(f"<p class='meta'>{_e(where_it_looks.explained_text().replace('**', ''))}</p>")
    parts.append(figure(where_it_looks.border_figure(summaries, run_tasks, colors)))
    positive = comparison.binary_names(runs)[1]
    parts += [figure(where_it_looks.curves_figure(item, name, positive)) for name, item in saved.items()]
    return "".join(parts)


def build_report(
    runs: Sequence[Run],
    thresholds: Mapping[str, float] | None = None,
    *,
    predictions: Mapping[str, pd.DataFrame] | None = None,
    n_resamples: int = ev.N_RESAMPLES,
    seed: int = ev.SEED,
    confidence: float = ev.CONFIDENCE,
    generated_at: datetime | None = None,
    title: str = TITLE,
    include_folders: bool = False,
) -> str:
    """The report of ``runs`` as one self-contained HTML document.

    ``thresholds`` (run name -> threshold) defaults to each run's validation-chosen threshold;
    ``predictions`` (run name -> its predictions table) defaults to reading each run's
    ``predictions.csv``. AUC intervals resample patients ``n_resamples`` times with ``seed``.
    The data and artifacts folders are named without their place on this machine unless
    ``include_folders`` (a report is meant to be shared).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("a report needs at least one run")
    thresholds = dict(thresholds or {})
    predictions = dict(predictions or {})
    for run in runs:
        if run.name not in predictions:
            predictions[run.name] = run.predictions()
    generated_at = generated_at or datetime.now(UTC)
    names = [r.name for r in runs]
    colors = figures.run_colors(names)

    evidence: dict[str, ev.RunEvidence] = {}
    for run in runs:
        evidence[run.name] = ev.run_evidence(
            run.name, predictions[run.name], float(thresholds.get(run.name, run.threshold)), run.threshold,
            n_resamples=n_resamples, seed=seed, confidence=confidence, validation=run.val_predictions(),
        )
    items = [evidence[n] for n in names]

    figure = _Figures()
    roc = figures.roc_figure(curves.roc_curves(items), colors)
    pr = figures.precision_recall_figure(curves.precision_recall_curves(items), colors)
    negative, positive = comparison.binary_names(runs)
    calibration = figures.calibration_figure(curves.calibration_curves(items), colors, positive=positive)
    errors = ev.errors_table(items)

    image_check = comparison.image_check({n: predictions[n] for n in names})
    problems = [f"<li>{_e(e.name)}: no interval ({_e(e.interval_problem)})</li>" for e in items if e.intervals is None]

    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>Generated {_e(generated_at.strftime('%Y-%m-%d %H:%M %Z').strip())} · "
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
        + ", ".join(f"<span class='swatch' style='background:{colors[n]}'></span>{_e(n)}" for n in names)
        + "</p>",
        "<div class='note'>"
        f"<b>Threshold rule.</b> Each run calls an image {_e(positive)} when its probability is at least the run's threshold, "
        f"chosen by {_e(_threshold_rule(runs))}, never on test. The threshold in use for each run is listed below "
        "(validation-chosen unless the reader moved it on the dashboard). "
        f"<b>Intervals.</b> {_e(wording.intervals_note(n_resamples, seed, confidence))} "
        f"<b>Operating points.</b> {_e(wording.VALIDATION_NOTE)}"
        + (f" {_e(wording.DESCRIPTIVE_NOTE)}" if any(e.points_on_test for e in items) else "")
        + "</div>",
    ]
    for note in comparison.question_notes(runs):
        body.append(f"<div class='note'>{_e(note)}</div>")
    if not image_check.same:
        body.append(
            f"<div class='warn'>The runs were not all tested on the same images ({_e(wording.image_counts(image_check))}): "
            "their numbers are not directly comparable, and such pairs are not tested below.</div>"
        )
    if problems:
        body.append("<div class='warn'><ul>" + "".join(problems) + "</ul></div>")
    body += [
        "<h2>Metrics on the test split</h2>",
        _table(wording.metrics_table(items, combined=True)),
        "<h2>Validation against test</h2>",
        _shift_section([shift.for_run(run, evidence[run.name].threshold, predictions[run.name]) for run in runs], figure, colors),
        "<h2>Stress test on validation</h2>",
        _stress_section(runs),
        "<h2>Curves</h2>",
        "<div class='figures'>" + figure(roc) + figure(pr) + figure(calibration) + "</div>",
        _multiclass_section(runs, predictions, figure, n_resamples, seed, confidence),
        "<h2>Paired tests</h2>",
        _paired_section(runs, evidence, predictions),
        "<h2>Errors by kind of image</h2>",
        f"<p class='meta'>At each run's threshold in use. {_e(wording.errors_by_kind_note(comparison.run_task(r) for r in runs))}</p>",
    ]
    if not errors.empty:
        body.append(figure(figures.error_breakdown_figure(errors, colors)))
        body.append(_table(wording.errors_by_kind_wide(items, positive)))
        # the missed images are of the runs' positive class: pneumonia, or viral for bacterial vs viral
        headers = {**_ERROR_COLUMNS, "false_negatives": f"missed {positive}"}
        shown = errors[list(headers)].rename(columns=headers)
        body.append(f"<details><summary>Every count and rate</summary>{_table(shown)}</details>")
    else:
        body.append("<p class='meta'>The predictions carry no kind of image.</p>")
    body.append(_where_they_look_section(runs, figure, colors))
    body += [
        "<h2>Runs: settings, data and operating points</h2>",
        "".join(_run_section(run, evidence[run.name], colors[run.name], include_folders) for run in runs),
        "<p class='meta'>" + ("Folders are given in full, as on the machine that made this report."
                              if include_folders else "Folders are named without their place on disk.") + "</p>",
        "<p class='meta'>Research tool, not a medical device.</p>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main>{_RESIZE}</body></html>\n"
    )
