"""core.reporting.wording: the labels and texts the Compare page and the report share, from the numbers of core.evidence."""

from __future__ import annotations

import math

import pytest

from core.data import tasks
from core.evidence import run_evidence, statistics, stress
from core.evidence.run_evidence import ThresholdChoice
from core.reporting import wording


def choice(key: str, on_test: bool, threshold: float = 0.4123) -> ThresholdChoice:
    return ThresholdChoice(key, threshold, 0.9, 0.8, on_test=on_test)


def test_every_operating_point_has_a_label_and_says_where_it_was_chosen():
    assert set(run_evidence.OPERATING_POINTS) == set(wording.POINT_LABELS)
    assert wording.choice_label(choice("sens@spec90", on_test=False)) == "best sensitivity at specificity ≥ 90 % (chosen on validation)"
    assert wording.choice_label(choice("spec@sens95", on_test=True)) == "best specificity at sensitivity ≥ 95 % (on test, descriptive)"
    assert wording.choice_label(choice(run_evidence.VALIDATION_CHOICE, on_test=False)) == "validation-chosen (the run's own threshold)"


def test_the_menu_entry_of_an_operating_point_names_its_split_and_threshold():
    assert wording.choice_option("sens@spec90", choice("sens@spec90", on_test=False)) == "sens@spec90 · on validation — 0.412"
    assert wording.choice_option("youden", choice("youden", on_test=True)) == "Youden's J, unchanged validation images only · on test — 0.412"
    # The validation-chosen threshold is always chosen on validation: no split is named.
    assert wording.choice_option("validation", choice("validation", on_test=False, threshold=0.5)) == (
        "validation-chosen (the run's own threshold) — 0.500"
    )
    assert wording.choice_option(run_evidence.CUSTOM_CHOICE, None) == "custom (the slider)"


def test_the_two_youden_thresholds_are_named_for_the_images_each_is_chosen_on():
    saved = choice("validation", on_test=False, threshold=0.457)
    pooled = wording.choice_option("validation", saved, stress.ROBUST_THRESHOLD_RULE)
    plain = wording.choice_option("youden", choice("youden", on_test=False, threshold=0.31))
    assert pooled == "saved: Youden's J, validation pooled with its stress copies — 0.457"
    assert plain == "Youden's J, unchanged validation images only · on validation — 0.310"
    earlier = "Youden's J on the validation split pooled with its stressed copies (framed tighter, sharpened, blurred, contrast changed: core.evidence.stress)"
    assert wording.choice_option("validation", saved, earlier) == pooled  # the rule's wording before the bound
    # A run saved before the stress test chose thresholds keeps the plain name for its saved one.
    assert wording.choice_option("validation", saved, "Youden's J on the validation split").startswith("validation-chosen")


def test_a_validation_chosen_point_that_misses_its_target_on_test_says_so_with_the_figures():
    # The runs: "sensitivity at 90 % specificity" gave test specificity 0.607 and 0.547.
    missed = ThresholdChoice("sens@spec90", 0.8123, 0.99, 0.607, on_test=False)
    text = wording.target_miss_warning(missed)
    assert text is not None and "specificity ≥ 90 %" in text and "60.7 % specificity on test" in text and "29.3 points short" in text
    assert run_evidence.target_shortfall(missed) == ("specificity", 0.9, 0.607)
    # Within the tolerance (5 points), on the right side of it, on test, or without a target: no warning.
    assert wording.target_miss_warning(ThresholdChoice("sens@spec90", 0.8, 0.99, 0.86, on_test=False)) is None
    assert wording.target_miss_warning(ThresholdChoice("spec@sens95", 0.2, 0.899, 0.9, on_test=False)) is not None
    assert wording.target_miss_warning(ThresholdChoice("spec@sens95", 0.2, 0.901, 0.9, on_test=False)) is None
    assert wording.target_miss_warning(ThresholdChoice("sens@spec90", 0.8, 0.99, 0.5, on_test=True)) is None
    assert wording.target_miss_warning(ThresholdChoice("youden", 0.5, 0.5, 0.5, on_test=False)) is None
    assert [run_evidence.point_target(k) for k in run_evidence.OPERATING_POINTS] == [
        None, ("specificity", 0.9), ("specificity", 0.95), ("sensitivity", 0.9), ("sensitivity", 0.95)]


