"""How "where the models look" is shown: the methods × runs table, the curves and the border-heat figure.

The same builders serve the Compare page and the HTML report. They read what
`core.evidence.localisation` summarises from each run folder; nothing here measures.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.data import tasks
from core.evidence import heat_location
from core.evidence import localisation as saved_evidence
from core.inference import methods
from core.reporting import figures

BAND_AREA = 1.0 - (1.0 - 2 * heat_location.BORDER_BAND) ** 2  # share of the image in the border band

EXPLAINED = (
    "**Gain** (higher is better): insertion area minus deletion area; it cancels what the blurred canvas does by "
    "itself (a blurred X-ray reads as pneumonia to these models), so a random map scores about 0 and a faithful one above it. "
    "**Deletion area** (lower is better): the probability as the hottest pixels are blurred away, 0 to 100 %; a "
    "faithful map loses the evidence fast. **Insertion area** (higher is better): the same, restoring the hottest "
    "pixels onto a blurred image. A method that does not beat the random map and the centred blob on both says little "
    "about what the model uses. **Border heat**: share of the heat in the outer {band:.0%} of each side "
    "({area:.0%} of the image), where laterality markers, collimator edges and text sit; uniform heat would put "
    "{area:.0%} there. **On marks**: share of the heat on bright text-like marks (letters, labels). **Opacity hit** "
    "and **IoU**: a synthetic opacity of known place and size inserted into a lung field of healthy validation "
    "images: how often the heat's peak falls inside it, and the overlap of the extracted region (half the heat) with "
    "it. It is a check of the explanations by construction, not a clinical localisation benchmark. Intervals "
    "resample patients."
)


def explained_text() -> str:
    """The caption that says what every column means (markdown)."""
    return EXPLAINED.format(band=heat_location.BORDER_BAND, area=BAND_AREA)


def method_label(name: str) -> str:
    """A method's label as a reader sees it; baselines say they are baselines."""
    if name in saved_evidence.BASELINES:
        return f"{name} (baseline)"
    return methods.METHODS[name].label if name in methods.METHODS else name


def _with_interval(row: pd.Series, measure: str, percent: bool = False) -> str:
    mean, low, high = row.get(f"{measure}_mean"), row.get(f"{measure}_low"), row.get(f"{measure}_high")
    if mean is None or pd.isna(mean):
        return "–"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    if pd.isna(low) or pd.isna(high):
        return f"{mean * scale:.{0 if percent else 3}f}{unit}"
    digits = 0 if percent else 3
    dash = "–" if low >= 0 else " to "  # "-0.19–-0.07" would read as a subtraction
    return f"{mean * scale:.{digits}f} ({low * scale:.{digits}f}{dash}{high * scale:.{digits}f}){unit}"


def _percent(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.0f} %"


def _cells(summaries: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task], columns) -> pd.DataFrame:
    """One row per run × method (baselines last); `columns` maps a title to cell(all row, row of the
    run's negative class or None, of its positive class or None, is a baseline)."""
    rows = []
    for run, summary in summaries.items():
        by_group = {group: frame.set_index("method") for group, frame in summary.groupby("images")}
        everything = by_group.get("all", pd.DataFrame())
        for method in everything.index:
            groups = [by_group[g].loc[method] if g in by_group and method in by_group[g].index else None for g in ("negative", "positive")]
            row = {"run": run, "method": method_label(method)}
            for title, cell in columns(run_tasks[run]).items():
                row[title] = cell(everything.loc[method], *groups, method in saved_evidence.BASELINES)
            rows.append(row)
    return pd.DataFrame(rows)


def _border(group_row) -> str:
    return "–" if group_row is None else _with_interval(group_row, "border_share", percent=True)


def summary_table(summaries: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task]) -> pd.DataFrame:
    """The key figures, one row per run × method (baselines last): the gain, the border heat on each
    class and the synthetic check; narrow enough to read whole at 1,280 px."""
    def columns(task: tasks.Task) -> dict:
        return {
            "gain ↑": lambda row, negative, positive, baseline: _with_interval(row, "gain"),
            f"border heat, {task.names[0]}": lambda row, negative, positive, baseline: _border(negative),
            f"border heat, {task.names[-1]}": lambda row, negative, positive, baseline: _border(positive),
            "opacity hit": lambda row, negative, positive, baseline: "–" if baseline else _percent(row.get("hit_rate")),
            "opacity IoU": lambda row, negative, positive, baseline: "–" if baseline or pd.isna(row.get("iou")) else f"{float(row['iou']):.2f}",
        }
    return _cells(summaries, run_tasks, columns)


def detail_table(summaries: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task]) -> pd.DataFrame:
    """The rest, one row per run × method: deletion and insertion areas, heat on marks, the share of
    each class's X-rays that look at the border, and how much the synthetic opacity raised the probability."""
    def columns(task: tasks.Task) -> dict:
        return {
            "deletion ↓": lambda row, negative, positive, baseline: _with_interval(row, "deletion"),
            "insertion ↑": lambda row, negative, positive, baseline: _with_interval(row, "insertion"),
            "on marks": lambda row, negative, positive, baseline: _with_interval(row, "mark_share", percent=True),
            f"{task.names[0]} X-rays at the border": lambda row, negative, positive, baseline: _percent(None if negative is None else negative["looks_at_border"]),
            f"{task.names[-1]} X-rays at the border": lambda row, negative, positive, baseline: _percent(None if positive is None else positive["looks_at_border"]),
            "opacity: probability rise": lambda row, negative, positive, baseline: "–" if baseline or pd.isna(row.get("probability_rise")) else f"{float(row['probability_rise']):+.2f}",
        }
    return _cells(summaries, run_tasks, columns)


