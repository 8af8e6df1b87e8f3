"""Site adaptation: the rules, calibrations, intervals and curve (core.evidence.site_adaptation), the saved
operating point of a run (core.workflows.site) and the `adapt` and `predict --operating-point` commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from core import cli
from core.evidence import site_adaptation as sa
from core.evidence import statistics
from core.inference import ood, run_kinds
from core.runs import artifacts
from core.workflows import site


def _site(n_neg: int, n_pos: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a site whose scores drifted up by `shift` (on the logit scale)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    z = np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1.5, y.size) + shift
    return y, np.round(expit(z), 6)


# ---------------------------------------------------------------------------- thresholds


def test_youden_rule_is_the_house_youden_threshold():
    y, s = _site(20, 30, seed=1)
    assert sa.choose_threshold(y, s, "youden") == statistics.youden_threshold(y, s)


def test_sensitivity_rule_keeps_the_target_with_the_highest_threshold_that_does():
    # positives 0.9 0.8 0.7 0.6 0.3; negatives 0.65 0.4 0.2 0.1: 80 % sensitivity needs four positives, so 0.6.
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.65, 0.4, 0.2, 0.1])
    threshold = sa.choose_threshold(y, s, "sensitivity", target_sensitivity=0.8)
    assert threshold == 0.6
    assert statistics.binary_metrics(y, s, threshold)["sensitivity"] == 0.8
    assert statistics.binary_metrics(y, s, np.nextafter(threshold, 1))["sensitivity"] < 0.8


def test_bad_rules_and_targets_say_what_to_choose():
    y, s = _site(10, 10)
    with pytest.raises(sa.SiteError, match="choose one of youden, sensitivity"):
        sa.choose_threshold(y, s, "best")
    with pytest.raises(sa.SiteError, match="needs the run's validation sensitivity"):
        sa.choose_threshold(y, s, "sensitivity")


# ---------------------------------------------------------------------------- calibration


def test_platt_matches_scikit_learn_on_the_smoothed_targets():
    y, s = _site(25, 40, shift=1.0, seed=2)
    fitted = sa.fit_calibration(y, s, "platt")
    # Independent reference: a logistic regression on logit(p), each image twice, weighted by its soft target.
    t = sa.platt_targets(y)
    x = np.r_[logit(s), logit(s)][:, None]
    reference = LogisticRegression(C=1e10, tol=1e-10, max_iter=10_000).fit(
        x, np.r_[np.ones(y.size), np.zeros(y.size)], sample_weight=np.r_[t, 1 - t]
    )
    assert fitted.a == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert fitted.b == pytest.approx(reference.intercept_[0], abs=1e-4)
    assert sa.platt_targets([1, 1, 0])[0] == pytest.approx(3 / 4) and sa.platt_targets([1, 1, 0])[2] == pytest.approx(1 / 3)


def test_temperature_is_the_best_temperature_on_a_grid():
    y, s = _site(25, 40, seed=3)
    fitted = sa.fit_calibration(y, s, "temperature")
    t, z = sa.platt_targets(y), logit(np.clip(s, 1e-7, 1 - 1e-7))
    grid = np.exp(np.linspace(-3, 3, 60001))

    def nll(temperature):
        u = z / temperature
        return np.sum(np.logaddexp(0, u) - t * u)

    best = grid[np.argmin([nll(T) for T in grid])]
    assert fitted.temperature == pytest.approx(best, rel=1e-3) and fitted.b == 0


def test_calibration_stays_finite_on_separated_images_and_never_changes_a_decision():
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    s = np.r_[np.linspace(0.0, 0.3, 10), np.linspace(0.7, 1.0, 10)]  # perfectly separated, with 0 and 1 themselves
    for method in ("platt", "temperature"):
        fitted = sa.fit_calibration(y, s, method)
        assert math.isfinite(fitted.a) and fitted.a > 0, method  # the smoothed targets keep it off a step
        calibrated = fitted.apply(s)
        assert np.all(np.diff(calibrated[np.argsort(s)]) >= 0) and 0 < calibrated.min() and calibrated.max() < 1
        point = sa.adapt(y, s, 0.5, calibration=method)
        assert np.array_equal(s >= point.threshold, calibrated >= point.calibrated_threshold)
    assert sa.fit_calibration(y, s, "none") is None


def test_calibration_refuses_a_site_where_the_run_ranks_the_classes_backwards():
    y, s = _site(20, 20, seed=4)
    with pytest.raises(sa.SiteError, match="check the site folder's labels"):
        sa.fit_calibration(y, 1 - s, "platt")


# ---------------------------------------------------------------------------- one adaptation


def test_adapting_to_a_drifted_site_wins_back_specificity_and_states_intervals():
    y, s = _site(40, 60, shift=2.5, seed=5)  # the site's probabilities drifted up: the run's 0.5 calls healthy images positive
    point = sa.adapt(y, s, run_threshold=0.5, groups=[f"p{i // 2}" for i in range(y.size)])
    assert point.threshold > 0.5
    before, after = point.at_run_threshold, point.intervals
    assert after["specificity"].estimate > before["specificity"].estimate + 0.2
    for metric in ("sensitivity", "specificity", "accuracy"):
        interval = after[metric]
        assert interval.low <= interval.estimate <= interval.high and interval.method == "wilson_design_effect"
    assert point.n_patients == 50 and point.n_images == 100 and point.n_positive == 60
    saved = json.loads(json.dumps(point.to_dict(), allow_nan=False))
    assert saved["rule_text"] == sa.RULES["youden"] and saved["intervals"]["specificity"]["low"] == after["specificity"].low


def test_too_few_images_of_a_class_are_refused_with_what_to_label():
    y, s = _site(4, 30)
    with pytest.raises(sa.SiteError, match="hold 4 normal and 30 positive images: label at least 5 of each class"):
        sa.adapt(y, s, 0.5)


# ---------------------------------------------------------------------------- how many images


def test_the_curve_narrows_with_more_site_images_and_is_seeded():
    y, s = _site(80, 120, seed=6)
    curve = sa.sample_size_curve(y, s, n_draws=150, seed=1)
    assert sorted(set(curve["n"])) == sa.curve_sizes(200) == list(range(10, 201, 10))
    assert (curve["low"] <= curve["median"]).all() and (curve["median"] <= curve["high"]).all()
    spread = (curve["high"] - curve["low"]).groupby([curve["metric"], curve["n"]]).first()
    for metric in ("sensitivity", "specificity"):
        assert spread[metric].loc[200] < 0.6 * spread[metric].loc[10], metric
    assert curve.equals(sa.sample_size_curve(y, s, n_draws=150, seed=1))
    assert sa.curve_sizes(9) == [] and sa.curve_sizes(50) == [10, 20, 30, 40, 50]


def test_the_curve_measures_each_draws_threshold_on_every_site_image():
    # Separated classes: Youden's J on a draw ties between the classes and takes the highest threshold, the
    # lowest positive drawn, so every negative of the site stays below it while the positives under it are missed.
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    s = np.r_[np.linspace(0.1, 0.3, 10), np.linspace(0.6, 0.9, 10)]
    curve = sa.sample_size_curve(y, s, sizes=[4, 40], n_draws=200).set_index(["metric", "n"])
    assert (curve.loc["specificity", ["low", "median", "high"]] == 1.0).all().all()
    assert curve.loc[("sensitivity", 4), "median"] < curve.loc[("sensitivity", 40), "median"] == 1.0
    assert curve.loc[("sensitivity", 4), "skipped"] > 0 and (curve["draws"] + curve["skipped"] == 200).all()


def test_stated_intervals_hold_the_whole_sites_figures_in_most_draws():
    y, s = _site(1200, 1800, shift=1.0, seed=7)  # the site: 3,000 images; 50 of them labelled
    found = sa.coverage(y, s, n_site=50, n_draws=300, seed=2)
    assert found["draws"] + found["skipped"] == 300
    assert found["full_sensitivity"] >= 0.9 and found["full_specificity"] >= 0.9
    # Intervals of 5-image sites would be far wider: the width follows the number of images.
    assert found["width_sensitivity"] < 0.35 and found["width_specificity"] < 0.4


# ---------------------------------------------------------------------------- a run's saved point


def _site_folder(root, n_neg: int = 12, n_pos: int = 18):
    for class_name, n in (("NORMAL", n_neg), ("PNEUMONIA", n_pos)):
        (root / class_name).mkdir(parents=True)
        for i in range(n):
            prefix = f"IM-{i:04d}-0001" if class_name == "NORMAL" else f"person{i}_bacteria_{i}"
            Image.new("L", (16, 16), 40 + i).save(root / class_name / f"{prefix}.jpeg")
    return root


def _drifted_scores(run, paths, models=None, engine="auto", unusual=False):
    """A run whose probabilities drifted up at the site: every normal image at 0.55-0.77, pneumonia at 0.8-0.97."""
    rows = []
    for path in paths:
        i = int(path.rsplit("_", 1)[-1].split(".")[0]) if "person" in path else int(path.split("IM-")[1][:4])
        p = 0.8 + 0.01 * i if "PNEUMONIA" in path else 0.55 + 0.02 * i
        label = "PNEUMONIA" if p >= run.threshold else "NORMAL"
        rows.append({"path": path, "probability": p, "label": label, "error": "",
                     **({"model_label": label, "unusual": False, "unusual_reason": ""} if unusual else {})})
    return pd.DataFrame(rows)


def plain_run(artifacts_dir) -> artifacts.Run:
    """A finished two-class run named "plain" (threshold 0.5, validation sensitivity 0.95), its model a placeholder."""
    from tests.test_ensemble import _rows, fake_run

    y = np.repeat([0, 1], 20)
    rng = np.random.default_rng(0)
    folder = fake_run(artifacts_dir, "plain", _rows("val", y, np.clip(0.6 * y + 0.2 + rng.normal(0, 0.1, 40), 0, 1)),
                      _rows("test", y, np.clip(0.6 * y + 0.2 + rng.normal(0, 0.1, 40), 0, 1)))
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "val": {"sensitivity": 0.95}}))
    return artifacts.load_run(artifacts_dir, "plain")


@pytest.fixture
def a_run(tmp_path, monkeypatch):
    monkeypatch.setattr(run_kinds, "predict_files", _drifted_scores)
    return plain_run(tmp_path / "artifacts")


def test_a_site_point_is_saved_beside_the_run_and_decides_its_predictions(a_run, tmp_path):
    folder = _site_folder(tmp_path / "site")
    record = site.adapt_run(a_run, folder, "clinic-a", calibration="temperature", n_draws=20)
    saved = a_run.folder / artifacts.OPERATING_POINTS / "clinic-a.json"
    assert json.loads(saved.read_text()) == json.loads(json.dumps(record))
    assert not list(saved.parent.glob(".*"))  # written whole: no temporary file left
    assert a_run.operating_points() == {"clinic-a": record} and a_run.threshold == 0.5  # the run's own threshold stays
    # Every normal image scored at least 0.55: the run's 0.5 calls them all pneumonia; the site point calls them normal.
    assert record["at_run_threshold"]["specificity"]["estimate"] == 0.0
    assert record["intervals"]["specificity"]["estimate"] == 1.0 and record["intervals"]["sensitivity"]["estimate"] == 1.0
    assert 0.77 < record["threshold"] <= 0.8 and record["n_images"] == 30 and record["site"] == str(folder)
    assert record["calibration"]["method"] == "temperature" and [r["n"] for r in record["curve"]] == [10, 10, 20, 20, 30, 30]

    table = _drifted_scores(a_run, [str(folder / "NORMAL" / "IM-0003-0001.jpeg"), str(folder / "PNEUMONIA" / "person1_bacteria_1.jpeg")])
    decided = site.apply_point(table, a_run, a_run.operating_point("clinic-a"))
    assert list(table["label"]) == ["PNEUMONIA", "PNEUMONIA"] and list(decided["label"]) == ["NORMAL", "PNEUMONIA"]
    assert (decided["threshold"] == record["threshold"]).all() and (decided["operating_point"] == "clinic-a").all()
    calibration = sa.Calibration.from_dict(record["calibration"])
    assert decided["calibrated_probability"].tolist() == pytest.approx(calibration.apply(table["probability"]).tolist())
    assert list(site.apply_point(table, a_run, None)["operating_point"]) == ["validation", "validation"]
    flagged = _drifted_scores(a_run, list(table["path"]), unusual=True).assign(unusual=[True, False])
    flagged["label"] = ood.assessed_labels(flagged["label"], flagged["unusual"])
    at_site = site.apply_point(flagged, a_run, a_run.operating_point("clinic-a"))
    assert list(at_site["label"]) == [ood.NOT_ASSESSED, "PNEUMONIA"]  # an unusual image is not assessed at any point
    assert list(at_site["model_label"]) == ["NORMAL", "PNEUMONIA"]  # what the site point decides for the model

    with pytest.raises(artifacts.RunError, match="already has an operating point named 'clinic-a'"):
        site.adapt_run(a_run, folder, "clinic-a")
    site.adapt_run(a_run, folder, "clinic-a", rule="sensitivity", replace=True, n_draws=5)
    assert a_run.operating_point("clinic-a")["rule"] == "sensitivity"
    with pytest.raises(artifacts.RunError, match=r"no operating point named 'other' \(its points: clinic-a\)"):
        a_run.operating_point("other")
    site.delete_point(a_run, "clinic-a")
    assert a_run.operating_points() == {}


def test_site_folders_and_names_that_cannot_be_used_say_why(a_run, tmp_path):
    with pytest.raises(artifacts.RunError, match="invalid operating point name"):
        site.adapt_run(a_run, tmp_path, "../escape")
    with pytest.raises(site.folders.DataError, match="does not exist"):
        site.adapt_run(a_run, tmp_path / "nowhere", "a")
    with pytest.raises(sa.SiteError, match="hold 3 normal and 18 positive images"):
        site.adapt_run(a_run, _site_folder(tmp_path / "few", n_neg=3), "a")
    three = json.loads((a_run.folder / "settings.json").read_text())
    (a_run.folder / "settings.json").write_text(json.dumps({**three, "task": "three_class"}))
    with pytest.raises(artifacts.RunError, match="no operating point to adapt"):
        site.adapt_run(artifacts.load_run(a_run.folder.parent, "plain"), _site_folder(tmp_path / "site"), "a")


def test_the_adapt_and_predict_commands(a_run, tmp_path, capsys):
    folder = _site_folder(tmp_path / "site")
    argv = ["--artifacts", str(a_run.folder.parent)]
    assert cli.main(["adapt", "plain", "--site", str(folder), "--name", "clinic-a", "--calibrate", "platt", *argv]) == 0
    out = capsys.readouterr().out
    assert "operating point clinic-a of plain: threshold" in out and "specificity 1.000 (" in out
    assert "recalibrated (platt)" in out and "median" in out
    assert cli.main(["adapt", "plain", "--site", str(folder), "--name", "clinic-a", *argv]) == cli.EXIT_USAGE
    assert "pick another name, or replace it" in capsys.readouterr().err
    assert cli.main(["adapt", "plain", "--site", str(_site_folder(tmp_path / "few", n_neg=2)), "--name", "b", *argv]) == cli.EXIT_USAGE
    assert "label at least 5 of each class" in capsys.readouterr().err

    image = str(folder / "NORMAL" / "IM-0003-0001.jpeg")
    csv = tmp_path / "out.csv"
    assert cli.main(["predict", "--run", "plain", "--operating-point", "clinic-a", "--csv", str(csv), *argv, image]) == 0
    assert cli.main(["predict", "--run", "plain", "--operating-point", "nope", *argv, image]) == cli.EXIT_USAGE
    assert "no operating point named 'nope'" in capsys.readouterr().err
    table = pd.read_csv(csv)
    assert table.loc[0, "label"] == "NORMAL" and table.loc[0, "operating_point"] == "clinic-a"
    assert "calibrated_probability" in table.columns


def test_compare_menu_offers_each_site_point_measured_on_test():
    from core.evidence import run_evidence
    from core.reporting import wording
    from tests.test_ensemble import _rows

    y = np.repeat([0, 1], 30)
    test = _rows("test", y, np.clip(0.5 * y + 0.25 + np.random.default_rng(0).normal(0, 0.2, y.size), 0, 1))
    evidence = run_evidence.run_evidence("plain", test, 0.5, n_resamples=100)
    menu = run_evidence.with_site_points(evidence, test, {"clinic-a": 0.7})
    assert menu.choice_keys[:-1] == [*evidence.choice_keys[:-1], "site:clinic-a"]
    choice = menu.choice("site:clinic-a")
    at = statistics.binary_metrics(y, test["probability"], 0.7)
    assert (choice.threshold, choice.sensitivity, choice.specificity, choice.on_test) == (0.7, at["sensitivity"], at["specificity"], False)
    assert wording.choice_option("site:clinic-a", choice) == "site point clinic-a · on site images — 0.700"
    assert run_evidence.with_site_points(evidence, test, {}) is evidence
