"""Importing a model trained elsewhere: five formats give the same probabilities, bad input is refused
with its message and leaves nothing behind, and an imported run works like any other downstream."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from core.data import loading
from core.inference import ensemble, feature_ood, run_kinds
from core.models import imported, model_files
from core.reporting import export
from core.runs import artifacts
from core.runs.artifacts import RunError
from core.workflows import importing, repeat
from tests.helpers import make_dataset

SIZE = 24
FORMATS = ("keras", "h5", "savedmodel", "tflite", "onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic X-rays: a bright blob means pneumonia; train/ gives training and validation, test/ the test split."""
    return make_dataset(tmp_path_factory.mktemp("import-data") / "xrays", {"train": 8, "test": 4}, images_per_patient=2, size=SIZE)


def tiny_classifier(seed: int = 3) -> keras.Model:
    """A small CNN that scales its own pixels (as a model made with Keras's Rescaling layer does)."""
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 64, offset=-1.0)(pixels)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(pixels, keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[keras.Model, dict[str, Path]]:
    """The same small network saved in every format."""
    from core.models.engine import convert_to_tflite

    folder = tmp_path_factory.mktemp("models")
    model = tiny_classifier()
    paths = {"keras": folder / "m.keras", "h5": folder / "m.h5", "savedmodel": folder / "saved", "tflite": folder / "m.tflite",
             "onnx": folder / "m.onnx"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    model.export(str(paths["savedmodel"]), verbose=False)
    paths["tflite"].write_bytes(convert_to_tflite(model))
    paths["onnx"].write_bytes(model_files.convert_to_onnx(model))
    return model, paths


def nchw_logits_onnx(path: Path, size: int | None, positive_weight: float = 40.0) -> Path:
    """An ONNX model as PyTorch exports one: NCHW input, two logits out, no softmax; the logit of
    class 1 grows with the image's brightest channel mean. `size` None leaves the sides dynamic."""
    import onnx
    from onnx import TensorProto, helper

    side = size if size is not None else "side"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["peak"], axes=[2, 3], keepdims=0),  # (n, 3): each channel's brightest
            helper.make_node("MatMul", ["peak", "w"], ["raw"]),
            helper.make_node("Add", ["raw", "b"], ["logits"]),
        ],
        "nchw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0, positive_weight / 3] * 3),
         helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, -positive_weight * 1.2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def options(path, data, artifacts_dir, name, **chosen) -> importing.ImportOptions:
    return importing.ImportOptions(model=str(path), name=name, data_dir=str(data), artifacts_dir=str(artifacts_dir),
                                   scaling=chosen.pop("scaling", "0-255"), **chosen)


@pytest.fixture(scope="module")
def imported_runs(saved, data, tmp_path_factory) -> Path:
    """Each format imported into one artifacts folder (runs named after the format)."""
    folder = tmp_path_factory.mktemp("import-artifacts")
    for name, path in saved[1].items():
        importing.import_model(options(path, data, folder, name), log=None)
    return folder


def test_every_format_gives_the_networks_own_probabilities(saved, imported_runs):
    model = saved[0]
    reference = None
    for name in FORMATS:
        run = artifacts.load_run(imported_runs, name)
        assert run.state == "completed" and run_kinds.kind_of(run).name == "imported"
        assert run.settings["imported"]["format"] == name
        table = run.predictions()
        pixels = loading.to_network_input(np.stack([loading.load_image(p, SIZE) for p in table["path"]]))
        direct = model.predict(pixels, verbose=0)[:, 0]
        np.testing.assert_allclose(table["probability"], direct, atol=1e-4, err_msg=name)
        if reference is None:
            reference = run
        else:  # the same images, the same threshold chosen on validation
            assert list(table["path"]) == list(reference.predictions()["path"])
            assert run.threshold == pytest.approx(reference.threshold, abs=1e-4)


def test_the_split_follows_a_searchs_rules_and_seed(imported_runs, data):
    from core.data import folders, tasks
    from core.search.splits import make_split

    expected, _ = make_split(folders.scan_folder(data), tasks.PNEUMONIA, 0.15, 0.15, 42, None)
    saved = pd.read_csv(artifacts.load_run(imported_runs, "onnx").folder / artifacts.SPLITS)
    assert list(saved["path"]) == list(expected["path"]) and list(saved["split"]) == list(expected["split"])
    assert set(saved["split"]) == {"train", "val", "test"}


