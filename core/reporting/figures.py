"""Plotly figure builders for the dashboard and the HTML report (`core.reporting.report`).

Pure functions: plain dicts and DataFrames in, a `plotly.graph_objects.Figure` out, every axis
titled with its unit. No Streamlit in here, so a report can call the same builders and
`fig.write_html(...)` them. Data go in as plain lists (not numpy arrays, which plotly 6+ stores
as base64 typed arrays), so a figure's JSON stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

CLASS_COLORS = {"NORMAL": "#3b82c4", "PNEUMONIA": "#d1495b"}
NOT_ASSESSED_COLOR = "#b8bec6"  # an image unlike the training X-rays: its probability greyed, not a diagnosis
KIND_COLORS = {"normal": "#3b82c4", "bacteria": "#d1495b", "virus": "#edae49", "unknown": "#9e9e9e"}
# The tasks' class names as a reader sees them (core.data.tasks), coloured as the kinds are.
TASK_CLASS_COLORS = {"normal": "#3b82c4", "pneumonia": "#d1495b", "bacterial": "#d1495b", "viral": "#edae49"}
# Colour-blind-safe qualitative palette (Okabe-Ito, without the black and the yellow).
RUN_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#7f7f7f", "#8c564b")
SPLIT_ORDER = ("train", "val", "test")
TEMPLATE = "plotly_white"
_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


def run_colors(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per run, in the order given, so every figure of a page agrees."""
    return {name: RUN_PALETTE[i % len(RUN_PALETTE)] for i, name in enumerate(names)}


def _ordered_splits(keys) -> list[str]:
    keys = list(keys)
    return [s for s in SPLIT_ORDER if s in keys] + [k for k in keys if k not in SPLIT_ORDER]


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 340, **extra) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        template=TEMPLATE,
        height=height,
        margin=_MARGIN,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        **extra,
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


# --------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------


