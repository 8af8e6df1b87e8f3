"""The evidence in words: every label, sentence and formatted number the Compare page and the report share.

``core.evidence`` computes (metrics, intervals, operating points, paired tests); this module says
what those numbers show, once, so the page and the HTML report print the same sentences: the
operating points' labels, the notes on how thresholds and intervals are chosen, the paired tests'
verdicts and method names, and the text tables ("0.932–0.968", "12/40 (30.0 %)", "missed",
"false alarms"). Pure: numbers in, strings and DataFrames of strings out; no Streamlit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.evidence import multiclass, stress
from core.evidence.run_evidence import (
    CONFIDENCE,
    CUSTOM_CHOICE,
    INTERVAL_METRICS,
    OUT_OF_FOLD_CHOICE_PREFIX,
    SITE_CHOICE_PREFIX,
    TARGET_MISS,
    VALIDATION_CHOICE,
    ThresholdChoice,
    target_shortfall,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from core.data.tasks import Task
    from core.evidence import statistics
    from core.evidence.comparison import ImageCheck
    from core.evidence.run_evidence import PairedEvidence, RunEvidence

LEVEL = 0.05  # the significance level of every sentence


# --------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------


VALIDATION_LABEL = "validation-chosen (the run's own threshold)"
# The saved threshold's menu entry when the stress test chose it (`stress.ROBUST_THRESHOLD_RULE`), and
# the plain Youden point beside it: two Youden thresholds, named for the images each is chosen on.
POOLED_LABEL = "saved: Youden's J, validation pooled with its stress copies"
YOUDEN_SHORT = "Youden's J, unchanged validation images only"
# Operating point name in `statistics.operating_points` -> what the reader sees.
POINT_LABELS = {
    "youden": "Youden's J on the unchanged validation images alone",
    "sens@spec90": "best sensitivity at specificity ≥ 90 %",
    "sens@spec95": "best sensitivity at specificity ≥ 95 %",
    "spec@sens90": "best specificity at sensitivity ≥ 90 %",
    "spec@sens95": "best specificity at sensitivity ≥ 95 %",
}
# The page's operating-point menu is narrow: it names the points by their keys.
_SHORT_LABELS = {VALIDATION_CHOICE: VALIDATION_LABEL, "youden": YOUDEN_SHORT, CUSTOM_CHOICE: "custom (the slider)"}
ON_VALIDATION = "chosen on validation"
ON_TEST = "on test, descriptive"
VALIDATION_NOTE = (
    "Operating points are chosen on the validation split, like the saved threshold, and measured on test: "
    "a target met on validation (e.g. specificity ≥ 90 %) can be missed on test, which is the honest figure; a run's box "
    f"warns when its point misses the target by more than {100 * TARGET_MISS:g} points."
)
DESCRIPTIVE_NOTE = (
    "Runs saved without validation predictions get their operating points from the test images: those are "
    "descriptive (optimistic for this test set); their validation-chosen threshold is the honest one."
)


def choice_label(choice: ThresholdChoice) -> str:
    """e.g. "best sensitivity at specificity ≥ 90 % (chosen on validation)"."""
    if choice.key == VALIDATION_CHOICE:
        return VALIDATION_LABEL
    return f"{POINT_LABELS.get(choice.key, choice.key)} ({ON_TEST if choice.on_test else ON_VALIDATION})"


def is_pooled(rule: str | None) -> bool:
    """Whether a run's saved threshold was chosen with its stress copies (metrics.json's `threshold_rule`: today's
    `stress.ROBUST_THRESHOLD_RULE`, or its earlier wording without the bound on the unchanged images)."""
    return bool(rule) and (rule == stress.ROBUST_THRESHOLD_RULE or "pooled with its stressed copies" in rule)


def choice_option(key: str, choice: ThresholdChoice | None, rule: str | None = None) -> str:
    """e.g. "sens@spec90 · on validation — 0.412": one entry of the page's operating-point menu (`rule`: the
    run's `threshold_rule`, which names its saved threshold)."""
    label = POOLED_LABEL if key == VALIDATION_CHOICE and is_pooled(rule) else _SHORT_LABELS.get(key, key)
    if key.startswith(SITE_CHOICE_PREFIX):
        label = f"site point {key.removeprefix(SITE_CHOICE_PREFIX)} · on site images"
        return label if choice is None else f"{label} — {choice.threshold:.3f}"
    if key.startswith(OUT_OF_FOLD_CHOICE_PREFIX):
        label = f"out-of-fold point {key.removeprefix(OUT_OF_FOLD_CHOICE_PREFIX)} · on train/ by fold models"
        return label if choice is None else f"{label} — {choice.threshold:.3f}"
    if choice is None:
        return label
    if key != VALIDATION_CHOICE:
        label += " · on test" if choice.on_test else " · on validation"
    return f"{label} — {choice.threshold:.3f}"