def test_nchw_torch_scaling_and_logits_are_applied(tmp_path, data):
    path = nchw_logits_onnx(tmp_path / "torchlike.onnx", SIZE)
    importing.import_model(options(path, data, tmp_path / "a", "torchlike", scaling="torch", logits=True), log=None)
    run = artifacts.load_run(tmp_path / "a", "torchlike")
    adapter = run.settings["imported"]["adapter"]
    assert (adapter["layout"], adapter["channels"], adapter["positive"]) == ("NCHW", 3, 1)
    table = run.predictions()
    grey = np.stack([loading.load_image(p, SIZE)[..., 0] for p in table["path"]]).astype(np.float64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    peak = ((grey.max(axis=(1, 2))[:, None] / 255 - mean) / std)  # each channel's brightest, torch-scaled
    logit = peak.sum(axis=1) * 40 / 3 - 48  # class 1's logit minus class 0's
    np.testing.assert_allclose(table["probability"], 1 / (1 + np.exp(-logit)), atol=1e-4)
    assert run.metrics["test"]["auc"] > 0.9  # the blob is bright: the hand-made model separates the classes


# --------------------------------------------------------------------------
# Bad input: a message, and no run folder
# --------------------------------------------------------------------------


def _refused(opts: importing.ImportOptions, *phrases: str) -> str:
    with pytest.raises(RunError) as caught:
        importing.import_model(opts, log=None)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert not Path(opts.artifacts_dir, opts.name).exists(), "a refused import left a folder"
    return message


def test_a_file_that_is_not_a_model_is_refused(tmp_path, data):
    fake = tmp_path / "weights.onnx"
    fake.write_text("not a model")
    _refused(options(fake, data, tmp_path, "fake"), "not an ONNX model")
    keras_fake = tmp_path / "m.keras"
    keras_fake.write_bytes(b"PK\x03\x04 broken zip")
    _refused(options(keras_fake, data, tmp_path, "fake"), "m.keras")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _refused(options(text, data, tmp_path, "fake"), "import one of", "ONNX")
    _refused(options(tmp_path / "missing.onnx", data, tmp_path, "fake"), "does not exist")


def test_outputs_that_are_not_probabilities_are_refused(tmp_path, data):
    pixels = keras.Input((SIZE, SIZE, 3))
    feature_map = keras.Model(pixels, keras.layers.Conv2D(2, 3)(pixels))
    feature_map.save(tmp_path / "map.keras")
    _refused(options(tmp_path / "map.keras", data, tmp_path, "map"), "one probability or one class vector per image")
    raw = keras.Model(pixels, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(pixels)))  # a logit, no sigmoid
    raw.save(tmp_path / "logit.keras")
    _refused(options(tmp_path / "logit.keras", data, tmp_path, "logit"), "not probabilities", "--logits")
    three = keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(pixels)))
    three.save(tmp_path / "three.keras")
    _refused(options(tmp_path / "three.keras", data, tmp_path, "three"), "3 outputs", "--positive-output")


def test_sizes_and_layouts_that_do_not_match_are_refused(tmp_path, saved, data):
    paths = saved[1]
    _refused(options(paths["onnx"], data, tmp_path, "big", image_size=64), "input size given (64)", f"model's ({SIZE})")
    _refused(options(paths["keras"], data, tmp_path, "flip", layout="NCHW"), "layout given (NCHW)")
    _refused(options(paths["tflite"], data, tmp_path, "grey", channels=1), "channels given (1)")


def test_dynamic_onnx_shapes_need_the_size_and_are_then_fixed(tmp_path, data):
    path = nchw_logits_onnx(tmp_path / "dynamic.onnx", None)
    _refused(options(path, data, tmp_path, "dyn", scaling="torch", logits=True), "dynamic shape", "--input-size")
    importing.import_model(options(path, data, tmp_path, "dyn", scaling="torch", logits=True, image_size=SIZE), log=None)
    assert artifacts.load_run(tmp_path, "dyn").settings["image_size"] == SIZE


