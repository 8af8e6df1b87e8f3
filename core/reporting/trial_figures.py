"""Plotly figures of a search's trials: parallel coordinates, score against each hyperparameter,
hyperparameter importance, learning curves and the optimisation history.

Pure functions over `core.runs.trials` tables, like `core.reporting.figures` (same template and margins), kept in
a module of their own so the comparison figures and these grow apart. Every axis is titled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.reporting.figures import RUN_PALETTE, _layout
from core.runs.trials import (
    SCORE,
    Importance,
    TrialTable,
    encode,
    hyperparameter_label,
    is_categorical,
    optimisation_history,
)

SCORE_TITLE = "Best validation AUC"
BEST_COLOR = "#d1495b"
OTHER_COLOR = "#5b6770"
# Learning curves of the other picked trials: the palette without its reds and pinks, so the best stands out.
OTHER_TRIAL_COLORS = tuple(c for c in RUN_PALETTE if c not in ("#D55E00", "#CC79A7"))
# A positive hyperparameter spanning this many powers of ten (a learning rate) is drawn on a log axis.
LOG_SPAN_DECADES = 1.5


def _list(values) -> list:
    """Plain floats with None for gaps, so the figure's JSON stays readable (see core.reporting.figures)."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(values, dtype=object).tolist()]


def _is_log_scaled(values: pd.Series) -> bool:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return not numbers.empty and bool((numbers > 0).all()) and np.log10(numbers.max() / numbers.min()) >= LOG_SPAN_DECADES


def parallel_coordinates_figure(table: TrialTable, names: Sequence[str] | None = None) -> go.Figure:
    """One line per scored trial across every hyperparameter and its validation AUC, coloured by it.

    Choices (strings, booleans) become codes with their labels as ticks; a log-spread number (a
    learning rate) is drawn as log10 with its real values as ticks. Drag along an axis to filter.
    """
    scored = table.scored
    names = list(names if names is not None else table.hyperparameters)
    dimensions = []
    for name in names:
        values = scored[name]
        codes, labels = encode(values)
        if labels is not None:
            dimensions.append({"label": hyperparameter_label(name), "values": _list(codes), "tickvals": list(range(len(labels))), "ticktext": labels,
                               "range": [-0.5, max(len(labels) - 0.5, 0.5)]})
        elif _is_log_scaled(values):
            logs = np.log10(codes)
            ticks = list(range(math.floor(np.nanmin(logs)), math.ceil(np.nanmax(logs)) + 1))
            dimensions.append({"label": f"{hyperparameter_label(name)} (log scale)", "values": _list(logs), "tickvals": ticks,
                               "ticktext": [f"{10.0 ** t:g}" for t in ticks]})
        else:
            dimensions.append({"label": hyperparameter_label(name), "values": _list(codes), "tickformat": number_format(codes)})
    score = scored[SCORE].to_numpy(float)
    dimensions.append({"label": SCORE_TITLE, "values": _list(score), "tickformat": ".3f"})
    line = {"color": _list(score), "colorscale": "Viridis", "showscale": True, "colorbar": {"title": {"text": "val AUC"}}}
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    fig.update_layout(title={"text": f"Parallel coordinates ({len(scored)} scored trials; drag on an axis to filter)", "x": 0},
                      template="plotly_white", height=420, margin={"l": 60, "r": 40, "t": 80, "b": 30})
    return fig


