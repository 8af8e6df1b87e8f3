"""Compare page: the evidence behind "which run to trust".

ROC, precision-recall and calibration curves; each run on validation against test; confusion
matrices at a movable threshold (or a named operating point, or one chosen on a few labelled site images); metrics with patient-aware
intervals; runs combined into an ensemble; a paired test of two runs by patient; errors by kind
of image; where the models look (each explanation method's evidence); per-image results with each run's
heatmap; and the whole comparison as one HTML report.
The sections live in `pages/_compare_*.py`; what they show is computed in `core`.
"""

import streamlit as st

from pages import _run_picker as run_picker
from pages import _shared as ui
from pages._compare_evidence import (
    curves_section,
    errors_by_kind_section,
    metrics_section,
    paired_test_section,
    shift_and_stress_section,
    three_class_section,
)
from pages._compare_images import per_image_section
from pages._compare_localisation import where_they_look_section
from pages._compare_out_of_fold import out_of_fold_section
from pages._compare_runs import ensemble_section, pick_runs
from pages._compare_site import site_section
from pages._compare_thresholds import confusion_matrices_section

ui.leave_pages_folder_mode()
st.title("Compare")

folder = ui.artifacts_dir()
runs = run_picker.listed_runs(
    folder, run_picker.runs_with_metrics, "compare_archived",
    when_none=f"No finished runs with test results in `{folder}` yet. Start a search on the **Tune** page, or point "
    "the **Artifacts folder** in the sidebar at a folder of saved runs.",
)
if len(runs) < 2:
    ui.next_step("pages/tune.py", "Train a second run on Tune to compare with",
                 f"Compare needs two runs to set side by side; {ui.quick_step()[0].removeprefix('Start ').lower()}.")
view = pick_runs(folder, runs)
curves_section(view)
confusion_matrices_section(view)
site_section(view)
out_of_fold_section(view)
metrics_section(view)
shift_and_stress_section(view)
ensemble_section(view)
three_class_section(view)
paired_test_section(view)
errors_by_kind_section(view)
where_they_look_section(view)
per_image_section(view)