def curves_figure(saved: saved_evidence.Saved, run: str, positive: str = "pneumonia") -> go.Figure:
    """A run's mean deletion and insertion curves, one line per method, the baselines dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Deletion (lower area is better)", "Insertion (higher area is better)"))
    curves = saved_evidence.mean_curves(saved)
    palette = figures.run_colors([m for m in curves if m not in saved_evidence.BASELINES])
    for name, curve in curves.items():
        baseline = name in saved_evidence.BASELINES
        style = {"dash": "dot" if name == "random" else "dash", "color": "#7f7f7f"} if baseline else {"color": palette[name]}
        for column, kind in enumerate(("deletion", "insertion"), start=1):
            values = curve[kind]
            x = [100.0 * i / (len(values) - 1) for i in range(len(values))]
            fig.add_trace(go.Scatter(x=x, y=list(values), mode="lines", name=method_label(name), line=style,
                                     legendgroup=name, showlegend=column == 1,
                                     hovertemplate=f"{method_label(name)}<br>%{{x:.0f}} % of pixels: p = %{{y:.3f}}<extra></extra>"),
                          row=1, col=column)
    fig.update_xaxes(title_text="pixels blurred away, hottest first (%)", row=1, col=1, range=[0, 100])
    fig.update_xaxes(title_text="pixels restored, hottest first (%)", row=1, col=2, range=[0, 100])
    fig.update_yaxes(title_text=f"mean probability of {positive}", range=[0, 1])
    n = saved.about.get("n_images", "?")
    fig.update_layout(title={"text": f"{run}: deletion and insertion, mean over {n} test images", "x": 0},
                      template=figures.TEMPLATE, height=380, margin={"l": 10, "r": 10, "t": 70, "b": 10},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})
    return fig


def border_figure(summaries: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task],
                  colors: Mapping[str, str] | None = None) -> go.Figure:
    """Mean share of heat in the border band, per method, for each run and class, with intervals; the
    band's own area (what uniform heat would give) as a line."""
    colors = colors or figures.run_colors(list(summaries))
    fig = go.Figure()
    for run, summary in summaries.items():
        task = run_tasks[run]
        for group, name, pattern in (("negative", task.names[0], ""), ("positive", task.names[-1], "/")):
            rows = summary[(summary["images"] == group) & ~summary["method"].isin(saved_evidence.BASELINES)]
            if rows.empty:
                continue
            fig.add_trace(go.Bar(
                x=[method_label(m) for m in rows["method"]], y=list(100 * rows["border_share_mean"]),
                error_y={"type": "data", "symmetric": False,
                         "array": list(100 * (rows["border_share_high"] - rows["border_share_mean"])),
                         "arrayminus": list(100 * (rows["border_share_mean"] - rows["border_share_low"]))},
                name=f"{run} · {name}", marker={"color": colors.get(run, "#0072B2"), "pattern": {"shape": pattern}},
                hovertemplate=f"{run} · {name} images<br>%{{x}}: %{{y:.0f}} % of the heat in the border band<extra></extra>",
            ))
    fig.add_hline(y=100 * BAND_AREA, line={"dash": "dash", "color": "#7f7f7f"},
                  annotation_text=f"uniform heat ({BAND_AREA:.0%}: the band's area)", annotation_position="top right")
    return figures._layout(fig, "Heat in the border band (markers, edges, text)", "explanation method",
                           "share of heat in the border band (%)", height=380, barmode="group",
                           yaxis={"range": [0, 100]})


def warnings_text(summaries: Mapping[str, pd.DataFrame], run_tasks: Mapping[str, tasks.Task]) -> list[str]:
    """"run · method · normal X-rays: looks at markers, not lungs …" for each run, method and class whose warning fires."""
    lines = []
    for run, summary in summaries.items():
        names = {"negative": run_tasks[run].names[0], "positive": run_tasks[run].names[-1]}
        fired = summary[summary["images"].isin(list(names)) & (summary["warning"].fillna("") != "")]
        lines += [f"{run} · {method_label(m)} · {names[g]} X-rays: {w}"
                  for m, g, w in zip(fired["method"], fired["images"], fired["warning"], strict=True)]
    return lines


def runs_with_evidence(folders: Mapping[str, object]) -> dict[str, saved_evidence.Saved]:
    """{run: its saved evidence} for the runs that have some, in the order given."""
    found = {}
    for name, folder in folders.items():
        saved = saved_evidence.read(folder)
        if saved is not None:
            found[name] = saved
    return found


def summaries_of(saved: Mapping[str, saved_evidence.Saved], n_resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    return {run: saved_evidence.method_summary(item, n_resamples, seed) for run, item in saved.items()}