def test_a_low_validation_auc_warns_of_scaling_and_positive_output(tmp_path, data):
    path = nchw_logits_onnx(tmp_path / "swapped.onnx", SIZE)
    result = importing.import_model(options(path, data, tmp_path, "swapped", scaling="torch", logits=True, positive=0), log=None)
    assert result["val"]["auc"] < 0.5
    (warning,) = result["warnings"]
    assert "--scaling, now torch" in warning and "--positive-output, now 0" in warning and "other way round" in warning
    assert artifacts.load_run(tmp_path, "swapped").metrics["warnings"] == [warning]


def test_a_stopped_import_saves_no_result_and_resumes(tmp_path, saved, data):
    opts = options(saved[1]["onnx"], data, tmp_path, "stopped")
    folder = importing.create_import(importing.plan_import(opts), opts.model)

    def stop_at_first_line(line: str) -> None:  # the Stop button, pressed while the images are decoded
        (folder / "stop.request").touch()

    assert importing.run_import(tmp_path, "stopped", log=stop_at_first_line) == {"state": "stopped"}
    run = artifacts.load_run(tmp_path, "stopped")
    assert run.state == "stopped" and not run.metrics and not (run.folder / artifacts.PREDICTIONS).exists()
    importing.run_import(tmp_path, "stopped", log=None)
    assert artifacts.load_run(tmp_path, "stopped").state == "completed"


# --------------------------------------------------------------------------
# Downstream: explanations, repeat, ensembles, export, the CLI
# --------------------------------------------------------------------------


def test_occlusion_explains_any_import_and_grad_cam_only_keras(imported_runs, data):
    image = next((data / "test" / "PNEUMONIA").glob("*.jpeg"))
    onnx_run, keras_run = (artifacts.load_run(imported_runs, n) for n in ("onnx", "keras"))
    problem = run_kinds.method_problem(onnx_run, "gradcam")
    assert "imported onnx file" in problem and "occlusion" in problem
    with pytest.raises(ValueError, match="occlusion"):
        run_kinds.heatmap(onnx_run, image, method="gradcam")
    for run in (onnx_run, keras_run):
        heat, original = run_kinds.heatmap(run, image, method="occlusion")
        assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() == pytest.approx(1.0)
        assert original.size == (SIZE, SIZE)
    assert run_kinds.method_problem(keras_run, "gradcam") == ""
    assert run_kinds.default_method([onnx_run]) == "occlusion" and run_kinds.default_method([keras_run]) == "gradcam"
    heat, _ = run_kinds.heatmap(keras_run, image, method="gradcam")
    assert heat.ndim == 2 and heat.max() <= 1.0


