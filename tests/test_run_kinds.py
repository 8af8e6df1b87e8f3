"""core.inference.run_kinds: one dispatch on the kind of run, checked on small real runs (tiny untrained
models, `tests.helpers.model_run`) of every kind and both kinds of task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core import files
from core.data import tasks
from core.inference import ensemble, evaluation, explanation, methods, ood, run_kinds, unusual
from core.reporting import export
from core.runs import artifacts
from core.runs.artifacts import Run, RunError
from core.workflows import repeat
from tests.helpers import make_dataset, model_run

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
WEIGHTS = [0.3, 0.7]  # unequal, so that a plain mean would not pass for the weighted one


def _ensemble(store: Path, members: list[str], name: str) -> Run:
    """`members` combined as `build_ensemble` saves them, then given `WEIGHTS` (its saved predictions stay
    the equal-weight ones: only scoring images reads the weights)."""
    run = ensemble.build_ensemble(store, members, name)
    files.write_json(run.folder / artifacts.SETTINGS, {**run.settings, "weights": WEIGHTS})
    return artifacts.load_run(store, name)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """plain, a repeat of it, and an ensemble, at two input sizes; three-class runs and their ensemble."""
    root = tmp_path_factory.mktemp("kinds")
    data = make_dataset(root / "data", {"train": 6, "test": 3}, images_per_patient=2)
    folder = root / "artifacts"
    model_run(folder, "plain", data, size=32, seed=0)
    model_run(folder, "wide", data, size=40, seed=1)
    model_run(folder, "plain-x1seeds", data, size=32, seed=43,
              repeat={"source": "plain", "seeds": [43], "main": repeat.MAIN_PREDICTIONS})
    model_run(folder, "three", data, task="three_class", size=32, seed=2)
    model_run(folder, "three-b", data, task="three_class", size=40, seed=3)
    _ensemble(folder, ["plain", "wide"], "duo")
    _ensemble(folder, ["three", "three-b"], "three-duo")
    return folder


def _load(store: Path, name: str) -> Run:
    return artifacts.load_run(store, name)


def _images(store: Path) -> list[str]:
    """A few test images and a file that is no image."""
    return list(_load(store, "plain").predictions()["path"][:4]) + [str(store / "plain" / artifacts.SETTINGS)]


def test_the_registry_picks_each_kind_and_the_task_stays_the_runs(store):
    expected = {"plain": "plain", "plain-x1seeds": "repeat", "duo": "ensemble", "three": "plain", "three-duo": "ensemble"}
    assert {name: run_kinds.kind_of(_load(store, name)).name for name in expected} == expected
    # Three-class is a task, not a kind: a plain run and an ensemble can both be three-class.
    assert _load(store, "three").task == _load(store, "three-duo").task == "three_class"
    assert run_kinds.kind_of(Run("bare", store / "bare", {}, {}, None)).name == "plain"  # a run no other kind claims


@pytest.mark.parametrize("name", ["plain", "plain-x1seeds", "three"])
def test_a_run_with_its_own_model_scores_as_before(store, name):
    run = _load(store, name)
    table = run_kinds.predict_files(run, _images(store), engine="keras")
    pd.testing.assert_frame_equal(table, evaluation.predict_files(run, _images(store), engine="keras"))
    assert table["error"].iat[-1].startswith("cannot read image") and np.isnan(table["probability"].iat[-1])
    if name == "three":  # the task decides: a column per class, the label normal below the threshold, else the likelier kind
        columns = [tasks.probability_column(c) for c in tasks.THREE_CLASS.classes]
        each = table[columns][:4].to_numpy(float)
        called = table["probability"][:4].to_numpy() >= run.threshold
        assert table["label"][:4].tolist() == [tasks.THREE_CLASS.classes[i] for i in np.where(called, 1 + np.argmax(each[:, 1:], axis=1), 0)]


@pytest.mark.parametrize(("name", "members"), [("duo", ["plain", "wide"]), ("three-duo", ["three", "three-b"])])
def test_an_ensemble_scores_the_weighted_mean_of_its_members(store, name, members):
    run = _load(store, name)
    paths = _images(store)
    table = run_kinds.predict_files(run, paths, engine="keras")
    pd.testing.assert_frame_equal(table, ensemble.predict_files(run, paths, engine="keras"))
    parts = [evaluation.predict_files(_load(store, m), paths, engine="keras") for m in members]
    task = tasks.task_for(run.task)
    columns = ["probability"] + ([] if task.is_binary else [tasks.probability_column(c) for c in task.classes])
    mean = WEIGHTS[0] * parts[0][columns][:4].to_numpy(float) + WEIGHTS[1] * parts[1][columns][:4].to_numpy(float)
    np.testing.assert_allclose(table[columns][:4].to_numpy(float), mean, atol=1e-6)
    if task.is_binary:
        assert table["label"][:4].tolist() == ["PNEUMONIA" if p >= run.threshold else "NORMAL" for p in table["probability"][:4]]
    else:
        called = table["probability"][:4].to_numpy() >= run.threshold
        assert table["label"][:4].tolist() == [task.classes[i] for i in np.where(called, 1 + np.argmax(mean[:, 2:], axis=1), 0)]
    assert table["error"].iat[-1].startswith("cannot read image")


def test_loaded_models_passed_back_in_give_the_same_scores_and_unusual_images_are_flagged(store):
    loaded: list[Path] = []

    def load(path: Path):
        loaded.append(path)
        return evaluation.load_model(path)

    duo = _load(store, "duo")
    models = run_kinds.load_models(duo, load)
    assert sorted(models) == ["plain", "wide"] and loaded == duo.model_paths  # each member's file, once
    paths = _images(store)
    pd.testing.assert_frame_equal(run_kinds.predict_files(duo, paths, models, engine="keras"),
                                  run_kinds.predict_files(duo, paths, engine="keras"))
    plain = _load(store, "plain")
    assert run_kinds.load_models(plain, load) is not None and loaded[-1] == plain.model_path
    flagged = run_kinds.predict_files(plain, paths, engine="keras", unusual=True)
    flags = unusual.flag_files(plain, paths)  # the image statistics and the model's features
    pd.testing.assert_frame_equal(flagged[list(flags.columns)], flags)
    assert list(flagged.columns[:5]) == ["path", "probability", "label", "model_label", "error"]


def test_a_flagged_image_is_labelled_not_assessed_in_the_predict_csv(store, tmp_path, capsys):
    from PIL import Image

    from core import cli, files

    black = tmp_path / "black.jpeg"
    Image.new("L", (300, 300), 0).save(black)
    real = _images(store)[0]
    csv = tmp_path / "out.csv"
    assert cli.main(["predict", "--run", "plain", "--artifacts", str(store), "--csv", str(csv), "--engine", "keras",
                     str(black), real]) == 0
    table = files.read_csv(csv).set_index("path")
    flagged = table.loc[str(black)]
    assert bool(flagged["unusual"]) and flagged["label"] == ood.NOT_ASSESSED == "not assessed: unlike the training X-rays"
    assert flagged["model_label"] in ("NORMAL", "PNEUMONIA") and 0 <= flagged["probability"] <= 1  # kept, not hidden
    assert flagged["unusual_reason"].startswith("near-black pixels (below 10 of 255): 100 % of the image")
    unflagged = table.loc[real]
    assert not bool(unflagged["unusual"]) and unflagged["label"] == unflagged["model_label"] in ("NORMAL", "PNEUMONIA")
    assert "1 of 2 images are not like the run's training X-rays" in capsys.readouterr().err


def test_heatmaps_through_the_entry_point(store):
    image = _images(store)[0]
    plain = _load(store, "plain")
    heatmap, original = run_kinds.heatmap(plain, image)
    expected, _ = methods.heatmap_for_run(plain, image)
    np.testing.assert_array_equal(heatmap, expected)
    assert original.mode == "L" and original.size == (48, 48)  # the file's own size, not the network's

    for name, class_name in (("duo", None), ("three-duo", "virus")):
        run = _load(store, name)
        heatmap, _ = run_kinds.heatmap(run, image, run_kinds.load_models(run), class_name=class_name)
        members = [methods.heatmap_for_run(_load(store, m), image, class_name=class_name)[0] for m in run.members]
        np.testing.assert_allclose(heatmap, explanation.combine_heatmaps(members, WEIGHTS), atol=1e-6)
        assert heatmap.shape == (38, 38)  # the larger member's map: 40 px in, a 3x3 convolution without padding


def test_export_and_repeat_follow_the_kind(store):
    duo = _load(store, "duo")
    with pytest.raises(RunError, match=r"'duo' is an ensemble: it has no model of its own.*export its members \(plain, wide\)"):
        export.export_bytes(store, "duo")
    assert export.export_problem(duo).startswith("run 'duo' is an ensemble")
    assert export.export_problem(_load(store, "plain")) == export.export_problem(_load(store, "plain-x1seeds")) == ""
    assert repeat.source_problem(duo).startswith("duo is an ensemble: it has no hyperparameters of its own")
    assert repeat.source_problem(_load(store, "plain-x1seeds")) == "plain-x1seeds is itself a repeat of plain: repeat that run instead"
    assert run_kinds.repeat_problem(_load(store, "plain")) == ""


def test_evaluate_on_a_folder_scores_an_ensemble_as_an_ensemble(store):
    duo = _load(store, "duo")
    metrics, predictions = run_kinds.evaluate_on_folder(duo, duo.settings["data_dir"], "test", engine="keras")
    assert metrics["n"] == len(predictions) == 12 and metrics["threshold"] == duo.threshold
    pd.testing.assert_frame_equal(predictions, run_kinds.predict_files(duo, list(predictions["path"]), engine="keras"))
    y_true = predictions["path"].str.contains("/PNEUMONIA/").to_numpy(int)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y_true, predictions["probability"]))
    assert metrics["patients_seen_in_training"] == 0 and metrics["unreadable"] == 0


def test_a_new_kind_is_one_class(store, monkeypatch):
    class ImportedRun(run_kinds.PlainRun):
        """A model trained elsewhere, say: claims runs whose settings say so."""

        name = "imported"

        def applies(self, run: Run) -> bool:
            return run.settings.get("imported") is True

        def predict_files(self, run, paths, models=None, engine="auto"):
            return pd.DataFrame({"path": list(paths), "probability": 0.25, "label": "NORMAL", "error": ""})

    monkeypatch.setattr(run_kinds, "KINDS", (ImportedRun(), *run_kinds.KINDS))
    plain = _load(store, "plain")
    imported = Run("outside", plain.folder, {**plain.settings, "imported": True}, plain.progress, plain.metrics)
    assert run_kinds.kind_of(imported).name == "imported" and run_kinds.kind_of(plain).name == "plain"
    assert run_kinds.predict_files(imported, ["x.png"])["probability"].tolist() == [0.25]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion", "smoothgrad"])
def test_every_method_explains_a_plain_run_and_an_ensemble(store, method):
    image = _images(store)[0]
    plain = _load(store, "plain")
    heatmap, original = run_kinds.heatmap(plain, image, method=method)
    expected, _ = methods.heatmap_for_run(plain, image, method=method)
    np.testing.assert_array_equal(heatmap, expected)
    assert heatmap.dtype == np.float32 and heatmap.min() >= 0 and heatmap.max() <= 1 and original.size == (48, 48)
    duo = _load(store, "duo")
    combined, _ = run_kinds.heatmap(duo, image, run_kinds.load_models(duo), method=method)
    members = [methods.heatmap_for_run(_load(store, m), image, method=method)[0] for m in duo.members]
    np.testing.assert_allclose(combined, explanation.combine_heatmaps(members, WEIGHTS), atol=1e-6)
    assert run_kinds.method_problem(duo, method) == run_kinds.method_problem(plain, method) == ""


def test_a_method_that_does_not_apply_is_refused_with_its_reason(store):
    image = _images(store)[0]
    assert run_kinds.method_problem(_load(store, "plain"), "rollout").startswith("no attention layers")
    assert "member 'plain'" in run_kinds.method_problem(_load(store, "duo"), "rollout")
    assert run_kinds.method_problem(_load(store, "plain"), "lime").startswith("unknown explanation method 'lime': choose one of")
    with pytest.raises(ValueError, match="Attention rollout does not apply to run 'plain': no attention layers"):
        run_kinds.heatmap(_load(store, "plain"), image, method="rollout")
    with pytest.raises(ValueError, match="ensemble 'duo', member 'plain'.*no attention layers"):
        run_kinds.heatmap(_load(store, "duo"), image, method="rollout")


@pytest.mark.parametrize("name", ["plain", "three", "duo", "three-duo"])
def test_score_pixels_is_the_probability_predict_gives(store, name):
    """The same images as pixels at the first member's size (the other member resizes them): within
    predict_files' rounding of the saved probability."""
    from core.data import loading

    run = _load(store, name)
    paths = _images(store)[:4]
    size = evaluation.run_image_size(run if not run.is_ensemble else _load(store, run.members[0]))
    pixels = loading.to_network_input(np.stack([loading.load_image(p, size) for p in paths]))
    scores = run_kinds.score_pixels(run, pixels)
    assert scores.shape == (4,) and scores.dtype == np.float64
    expected = run_kinds.predict_files(run, paths, engine="keras")["probability"].to_numpy(float)
    if not run.is_ensemble:
        np.testing.assert_allclose(scores, expected, atol=1e-4)
    else:  # the second member sees 32 px squashed again to 40, not the file read at 40: close, not equal
        members = [run_kinds.score_pixels(_load(store, m), pixels) for m in run.members]
        np.testing.assert_allclose(scores, WEIGHTS[0] * members[0] + WEIGHTS[1] * members[1], atol=1e-9)
        np.testing.assert_allclose(members[0], run_kinds.predict_files(_load(store, run.members[0]), paths, engine="keras")["probability"], atol=1e-4)
    # Any size in: resized to the model's own.
    assert run_kinds.score_pixels(run, np.stack([np.kron(p, np.ones((2, 2, 1))) for p in pixels])).shape == (4,)
