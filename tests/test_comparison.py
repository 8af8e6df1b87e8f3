"""core.evidence.comparison: the same-images check, the run facts and the per-image join of several runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from core import files
from core.data import tasks
from core.evidence import comparison
from core.reporting import wording
from core.runs import artifacts


def table(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """Predictions of (path, class, probability); kind follows the class."""
    return pd.DataFrame(
        {
            "path": [path for path, _, _ in rows],
            "class_name": [cls for _, cls, _ in rows],
            "kind": ["bacteria" if cls == "PNEUMONIA" else "normal" for _, cls, _ in rows],
            "probability": [p for _, _, p in rows],
        }
    )


A = table([("/d/x2.jpeg", "PNEUMONIA", 0.9), ("/d/x1.jpeg", "NORMAL", 0.7), ("/d/x3.jpeg", "PNEUMONIA", 0.2)])
B = table([("/d/x1.jpeg", "NORMAL", 0.1), ("/d/x2.jpeg", "PNEUMONIA", 0.8), ("/d/x3.jpeg", "PNEUMONIA", 0.6)])


def test_image_check_compares_the_files_not_only_their_number():
    assert comparison.image_check({"a": A, "b": B.iloc[::-1]}).same  # row order does not matter
    renamed = B.assign(path=B["path"].str.replace("x3", "x4"))
    check = comparison.image_check({"a": A, "b": renamed})
    assert not check.same and check.same_count and check.counts == {"a": 3, "b": 3}
    assert wording.image_counts(check) == "a: 3, b: 3, same count but different files"
    capped = comparison.image_check({"a": A, "b": B.head(2)})
    assert not capped.same and not capped.same_count
    assert wording.image_counts(capped) == "a: 3, b: 2"
    assert comparison.image_check({"a": A}).same


def test_per_image_table_counts_wrong_calls_and_disagreements_at_each_threshold():
    joined = comparison.per_image_table({"a": A, "b": B}, {"a": 0.5, "b": 0.5})
    assert list(joined["path"]) == ["/d/x1.jpeg", "/d/x2.jpeg", "/d/x3.jpeg"]  # sorted by path
    assert list(joined["image"]) == ["x1.jpeg", "x2.jpeg", "x3.jpeg"]
    # x1 normal: a calls it pneumonia (wrong), b not; x2: both right; x3 pneumonia: a misses it, b finds it.
    assert list(joined["wrong in"]) == [1, 0, 1]
    assert list(joined["disagree"]) == [True, False, True]
    assert list(joined["p:a"]) == [0.7, 0.9, 0.2]
    # At another threshold for b, b misses x3 too: both wrong, and they agree.
    moved = comparison.per_image_table({"a": A, "b": B}, {"a": 0.5, "b": 0.65})
    assert list(moved["wrong in"]) == [1, 0, 2] and list(moved["disagree"]) == [True, False, False]


def test_an_image_one_run_did_not_score_counts_for_the_runs_that_did():
    joined = comparison.per_image_table({"a": A, "b": B.head(2)}, {"a": 0.5, "b": 0.5})
    x3 = joined.set_index("path").loc["/d/x3.jpeg"]
    assert math.isnan(x3["p:b"]) and x3["wrong in"] == 1 and not x3["disagree"]  # only a scored it
    verdicts = comparison.image_verdicts(x3, {"a": 0.5, "b": 0.5})
    assert list(verdicts["label"]) == ["NORMAL", ""] and list(verdicts["threshold"]) == [0.5, 0.5]
    assert math.isnan(comparison.probability_of(x3, "b")) and comparison.probability_of(x3, "a") == 0.2


def test_run_names_never_clash_with_the_fixed_columns():
    joined = comparison.per_image_table({"kind": A, "wrong in": B}, {"kind": 0.5, "wrong in": 0.5})
    assert list(joined["kind"]) == ["normal", "bacteria", "bacteria"]
    assert list(joined["p:wrong in"]) == [0.1, 0.8, 0.6] and list(joined["wrong in"]) == [1, 0, 1]


def test_per_image_table_refuses_missing_inputs_with_a_reason():
    with pytest.raises(ValueError, match="at least one run"):
        comparison.per_image_table({}, {})
    with pytest.raises(ValueError, match=r"no threshold for \['b'\]"):
        comparison.per_image_table({"a": A, "b": B}, {"a": 0.5})


def test_filters_select_wrong_disagreeing_and_one_class():
    joined = comparison.per_image_table({"a": A, "b": B}, {"a": 0.5, "b": 0.65})
    assert list(comparison.filter_images(joined)["image"]) == ["x1.jpeg", "x2.jpeg", "x3.jpeg"]
    assert list(comparison.filter_images(joined, wrong=True)["image"]) == ["x1.jpeg", "x3.jpeg"]
    assert list(comparison.filter_images(joined, disagree=True)["image"]) == ["x1.jpeg"]
    assert list(comparison.filter_images(joined, wrong=True, true_class="PNEUMONIA")["image"]) == ["x3.jpeg"]
    assert comparison.filter_images(joined, disagree=True, true_class="PNEUMONIA").empty


def test_run_facts_come_from_the_run_folder_and_missing_ones_are_none(tmp_path):
    files.write_json(tmp_path / "r" / artifacts.SETTINGS, {"family": "mobilenet", "mode": "finetune", "image_size": 224})
    files.write_json(
        tmp_path / "r" / artifacts.METRICS,
        {"parameters": 2_300_000, "val": {"auc": 0.97}, "timings": {"search_s": 258.0}, "inference": {"ms_per_image": 1.9}},
    )
    files.write_json(tmp_path / "bare" / artifacts.SETTINGS, {"family": "custom_cnn"})
    run, bare = artifacts.load_run(tmp_path, "r"), artifacts.load_run(tmp_path, "bare")
    facts = comparison.run_facts(run)
    assert (facts.family, facts.mode, facts.image_size, facts.parameters) == ("mobilenet", "finetune", 224, 2_300_000)
    assert (facts.validation_auc, facts.search_s, facts.ms_per_image, facts.single_image_ms) == (0.97, 258.0, 1.9, None)
    assert comparison.run_facts(bare) == comparison.RunFacts("custom_cnn", None, None, None, None, None, None, None)
    shown = comparison.facts_table([run, bare])
    assert list(shown.columns) == [
        "family", "task", "mode", "input px", "parameters", "training time (s)", "inference (ms/image)", "single image (ms)"
    ]
    assert shown.loc[0, "training time (s)"] == 258.0 and pd.isna(shown.loc[1, "parameters"])


def test_a_runs_matrix_is_labelled_with_its_saved_classes_else_its_tasks(tmp_path):
    files.write_json(tmp_path / "viral" / artifacts.SETTINGS, {"family": "mobilenet", "task": "bacterial_vs_viral"})
    files.write_json(tmp_path / "viral" / artifacts.METRICS, {"test": {}})  # saved without its labels
    files.write_json(tmp_path / "saved" / artifacts.SETTINGS, {"family": "mobilenet"})
    files.write_json(tmp_path / "saved" / artifacts.METRICS, {"labels": ["A", "B"]})
    assert comparison.matrix_labels(artifacts.load_run(tmp_path, "viral")) == ["bacteria", "virus"]
    assert comparison.matrix_labels(artifacts.load_run(tmp_path, "saved")) == ["A", "B"]


def test_three_class_runs_are_those_with_their_class_columns():
    classes = {tasks.probability_column(c): [0.2] for c in tasks.THREE_CLASS.classes}
    full = pd.DataFrame({"path": ["/d/x.jpeg"], "true_class": ["virus"], "predicted_class": ["bacteria"], **classes})
    bare = full[["path"]]  # a three-class run saved before its class columns
    run_tasks = {"three": tasks.THREE_CLASS, "old": tasks.THREE_CLASS, "binary": tasks.PNEUMONIA, "again": tasks.THREE_CLASS}
    assert comparison.three_class_runs({"three": full, "old": bare, "binary": full, "again": full}, run_tasks) == ["three", "again"]
    assert comparison.predicted_class(full, "/d/x.jpeg") == "bacteria"
    assert comparison.predicted_class(full, "/d/other.jpeg") == "" and comparison.predicted_class(A, "/d/x1.jpeg") == ""
