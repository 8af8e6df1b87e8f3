"""The three tasks (core.data.tasks): labels on real file names, splits per task, three-class metrics
against scikit-learn, the derived binary view, old runs, the shared feature cache, and a
three-class search end to end (CLI -> saved run -> Compare, Predict and the report in AppTest)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, multilabel_confusion_matrix, recall_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from core import files
from core.data import folders, splitting, tasks
from core.evidence import multiclass, stress
from core.inference import evaluation, run_kinds
from core.models import builders, families
from core.runs import artifacts
from core.search import hypermodel
from core.search.settings import SearchSettings, SettingsError
from tests.helpers import make_dataset, predictions_shown, run_cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_table(data_dir) -> pd.DataFrame:
    return folders.scan_folder(data_dir, check_images=False).table


# ---------------------------------------------------------------------------- labels


def test_each_task_labels_the_real_file_names(real_table):
    names = real_table["path"].map(lambda p: Path(p).name)
    is_virus = names.str.contains(r"^person\d+_virus_", flags=re.IGNORECASE).to_numpy()
    is_bacteria = names.str.contains(r"^person\d+_bacteria_", flags=re.IGNORECASE).to_numpy()
    in_normal_folder = real_table["path"].str.contains("/NORMAL/").to_numpy()
    assert is_virus.sum() > 1000 and is_bacteria.sum() > 2000 and in_normal_folder.sum() > 1000

    pneumonia = tasks.task_for("pneumonia")
    assert (pneumonia.labels(real_table) == (~in_normal_folder).astype(int)).all()

    bvv = tasks.task_for("bacterial_vs_viral")
    used = bvv.rows(real_table)
    assert not used[in_normal_folder].any()  # pneumonia images only
    assert used.sum() == (is_virus | is_bacteria).sum()
    labels = bvv.labels(bvv.select(real_table))
    assert (labels == is_virus[used].astype(int)).all()  # viral is the positive class
    assert bvv.positive_class == "virus" and bvv.binary_names == ("bacterial", "viral")

    three = tasks.task_for("three_class")
    expected = np.where(in_normal_folder, 0, np.where(is_bacteria, 1, 2))
    used = three.rows(real_table)
    assert (three.labels(three.select(real_table)) == expected[used]).all()
    assert three.binary_labels(expected[used]).tolist() == (~in_normal_folder[used]).astype(int).tolist()


def test_task_names_old_runs_and_bad_names(tmp_path):
    assert tasks.task_for(None).name == tasks.task_for("binary").name == "pneumonia"
    with pytest.raises(tasks.TaskError, match="bacterial_vs_viral"):
        tasks.task_for("viral")
    # A run saved before tasks existed opens as a pneumonia run, and so does one saved as "binary".
    for name, settings in (("old", {"family": "custom_cnn"}), ("older", {"family": "custom_cnn", "task": "binary"})):
        files.write_json(tmp_path / name / artifacts.SETTINGS, settings)
        assert artifacts.load_run(tmp_path, name).task == "pneumonia"
    resolved = SearchSettings.from_dict({"data_dir": str(tmp_path), "task": "binary", "name": "x"}).resolved()
    assert resolved.task == "pneumonia"
    with pytest.raises(SettingsError, match="task must be one of pneumonia, bacterial_vs_viral, three_class"):
        SearchSettings(data_dir=str(tmp_path), task="viral", name="x").resolved()


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize("task_name", list(tasks.TASKS))
def test_splits_are_patient_grouped_and_the_same_patients_for_every_task(real_table, task_name):
    task = tasks.task_for(task_name)
    table, _ = splitting.assign_splits(real_table, task=task)
    splitting.check_patient_disjoint(table)
    assert set(table[task.column]) == set(task.classes)  # only the task's images
    assert len(table) == task.rows(real_table).sum()
    assert (table.loc[table["split"] == "test", "folder_split"] == "test").all()  # the official test/ is kept
    # every task keeps the pneumonia question's split of its images: a patient is in the same split whatever
    # the task, so runs of two tasks can be composed without one having trained on the other's validation
    pneumonia, _ = splitting.assign_splits(real_table, task=tasks.PNEUMONIA)
    expected = pneumonia.set_index("path").loc[table["path"], "split"].to_numpy()
    assert (table["split"].to_numpy() == expected).all()
    other_seed, _ = splitting.assign_splits(real_table, seed=43, task=task)
    assert (other_seed.set_index("path").loc[table["path"], "split"].to_numpy() != expected).mean() > 0.05
    # validation is carved out of train/ stratified by normal / pneumonia: the same shares as training
    shares = table.groupby("split")["class_name"].value_counts(normalize=True).unstack()
    assert np.allclose(shares.loc["val"], shares.loc["train"], atol=0.03), shares
    # every kind of the task in every split, with shares that are not far from training's
    kinds = table.groupby("split")[task.column].value_counts(normalize=True).unstack()
    assert np.allclose(kinds.loc["val"], kinds.loc["train"], atol=0.12), kinds
    weights = splitting.summarize(folders.Dataset(Path("."), real_table), table, task)["class_weights"]
    train_counts = table.loc[table["split"] == "train", task.column].value_counts()
    assert set(weights) == set(task.classes)
    # each class counts equally in training: weight x images is the same for every class
    totals = [weights[c] * train_counts[c] for c in task.classes]
    assert max(totals) / min(totals) < 1.001

    capped = splitting.cap_per_class(table, 30, task=task)
    splitting.check_patient_disjoint(capped)
    counts = capped.groupby(["split", task.column]).size()
    assert counts.max() <= 30 + 5 and len(counts) == 3 * task.n_classes  # every class in every split, whole patients


# ---------------------------------------------------------------------------- models


# One family per model builder fits its three-class model: the ImageNet CNNs (DenseNet121, InceptionV3, Xception)
# share MobileNet's fine-tuning builder and head, so they are built and predict, without a training step each.
FIT_ONE_PER_BUILDER = ("mobilenet", "hybrid", "custom_cnn", "vit")


@pytest.mark.parametrize("family", families.FAMILIES)
def test_every_family_trains_a_softmax_for_three_classes(family):
    import keras
    import keras_tuner

    info = families.FAMILIES[family]
    mode, size = ("finetune" if info.transfer else "scratch"), info.min_image_size
    keras.utils.set_random_seed(0)
    task = tasks.THREE_CLASS
    model = hypermodel.SearchSpace(family, mode, size, info.backbone(size, "none"), task=task).build(keras_tuner.HyperParameters())
    assert model.output_shape == (None, 3)
    y = np.arange(12) % 3
    x = np.random.default_rng(0).normal(80, 10, (12, size, size, 3)).astype("float32")
    assert model.loss == "categorical_crossentropy" or getattr(model.loss, "name", "") == "categorical_crossentropy"
    if family in FIT_ONE_PER_BUILDER:  # the head and the loss are the builder's: one family each trains (seconds per big backbone)
        history = model.fit(x, task.targets(y), epochs=1, batch_size=6, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)
        assert np.isfinite(history.history["loss"][0]) and "auc" in history.history
    outputs = model.predict(x, verbose=0)
    assert np.allclose(outputs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(builders.positive_probability(outputs), outputs[:, 1] + outputs[:, 2], atol=1e-5)


# ---------------------------------------------------------------------------- three-class metrics


def _softmax_sample(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_three_class_metrics_agree_with_scikit_learn():
    y, p = _softmax_sample()
    got = multiclass.class_metrics(y, p, tasks.THREE_CLASS.classes)
    pred = p.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["confusion_matrix"] == sk_confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    sensitivity = recall_score(y, pred, average=None, labels=[0, 1, 2])
    per_label = multilabel_confusion_matrix(y, pred, labels=[0, 1, 2])  # [[tn, fp], [fn, tp]] per class
    for c, name in enumerate(tasks.THREE_CLASS.classes):
        (tn, fp), _ = per_label[c]
        assert got["per_class"][name]["sensitivity"] == pytest.approx(sensitivity[c])
        assert got["per_class"][name]["specificity"] == pytest.approx(tn / (tn + fp))
        assert got["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert got["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert got["micro_auc"] == pytest.approx(roc_auc_score(np.eye(3)[y], p, average="micro"))


def test_the_two_step_rule_follows_the_binary_call_then_the_likelier_kind():
    p = np.array([[0.40, 0.35, 0.25],   # argmax normal, but P(pneumonia) 0.60 is called: bacterial
                  [0.30, 0.45, 0.25],   # argmax bacterial, but not called (threshold above 0.70): normal
                  [0.10, 0.30, 0.60],   # called: viral
                  [0.90, 0.04, 0.06]])  # not called: normal
    called = np.array([True, False, True, False])
    assert multiclass.predicted_classes(p, called).tolist() == [1, 0, 2, 0]
    assert multiclass.predicted_classes(p).tolist() == [0, 1, 2, 0]  # no calls: the argmax
    y = np.array([1, 0, 2, 0])
    assert multiclass.class_metrics(y, p, tasks.THREE_CLASS.classes, called)["accuracy"] == 1.0
    assert multiclass.class_metrics(y, p, tasks.THREE_CLASS.classes)["accuracy"] == 0.5
    table = pd.DataFrame({"prediction": ["PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL"]})
    assert multiclass.binary_calls(table, tasks.THREE_CLASS).tolist() == called.tolist()
    assert multiclass.binary_calls(table.drop(columns="prediction"), tasks.THREE_CLASS) is None
    with pytest.raises(ValueError, match="one binary call per image"):
        multiclass.predicted_classes(p, called[:3])


def test_three_class_intervals_resample_patients():
    y, p = _softmax_sample(120, seed=3)
    # every patient has 5 identical images: treated as independent, the intervals come out too narrow
    y5, p5 = np.repeat(y, 5), np.repeat(p, 5, axis=0)
    patients = np.repeat(np.arange(120), 5)
    by_patient = multiclass.class_intervals(y5, p5, patients, n_resamples=400, seed=1)
    by_image = multiclass.class_intervals(y5, p5, None, n_resamples=400, seed=1)
    for metric in multiclass.INTERVAL_METRICS:
        interval = by_patient[metric]
        assert interval.low <= interval.estimate <= interval.high
        assert (interval.high - interval.low) > 1.5 * (by_image[metric].high - by_image[metric].low)
    again = multiclass.class_intervals(y5, p5, patients, n_resamples=400, seed=1)
    assert again["macro_auc"] == by_patient["macro_auc"]  # the seed fixes the resamples
    with pytest.raises(ValueError, match="every class"):
        multiclass.class_intervals(np.zeros(10, int), np.full((10, 3), 1 / 3))


def test_the_derived_binary_view_of_a_three_class_run():
    task = tasks.THREE_CLASS
    y_val, p_val = _softmax_sample(150, seed=5)
    y_test, p_test = _softmax_sample(150, seed=6)

    def rows(y, prefix):
        kinds = np.array(task.classes)[y]
        return pd.DataFrame({"path": [f"/{prefix}/{i}.jpeg" for i in range(len(y))], "patient": [f"{prefix}{i // 2}" for i in range(len(y))],
                             "kind": kinds, "class_name": np.where(y == 0, "NORMAL", "PNEUMONIA")})

    result = evaluation.evaluate_classes(rows(y_val, "v"), y_val, p_val, rows(y_test, "t"), y_test, p_test, task)
    predictions = result["predictions"]
    derived = p_test[:, 1] + p_test[:, 2]  # P(bacterial) + P(viral)
    assert np.allclose(predictions["probability"], derived, atol=2e-6)
    assert (predictions["y_true"] == (y_test != 0)).all() and result["labels"] == ["NORMAL", "PNEUMONIA"]
    # the binary threshold is chosen on validation, on the derived probability
    assert result["threshold"] == evaluation.choose_threshold((y_val != 0).astype(int), evaluation.saved_precision(p_val[:, 1] + p_val[:, 2]))
    assert result["test"]["auc"] == pytest.approx(roc_auc_score(y_test != 0, derived), abs=1e-4)
    # the three classes in two steps: normal below the binary view's threshold, else the likelier kind;
    # so the class never contradicts the binary call, with the class columns kept per image
    called = evaluation.saved_precision(derived) >= result["threshold"]
    expected = np.where(called, 1 + p_test[:, 1:].argmax(axis=1), 0)
    assert (predictions["predicted_class"] == np.array(task.classes)[expected]).all()
    assert ((predictions["predicted_class"] == "normal") == (predictions["prediction"] == "NORMAL")).all()
    assert (expected != p_test.argmax(axis=1)).any()  # the sample has images where the two rules differ
    assert np.allclose(predictions[[tasks.probability_column(c) for c in task.classes]].sum(axis=1), 1, atol=1e-5)
    assert result["multiclass"]["test"]["accuracy"] == pytest.approx(accuracy_score(y_test, expected))
    assert result["multiclass"]["argmax_accuracy"]["test"] == pytest.approx(accuracy_score(y_test, p_test.argmax(axis=1)))
    assert result["multiclass"]["decision_rule"] == multiclass.TWO_STEP_RULE
    y, p, _ = multiclass.from_predictions(predictions, task)
    assert (y == y_test).all() and np.allclose(p, p_test, atol=1e-6)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory) -> dict[str, Path]:
    """A three-class, a pneumonia and a bacterial-vs-viral search (frozen MobileNet, random weights, 32 px)
    on the same tiny data.

    test/ has enough images of every class to be kept by every task: their test images are the same.
    """
    root = tmp_path_factory.mktemp("tasks")
    data_dir = make_dataset(root / "data", {"train": 16, "test": 26}, images_per_patient=2, size=40)
    folder = root / "artifacts"
    for name, task in (("three", "three_class"), ("binary", "pneumonia"), ("kinds", "bacterial_vs_viral")):
        result = run_cli(
            "tune", "--data", str(data_dir), "--task", task, "--family", "mobilenet", "--weights", "none", "--image-size", "32",
            "--trials", "1", "--epochs", "1", "--name", name, "--artifacts", str(folder), timeout=400,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return {"data": data_dir, "artifacts": folder}


def test_a_three_class_search_saves_its_classes_and_shares_the_feature_cache(task_runs):
    run = artifacts.load_run(task_runs["artifacts"], "three")
    assert run.task == "three_class" and run.settings["task"] == "three_class"
    block = run.metrics["multiclass"]
    predictions = run.predictions()
    assert np.array(block["test"]["confusion_matrix"]).sum() == len(predictions)
    assert block["classes"] == list(tasks.THREE_CLASS.classes) and block["test_intervals"]["macro_auc"]["low"] is not None
    y, p, _ = multiclass.from_predictions(predictions, tasks.THREE_CLASS)
    called = multiclass.binary_calls(predictions, tasks.THREE_CLASS)  # the saved binary view's calls decide normal
    assert multiclass.class_metrics(y, p, tasks.THREE_CLASS.classes, called)["confusion_matrix"] == block["test"]["confusion_matrix"]
    summary = run.read(artifacts.DATA_SUMMARY)
    assert set(summary["task_images"]["train"]) == {"normal", "bacterial", "viral"}
    # the features do not depend on the task: both searches used one cache file
    assert len(list((task_runs["artifacts"] / ".cache" / "features").glob("*.npz"))) == 1
    assert set(artifacts.load_run(task_runs["artifacts"], "binary").predictions()["path"]) == set(predictions["path"])


def _page(name: str, data_dir: Path, artifacts_dir: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state["data_dir"] = str(data_dir)
    at.session_state["artifacts_dir"] = str(artifacts_dir)
    return at


def test_compare_predict_and_the_report_show_a_three_class_run(task_runs):
    from core.reporting import report

    folder = task_runs["artifacts"]
    at = _page("compare", task_runs["data"], folder)
    at.session_state["compare_runs"] = ["three", "binary"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Three classes: normal / bacterial / viral" in [h.value for h in at.header]
    assert any("derived binary question" in i.value for i in at.info)
    three = artifacts.load_run(folder, "three")
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    matrices = [s for s in specs if (s["layout"].get("title") or {}).get("text") == "three"]
    assert len(matrices) == 1 and matrices[0]["data"][0]["y"] == ["normal", "bacterial", "viral"]
    counts = np.array(three.metrics["multiclass"]["test"]["confusion_matrix"])
    shown = [[int(cell.split("<br>")[0].replace(",", "")) for cell in row] for row in matrices[0]["data"][0]["text"]]
    assert shown == counts.tolist()
    class_roc = next(s for s in specs if (s["layout"].get("title") or {}).get("text") == "One-vs-rest ROC per class (test)")
    assert sum(1 for trace in class_roc["data"] if str(trace.get("name", "")).startswith("three · ")) == 3
    assert not at.error  # the three-class run and the pneumonia run are paired on the derived question

    report_html = report.build_report([three, artifacts.load_run(folder, "binary")], n_resamples=200)
    assert "Three classes: normal / bacterial / viral" in report_html and "two steps (threshold, then kind)" in report_html
    assert "three_class (normal / bacterial / viral; positive: pneumonia, the derived P(bacterial) + P(viral))" in report_html

    image = next((task_runs["data"] / "test" / "PNEUMONIA").glob("*virus*.jpeg"))
    at = _page("predict", task_runs["data"], folder)
    at.session_state["predict_runs"] = ["three", "binary"]
    at.session_state["predict_samples"] = [(str(image), "PNEUMONIA")]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = predictions_shown(at).set_index("run")
    each_class = table.loc["three", ["P(normal)", "P(bacterial)", "P(viral)"]].astype(float)
    assert each_class.sum() == pytest.approx(1.0, abs=1e-5)
    assert table.loc["three", "probability"] == pytest.approx(each_class["P(bacterial)"] + each_class["P(viral)"], abs=2e-6)
    # two steps: normal below the run's threshold, else the likelier kind; the heatmap explains that class
    called = table.loc["three", "probability"] >= three.threshold
    index = 1 + int(np.argmax(each_class.to_numpy()[1:])) if called else 0
    assert table.loc["three", "label"] == tasks.THREE_CLASS.classes[index]
    captions = [caption for element in at.get("image") for caption in element.captions]
    predicted = tasks.THREE_CLASS.names[index]
    assert any(c.startswith("three · Grad-CAM") and f"regions pointing to {predicted}" in c for c in captions), captions
    at.selectbox(key="predict_gradcam_class").set_value("virus").run()  # explain another class on request
    captions = [caption for element in at.get("image") for caption in element.captions]
    assert any(c.startswith("three · Grad-CAM") and "regions pointing to viral" in c for c in captions), captions


def test_a_three_class_ensemble_predicts_and_explains_each_class(task_runs, tmp_path):
    import shutil

    from core.inference import ensemble
    from core.reporting import report

    folder = tmp_path / "artifacts"
    shutil.copytree(task_runs["artifacts"], folder)
    shutil.copytree(folder / "three", folder / "three-b")  # a second member on the same split
    settings = json.loads((folder / "three-b" / "settings.json").read_text())
    (folder / "three-b" / "settings.json").write_text(json.dumps({**settings, "name": "three-b"}))
    run = ensemble.build_ensemble(folder, ["three", "three-b"], "three-ens")
    assert run.task == "three_class" and run.metrics["multiclass"]["classes"] == list(tasks.THREE_CLASS.classes)

    images = sorted((task_runs["data"] / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    mine = run_kinds.predict_files(run, [str(i) for i in images])
    member = evaluation.predict_files(artifacts.load_run(folder, "three"), [str(i) for i in images])
    columns = [tasks.probability_column(c) for c in tasks.THREE_CLASS.classes]
    assert np.allclose(mine[columns].to_numpy(float), member[columns].to_numpy(float), atol=2e-6)  # the mean of two equal members
    assert mine["label"].tolist() == member["label"].tolist()
    assert set(mine["label"]) <= set(tasks.THREE_CLASS.classes)

    at = _page("predict", task_runs["data"], folder)
    at.session_state["predict_runs"] = ["three-ens"]
    at.session_state["predict_samples"] = [(str(images[0]), "PNEUMONIA")]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = predictions_shown(at).set_index("run")
    assert table.loc["three-ens", ["P(normal)", "P(bacterial)", "P(viral)"]].astype(float).sum() == pytest.approx(1.0, abs=1e-5)
    at.selectbox(key="predict_gradcam_class").set_value("virus").run()
    captions = [caption for element in at.get("image") for caption in element.captions]
    assert any(c.startswith("three-ens · Grad-CAM") and "regions pointing to viral" in c for c in captions), captions
    assert "Three classes: normal / bacterial / viral" in report.build_report([run], n_resamples=100)


def test_the_data_page_shows_the_class_balance_of_each_tasks_split(task_runs):
    at = _page("data", task_runs["data"], task_runs["artifacts"])
    at.run()
    at.radio(key="data_view").set_value("As a search splits them (by patient)").run()
    at.selectbox(key="data_task").set_value("bacterial_vs_viral").run()
    assert not at.exception, [e.value for e in at.exception]
    balance = next(
        json.loads(c.proto.spec) for c in at.get("plotly_chart")
        if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Class balance (bacterial_vs_viral)"
    )
    assert [trace["name"] for trace in balance["data"]] == ["bacterial", "viral"]
    # the headings name the task's classes, not the folders' normal and pneumonia
    assert [m.label for m in at.metric if " : " in m.label] == ["Viral : bacterial, all splits"]
    assert [h.value.split(" (")[0] for h in at.subheader if h.value.endswith("images)")] == ["Bacterial", "Viral"]
    assert any("viral images per bacterial one" in c.value for c in at.caption)
    task = tasks.BACTERIAL_VS_VIRAL
    table, _ = splitting.assign_splits(folders.scan_folder(task_runs["data"]).table, task=task)
    viral = balance["data"][1]
    for split, text in zip(viral["y"], viral["text"], strict=True):
        expected = int(((table["split"] == split) & (table["kind"] == "virus")).sum())
        assert text.endswith(f"({expected:,})")  # counts of the split a search of this task makes


def test_a_pneumonia_and_a_bacterial_vs_viral_run_compose_a_three_class_run(task_runs, tmp_path):
    import shutil

    from core.inference import ensemble

    folder = tmp_path / "artifacts"
    shutil.copytree(task_runs["artifacts"], folder)
    binary, kinds = artifacts.load_run(folder, "binary"), artifacts.load_run(folder, "kinds")
    run = ensemble.build_ensemble(folder, ["binary", "kinds"], "composed")
    assert run.task == "three_class" and ensemble.is_composed(ensemble.member_tasks(run))
    assert ensemble.COMPOSE_RULE in run.metrics["ensemble"]["weight_rule"]

    # the chain rule on the members' own numbers: p from the pneumonia run, q = P(viral) from the other
    predictions = run.predictions().set_index("path")
    p = binary.predictions().set_index("path").loc[predictions.index, "probability"].to_numpy(float)
    kind_scores = kinds.predictions().set_index("path")["probability"]
    normal = predictions["kind"].to_numpy() == "normal"
    assert set(kind_scores.index) == set(predictions.index[~normal])  # it never saw the normal X-rays ...
    q = np.empty(len(predictions))
    q[~normal] = kind_scores.loc[predictions.index[~normal]].to_numpy(float)
    q[normal] = evaluation.predict_files(kinds, list(predictions.index[normal]))["probability"].to_numpy(float)  # ... so it scores them
    shown = predictions[[tasks.probability_column(c) for c in tasks.THREE_CLASS.classes]].to_numpy(float)
    assert np.allclose(shown, np.column_stack([1 - p, p * (1 - q), p * q]), atol=2e-6)
    assert np.allclose(predictions["probability"], p, atol=2e-6)  # the binary view is the pneumonia run's
    assert run.threshold == pytest.approx(binary.threshold)  # chosen on validation by the same rule, on the same scores
    # two steps: normal below the threshold, else the likelier kind
    y, classes, _ = multiclass.from_predictions(run.predictions(), tasks.THREE_CLASS)
    called = multiclass.binary_calls(run.predictions(), tasks.THREE_CLASS)
    expected = np.where(called, np.where(q >= 0.5, 2, 1), 0)
    ties = np.isclose(q, 0.5, atol=1e-5)
    assert (multiclass.predicted_classes(classes, called)[~ties] == expected[~ties]).all()

    # new images: the same numbers through predict, and the heatmap is the pneumonia run's
    images = [str(i) for i in sorted((task_runs["data"] / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]]
    mine = run_kinds.predict_files(run, images).set_index("path")
    assert np.allclose(mine.loc[images, "probability"], predictions.loc[images, "probability"], atol=2e-6)
    assert list(mine.loc[images, "label"]) == list(predictions.loc[images, "predicted_class"])
    assert not run_kinds.explains_each_class(run) and run_kinds.explains_each_class(artifacts.load_run(folder, "three"))
    heat, _ = run_kinds.heatmap(run, images[0], class_name="virus")
    own, _ = run_kinds.heatmap(binary, images[0])
    assert np.allclose(heat, own, atol=1e-6)

    # Predict reads it as a three-class run (Compare reads its saved tables as any three-class run's), explained
    # where its pneumonia run looks
    at = _page("predict", task_runs["data"], folder)
    at.session_state["predict_runs"] = ["composed"]
    at.session_state["predict_samples"] = [(images[0], "PNEUMONIA")]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = predictions_shown(at).set_index("run")
    assert shown.loc["composed", ["P(normal)", "P(bacterial)", "P(viral)"]].astype(float).sum() == pytest.approx(1.0, abs=1e-5)
    assert not [s for s in at.selectbox if s.key == "predict_gradcam_class"]  # no class to choose: it explains pneumonia
    captions = [caption for element in at.get("image") for caption in element.captions]
    assert any(c.startswith("composed · Grad-CAM") for c in captions) and not any("regions pointing to" in c for c in captions)

    # runs split another way are refused, naming the problem
    val = kinds.val_predictions()
    val.iloc[1:].to_csv(folder / "kinds" / artifacts.VAL_PREDICTIONS, index=False)
    with pytest.raises(artifacts.RunError, match="kinds was validated on other images than binary's pneumonia X-rays.*split the same way"):
        ensemble.build_ensemble(folder, ["binary", "kinds"], "composed-2")
    assert not (folder / "composed-2").exists()


def test_three_class_runs_join_a_composed_run_and_the_two_answers_are_averaged(task_runs, tmp_path):
    """The three-class recipe's result: the composed classes and the three-class run's own, half and half."""
    import shutil

    from core.inference import ensemble

    folder = tmp_path / "artifacts"
    shutil.copytree(task_runs["artifacts"], folder)
    composed = ensemble.build_ensemble(folder, ["binary", "kinds"], "composed")
    both = ensemble.build_ensemble(folder, ["three", "binary", "kinds"], "both")
    assert both.task == "three_class" and ensemble.is_composed(ensemble.member_tasks(both))
    assert ensemble.BOTH_ANSWERS_RULE in both.metrics["ensemble"]["weight_rule"] and both.settings["weights"] == [1.0, 1.0, 1.0]
    columns = [tasks.probability_column(c) for c in tasks.THREE_CLASS.classes]
    for table in ("predictions", "val_predictions"):
        shown = getattr(both, table)().set_index("path")
        halves = [getattr(r, table)().set_index("path").loc[shown.index, columns].to_numpy(float)
                  for r in (composed, artifacts.load_run(folder, "three"))]
        assert np.allclose(shown[columns].to_numpy(float), (halves[0] + halves[1]) / 2, atol=2e-6), table
        assert np.allclose(shown["probability"], 1 - shown[columns[0]], atol=2e-6)  # its view: P(bacterial) + P(viral)
    assert both.metrics["threshold_rule"] == stress.ROBUST_THRESHOLD_RULE  # chosen as every run's, stressed copies too

    # new images: predict gives the saved numbers and the two-step class; the heatmap is the pneumonia run's
    images = [str(i) for i in sorted((task_runs["data"] / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]]
    mine = run_kinds.predict_files(both, images).set_index("path")
    saved = both.predictions().set_index("path")
    assert np.allclose(mine.loc[images, columns].to_numpy(float), saved.loc[images, columns].to_numpy(float), atol=2e-6)
    assert list(mine.loc[images, "label"]) == list(saved.loc[images, "predicted_class"])
    assert not run_kinds.explains_each_class(both)
    heat, _ = run_kinds.heatmap(both, images[0])
    assert np.allclose(heat, run_kinds.heatmap(artifacts.load_run(folder, "binary"), images[0])[0], atol=1e-6)

    # a three-class run made on other images is refused, naming it
    val = artifacts.load_run(folder, "three").val_predictions()
    val.iloc[1:].to_csv(folder / "three" / artifacts.VAL_PREDICTIONS, index=False)
    with pytest.raises(artifacts.RunError, match="three was validated on other images than binary's X-rays of a known class"):
        ensemble.build_ensemble(folder, ["three", "binary", "kinds"], "both-2")
    assert not (folder / "both-2").exists()