def test_unusual_images_of_an_import_file_are_checked_by_statistics_only_and_say_so(imported_runs, data):
    images = [str(p) for p in sorted((data / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]]
    onnx_run, keras_run = (artifacts.load_run(imported_runs, n) for n in ("onnx", "keras"))
    onnx_flags = run_kinds.predict_files(onnx_run, images, unusual=True)
    assert all("no feature check (checked by image statistics only): the imported model file has no layers" in r
               for r in onnx_flags["unusual_reason"])
    keras_flags = run_kinds.predict_files(keras_run, images, unusual=True)  # a Keras file has layers: both detectors
    assert "no feature check" not in " ".join(keras_flags["unusual_reason"])
    assert (keras_run.folder / feature_ood.REFERENCE).exists() and not (onnx_run.folder / feature_ood.REFERENCE).exists()


def test_an_import_is_not_repeated(imported_runs):
    with pytest.raises(RunError, match="imported model: it was trained elsewhere"):
        repeat.plan_repeat(imported_runs, "onnx", 2)


def test_imported_runs_of_different_formats_make_an_ensemble(imported_runs, data):
    run = ensemble.build_ensemble(imported_runs, ["onnx", "savedmodel"], "mixed")
    members = [artifacts.load_run(imported_runs, n).predictions()["probability"] for n in ("onnx", "savedmodel")]
    np.testing.assert_allclose(run.predictions()["probability"], (members[0] + members[1]) / 2, atol=2e-6)
    image = str(next((data / "test" / "NORMAL").glob("*.jpeg")))
    scored = run_kinds.predict_files(run, [image])
    assert scored["error"].iloc[0] == "" and 0 <= scored["probability"].iloc[0] <= 1


def test_an_import_pairs_with_a_searched_run_of_the_same_seed(runs_dir, saved, tmp_path):
    """cnn-small was searched on the shared data, 12 images per class and split, seed 42, at 32 px."""
    import shutil

    from core.evidence import comparison
    from tests.conftest import DATA_DIR

    folder = tmp_path / "paired"
    shutil.copytree(runs_dir / "cnn-small", folder / "cnn-small", ignore=shutil.ignore_patterns("search.lock"))
    onnx_32 = nchw_logits_onnx(tmp_path / "at32.onnx", 32)
    importing.import_model(options(onnx_32, DATA_DIR, folder, "outside", scaling="torch", logits=True, max_per_class=12), log=None)
    searched, outside = (artifacts.load_run(folder, n) for n in ("cnn-small", "outside"))
    assert sorted(searched.predictions()["path"]) == sorted(outside.predictions()["path"])
    assert comparison.image_check({"cnn-small": searched.predictions(), "outside": outside.predictions()}).same
    ensemble.build_ensemble(folder, ["cnn-small", "outside"], "both")
    assert artifacts.load_run(folder, "both").state == "completed"


def test_the_model_card_carries_the_original_file_and_its_adapter(imported_runs):
    content = export.export_bytes(imported_runs, "onnx")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = set(archive.namelist())
        assert {"onnx/imported_model/model.onnx", "onnx/imported_model/adapter.json", "onnx/threshold.json"} <= names
        assert "onnx/model.keras" not in names
        rule = json.loads(archive.read("onnx/threshold.json"))
        card = archive.read("onnx/MODEL_CARD.md").decode()
    assert rule["imported_model"]["adapter"]["scaling"] == "0-255"
    assert "Imported: a onnx model" in card and "python -m core import imported_model/model.onnx" in card
    with zipfile.ZipFile(io.BytesIO(content)) as archive:  # the copied file is the imported one, byte for byte
        copied = archive.read("onnx/imported_model/model.onnx")
    assert copied == (artifacts.load_run(imported_runs, "onnx").model_path / "model.onnx").read_bytes()


def test_the_cli_imports_and_refuses_with_its_message(saved, data, tmp_path):
    from tests.helpers import run_cli

    done = run_cli("import", str(saved[1]["tflite"]), "--name", "cli", "--data", str(data), "--scaling", "0-255",
                   "--no-stress-test", "--artifacts", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test: AUC" in done.stdout
    assert artifacts.load_run(tmp_path, "cli").metrics.get("stress") is None
    refused = run_cli("import", str(saved[1]["tflite"]), "--name", "cli", "--data", str(data), "--scaling", "0-255",
                      "--artifacts", str(tmp_path))
    assert refused.returncode != 0 and "already exists" in refused.stderr


def test_the_adapter_maps_are_one_code_path_for_numpy_and_keras():
    adapter = imported.Adapter("onnx", "m.onnx", 4, 1, "NCHW", "-1-1", 2, 1, positive=1, logits=True)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    on_numpy = np.asarray(imported.model_input(pixels, adapter))
    assert on_numpy.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(on_numpy[:, 0], pixels.mean(axis=-1) / 127.5 - 1, atol=1e-5)
    layer = imported.ImportedInput(adapter.to_dict())
    np.testing.assert_allclose(np.asarray(layer(pixels)), on_numpy, atol=1e-6)
    logits = np.array([[0.0, 2.0], [1.0, -1.0]], np.float32)
    np.testing.assert_allclose(np.asarray(imported.model_output(logits, adapter))[:, 0],
                               np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1), atol=1e-6)


# --------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------


def _page(name: str, data_dir: Path, artifacts_dir: Path):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO

    at = AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state["data_dir"] = str(data_dir)
    at.session_state["artifacts_dir"] = str(artifacts_dir)
    return at.run()


def _said(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_the_import_form_checks_uploads_and_the_run_reaches_compare_and_predict(data_dir, runs_dir, tmp_path):
    import shutil

    from tests.helpers import wait_for

    folder = tmp_path / "artifacts"
    shutil.copytree(runs_dir / "cnn-small", folder / "cnn-small", ignore=shutil.ignore_patterns("search.lock"))
    at = _page("tune", data_dir, folder)
    at.button(key="import_start").click().run()
    assert "Not imported: give the run a name" in _said(at.error)
    at.text_input(key="import_name").input("outside").run()
    at.button(key="import_start").click().run()
    assert "choose the pixel scaling" in _said(at.error)
    at.selectbox(key="import_scaling").set_value("torch")
    at.file_uploader(key="import_upload").set_value(("cxr.onnx", b"not a model", "application/octet-stream"))
    at.button(key="import_start").click().run()
    assert "Not imported: cannot import cxr.onnx" in _said(at.error) and "not an ONNX model" in _said(at.error)
    assert sorted(p.name for p in folder.iterdir()) == ["cnn-small"]  # nothing saved half-done

    model = nchw_logits_onnx(tmp_path / "at32.onnx", 32)
    at.file_uploader(key="import_upload").set_value(("at32.onnx", model.read_bytes(), "application/octet-stream"))
    at.checkbox(key="import_logits").check()
    at.number_input(key="import_cap").set_value(12)
    at.button(key="import_start").click().run()
    assert not at.exception and not at.error, _said(at.error)
    assert "Importing **outside** in the background" in _said(at.success)
    wait_for(lambda: artifacts.load_run(folder, "outside").state in ("completed", "failed"), timeout=180, what="the import")
    run = artifacts.load_run(folder, "outside")
    assert run.state == "completed", run.log_tail()
    assert run.settings["imported"]["source"] == "at32.onnx"  # the upload's own name, not the temporary copy's path

    at.run()
    at.selectbox(key="tune_detail").set_value("outside").run()
    assert not at.exception
    assert "Imported model" in _said(at.markdown) and "at32.onnx" in _said(at.markdown)
    table = next(d.value for d in at.dataframe if "family" in d.value.columns)  # the runs' "what each is" table
    assert dict(zip(table["run"], table["family"], strict=True))["outside"] == "imported"

    compare = _page("compare", data_dir, folder)
    compare.multiselect(key="compare_runs").set_value(["cnn-small", "outside"]).run()
    assert not compare.exception
    assert {compare.selectbox(key="paired_a").value, compare.selectbox(key="paired_b").value} == {"cnn-small", "outside"}
    assert "DeLong p (by patient)" in [m.label for m in compare.metric]

    predict = _page("predict", data_dir, folder)
    predict.multiselect(key="predict_runs").set_value(["outside"])
    image = next((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))
    predict.file_uploader(key="predict_upload").set_value([("chest.jpeg", image.read_bytes(), "image/jpeg")])
    predict.run()
    assert not predict.exception
    assert predict.dataframe[0].value["run"].tolist() == ["outside"]


def test_an_imported_file_is_not_quantised_here(imported_runs):
    from core.inference import quantization

    with pytest.raises(RunError, match="imported onnx file: only Keras models are quantised here"):
        quantization.quantize_run(artifacts.load_run(imported_runs, "onnx"))


def test_a_model_with_an_exact_gelu_converts_to_an_onnx_file_that_runs():
    """Keras's exact GELU (the transformers' MLPs) is TensorFlow's Erfc, which ONNX lacks; the
    converted file must load in ONNX Runtime and give the Keras model's outputs."""
    import onnx
    import onnxruntime

    keras.utils.set_random_seed(0)
    pixels = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 64, offset=-2.0)(pixels))
    x = keras.layers.Dense(8, activation=keras.activations.gelu)(x)  # approximate=False: the exact GELU
    model = keras.Model(pixels, keras.layers.Dense(1, activation="sigmoid")(x))
    converted = model_files.convert_to_onnx(model)
    assert "Erfc" not in {node.op_type for node in onnx.load_from_string(converted).graph.node}
    session = onnxruntime.InferenceSession(converted, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: batch})[0]
    np.testing.assert_allclose(outputs, model.predict(batch, verbose=0), atol=1e-5)
    assert float(np.ptp(outputs)) > 1e-3  # the images get different probabilities: a real comparison