def _interval_text(stored: Mapping[str, Any] | None) -> str:
    """'0.950 (0.870–0.983)' from a saved `statistics.Interval.to_dict()`."""
    if not stored or stored.get("estimate") is None:
        return "n/a"
    low, high = stored.get("low"), stored.get("high")
    inside = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{stored['estimate']:.3f}{inside}"


def site_point_summary(record: Mapping[str, Any]) -> str:
    """A saved site operating point (`core.workflows.site`) in a few lines: the threshold, what it and
    the run's own threshold give on the site's images, with intervals, and its calibration."""
    intervals, before = record.get("intervals") or {}, record.get("at_run_threshold") or {}
    # An out-of-fold point (core.workflows.cross_fit) is chosen on the run's own images, scored by fold models.
    images = "out-of-fold images" if record.get("folds") else "site images"
    lines = [
        f"operating point {record.get('name')} of {record.get('run')}: threshold {record['threshold']:.3f} "
        f"({record.get('rule_text', record.get('rule'))}), on {record['n_images']} {images} "
        f"({record['n_positive']} positive, {record['n_patients']} patients)"
        + ("" if record.get("folds") else f" from {record.get('site')}"),
        f"  on the {images}, {ci_label(record.get('confidence', CONFIDENCE))} by patient: sensitivity "
        f"{_interval_text(intervals.get('sensitivity'))}, specificity {_interval_text(intervals.get('specificity'))}",
        f"  the run's own threshold {record['run_threshold']:.3f} gave there: sensitivity "
        f"{_interval_text(before.get('sensitivity'))}, specificity {_interval_text(before.get('specificity'))}",
    ]
    if calibration := record.get("calibration"):
        lines.append(f"  recalibrated ({calibration['method']}): the threshold is {record['calibrated_threshold']:.3f} on the "
                     f"calibrated probability; Brier score on the site images {record['brier']:.3f} → {record['brier_calibrated']:.3f} "
                     "(fitted on the same images: optimistic)")
    if record.get("fold_thresholds"):
        lines.append(f"  each fold's own threshold: {', '.join(f'{t:.3f}' for t in record['fold_thresholds'])}")
    if record.get("skipped_files"):
        lines.append(f"  {record['skipped_files']} files of the folder could not be read and were left out")
    return "\n".join(lines)


def point_option(name: str, record: Mapping[str, Any]) -> str:
    """e.g. "site point clinic-a — 0.700": a saved operating point in a menu, by how it was chosen
    (on site images, or on out-of-fold predictions: a record with `folds`)."""
    kind = "out-of-fold point" if record.get("folds") else "site point"
    return f"{kind} {name} — {float(record['threshold']):.3f}"