def images_per_split_figure(images: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Grouped bars: images of each class in each split (`summary["images"]`)."""
    splits = _ordered_splits(images)
    fig = go.Figure()
    for class_name, color in CLASS_COLORS.items():
        counts = [int(images[s].get(class_name, 0)) for s in splits]
        fig.add_bar(name=class_name, x=splits, y=counts, marker_color=color, text=[f"{c:,}" for c in counts], textposition="outside")
    _layout(fig, "Images per split and class", "Split", "Images (count)", barmode="group")
    fig.update_yaxes(rangemode="tozero")
    fig.update_traces(cliponaxis=False)
    return fig


def patients_per_split_figure(patients: Mapping[str, int]) -> go.Figure:
    """Bars: distinct patients in each split (`summary["patients"]`)."""
    splits = _ordered_splits(patients)
    counts = [int(patients[s]) for s in splits]
    fig = go.Figure(go.Bar(x=splits, y=counts, marker_color="#5b6770", text=[f"{c:,}" for c in counts], textposition="outside", cliponaxis=False))
    _layout(fig, "Patients per split", "Split", "Patients (count)", showlegend=False)
    fig.update_yaxes(rangemode="tozero")
    return fig


def kinds_figure(kinds: Mapping[str, Mapping[str, int]], min_share: float = 0.08) -> go.Figure:
    """Stacked bars: normal, bacterial and viral images per split (`summary["kinds"]`).

    A segment under `min_share` of the tallest stack is too thin for its number: that split's counts are
    written above its stack instead, one kind a line, so a small test split stays readable.
    """
    splits = _ordered_splits(kinds)
    names = sorted({k for split in kinds.values() for k in split}, key=lambda k: (list(KIND_COLORS).index(k) if k in KIND_COLORS else 99, k))
    totals = {s: sum(int(kinds[s].get(k, 0)) for k in names) for s in splits}
    tallest = max(totals.values(), default=0) or 1
    thin = {s for s in splits if any(0 < int(kinds[s].get(k, 0)) < min_share * tallest for k in names)}
    fig = go.Figure()
    for kind in names:
        counts = [int(kinds[s].get(kind, 0)) for s in splits]
        fig.add_bar(name=kind, x=splits, y=counts, marker_color=KIND_COLORS.get(kind, "#9e9e9e"),
                    text=[f"{c:,}" if c and s not in thin else "" for s, c in zip(splits, counts, strict=True)], textposition="inside")
    for s in thin:
        label = "<br>".join(f"{kind} {int(kinds[s].get(kind, 0)):,}" for kind in reversed(names) if kinds[s].get(kind))
        fig.add_annotation(x=s, y=totals[s], text=label, showarrow=False, yanchor="bottom", font={"size": 12})
    _layout(fig, "Pneumonia kinds per split", "Split", "Images (count)", barmode="stack")
    fig.update_yaxes(range=[0, tallest * 1.12])
    return fig


def class_balance_figure(
    images: Mapping[str, Mapping[str, int]], class_names: Sequence[str] | None = None, title: str = "Class balance"
) -> go.Figure:
    """100 % stacked horizontal bars: the share of each class in each split.

    `class_names` are the keys of each split's counts: NORMAL and PNEUMONIA by default, or a task's
    classes (`summary["task_images"]`, e.g. normal, bacterial, viral).
    """
    splits = _ordered_splits(images)[::-1]  # train on top
    totals = [max(1, sum(images[s].values())) for s in splits]
    fig = go.Figure()
    palette = CLASS_COLORS if class_names is None else {
        name: TASK_CLASS_COLORS.get(name, RUN_PALETTE[i % len(RUN_PALETTE)]) for i, name in enumerate(class_names)
    }
    for class_name, color in palette.items():
        counts = [int(images[s].get(class_name, 0)) for s in splits]
        shares = [100.0 * c / t for c, t in zip(counts, totals, strict=True)]
        fig.add_bar(
            name=class_name, y=splits, x=shares, orientation="h", marker_color=color,
            text=[f"{p:.0f} % ({c:,})" for p, c in zip(shares, counts, strict=True)], textposition="inside",
            hovertemplate="%{y}: %{x:.1f} %<extra>" + class_name + "</extra>",
        )
    _layout(fig, title, "Share of the split's images (%)", "Split", height=max(200, 90 + 60 * len(splits)), barmode="stack")
    fig.update_xaxes(range=[0, 100], ticksuffix=" %")
    return fig


# --------------------------------------------------------------------------
# Comparing runs
# --------------------------------------------------------------------------


def _legend_below(fig: go.Figure, entries: int, subtitle: str = "", base_height: int = 440, entry_height: int = 19) -> go.Figure:
    """Legend under the plot (one entry per row) and a compact title, so a figure fits a narrow column."""
    title = {"font": {"size": 15}}
    if subtitle:
        title["subtitle"] = {"text": subtitle, "font": {"size": 12, "color": "#5b6770"}}
    fig.update_layout(
        title=title,
        height=base_height + entry_height * entries,
        legend={
            "orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0,
            "entrywidth": 1, "entrywidthmode": "fraction", "font": {"size": 11},
        },
        margin={"l": 10, "r": 10, "t": 70 if subtitle else 50, "b": 10},
    )
    return fig


def _legend_rows(curves: Sequence) -> int:
    """Legend rows the ROC, precision-recall and calibration figures all reserve (two lines per run, one
    for the reference line), so side by side their plot areas have the same size."""
    return 2 * len(curves) + 1


def _auc_label(name: str, auc, low=None, high=None, confidence: float = 0.95) -> str:
    """'run (AUC 0.951,<br>95% CI 0.932–0.968)': the interval on a second line, so the legend fits a narrow figure."""
    if auc is None or not np.isfinite(auc):
        return f"{name} (AUC n/a)"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        return f"{name} (AUC {auc:.3f},<br>{100 * confidence:g}% CI {low:.3f}–{high:.3f})"
    return f"{name} (AUC {auc:.3f})"


def _unit_square(fig: go.Figure) -> go.Figure:
    fig.update_xaxes(range=[-0.01, 1.01], constrain="domain")
    # constrain="domain" on both axes: a plot area that is not square shrinks, the 0..1 ranges stay.
    fig.update_yaxes(range=[-0.01, 1.01], scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


THRESHOLD_HOVER = "threshold %{customdata[0]:.4f}<br>sensitivity %{customdata[1]:.3f}<br>specificity %{customdata[2]:.3f}"


def _threshold_hover(thresholds, sensitivity, specificity) -> list[list[float]] | None:
    """customdata rows [threshold, sensitivity, specificity] of a curve's points (read by `THRESHOLD_HOVER`), or None
    when the curve carries no thresholds (or not one per point)."""
    if thresholds is None or len(thresholds) != len(sensitivity) or len(thresholds) == 0:
        return None
    return [[float(t), float(se), float(sp)] for t, se, sp in zip(thresholds, sensitivity, specificity, strict=True)]


def _reference_line(fig: go.Figure, x: list[float], y: list[float], name: str) -> None:
    """A grey dashed line to read the curves against (chance, perfect calibration); no hover."""
    fig.add_scatter(x=x, y=y, mode="lines", name=name, line={"dash": "dash", "color": "#9e9e9e", "width": 1}, hoverinfo="skip")


def roc_figure(curves: Sequence[Mapping], colors: Mapping[str, str] | None = None, title: str = "ROC curves on the test split") -> go.Figure:
    """ROC curves of several runs overlaid, AUC (and its interval) in the legend, chance diagonal, operating points.

    Each curve: `name`, `fpr`, `tpr`, `auc`, optionally `thresholds` (one per point: hovering a
    point then shows its threshold, sensitivity and specificity), `auc_low`, `auc_high` and
    `confidence` (the AUC's interval, shown in the legend) and `point` = {"fpr", "tpr", "threshold"}
    (the operating point at the threshold in use).
    """
    colors = dict(colors or run_colors([c["name"] for c in curves]))
    fig = go.Figure()
    _reference_line(fig, [0, 1], [0, 1], "chance (AUC 0.5)")
    for curve in curves:
        name = curve["name"]
        color = colors.get(name, RUN_PALETTE[0])
        label = _auc_label(name, curve.get("auc"), curve.get("auc_low"), curve.get("auc_high"), curve.get("confidence", 0.95))
        hover = _threshold_hover(curve.get("thresholds"), curve["tpr"], [1.0 - float(f) for f in curve["fpr"]])
        fig.add_scatter(
            x=list(curve["fpr"]), y=list(curve["tpr"]), mode="lines", name=label, legendgroup=name,
            line={"color": color, "width": 2}, customdata=hover,
            hovertemplate=(THRESHOLD_HOVER if hover else "1 − specificity %{x:.3f}<br>sensitivity %{y:.3f}")
            + "<extra>" + name + "</extra>",
        )
        point = curve.get("point")
        if point:
            fig.add_scatter(
                x=[point["fpr"]], y=[point["tpr"]], mode="markers", name=f"{name} at threshold {point['threshold']:.3f}",
                legendgroup=name, showlegend=False,
                marker={"color": color, "size": 12, "symbol": "circle", "line": {"color": "white", "width": 2}},
                hovertemplate=(
                    f"{name}<br>threshold {point['threshold']:.3f}<br>"
                    "1 − specificity %{x:.3f}<br>sensitivity %{y:.3f}<extra>operating point</extra>"
                ),
            )
    _layout(fig, title, "False positive rate (1 − specificity)", "True positive rate (sensitivity)")
    _legend_below(fig, _legend_rows(curves), "dots: each run's operating point" if any(c.get("point") for c in curves) else "")
    return _unit_square(fig)


def precision_recall_figure(curves: Sequence[Mapping], colors: Mapping[str, str] | None = None) -> go.Figure:
    """Precision against recall for several runs, average precision in the legend.

    Each curve: `name`, `precision`, `recall`, `average_precision` and optionally `prevalence`
    (the share of pneumonia images: a classifier that guesses has that precision at every recall,
    drawn as a dashed line) and `thresholds` with `specificity` (one per point, as
    `core.evidence` gives them: hovering a point then shows its threshold, sensitivity and
    specificity).
    """
    colors = dict(colors or run_colors([c["name"] for c in curves]))
    fig = go.Figure()
    prevalences = sorted({round(float(c["prevalence"]), 4) for c in curves if c.get("prevalence") is not None and np.isfinite(c["prevalence"])})
    for prevalence in prevalences:
        _reference_line(fig, [0, 1], [prevalence, prevalence], f"chance (prevalence {prevalence:.2f})")
    for curve in curves:
        name = curve["name"]
        ap = curve.get("average_precision")
        label = f"{name} (AP {ap:.3f})" if ap is not None and np.isfinite(ap) else f"{name} (AP n/a)"
        hover = None
        if curve.get("specificity") is not None and len(curve["specificity"]) == len(curve["recall"]):
            hover = _threshold_hover(curve.get("thresholds"), curve["recall"], curve["specificity"])
        fig.add_scatter(
            x=list(curve["recall"]), y=list(curve["precision"]), mode="lines", name=label, legendgroup=name,
            line={"color": colors.get(name, RUN_PALETTE[0]), "width": 2, "shape": "hv"}, customdata=hover,
            hovertemplate=(THRESHOLD_HOVER + "<br>precision %{y:.3f}" if hover else "recall %{x:.3f}<br>precision %{y:.3f}")
            + "<extra>" + name + "</extra>",
        )
    _layout(fig, "Precision-recall on the test split", "Recall (sensitivity)", "Precision (positive predictive value)")
    _legend_below(fig, _legend_rows(curves), "AP: average precision")
    return _unit_square(fig)


def calibration_figure(
    curves: Sequence[Mapping], colors: Mapping[str, str] | None = None, n_bins: int = 10, positive: str = "pneumonia"
) -> go.Figure:
    """Reliability curves: observed share of the positive class (`positive`: pneumonia, or viral for
    bacterial vs viral) against the mean predicted probability per bin.

    Each curve: `name`, `mean_predicted`, `fraction_positive`, `count` (images per non-empty
    bin), and optionally `brier` and `ece` (shown in the legend). The diagonal is perfect
    calibration.
    """
    colors = dict(colors or run_colors([c["name"] for c in curves]))
    fig = go.Figure()
    _reference_line(fig, [0, 1], [0, 1], "perfectly calibrated")
    for curve in curves:
        name = curve["name"]
        parts = [
            f"{title} {curve[key]:.3f}" for key, title in (("brier", "Brier"), ("ece", "ECE"))
            if curve.get(key) is not None and np.isfinite(curve[key])
        ]
        label = f"{name} ({',<br>'.join(parts)})" if parts else name
        counts = [int(c) for c in curve.get("count", [])]
        fig.add_scatter(
            x=list(curve["mean_predicted"]), y=list(curve["fraction_positive"]), mode="lines+markers", name=label,
            legendgroup=name, line={"color": colors.get(name, RUN_PALETTE[0]), "width": 2},
            marker={"size": 8}, customdata=counts or None,
            hovertemplate="mean predicted %{x:.3f}<br>observed share %{y:.3f}"
            + ("<br>%{customdata} images" if counts else "") + "<extra>" + name + "</extra>",
        )
    _layout(fig, "Calibration on the test split", f"Mean predicted probability of {positive}", f"Observed share with {positive}")
    _legend_below(fig, _legend_rows(curves), f"{n_bins} equal-width bins of predicted probability")
    return _unit_square(fig)


def error_breakdown_figure(table: pd.DataFrame, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Grouped bars: each run's error rate per kind of image (normal, bacteria, virus, all).

    `table` has columns `run`, `kind`, `n`, `errors`, `error_rate` (`core.evidence.run_evidence.errors_table`).
    For normal images an error is a false alarm; for bacterial and viral ones a missed pneumonia.
    """
    runs = list(dict.fromkeys(table["run"])) if not table.empty else []
    colors = dict(colors or run_colors(runs))
    order = [k for k in ("normal", "bacteria", "virus") if k in set(table.get("kind", []))]
    order += sorted(k for k in set(table.get("kind", [])) if k not in order and k != "all")
    if "all" in set(table.get("kind", [])):
        order.append("all")
    fig = go.Figure()
    for run in runs:
        part = table[table["run"] == run].set_index("kind").reindex(order)
        rates = [100.0 * float(r) if pd.notna(r) else None for r in part["error_rate"]]
        fig.add_bar(
            name=run, x=order, y=rates, marker_color=colors.get(run, RUN_PALETTE[0]),
            text=[f"{int(e)}/{int(n)}" if pd.notna(n) else "" for e, n in zip(part["errors"], part["n"], strict=True)],
            textposition="outside", cliponaxis=False,
            hovertemplate="%{x}: %{y:.1f} % wrong (%{text})<extra>" + run + "</extra>",
        )
    _layout(fig, "Errors by kind of image (at each run's threshold)", "True kind of image", "Images misclassified (%)", barmode="group")
    fig.update_yaxes(rangemode="tozero", ticksuffix=" %")
    return fig


def confusion_matrix_figure(matrix, labels: Sequence[str] = ("NORMAL", "PNEUMONIA"), title: str = "Confusion matrix") -> go.Figure:
    """Heatmap of `[[tn, fp], [fn, tp]]` with counts and the percentage of each true class."""
    counts = np.asarray(matrix, dtype=int)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0) * 100
    text = [[f"{counts[i, j]:,}<br>{shares[i, j]:.1f} %" for j in range(counts.shape[1])] for i in range(counts.shape[0])]
    fig = go.Figure(
        go.Heatmap(
            z=shares.round(2).tolist(), x=list(labels), y=list(labels), text=text, texttemplate="%{text}",
            textfont={"size": 15}, colorscale="Blues", zmin=0, zmax=100, showscale=False,
            hovertemplate="true %{y}, predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    _layout(fig, title, "Predicted class", "True class", height=300)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def class_probability_figure(rows: pd.DataFrame, class_names: Sequence[str], title: str = "") -> go.Figure:
    """Stacked horizontal bars, one per run: each class's probability (a multi-class run's), each
    named inside its bar. `rows` has `run` and one column per name in `class_names`."""
    rows = rows.reset_index(drop=True)
    runs = list(rows["run"])
    colors = [KIND_COLORS.get(key, RUN_PALETTE[i % len(RUN_PALETTE)]) for i, key in enumerate(("normal", "bacteria", "virus")[: len(class_names)])]
    fig = go.Figure()
    for name, color in zip(class_names, colors, strict=True):
        values = rows[name].astype(float)
        fig.add_bar(
            y=runs, x=values.fillna(0).tolist(), orientation="h", name=name, marker_color=color,
            text=[f"{name} {v:.2f}" if np.isfinite(v) and v >= 0.08 else "" for v in values], textposition="inside",
            hovertemplate="%{y}: P(" + name + ") = %{x:.3f}<extra></extra>",
        )
    _layout(fig, title, "Probability of each class (sums to 1)", "", height=130 + 46 * len(runs), barmode="stack")
    fig.update_xaxes(range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1.0])
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def probability_figure(
    rows: pd.DataFrame, colors: Mapping[str, str] | None = None, title: str = "", positive: str = "pneumonia"
) -> go.Figure:
    """One horizontal bar per run: its probability of `positive` (pneumonia, or viral for bacterial
    vs viral), with the run's threshold marked.

    `rows` has columns `run`, `probability` (0..1, NaN when the run could not score the image),
    `threshold` and optionally `label` and `unusual` (True: the image is unlike the run's training
    X-rays: its bar is grey and says "not assessed", not a class).
    """
    rows = rows.reset_index(drop=True)
    runs = list(rows["run"])
    colors = dict(colors or run_colors(runs))
    probabilities = rows["probability"].astype(float)
    labels = rows["label"] if "label" in rows else pd.Series([""] * len(rows))
    unassessed = [bool(v) if v is not None and v is not pd.NA else False for v in rows.get("unusual", [False] * len(rows))]
    fig = go.Figure()
    fig.add_bar(
        y=runs, x=probabilities.fillna(0).tolist(), orientation="h",
        marker_color=[
            NOT_ASSESSED_COLOR if flagged else CLASS_COLORS.get(str(label).upper(), colors.get(run, RUN_PALETTE[0]))
            for run, label, flagged in zip(runs, labels, unassessed, strict=True)
        ],
        text=[
            "not scored" if not np.isfinite(p) else f"{p:.3f} · not assessed" if flagged else f"{p:.3f} · {label}"
            for p, label, flagged in zip(probabilities, labels, unassessed, strict=True)
        ],
        # inside a long bar, beside a short one: a label never runs past the plot's right edge (dark on the
        # pale grey of a flagged bar, white on a class colour)
        textposition="auto", insidetextanchor="end",
        insidetextfont={"color": ["#33404d" if flagged else "white" for flagged in unassessed]},
        outsidetextfont={"color": [NOT_ASSESSED_COLOR if flagged else "#1f2933" for flagged in unassessed]},
        cliponaxis=False, showlegend=False,
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    )
    fig.add_scatter(
        y=runs, x=rows["threshold"].astype(float).tolist(), mode="markers", name="run's threshold",
        marker={"symbol": "line-ns", "size": 26, "line": {"width": 3, "color": "#222"}},
        hovertemplate="threshold %{x:.3f}<extra>%{y}</extra>",
    )
    _layout(fig, title, f"Probability of {positive}", "", height=110 + 46 * len(runs))
    fig.update_xaxes(range=[0, 1.18], tickvals=[0, 0.25, 0.5, 0.75, 1.0])
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def site_curve_figure(curve: Sequence[Mapping], title: str = "How many site images it takes") -> go.Figure:
    """The adapted operating point's sensitivity and specificity against the number of labelled site
    images: the median of the draws as a line, their 5-95 % range as a band
    (`core.evidence.site_adaptation.sample_size_curve`'s rows: n, metric, median, low, high)."""
    table = pd.DataFrame(list(curve), columns=["n", "metric", "median", "low", "high"])
    fig = go.Figure()
    for metric, color in (("sensitivity", "#d1495b"), ("specificity", "#3b82c4")):
        part = table[table["metric"] == metric].sort_values("n")
        n = part["n"].astype(int).tolist()
        fig.add_scatter(x=n + n[::-1], y=part["high"].tolist() + part["low"].tolist()[::-1], fill="toself", mode="lines",
                        line={"width": 0}, fillcolor=color, opacity=0.18, name=f"{metric}, 5-95 % of draws", hoverinfo="skip")
        fig.add_scatter(x=n, y=part["median"].tolist(), mode="lines+markers", line={"color": color, "width": 2},
                        name=f"{metric}, median", customdata=part[["low", "high"]].values.tolist(),
                        hovertemplate=f"{metric} with %{{x}} images: %{{y:.1%}} (5-95 %: %{{customdata[0]:.1%}}–%{{customdata[1]:.1%}})<extra></extra>")
    _layout(fig, title, "Labelled site images (count)", "On the site's images (%)", height=360)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def shift_figure(rows: Sequence[Mapping], colors: Mapping[str, str] | None = None,
                 lower_is_better: Iterable[str] = ()) -> go.Figure:
    """Validation → test for each run, one panel per metric: an open dot on validation, a filled one on
    test, joined. Each panel's axis is fitted to its own metric, so close AUCs stay apart even beside
    an ECE near zero.

    `rows` are dicts with `name`, `val` and `test` (metric -> value, `val` may be None) and
    `metrics` (metric key -> title), e.g. from `core.evidence.shift`; the panels of `lower_is_better`
    metrics say so in their titles.
    """
    from plotly.subplots import make_subplots

    names = [r["name"] for r in rows]
    colors = dict(colors or run_colors(names))
    titles = dict(rows[0]["metrics"]) if rows else {}
    worse_up = set(lower_is_better)
    fig = make_subplots(rows=1, cols=max(1, len(titles)), horizontal_spacing=0.08,
                        subplot_titles=[f"{t} (lower is better)" if m in worse_up else t for m, t in titles.items()])
    for column, (metric, title) in enumerate(titles.items(), start=1):
        for j, row in enumerate(rows):
            color = colors.get(row["name"], RUN_PALETTE[0])
            val, test = float((row["val"] or {}).get(metric, np.nan)), float(row["test"].get(metric, np.nan))
            ys = [v if np.isfinite(v) else None for v in (val, test)]
            fig.add_scatter(x=[j, j], y=ys, mode="lines", line={"color": color, "width": 2}, showlegend=False,
                            hoverinfo="skip", row=1, col=column)
            for label, value, symbol in (("validation", ys[0], "circle-open"), ("test", ys[1], "circle")):
                fig.add_scatter(
                    x=[j], y=[value], mode="markers", name=f"{row['name']} · {label}", legendgroup=f"{row['name']} · {label}",
                    showlegend=column == 1, marker={"symbol": symbol, "size": 11, "color": color, "line": {"width": 2, "color": color}},
                    hovertemplate=f"{row['name']} · {label}<br>{title} %{{y:.3f}}<extra></extra>", row=1, col=column,
                )
        values = [part.get(metric) for row in rows for part in (row["val"] or {}, row["test"])]
        fig.update_yaxes(range=value_range(values, floor=0.02), row=1, col=column)
        fig.update_xaxes(range=[-0.6, len(rows) - 0.4], showticklabels=False, row=1, col=column)
    legend_rows = len(rows)
    _layout(fig, "Validation → test, one panel per metric", "", "", height=380 + 20 * legend_rows)
    fig.update_yaxes(title_text="Value on the split (0–1)", row=1, col=1)
    fig.update_xaxes(title_text="runs (colour)", row=1, col=1)
    # The legend below the plot, clear of the title
    fig.update_layout(legend={"orientation": "h", "y": -0.15, "yanchor": "top", "x": 0, "xanchor": "left"},
                      margin={**_MARGIN, "b": 60 + 20 * legend_rows})
    return fig


def value_range(values: Iterable[float], margin: float = 0.1, floor: float = 0.05) -> list[float]:
    """A 0–1 axis fitted to `values` with `margin` of their spread (at least `floor`) on each side, kept in [0, 1.02]."""
    finite = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    if not finite:
        return [0.0, 1.02]
    low, high = min(finite), max(finite)
    pad = max(floor, margin * (high - low))
    return [max(0.0, low - pad), min(1.02, high + pad)]
