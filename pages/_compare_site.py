"""Compare page: adapt a run to a site from a few labelled images, and the site operating points saved so far.

The form scores the site folder in the page (100 images take seconds) through `core.workflows.site`,
which saves the point beside the run; the run's operating-point menu above then offers it
(`pages._compare_runs` adds each saved point to the menu). The rules, intervals and curve are
`core.evidence.site_adaptation`'s; the words are `core.reporting.wording`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from core.data import folders
from core.evidence import run_evidence, site_adaptation
from core.reporting import figures, wording
from core.runs import artifacts
from core.workflows import site
from pages import _loaders as load
from pages._compare_runs import Picked
from pages._compare_thresholds import choice_key, threshold_key

RULE_LABELS = {
    site_adaptation.YOUDEN: "Youden's J on the site images",
    site_adaptation.SENSITIVITY: "keep the run's validation sensitivity",
}
CALIBRATION_LABELS = {
    site_adaptation.NO_CALIBRATION: "none",
    site_adaptation.PLATT: "Platt (slope and offset)",
    site_adaptation.TEMPERATURE: "temperature (one scale)",
}


def _adapt(view: Picked) -> None:
    """The Adapt button: score the site folder, save the point, and pick it in the run's menu above."""
    state = st.session_state
    run = view.by_name[state["site_run"]]
    name = str(state.get("site_name") or "").strip()
    try:
        with st.spinner(f"Scoring the site's images with {run.name}…"):
            record = site.adapt_run(run, str(state.get("site_folder") or "").strip(), name, rule=state["site_rule"],
                                    calibration=state["site_calibration"], models=load.model_for(run),
                                    replace=bool(state.get("site_replace")))
    except (artifacts.RunError, folders.DataError, site_adaptation.SiteError, OSError) as error:
        state["site_message"] = ("error", f"No operating point saved: {error}")
        return
    state[choice_key(run.name)] = run_evidence.site_choice_key(name)
    state[threshold_key(run.name)] = float(record["threshold"])
    state["site_shown"] = f"{run.name} · {name}"
    state["site_message"] = ("success", f"Saved operating point **{name}** of {run.name} and picked it above (threshold "
                                        f"{record['threshold']:.3f}).")


def site_section(view: Picked) -> None:
    """The Adapt form (in an expander) and the saved site operating points of the picked runs, with the curve of one."""
    st.header("Adapt to your site")
    st.caption(
        "A few labelled X-rays from your site (a folder with NORMAL/ and PNEUMONIA/, 20-100 images) re-choose a run's "
        "threshold there, saved as a named operating point of the run (not a new training): the menu above then offers it, "
        "measured on test, and Predict can decide with it. Sensitivity and specificity on the site images come with "
        "95 % intervals by patient; the curve says how much more labelling would narrow them."
    )
    binary = [n for n in view.names if view.run_tasks[n].is_binary and view.by_name[n].has_model]
    with st.expander("Adapt a run to your site", icon=":material/tune:", expanded="site_message" in st.session_state):
        if not binary:
            st.info("None of the picked runs can be adapted: it takes a two-class run with its model.")
        else:
            left, right = st.columns(2)
            left.selectbox("Run", binary, key="site_run")
            right.text_input("Site folder", key="site_folder", placeholder="/path/to/site (NORMAL/ and PNEUMONIA/ inside)")
            st.session_state.setdefault("site_name", f"site-{datetime.now(UTC):%Y%m%d}")
            left.text_input("Name of the operating point", key="site_name")
            right.selectbox("Rule", list(RULE_LABELS), format_func=RULE_LABELS.get, key="site_rule",
                            help=f"{site_adaptation.YOUDEN}: {site_adaptation.RULES[site_adaptation.YOUDEN]} (the rule every run "
                            f"uses on validation). {site_adaptation.SENSITIVITY}: {site_adaptation.RULES[site_adaptation.SENSITIVITY]}.")
            left.selectbox("Recalibrate", list(CALIBRATION_LABELS), format_func=CALIBRATION_LABELS.get, key="site_calibration",
                           help="Fit the probabilities to the site's images too. Both maps are increasing: decisions do not change, "
                           "the probability shown does.")
            right.checkbox("Replace a point of the same name", key="site_replace")
            st.button("Adapt", key="site_adapt", icon=":material/tune:", on_click=_adapt, args=(view,))
        if message := st.session_state.pop("site_message", None):
            (st.success if message[0] == "success" else st.error)(message[1])

    saved = {name: view.by_name[name].operating_points() for name in view.names}
    saved = {name: points for name, points in saved.items() if points}
    if not saved:
        st.caption("No site operating points saved for the picked runs yet.")
        return
    st.dataframe(wording.site_points_table(saved), hide_index=True, key="site_points_table",
                 column_config={"threshold": st.column_config.NumberColumn(format="%.3f"),
                                "run's threshold": st.column_config.NumberColumn(format="%.3f")})
    options = [f"{run} · {name}" for run, points in saved.items() for name in points if points[name].get("curve")]
    if not options:  # out-of-fold points (core.workflows.cross_fit) have no curve of site images
        return
    if st.session_state.get("site_shown") not in options:
        st.session_state["site_shown"] = options[-1]
    shown = st.selectbox("Curve of", options, key="site_shown")
    run_name, point_name = shown.split(" · ", 1)
    record = saved[run_name][point_name]
    st.plotly_chart(figures.site_curve_figure(record.get("curve") or []), key="fig_site_curve")
    st.caption(wording.SITE_CURVE_NOTE.format(draws=record.get("curve_draws", site_adaptation.CURVE_DRAWS)))
    st.caption(wording.site_point_summary(record).replace("\n", "  \n"))