def site_points_table(points: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per saved operating point ({run: {name: record}}): what it was chosen on (a site's images,
    or out-of-fold predictions), its rule and threshold, and the sensitivity and specificity there with
    intervals, at it and at the run's own threshold."""
    rows = []
    for run, records in points.items():
        for name, r in records.items():
            intervals, before = r.get("intervals") or {}, r.get("at_run_threshold") or {}
            rows.append({
                "run": run, "operating point": name, "chosen on": r.get("site"), "images": r.get("n_images"),
                "rule": r.get("rule"), "calibration": (r.get("calibration") or {}).get("method", "none"),
                "threshold": r.get("threshold"),
                "sensitivity there": _interval_text(intervals.get("sensitivity")),
                "specificity there": _interval_text(intervals.get("specificity")),
                "run's threshold": r.get("run_threshold"),
                "its sensitivity there": _interval_text(before.get("sensitivity")),
                "its specificity there": _interval_text(before.get("specificity")),
                "made": r.get("created_at"),
            })
    return pd.DataFrame(rows)


SITE_CURVE_NOTE = (
    "For each number of site images, {draws} draws of that many of the site's labelled images, with replacement (seeded): "
    "the rule chooses a threshold on each draw, and the sensitivity and specificity it gives are measured on all of them. "
    "The line is the median, the band the 5-95 % range: where the band is narrow enough, that many labelled images are enough."
)


def threshold_help(task: Task, saved_threshold: float, rule: str | None = None) -> str:
    """What a run's threshold control does, in the run's class names, and how its threshold was
    chosen (`rule`, metrics.json's `threshold_rule`); a three-class run's probability is derived."""
    positive = task.binary_names[1]
    text = f"Validation-chosen threshold: {saved_threshold:.3f}"
    text += f" ({rule})." if rule else "."
    text += f" An image is called {positive} when its probability is at least this."
    if not task.is_binary:
        text += f" A three-class run's probability of {positive} is " + " + ".join(f"P({n})" for n in task.names[1:]) + "."
    return text


def target_miss_warning(choice: ThresholdChoice) -> str | None:
    """What the run's box says when its validation-chosen point misses its target on test by more than
    `run_evidence.TARGET_MISS` (None when it does not)."""
    miss = target_shortfall(choice)
    if miss is None:
        return None
    metric, target, value = miss
    return (f"Chosen on validation for {metric} ≥ {100 * target:g} %, this threshold ({choice.threshold:.3f}) gives "
            f"{100 * value:.1f} % {metric} on test: {100 * (target - value):.1f} points short of the target (more than the "
            f"{100 * TARGET_MISS:g} this page tolerates). The validation images do not predict the test images here.")


def clean_point_note(saved_threshold: float, at_saved: Mapping[str, float], clean: Mapping[str, float]) -> str:
    """The run's threshold on the unchanged validation images, beside their own Youden point."""
    return (
        f"Unchanged validation images: at the saved {saved_threshold:.3f} sensitivity {100 * at_saved['sensitivity']:.1f} % · "
        f"specificity {100 * at_saved['specificity']:.1f} %; on them alone plain Youden's J would choose {clean['threshold']:.3f} "
        f"({100 * clean['sensitivity']:.1f} % · {100 * clean['specificity']:.1f} %)."
    )


def clean_point_warning(shortfall: float) -> str:
    """Why a run's threshold is suspect when it costs the unchanged validation images too much."""
    return (
        f"This threshold costs the unchanged validation images {100 * shortfall:.1f} points of sensitivity or specificity "
        f"against their own Youden point, more than the {100 * stress.CLEAN_MARGIN:g} the current rule allows: the "
        "stress-test copies pulled it (the run was saved under the earlier rule). Consider the 'Youden's J' operating point."
    )


# --------------------------------------------------------------------------
# Numbers and intervals
# --------------------------------------------------------------------------

# Metric of `evidence.INTERVAL_METRICS` -> its column title in every table.
INTERVAL_TITLES = dict(zip(INTERVAL_METRICS, ("AUC", "sensitivity", "specificity", "accuracy"), strict=True))
# The metrics table's other number columns: point estimates without an interval.
POINT_METRIC_TITLES = ("precision", "F1", "average precision", "Brier", "ECE")
# The metrics a reader compares first: the dashboard shows them in a table of their own, narrow enough
# for a 1,280 px screen; the others follow in a second table.
KEY_METRIC_TITLES = ("AUC", "sensitivity", "specificity")
METRIC_HELP = {
    "Brier": "Brier score: the mean squared difference between probability and truth (0 is perfect; lower is better)",
    "ECE": "Expected calibration error: how far the probabilities are from the observed rates, over 10 bins (lower is better)",
    "average precision": "Area under the precision-recall curve",
}


def split_metrics_table(table: pd.DataFrame, ci: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`metrics_table` as two narrower tables: run, threshold and the key metrics with their intervals;
    then run, the other metrics and the test sizes."""
    key = ["run", "threshold"] + [c for title in KEY_METRIC_TITLES for c in (title, f"{title} {ci}")]
    rest = ["run"] + [c for c in table.columns if c not in key]
    return table[[c for c in key if c in table.columns]], table[rest]


def format_interval(interval: statistics.Interval | None, digits: int = 3) -> str:
    """'0.932–0.968', or 'n/a' when there is no interval."""
    if interval is None or not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return "n/a"
    return f"{interval.low:.{digits}f}–{interval.high:.{digits}f}"


def format_p(p: float | None) -> str:
    """'0.042', '< 0.001', or 'n/a' for an undefined test."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def ci_label(confidence: float) -> str:
    """'95% CI' for 0.95."""
    return f"{100 * confidence:g}% CI"


# One line each for the method names the page and the report print, said where they appear.
GLOSSARY = {
    "design effect": "design effect: the rate's variance with each patient's images counted together over its variance "
    "if every image were independent (at least 1); Wilson's interval uses the image count divided by it",
    "Durkalski chi-square": "Durkalski chi-square: McNemar's test on per-patient counts, so a patient with many images "
    "counts once with its net disagreement (Durkalski et al. 2003)",
    "exact sign-flip": "exact sign-flip: every way of flipping the sign of each patient's net disagreement is counted, "
    "an exact p-value used when fewer than 25 patients disagree",
}


def glossary(*terms: str) -> str:
    """The one-line explanations of `terms` (GLOSSARY keys), as one sentence per term."""
    return " ".join(f"{GLOSSARY[term][0].upper()}{GLOSSARY[term][1:]}." for term in terms)


def intervals_note(n_resamples: int, seed: int, confidence: float = CONFIDENCE) -> str:
    """How the intervals are made, in one sentence for the page and the report."""
    return (
        f"{ci_label(confidence)}: AUC by percentile bootstrap over patients (all images of a drawn patient together), "
        f"{n_resamples:,} resamples, seed {seed} (at perfect separation, where every resample gives the same AUC, "
        "Newcombe's score interval on the patients); sensitivity, specificity and accuracy by Wilson's score interval "
        "widened by the patients' design effect, which holds near 0 % and 100 % where a bootstrap falls short. "
        + glossary("design effect")
    )


def image_counts(check: ImageCheck) -> str:
    """The runs' test image counts, e.g. "a: 312, b: 300", for the warning that they differ."""
    counts = ", ".join(f"{name}: {count}" for name, count in check.counts.items())
    return counts if not check.same_count or check.same else f"{counts}, same count but different files"


# --------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------

PAIRED_NOTE = (
    "Both tests keep each patient's images together, as the intervals do: DeLong's test of the AUCs clustered by "
    "patient (Obuchowski 1997), and McNemar's test of the errors at each run's threshold clustered by patient "
    "(exact sign-flip test of the per-patient differences under 25 patients with a net disagreement, else Durkalski 2003). "
    "b = images A got right and B wrong, c = the reverse. The image-level tests, which treat every image as "
    "independent, are shown for reference only: with several images per patient their p-values are too small. "
    + glossary("exact sign-flip", "Durkalski chi-square")
)


def difference_interval(d: statistics.DeLongResult) -> str:
    """The AUC difference's interval, '+0.012 to +0.085', or 'n/a' when the test is undefined."""
    return f"{d.ci_low:+.3f} to {d.ci_high:+.3f}" if math.isfinite(d.ci_low) and math.isfinite(d.ci_high) else "n/a"


def mcnemar_method(result: statistics.ClusteredMcNemarResult, detailed: bool = False) -> str:
    """Which clustered McNemar test ran: a table's short name, or with ``detailed`` the page's explanation."""
    exact = result.method == "exact_sign_flip"
    if detailed:
        return glossary("exact sign-flip" if exact else "Durkalski chi-square").rstrip(".")
    return "exact sign-flip" if exact else "Durkalski chi-square"


def _p_phrase(p: float, paired: PairedEvidence) -> str:
    shown = format_p(p)
    value = shown if shown.startswith("<") else f"= {shown}"
    if paired.adjusted:
        return f"by patient, Holm-adjusted over {paired.n_comparisons} pairs: p {value}"
    return f"by patient: p {value}"


def auc_sentence(paired: PairedEvidence) -> str:
    """What the AUC test says, in words, from the patient-level test (Holm-adjusted when a family)."""
    d = paired.delong_by_patient
    if not d.defined:
        return f"The patient-level test of the AUCs is undefined: {d.problem}."
    phrase = _p_phrase(paired.p_auc, paired)
    if paired.p_auc < LEVEL:
        higher, lower = (paired.name_a, paired.name_b) if d.difference > 0 else (paired.name_b, paired.name_a)
        return f"{higher}'s AUC is higher than {lower}'s ({phrase})."
    return f"No evidence at the 5 % level that the AUCs differ ({phrase}); this does not show that they are equal."


def errors_sentence(paired: PairedEvidence) -> str:
    """What the error test says, in words, at the two thresholds in use."""
    counts = f"{paired.errors_a} vs {paired.errors_b} errors of {paired.n_images} images"
    phrase = _p_phrase(paired.p_errors, paired)
    if paired.p_errors < LEVEL:
        fewer, more = (paired.name_a, paired.name_b) if paired.errors_a < paired.errors_b else (paired.name_b, paired.name_a)
        return f"{fewer} makes fewer errors than {more} at the thresholds in use ({counts}; {phrase})."
    return f"No evidence at the 5 % level that the error rates differ at the thresholds in use ({counts}; {phrase})."


# --------------------------------------------------------------------------
# Text tables
# --------------------------------------------------------------------------


def metrics_table(evidence: list[RunEvidence], combined: bool = False) -> pd.DataFrame:
    """One row per run: threshold, point estimates and their intervals, calibration, sizes.

    Each interval metric gets a number column and a text column ``"<metric> 95% CI"``
    ("0.932–0.968"); with ``combined`` one text column ``"<metric> (95% CI)"`` ("0.951 (0.932–0.968)")
    instead, as a paper's table would print it.
    """
    rows = []
    for ev in evidence:
        label = ci_label(ev.confidence)
        row: dict[str, Any] = {"run": ev.name, "threshold": ev.threshold}
        for metric, title in INTERVAL_TITLES.items():
            value = float(ev.metrics[metric])
            if combined:
                shown = f"{value:.3f}" if math.isfinite(value) else "n/a"
                row[f"{title} ({label})"] = f"{shown} ({format_interval(ev.interval(metric))})"
            else:
                row[title] = value
                row[f"{title} {label}"] = format_interval(ev.interval(metric))
        row.update(
            {
                "precision": float(ev.metrics["precision"]),
                "F1": float(ev.metrics["f1"]),
                "average precision": ev.pr["average_precision"],
                "Brier": ev.brier,
                "ECE": ev.ece,
                "test images": ev.n_images,
                "test patients": ev.n_patients,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def paired_row(paired: PairedEvidence, compact: bool = False) -> dict[str, Any]:
    """One table row of a pair's tests; ``compact`` folds A/B columns together for a printed table.

    The patient-level tests come first; the Holm columns appear when the pair is one of several;
    the image-level p-values come last, labelled as such.
    """
    d, m = paired.delong_by_patient, paired.mcnemar_by_patient
    label = ci_label(d.confidence)
    method = mcnemar_method(m)
    holm_auc = {"AUC p, Holm-adjusted": format_p(paired.p_auc_adjusted)} if paired.adjusted else {}
    holm_errors = {"errors p, Holm-adjusted": format_p(paired.p_errors_adjusted)} if paired.adjusted else {}
    image_level = f"{format_p(paired.delong.p_value)} / {format_p(paired.mcnemar.p_value)}"
    if compact:
        return {
            "run A": paired.name_a,
            "run B": paired.name_b,
            "images / patients": f"{paired.n_images:,} / {paired.n_patients:,}",
            "AUC A / B": f"{d.auc_a:.3f} / {d.auc_b:.3f}",
            f"AUC A − B ({label}, by patient)": f"{d.difference:+.3f} ({difference_interval(d)})",
            "AUC p (by patient)": format_p(d.p_value),
            **holm_auc,
            "thresholds A / B": f"{paired.threshold_a:.3f} / {paired.threshold_b:.3f}",
            "errors A / B": f"{paired.errors_a} / {paired.errors_b}",
            "b / c": f"{m.b} / {m.c}",
            "errors p (by patient)": format_p(m.p_value),
            **holm_errors,
            "errors test": method,
            "image-level p, DeLong / McNemar (images as independent)": image_level,
        }
    return {
        "run A": paired.name_a,
        "run B": paired.name_b,
        "images": paired.n_images,
        "patients": paired.n_patients,
        "AUC A": d.auc_a,
        "AUC B": d.auc_b,
        "AUC difference (A − B)": d.difference,
        f"difference {label} (by patient)": difference_interval(d),
        "AUC p (by patient)": format_p(d.p_value),
        **holm_auc,
        "threshold A": paired.threshold_a,
        "threshold B": paired.threshold_b,
        "errors A": paired.errors_a,
        "errors B": paired.errors_b,
        "b (A right, B wrong)": m.b,
        "c (A wrong, B right)": m.c,
        "errors p (by patient)": format_p(m.p_value),
        **holm_errors,
        "errors test": method,
        "DeLong p (image-level)": format_p(paired.delong.p_value),
        "McNemar p (image-level)": format_p(paired.mcnemar.p_value),
    }


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.1f} %)" if total else "–"


def errors_by_kind_note(run_tasks: Iterable[Task]) -> str:
    """What counts as an error of each kind of image, for the runs' tasks (after "At each run's threshold.")."""
    text = "For normal images an error is a false alarm; for bacterial and viral pneumonia a missed case"
    if any(t.name == "bacterial_vs_viral" for t in run_tasks):
        return text + (
            "; for a bacterial-vs-viral run, bacterial images are its negatives (false alarms) and viral ones its positives (missed)."
        )
    return text + "."


def errors_by_kind_wide(evidence: list[RunEvidence], positive: str = "pneumonia") -> pd.DataFrame:
    """Errors per kind and class, one column per run: "wrong/of (rate)".

    Rows: each kind of the negative class (false alarms: normal images; bacterial ones for bacterial
    vs viral), each kind of the positive class (missed cases), all positive images (`positive`
    names the class: pneumonia, or viral), and all images.
    """
    columns: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for ev in evidence:
        if ev.errors.empty:
            continue
        cells: dict[str, str] = {}
        for row in ev.errors.itertuples():
            if row.kind == "all":
                continue
            what = "false alarms" if row.n_negative and not row.n_positive else "missed"
            label = f"{row.kind} ({what})"
            cells[label] = _share(int(row.errors), int(row.n))
            if label not in order:
                order.append(label)
        total = ev.errors[ev.errors["kind"] == "all"].iloc[0]
        cells[f"{positive}, all kinds (missed)"] = _share(int(total["false_negatives"]), int(total["n_positive"]))
        cells["all images"] = _share(int(total["errors"]), int(total["n"]))
        columns[ev.name] = cells
    order.sort(key=lambda label: (not label.startswith("normal"), label))
    order += [f"{positive}, all kinds (missed)", "all images"]
    table = pd.DataFrame({"images": order})
    for name, cells in columns.items():
        table[name] = [cells.get(label, "–") for label in order]
    return table


# --------------------------------------------------------------------------
# Three classes
# --------------------------------------------------------------------------

MULTICLASS_NOTE = (
    "Three-class runs call an image normal when P(pneumonia) = P(bacterial) + P(viral) is below their threshold "
    "chosen on validation (the call of their pneumonia view), otherwise the pneumonia kind of larger probability. "
    "Accuracy is the share of images called their true class; each class's sensitivity and specificity count it "
    "against the other two; AUCs are one class against the rest, averaged over the classes (macro) or pooled over "
    "every image and class (micro). Intervals resample patients, as the binary AUC's do."
)

# core.evidence.multiclass's rules -> the decision column's words
DECISIONS = {multiclass.TWO_STEP_RULE: "two steps (threshold, then kind)", multiclass.ARGMAX_RULE: "argmax"}

# core.evidence.multiclass.INTERVAL_METRICS -> column titles
MULTICLASS_TITLES = {"accuracy": "accuracy", "macro_auc": "macro AUC", "micro_auc": "micro AUC"}


def multiclass_table(evidence: list[multiclass.ClassEvidence]) -> pd.DataFrame:
    """One row per three-class run: accuracy, macro and micro AUC with their intervals ("0.81 (0.74–0.87)")."""
    rows = []
    for ev in evidence:
        label = ci_label(ev.confidence)
        row: dict[str, Any] = {"run": ev.name, "decision": DECISIONS.get(ev.metrics.get("decision_rule"), "argmax")}
        for metric, title in MULTICLASS_TITLES.items():
            value = float(ev.metrics[metric])
            interval = (ev.intervals or {}).get(metric)
            row[f"{title} ({label})"] = f"{value:.3f} ({format_interval(interval)})" if math.isfinite(value) else "n/a"
        row["test images"] = ev.metrics["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(evidence: list[multiclass.ClassEvidence]) -> pd.DataFrame:
    """One row per run and class: images, sensitivity, specificity and one-vs-rest AUC at the run's decision."""
    parts = [multiclass.per_class_table(ev.name, ev.metrics, ev.task.names) for ev in evidence]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def matrix_table(ev: multiclass.ClassEvidence) -> pd.DataFrame:
    """The confusion matrix as text: rows are true classes, cells "count (row %)"."""
    names = list(ev.task.names)
    rows = []
    for name, counts in zip(names, ev.matrix, strict=True):
        total = sum(counts)
        cells = {f"called {other}": f"{count} ({100 * count / total:.1f} %)" if total else "–" for other, count in zip(names, counts, strict=True)}
        rows.append({"true class": name, **cells, "images": total})
    return pd.DataFrame(rows)