@pytest.mark.parametrize(
    ("p", "shown"), [(0.0421, "0.042"), (0.0009, "< 0.001"), (1.0, "1.000"), (math.nan, "n/a"), (None, "n/a")]
)
def test_p_values(p, shown):
    assert wording.format_p(p) == shown


def test_intervals_and_their_label():
    assert wording.format_interval(statistics.Interval(0.95, 0.9321, 0.9684, 0.95, 0)) == "0.932–0.968"
    assert wording.format_interval(statistics.Interval(0.95, math.nan, 0.97, 0.95, 0)) == "n/a"
    assert wording.format_interval(None) == "n/a"
    assert wording.ci_label(0.95) == "95% CI" and wording.ci_label(0.9) == "90% CI"
    assert list(wording.INTERVAL_TITLES) == list(run_evidence.INTERVAL_METRICS)


def test_the_paired_tests_method_and_interval_texts():
    a = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.6]
    b = [0.2, 0.3, 0.5, 0.7, 0.9, 0.1, 0.6, 0.8]
    y = [0, 0, 1, 1, 1, 0, 1, 0]
    groups = ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    mcnemar = statistics.clustered_mcnemar_test(y, [int(s >= 0.5) for s in a], [int(s >= 0.5) for s in b], groups)
    assert mcnemar.method == "exact_sign_flip"  # few discordant patients
    assert wording.mcnemar_method(mcnemar) == "exact sign-flip"
    assert wording.mcnemar_method(mcnemar, detailed=True).startswith("Exact sign-flip: every way of flipping the sign")
    chi_square = type("Result", (), {"method": "durkalski"})()
    assert wording.mcnemar_method(chi_square) == "Durkalski chi-square"
    assert wording.mcnemar_method(chi_square, detailed=True).startswith("Durkalski chi-square: McNemar's test on per-patient")
    # Each method name the page and the report print is explained where it appears.
    assert "Durkalski chi-square:" in wording.PAIRED_NOTE and "Exact sign-flip:" in wording.PAIRED_NOTE
    assert "Design effect: the rate's variance" in wording.intervals_note(1000, 0)

    d = statistics.delong_test(y, a, b)
    assert wording.difference_interval(d) == f"{d.ci_low:+.3f} to {d.ci_high:+.3f}"
    assert d.ci_low < 0 < d.ci_high and wording.difference_interval(d).startswith("-")
    undefined = type("Result", (), {"ci_low": math.nan, "ci_high": 0.1})()
    assert wording.difference_interval(undefined) == "n/a"


@pytest.mark.parametrize(
    ("task", "called", "derived"),
    [
        (tasks.PNEUMONIA, "called pneumonia", None),
        (tasks.BACTERIAL_VS_VIRAL, "called viral", None),
        (tasks.THREE_CLASS, "called pneumonia", "A three-class run's probability of pneumonia is P(bacterial) + P(viral)."),
    ],
)
def test_the_threshold_help_names_the_runs_positive_class(task, called, derived):
    text = wording.threshold_help(task, 0.4567)
    assert text.startswith("Validation-chosen threshold: 0.457.") and called in text
    assert (derived in text) if derived else "three-class" not in text
    ruled = wording.threshold_help(task, 0.4567, "Youden's J on the validation split")
    assert ruled.startswith("Validation-chosen threshold: 0.457 (Youden's J on the validation split).") and called in ruled


def test_the_errors_by_kind_note_explains_bacterial_vs_viral_runs_only_when_there_is_one():
    plain = wording.errors_by_kind_note([tasks.PNEUMONIA, tasks.THREE_CLASS])
    assert plain.endswith("a missed case.") and "bacterial-vs-viral" not in plain
    mixed = wording.errors_by_kind_note(iter([tasks.PNEUMONIA, tasks.BACTERIAL_VS_VIRAL]))
    assert "bacterial images are its negatives (false alarms) and viral ones its positives (missed)" in mixed
