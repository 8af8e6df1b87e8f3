"""core.evidence: a run's evidence is exactly what core.evidence.statistics says about its predictions.

Most tests use a synthetic test set big enough for meaningful intervals (300 images of 150
patients, two images each); one uses the real fixture runs, including a pair made on different
patient splits.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.evidence import run_evidence, statistics
from core.reporting import wording
from core.runs import artifacts


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    """300 test images, 150 patients with 2 images each; a fair but imperfect classifier."""
    rng = np.random.default_rng(3)
    patients = np.repeat([f"p{i:03d}" for i in range(150)], 2)
    y = np.repeat(rng.integers(0, 2, 150), 2)
    patient_effect = np.repeat(rng.normal(0, 0.6, 150), 2)  # images of one patient are correlated
    logit = 1.6 * (2 * y - 1) + patient_effect + rng.normal(0, 0.9, y.size)
    probability = np.round(1 / (1 + np.exp(-logit)), 6)
    kind = np.where(y == 1, np.where(rng.random(y.size) < 0.6, "bacteria", "virus"), "normal")
    return pd.DataFrame(
        {
            "path": [f"/data/img{i:04d}.jpeg" for i in range(y.size)],
            "patient": patients,
            "kind": kind,
            "class_name": np.where(y == 1, "PNEUMONIA", "NORMAL"),
            "y_true": y,
            "probability": probability,
        }
    )


def test_evidence_equals_direct_statistics(predictions):
    y, s, groups = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy(), predictions["patient"].to_numpy()
    ev = run_evidence.run_evidence("synthetic", predictions, 0.42, 0.5, n_resamples=400, seed=11)

    assert ev.metrics == statistics.binary_metrics(y, s, 0.42)
    assert ev.intervals == statistics.metric_intervals(y, s, 0.42, groups=groups, n_resamples=400, seed=11)
    assert ev.interval("auc") == statistics.bootstrap_ci(y, s, 0.42, groups=groups, n_resamples=400, seed=11)["auc"]
    pred = (s >= 0.42).astype(int)  # proportions: Wilson's interval with the patients' design effect
    assert ev.interval("sensitivity") == statistics.wilson_cluster_ci(pred[y == 1], groups[y == 1])
    assert (ev.threshold, ev.saved_threshold, ev.n_images, ev.n_patients, ev.n_positive) == (0.42, 0.5, 300, 150, int(y.sum()))
    assert ev.brier == statistics.brier_score(y, s)
    assert ev.ece == statistics.expected_calibration_error(y, s)
    curve = statistics.reliability_curve(y, s)
    assert ev.reliability["count"] == curve["count"].tolist()
    np.testing.assert_allclose(ev.reliability["fraction_positive"], curve["fraction_positive"], atol=1e-6)
    pr = statistics.precision_recall(y, s)
    assert ev.pr["average_precision"] == pr["average_precision"]
    np.testing.assert_allclose(ev.pr["precision"], pr["precision"], atol=1e-6)
    assert ev.pr["prevalence"] == pytest.approx(y.mean())
    pd.testing.assert_frame_equal(ev.errors, statistics.error_breakdown(predictions, 0.42))


def test_intervals_contain_their_estimate_and_follow_the_seed(predictions):
    ev = run_evidence.run_evidence("synthetic", predictions, 0.5, n_resamples=500, seed=1)
    for metric in run_evidence.INTERVAL_METRICS:
        interval = ev.interval(metric)
        assert interval.low <= interval.estimate <= interval.high, (metric, interval)
        assert interval.high - interval.low > 0.01  # a real interval, not a point
        assert interval.estimate == pytest.approx(ev.metrics[metric])
    again = run_evidence.run_evidence("synthetic", predictions, 0.5, n_resamples=500, seed=1)
    other = run_evidence.run_evidence("synthetic", predictions, 0.5, n_resamples=500, seed=2)
    assert again.intervals == ev.intervals
    assert other.intervals["auc"] != ev.intervals["auc"]  # the bootstrap follows the seed
    assert other.intervals["sensitivity"] == ev.intervals["sensitivity"]  # Wilson does not resample


def test_intervals_resample_patients_not_images(predictions):
    """Two correlated images per patient: the patient bootstrap is what the evidence uses, and it is wider."""
    y, s = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    ev = run_evidence.run_evidence("synthetic", predictions, 0.5, n_resamples=1000, seed=0)
    by_image = statistics.bootstrap_ci(y, s, 0.5, n_resamples=1000, seed=0)
    width = ev.interval("auc").high - ev.interval("auc").low
    assert width > by_image["auc"].high - by_image["auc"].low
    # Proportions: the design effect widens Wilson's interval beyond the one on independent images.
    plain = statistics.wilson_cluster_ci((s >= 0.5).astype(int) == y)
    assert ev.interval("accuracy").high - ev.interval("accuracy").low > plain.high - plain.low


def test_threshold_choices_are_the_validation_threshold_then_test_operating_points(predictions):
    y, s = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    ev = run_evidence.run_evidence("synthetic", predictions, 0.3, 0.47, n_resamples=100)
    keys = [c.key for c in ev.choices]
    assert keys == ["validation", "youden", "sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95"]
    validation = ev.choice("validation")
    assert validation.threshold == 0.47 and not validation.on_test
    expected = {p.name: p for p in statistics.operating_points(y, s)}
    for choice in ev.choices[1:]:
        assert choice.on_test and "on test, descriptive" in wording.choice_label(choice)
        assert choice.threshold == expected[choice.key].threshold
        at = statistics.binary_metrics(y, s, choice.threshold)  # the point really gives what it claims
        assert (at["sensitivity"], at["specificity"]) == pytest.approx((choice.sensitivity, choice.specificity))
    assert ev.choice("sens@spec95").specificity >= 0.95 and ev.choice("spec@sens90").sensitivity >= 0.90


def test_operating_points_are_chosen_on_validation_and_measured_on_test(predictions):
    y, s = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    # A validation split from a shifted scorer: its thresholds differ from the test-chosen ones.
    validation = predictions.assign(probability=np.clip(predictions["probability"] * 0.8 + 0.1, 0, 1))
    youden = statistics.youden_threshold(validation["y_true"], validation["probability"])
    ev = run_evidence.run_evidence("synthetic", predictions, 0.3, youden, n_resamples=100, validation=validation)
    # Youden's J on validation is the saved threshold itself, so it is not offered twice...
    assert [c.key for c in ev.choices] == ["validation", "sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95"]
    # ...unless the run chose another on validation (with the stress test's changed images): then it is offered.
    robust = run_evidence.run_evidence("synthetic", predictions, 0.3, youden + 0.05, n_resamples=100, validation=validation)
    assert [c.key for c in robust.choices] == ["validation", "youden", "sens@spec90", "sens@spec95", "spec@sens90", "spec@sens95"]
    assert robust.choice("youden").threshold == youden and not robust.choice("youden").on_test
    assert not ev.points_on_test
    on_val = {p.name: p for p in statistics.operating_points(validation["y_true"], validation["probability"])}
    on_test = {p.name: p for p in statistics.operating_points(y, s)}
    for choice in ev.choices[1:]:
        assert not choice.on_test and "chosen on validation" in wording.choice_label(choice)
        assert choice.threshold == on_val[choice.key].threshold != on_test[choice.key].threshold
        at = statistics.binary_metrics(y, s, choice.threshold)  # what the threshold gives on test
        assert (at["sensitivity"], at["specificity"]) == pytest.approx((choice.sensitivity, choice.specificity))
    # A validation split of one class cannot choose points: they come from test, marked so.
    one_class = validation[validation["y_true"] == 1]
    fallback = run_evidence.run_evidence("synthetic", predictions, 0.3, 0.47, n_resamples=100, validation=one_class)
    assert fallback.points_on_test and fallback.choice("youden").on_test


def test_a_nothing_positive_choice_stays_above_a_probability_of_one(predictions):
    # Validation where only "call nothing positive" reaches 99 % specificity: a normal image scored
    # exactly 1.0. The choice keeps the threshold above 1.0, so on test it calls nothing positive
    # (clipped to 1.0 it would call every image scored 1.0 pneumonia).
    validation = pd.DataFrame({"y_true": [0, 1, 0, 1], "probability": [1.0, 0.9, 0.8, 0.2], "patient": list("abcd")})
    test = predictions.assign(probability=np.where(predictions["y_true"] == 1, 1.0, predictions["probability"]))
    ev = run_evidence.run_evidence("ones", test, 0.5, 0.5, n_resamples=50, validation=validation)
    choice = ev.choice("sens@spec95")
    assert choice.threshold > 1.0 and (choice.sensitivity, choice.specificity) == (0.0, 1.0)


def test_a_test_set_of_one_class_gets_no_interval_and_says_why(predictions):
    normal = predictions[predictions["y_true"] == 0]
    ev = run_evidence.run_evidence("normals", normal, 0.5, n_resamples=50)
    assert ev.intervals is None and "both classes" in ev.interval_problem
    assert ev.choices == [] and math.isnan(ev.metrics["auc"])
    assert wording.metrics_table([ev])["AUC 95% CI"].tolist() == ["n/a"]


def test_tables_show_the_intervals(predictions):
    ev = run_evidence.run_evidence("synthetic", predictions, 0.5, n_resamples=200)
    row = wording.metrics_table([ev]).iloc[0]
    auc = ev.interval("auc")
    assert row["AUC"] == ev.metrics["auc"]
    assert row["AUC 95% CI"] == f"{auc.low:.3f}–{auc.high:.3f}"
    combined = wording.metrics_table([ev], combined=True).iloc[0]
    assert combined["AUC (95% CI)"] == f"{auc.estimate:.3f} ({auc.low:.3f}–{auc.high:.3f})"
    # Compare formats the metric columns by these names: they must be every metric column there is.
    table = wording.metrics_table([ev])
    metric_columns = [c for c in table.columns if c not in ("run", "threshold", "test images", "test patients") and "CI" not in c]
    assert sorted(metric_columns) == sorted([*wording.INTERVAL_TITLES.values(), *wording.POINT_METRIC_TITLES])
    errors = run_evidence.errors_table([ev, run_evidence.run_evidence("again", predictions, 0.2, n_resamples=50)])
    assert list(errors["run"].unique()) == ["synthetic", "again"]
    assert errors.loc[(errors["run"] == "again") & (errors["kind"] == "all"), "threshold"].item() == 0.2


def test_paired_evidence_equals_the_tests_by_patient_and_by_image(predictions):
    b = predictions.copy()
    rng = np.random.default_rng(5)
    b["probability"] = np.clip(b["probability"] + rng.normal(0, 0.15, len(b)), 0, 1)
    b = b.sample(frac=1.0, random_state=0)  # another row order: pairing goes by path
    paired = run_evidence.paired_evidence("a", predictions, 0.5, "b", b, 0.4)

    y = predictions["y_true"].to_numpy()
    groups = predictions["patient"].to_numpy()
    score_a = predictions["probability"].to_numpy()
    score_b = b.set_index("path").loc[predictions["path"], "probability"].to_numpy()
    pred_a, pred_b = (score_a >= 0.5).astype(int), (score_b >= 0.4).astype(int)
    assert paired.delong_by_patient == statistics.clustered_delong_test(y, score_a, score_b, groups)
    assert paired.mcnemar_by_patient == statistics.clustered_mcnemar_test(y, pred_a, pred_b, groups)
    assert paired.delong == statistics.delong_test(y, score_a, score_b)  # image-level, for reference
    assert paired.mcnemar == statistics.mcnemar_test(y, pred_a, pred_b)
    assert (paired.n_images, paired.n_patients) == (300, 150)
    assert (paired.errors_a, paired.errors_b) == (int(np.sum(pred_a != y)), int(np.sum(pred_b != y)))
    assert not paired.adjusted and paired.p_auc == paired.delong_by_patient.p_value
    row = wording.paired_row(paired)
    assert row["AUC p (by patient)"] == wording.format_p(paired.delong_by_patient.p_value)
    assert row["DeLong p (image-level)"] == wording.format_p(paired.delong.p_value)
    assert (row["b (A right, B wrong)"], row["c (A wrong, B right)"]) == (paired.mcnemar_by_patient.b, paired.mcnemar_by_patient.c)
    assert "AUC p, Holm-adjusted" not in row


def test_sentences_follow_the_patient_level_test_not_the_image_level_one():
    from tests.helpers import clustered_pair

    a, b = clustered_pair()
    paired = run_evidence.paired_evidence("cnn-a", a, 0.6, "cnn-b", b, 0.6)
    # The image-level tests would claim a difference; by patient there is no evidence at 5 %.
    assert paired.delong.p_value < 0.05 and paired.mcnemar.p_value < 0.05
    assert paired.delong_by_patient.p_value > 0.05 and paired.mcnemar_by_patient.p_value > 0.05
    p_auc, p_err = wording.format_p(paired.delong_by_patient.p_value), wording.format_p(paired.mcnemar_by_patient.p_value)
    assert wording.auc_sentence(paired) == (
        f"No evidence at the 5 % level that the AUCs differ (by patient: p = {p_auc}); this does not show that they are equal."
    )
    assert wording.errors_sentence(paired) == (
        "No evidence at the 5 % level that the error rates differ at the thresholds in use "
        f"({paired.errors_a} vs {paired.errors_b} errors of 240 images; by patient: p = {p_err})."
    )
    # One image per patient: the same data are 240 independent patients, and the sentences say so.
    single = run_evidence.paired_evidence("cnn-a", a.assign(patient=a["path"]), 0.6, "cnn-b", b.assign(patient=b["path"]), 0.6)
    assert single.delong_by_patient.p_value == pytest.approx(paired.delong.p_value, rel=1e-9)
    higher = "cnn-a" if single.delong.difference > 0 else "cnn-b"
    assert wording.auc_sentence(single) == f"{higher}'s AUC is higher than {'cnn-b' if higher == 'cnn-a' else 'cnn-a'}'s (by patient: p < 0.001)."
    fewer = "cnn-a" if single.errors_a < single.errors_b else "cnn-b"
    assert wording.errors_sentence(single).startswith(f"{fewer} makes fewer errors than ")


def test_an_undefined_paired_test_says_so_instead_of_p_zero(predictions):
    # One pneumonia patient (two images) among normals: no patient-level variance for the AUC test.
    one = pd.concat([predictions[predictions["y_true"] == 0], predictions[predictions["y_true"] == 1].head(2).assign(patient="pX")])
    paired = run_evidence.paired_evidence("a", one, 0.5, "b", one.assign(probability=one["probability"] ** 2), 0.5)
    assert not paired.delong_by_patient.defined and math.isnan(paired.delong_by_patient.p_value)
    assert wording.auc_sentence(paired).startswith("The patient-level test of the AUCs is undefined: the clustered variance needs")
    assert wording.paired_row(paired)["AUC p (by patient)"] == "n/a"


def test_several_pairs_are_holm_adjusted_and_the_sentences_use_it(predictions):
    rng = np.random.default_rng(6)
    runs = [("a", predictions, 0.5)]
    for name, noise in (("b", 0.1), ("c", 0.3)):
        runs.append((name, predictions.assign(probability=np.clip(predictions["probability"] + rng.normal(0, noise, len(predictions)), 0, 1)), 0.5))
    other = predictions.assign(path=predictions["path"] + "?")  # other images: cannot be paired
    family, refused = run_evidence.pairwise_evidence([*runs, ("elsewhere", other, 0.5)])
    assert [(p.name_a, p.name_b) for p in family] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [(a, b) for a, b, _ in refused] == [("a", "elsewhere"), ("b", "elsewhere"), ("c", "elsewhere")]
    raw_auc = [p.delong_by_patient.p_value for p in family]
    raw_err = [p.mcnemar_by_patient.p_value for p in family]
    assert [p.p_auc_adjusted for p in family] == statistics.holm_adjust(raw_auc)
    assert [p.p_errors_adjusted for p in family] == statistics.holm_adjust(raw_err)
    for p in family:
        assert p.adjusted and p.n_comparisons == 3 and p.p_auc >= p.delong_by_patient.p_value
        assert "Holm-adjusted over 3 pairs: p " in wording.auc_sentence(p)
        assert f"p {wording.format_p(p.p_auc_adjusted)}" in wording.auc_sentence(p).replace("= ", "")
        assert wording.paired_row(p)["AUC p, Holm-adjusted"] == wording.format_p(p.p_auc_adjusted)
    # The page's pair, in either order, gets the family's adjusted p-values.
    single = run_evidence.paired_evidence("c", runs[2][1], 0.5, "a", predictions, 0.5)
    as_in = run_evidence.adjusted_as_in(single, family)
    assert (as_in.p_auc_adjusted, as_in.n_comparisons) == (family[1].p_auc_adjusted, 3)
    assert as_in.delong_by_patient.difference == -family[1].delong_by_patient.difference
    # A family of one pair is not adjusted.
    alone, _ = run_evidence.pairwise_evidence(runs[:2])
    assert not alone[0].adjusted and "Holm" not in wording.auc_sentence(alone[0])


def test_real_runs_evidence_and_a_pair_on_different_splits_is_refused(runs_dir, other_split_dir):
    run = artifacts.load_run(runs_dir, "cnn-small")
    table = run.predictions()
    ev = run_evidence.run_evidence(run.name, table, run.metrics["threshold"], run.metrics["threshold"], n_resamples=300)
    for metric in ("accuracy", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
        assert ev.metrics[metric] == pytest.approx(run.metrics["test"][metric])  # the saved test metrics
    for metric in run_evidence.INTERVAL_METRICS:
        assert ev.interval(metric).low <= ev.metrics[metric] <= ev.interval(metric).high

    wide = artifacts.load_run(runs_dir, "cnn-wide")
    paired = run_evidence.paired_evidence("cnn-small", table, ev.threshold, "cnn-wide", wide.predictions(), wide.metrics["threshold"])
    assert paired.n_images == len(table)

    other = artifacts.load_run(other_split_dir, "cnn-other-split")
    with pytest.raises(ValueError, match="different test images"):
        run_evidence.paired_evidence("cnn-small", table, 0.5, other.name, other.predictions(), 0.5)


def test_paired_among_adjusts_over_the_family_only_when_there_are_more_than_two_runs(predictions):
    rng = np.random.default_rng(8)
    runs = [("a", predictions, 0.5)]
    for name, noise in (("b", 0.1), ("c", 0.3)):
        runs.append((name, predictions.assign(probability=np.clip(predictions["probability"] + rng.normal(0, noise, len(predictions)), 0, 1)), 0.4))
    two = run_evidence.paired_among("b", "a", runs[:2])
    assert two == run_evidence.paired_evidence("b", runs[1][1], 0.4, "a", predictions, 0.5) and not two.adjusted
    family, _ = run_evidence.pairwise_evidence(runs)
    three = run_evidence.paired_among("c", "b", runs)
    assert (three.name_a, three.name_b, three.threshold_a) == ("c", "b", 0.4)
    assert (three.n_comparisons, three.p_auc_adjusted, three.p_errors_adjusted) == (3, family[2].p_auc_adjusted, family[2].p_errors_adjusted)
    with pytest.raises(ValueError, match="different test images"):
        run_evidence.paired_among("a", "x", [*runs, ("x", predictions.assign(path=predictions["path"] + "?"), 0.5)])
    with pytest.raises(ValueError, match=r"\['z'\] not among the runs"):
        run_evidence.paired_among("a", "z", runs)


def test_the_threshold_control_follows_the_runs_choices(predictions):
    ev = run_evidence.run_evidence("synthetic", predictions, 0.3, 0.47, n_resamples=50)
    y, p = predictions["y_true"].to_numpy(), predictions["probability"].to_numpy()
    called = p >= 0.3
    expected = [[int(((y == 0) & ~called).sum()), int(((y == 0) & called).sum())], [int(((y == 1) & ~called).sum()), int(((y == 1) & called).sum())]]
    assert ev.confusion_matrix == expected
    assert ev.choice_keys == [c.key for c in ev.choices] + [run_evidence.CUSTOM_CHOICE]
    assert ev.choice_keys[0] == run_evidence.VALIDATION_CHOICE
    assert ev.highest_threshold == max(1.0, *(c.threshold for c in ev.choices))
    point = ev.choice("sens@spec90")
    assert ev.choice_after_move("sens@spec90", point.threshold) == "sens@spec90"  # landed on its own point
    assert ev.choice_after_move("sens@spec90", point.threshold + 0.01) == run_evidence.CUSTOM_CHOICE
    assert ev.choice_after_move(None, point.threshold) == run_evidence.CUSTOM_CHOICE


def test_the_threshold_control_reaches_a_choice_above_one(predictions):
    validation = pd.DataFrame({"y_true": [0, 1, 0, 1], "probability": [1.0, 0.9, 0.8, 0.2], "patient": list("abcd")})
    ev = run_evidence.run_evidence("ones", predictions, 0.5, 0.5, n_resamples=50, validation=validation)
    assert ev.highest_threshold > 1.0 and ev.highest_threshold == max(c.threshold for c in ev.choices)