def number_format(values) -> str:
    """A d3 format for a numeric axis that writes its values as the tables do: 1.72e-04 for a small rate,
    an integer for whole numbers, three decimals otherwise (not plotly's SI "171.51µ" or "0.9940584")."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return ""
    if np.all(finite == np.round(finite)):
        return "d"
    return ".2e" if np.nanmax(np.abs(finite)) < 0.01 else ".3f"


def score_scatter_figure(table: TrialTable, names: Sequence[str] | None = None, columns: int = 3) -> go.Figure:
    """Validation AUC against each hyperparameter, one small panel each; the best trial in red."""
    scored = table.scored
    names = list(names if names is not None else table.hyperparameters) or ["trial"]
    rows = math.ceil(len(names) / columns)
    fig = make_subplots(rows=rows, cols=min(columns, len(names)), shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.45 / max(rows, 1))
    best = table.best_trial_id
    colors = [BEST_COLOR if str(t) == best else OTHER_COLOR for t in scored["trial_id"]]
    for i, name in enumerate(names):
        row, col = i // columns + 1, i % columns + 1
        values = scored[name]
        x = values.astype(str).tolist() if is_categorical(values) else _list(pd.to_numeric(values, errors="coerce"))
        fig.add_scatter(
            x=x, y=_list(scored[SCORE]), mode="markers", row=row, col=col, showlegend=False,
            marker={"color": colors, "size": 8, "opacity": 0.8}, customdata=scored["trial"].tolist(),
            hovertemplate=f"trial %{{customdata}}<br>{name} %{{x}}<br>val AUC %{{y:.4f}}<extra></extra>",
        )
        axis = {"title_text": hyperparameter_label(name), "row": row, "col": col}
        if is_categorical(values):
            fig.update_xaxes(type="category", **axis)
        elif _is_log_scaled(values):
            fig.update_xaxes(type="log", **axis)
        else:
            fig.update_xaxes(**axis)
    for row in range(1, rows + 1):
        fig.update_yaxes(title_text=SCORE_TITLE if row == 1 or rows > 1 else None, row=row, col=1)
    fig.update_layout(title={"text": "Validation AUC against each hyperparameter (best trial in red)", "x": 0},
                      template="plotly_white", height=120 + 230 * rows, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def importance_figure(importance: Importance) -> go.Figure:
    """Horizontal bars of permutation importance, the most important on top, with its spread."""
    ranked = importance.table.iloc[::-1]
    fig = go.Figure(go.Bar(
        x=_list(ranked["importance"]), y=ranked["hyperparameter"].tolist(), orientation="h", marker_color="#0072B2",
        error_x={"type": "data", "array": _list(ranked["spread"]), "visible": True},
        hovertemplate="%{y}: %{x:.4f}<extra></extra>",
    ))
    _layout(fig, f"Hyperparameter importance ({importance.n_trials} trials)",
            "Drop in the surrogate's R² when shuffled (permutation importance)", "Hyperparameter",
            height=140 + 32 * len(ranked), showlegend=False)
    return fig


def learning_curves_figure(history: pd.DataFrame, trial_ids: Sequence[str], best_trial_id: str | None = None,
                           metric: str = "auc") -> go.Figure:
    """Train (dashed) and validation (solid) `metric` per epoch of the picked trials; the best thick and red."""
    titles = {"auc": "AUC", "loss": "Loss (cross-entropy)", "accuracy": "Accuracy (share correct)"}
    fig = go.Figure()
    others = iter(OTHER_TRIAL_COLORS * (len(trial_ids) // len(OTHER_TRIAL_COLORS) + 1))
    for trial_id in trial_ids:
        rows = history[history["trial_id"].astype(str) == str(trial_id)].sort_values("epoch")
        if rows.empty:
            continue
        is_best = str(trial_id) == str(best_trial_id)
        color = BEST_COLOR if is_best else next(others)
        label = f"trial {int(trial_id) + 1 if str(trial_id).isdigit() else trial_id}" + (" (best)" if is_best else "")
        for split, column, dash in (("train", metric, "dash"), ("validation", f"val_{metric}", "solid")):
            if column not in rows:
                continue
            fig.add_scatter(
                x=rows["epoch"].tolist(), y=_list(rows[column]), mode="lines+markers", name=f"{label} · {split}",
                legendgroup=label, line={"color": color, "dash": dash, "width": 4 if is_best else 2},
                marker={"size": 7 if is_best else 5},
            )
    _layout(fig, f"Learning curves: {titles.get(metric, metric)}, train dashed, validation solid", "Epoch",
            titles.get(metric, metric), height=max(380, 120 + 22 * 2 * len(trial_ids)))
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})  # beside, not over the title
    fig.update_xaxes(dtick=1 if history["epoch"].max() <= 20 else None)
    return fig


def optimisation_history_figure(table: TrialTable) -> go.Figure:
    """Each trial's validation AUC in the order they ran, and the best so far."""
    steps = optimisation_history(table)
    scored = steps[steps[SCORE].notna()]
    fig = go.Figure()
    fig.add_scatter(x=scored["trial"].tolist(), y=_list(scored[SCORE]), mode="markers", name="trial",
                    marker={"color": OTHER_COLOR, "size": 8}, hovertemplate="trial %{x}: %{y:.4f}<extra></extra>")
    fig.add_scatter(x=scored["trial"].tolist(), y=_list(scored["best_so_far"]), mode="lines", name="best so far",
                    line={"color": BEST_COLOR, "shape": "hv", "width": 3})
    _layout(fig, "Optimisation history", "Trial (in the order they ran)", SCORE_TITLE, height=320)
    # Whole trial numbers only (plotly puts ticks at 1.5, 2.5 for a few trials).
    fig.update_xaxes(tickformat="d", dtick=max(1, math.ceil(len(scored) / 10)), tick0=1)
    return fig
