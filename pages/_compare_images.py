"""Compare page: every test image with each run's probability, and the selected image's heatmap per run (any explanation method).

The join, the "wrong in" / "disagree" columns and the filters are `core.evidence.comparison`'s.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.evidence import comparison
from core.reporting import figures
from core.runs import artifacts
from pages import _loaders as load
from pages import _shared as ui
from pages._compare_runs import Picked

TILES_PER_ROW = 4


def per_image_section(view: Picked) -> None:
    """The filterable per-image table; selecting a row shows the image, each run's verdict and Grad-CAM."""
    st.header("Per-image predictions")
    picked = view.names
    joined = comparison.per_image_table(view.predictions, view.thresholds)
    column = {name: comparison.probability_column(name) for name in picked}

    c1, c2, c3 = st.columns(3)
    only_wrong = c1.checkbox("Misclassified by any run", key="filter_wrong")
    only_disagree = c2.checkbox("Runs disagree", key="filter_disagree", disabled=len(picked) < 2, help="At the thresholds set above")
    true_class = c3.selectbox("True class", ["all", "NORMAL", "PNEUMONIA"], key="filter_class")  # the data's folder classes
    shown = comparison.filter_images(
        joined, wrong=only_wrong, disagree=only_disagree, true_class=None if true_class == "all" else true_class
    )
    st.caption(f"{len(shown):,} of {len(joined):,} test images · probabilities of {view.positive} · select a row to see the image and where each run looks")
    event = st.dataframe(
        shown, hide_index=True, key="image_table", on_select="rerun", selection_mode="single-row",
        column_order=["image", "class_name", "kind", *column.values(), "wrong in"],
        column_config={
            "image": st.column_config.TextColumn("image", width=180),
            "class_name": st.column_config.TextColumn("true class", width=90),
            "kind": st.column_config.TextColumn("kind", width=70),
            "wrong in": st.column_config.TextColumn("wrong in", width=110, help="The runs that call this image wrongly"),
            # each run's bar shares what is left of a 1,280 px screen (less the selection column)
            **{column[name]: st.column_config.ProgressColumn(name, min_value=0.0, max_value=1.0, format="%.3f",
                                                             width=max(80, (ui.TABLE_WIDTH - 490) // len(picked)))
               for name in picked},
        },
    )
    selected = event.selection.rows if event is not None and hasattr(event, "selection") else []
    if selected and selected[0] < len(shown):
        _selected_image(view, shown.iloc[selected[0]])


def _selected_image(view: Picked, row: pd.Series) -> None:
    """One image: each run's probability against its threshold, then the image and each run's Grad-CAM."""
    try:
        content = Path(row["path"]).read_bytes()
    except OSError as error:  # the image may have moved since the run
        content = None
        st.error(f"Cannot show {row['path']}: {error}")
    detail = comparison.image_verdicts(row, view.thresholds, {name: view.run_tasks[name].binary_classes for name in view.names})
    st.plotly_chart(
        figures.probability_figure(detail, view.colors, title=f"{row['image']} (true: {row['class_name']}, {row['kind']})", positive=view.positive),
        key="fig_selected",
    )
    if content is None:
        return
    choice = ui.explanation_controls("compare", view.positive, view.picked_runs)
    gradcam_class = ui.gradcam_class_choice(view.picked_runs, "compare_gradcam_class")
    tiles = [None, *view.names]  # None: the image itself
    for start in range(0, len(tiles), TILES_PER_ROW):
        cols = st.columns(TILES_PER_ROW)
        for col, name in zip(cols, tiles[start : start + TILES_PER_ROW], strict=False):
            with col:
                if name is None:
                    st.image(content, caption=f"{row['image']} · true class {row['class_name']} ({row['kind']})", width="stretch")
                else:
                    _heatmap_tile(view, name, row, content, choice, gradcam_class, detail)


def _heatmap_tile(view: Picked, name: str, row: pd.Series, content: bytes, choice: ui.ExplanationChoice, gradcam_class: str | None,
                  detail: pd.DataFrame) -> None:
    from core.inference import methods

    run = view.by_name[name]
    label_of_method = methods.METHODS[choice.method].label
    predicted = comparison.predicted_class(view.predictions[name], row["path"])
    try:
        picture, has_evidence, region = load.explanation_overlay(run, str(row["path"]), content, choice.opacity,
                                                                 ui.class_to_explain(run, gradcam_class, predicted), choice.method, choice.share)
    except (artifacts.RunError, ValueError, OSError) as error:
        st.caption(ui.no_heatmap_caption(name, label_of_method, error))
        return
    label = detail.loc[detail["run"] == name, "label"].iat[0]
    explained = ui.explained_class(run, gradcam_class, predicted)
    st.image(picture, caption=ui.heatmap_caption(name, comparison.probability_of(row, name), label, has_evidence, explained,
                                                 label_of_method, region), width="stretch")
