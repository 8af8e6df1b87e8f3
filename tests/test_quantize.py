"""int8 inference: full-integer quantisation of a run's model (core.models.quantize, an ONNX model), its agreement with
fp32 and the verdict (core.inference.quantization), the int8 engine (core.models.engine), and `--engine
int8` refused with what to do when a run (or an ensemble's member) has no int8 model. Small real runs
(tiny untrained models, `tests.helpers.model_run`)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import cli, files
from core.inference import ensemble, quantization, run_kinds
from core.runs import artifacts
from core.runs.artifacts import Run, RunError
from tests.helpers import make_dataset, model_run

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")

# The stated tolerance: on tiny data, an int8 model's probabilities stay within this of fp32's.
AGREEMENT = 0.02
ANY_CHANGE = 1.0  # a tolerance no AUC change or share of images exceeds: the run keeps int8 whatever it measures


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two runs of one split ("plain" quantised and kept, "wide" never quantised) and their ensemble."""
    root = tmp_path_factory.mktemp("int8")
    data = make_dataset(root / "data", {"train": 6, "test": 3}, images_per_patient=2)
    folder = root / "artifacts"
    model_run(folder, "plain", data, size=32, seed=0)
    model_run(folder, "wide", data, size=40, seed=1)
    ensemble.build_ensemble(folder, ["plain", "wide"], "duo")
    quantization.quantize_run(artifacts.load_run(folder, "plain"), n_images=8, tolerance=ANY_CHANGE, max_changed=ANY_CHANGE)
    return folder


def _load(store: Path, name: str) -> Run:
    return artifacts.load_run(store, name)


def _test_paths(store: Path) -> list[str]:
    return list(_load(store, "plain").predictions()["path"])


def _cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(args))
    return code, err.getvalue()


def test_int8_probabilities_agree_with_fp32_on_tiny_data(store):
    run = _load(store, "plain")
    paths = _test_paths(store)
    fp32 = run_kinds.predict_files(run, paths, engine="tflite")
    int8 = run_kinds.predict_files(run, paths, engine="int8")
    difference = np.abs(int8["probability"].to_numpy() - fp32["probability"].to_numpy())
    assert float(np.ptp(fp32["probability"])) > 4 * AGREEMENT  # the probabilities differ by more than the tolerance
    assert difference.max() <= AGREEMENT, f"int8 vs fp32: max |Δp| {difference.max():.4f}"
    assert difference.max() > 0  # it is another model, not the fp32 one under another name
    record = run.read(artifacts.INT8_RECORD)
    assert record["test"]["max_abs_change"] == pytest.approx(difference.max(), abs=2e-6)
    assert record["test"]["images"] == len(paths) and record["val"]["images"] == len(run.val_predictions())
    assert record["calibration"] == {"rule": quantization.CALIBRATION_RULE, "images": 8, "seed": 0}
    assert record["verdict"] == quantization.KEEP_INT8 and quantization.int8_problem(run) == ""


def test_the_int8_file_is_full_integer_with_float_input_and_output(store):
    import onnx

    graph = onnx.load(_load(store, "plain").folder / artifacts.INT8_MODEL).graph
    inputs = {i.name for i in graph.initializer}
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in graph.output] == [float32]
    # Every convolution and matrix product reads dequantised int8 weights and uint8 activations (QDQ):
    # no float weight is left for ONNX Runtime to run in float.
    made_by = {output: node for node in graph.node for output in node.output}
    weighted = [n for n in graph.node if n.op_type in {"Conv", "MatMul", "Gemm"}]
    assert len(weighted) >= 2  # the tiny model: a convolution and a dense layer
    for node in weighted:
        for tensor in node.input[:2]:
            assert tensor not in inputs and made_by[tensor].op_type == "DequantizeLinear", (node.name, tensor)
    zero_points = {i.name: i.data_type for i in graph.initializer if i.name.endswith("zero_point")}
    assert onnx.TensorProto.INT8 in zero_points.values() and onnx.TensorProto.UINT8 in zero_points.values()


def test_engine_int8_is_refused_with_what_to_do_when_there_is_no_int8_model(store):
    image = _test_paths(store)[0]
    code, err = _cli("predict", "--run", "wide", "--artifacts", str(store), "--engine", "int8", image)
    assert code == cli.EXIT_USAGE
    assert "run 'wide' has no int8 model: run `python -m core quantize wide` first" in err
    data = _load(store, "wide").settings["data_dir"]
    code, err = _cli("evaluate", "--run", "wide", "--artifacts", str(store), "--data", data, "--engine", "int8")
    assert code == cli.EXIT_USAGE and "python -m core quantize wide" in err
    code, _ = _cli("predict", "--run", "plain", "--artifacts", str(store), "--engine", "int8", image)
    assert code == 0


def test_an_ensemble_predicts_int8_only_when_each_member_can_and_names_the_one_that_cannot(store):
    duo = _load(store, "duo")
    problem = run_kinds.engine_problem(duo, "int8")
    assert "run 'wide' has no int8 model" in problem and "'plain'" not in problem
    with pytest.raises(RunError, match="python -m core quantize wide"):
        run_kinds.predict_files(duo, _test_paths(store)[:2], engine="int8")
    assert run_kinds.engine_problem(duo, "auto") == ""
    with pytest.raises(RunError, match="quantise its members"):
        quantization.quantize_run(duo)


def test_a_run_whose_auc_moves_too_much_keeps_fp32_and_says_why(tmp_path):
    data = make_dataset(tmp_path / "data", {"train": 4, "test": 2})
    model_run(tmp_path / "artifacts", "lossy", data, size=32)
    run = _load(tmp_path / "artifacts", "lossy")
    quantization.quantize_run(run, n_images=4, tolerance=ANY_CHANGE, max_changed=ANY_CHANGE)
    assert (run.folder / artifacts.INT8_MODEL).exists()
    # A negative tolerance: any change, even none, is too much. The int8 model made before goes.
    record = quantization.quantize_run(run, n_images=4, tolerance=-1.0)
    assert record["verdict"] == quantization.KEEP_FP32 and "does not quantise well enough" in record["reason"]
    assert not (run.folder / artifacts.INT8_MODEL).exists()
    assert not any(p.name.startswith(artifacts.INT8_MODEL) for p in run.folder.iterdir())  # its sidecar too
    assert files.read_json(run.folder / artifacts.INT8_RECORD)["verdict"] == quantization.KEEP_FP32
    problem = quantization.int8_problem(run)
    assert "keeps fp32" in problem and "does not quantise well enough" in problem
    code, err = _cli("predict", "--run", "lossy", "--artifacts", str(tmp_path / "artifacts"), "--engine", "int8",
                     str(run.predictions()["path"].iloc[0]))
    assert code == cli.EXIT_USAGE and "keeps fp32" in err


def test_a_model_that_cannot_be_quantised_keeps_fp32(tmp_path, monkeypatch):
    from core.models import quantize

    data = make_dataset(tmp_path / "data", {"train": 4, "test": 2})
    model_run(tmp_path / "artifacts", "odd", data, size=32)
    run = _load(tmp_path / "artifacts", "odd")

    def no_int8_kernel(model, calibration):
        raise RuntimeError("op FOO has no int8 kernel")

    monkeypatch.setattr(quantize, "quantize", no_int8_kernel)
    record = quantization.quantize_run(run, n_images=4)
    assert record["verdict"] == quantization.KEEP_FP32
    assert record["reason"] == "quantisation failed: RuntimeError: op FOO has no int8 kernel"
    assert not (run.folder / artifacts.INT8_MODEL).exists()
    assert "quantisation failed" in quantization.int8_problem(run)


def test_agreement_counts_the_images_that_change_side():
    y = np.array([0, 0, 1, 1])
    fp32 = np.array([0.1, 0.45, 0.55, 0.9])
    int8 = np.array([0.1, 0.52, 0.49, 0.9])  # the middle two cross the threshold, the others stay
    a = quantization.agreement(y, fp32, int8, threshold=0.5)
    assert a["changed_side"] == 2 and a["images"] == 4
    assert a["max_abs_change"] == pytest.approx(0.07) and a["mean_abs_change"] == pytest.approx(0.0325)
    assert a["auc_fp32"] == 1.0 and a["auc_int8"] == 0.75 and a["auc_change"] == -0.25
    assert quantization.agreement(y, fp32, fp32, 0.5)["changed_side"] == 0


def test_the_verdict_is_the_validation_auc_change_against_the_tolerance():
    def val(change):
        return {"auc_fp32": 0.99, "auc_change": change, "changed_side": 0, "images": 100}

    assert quantization.verdict(val(-0.003))[0] == quantization.KEEP_INT8
    assert quantization.verdict(val(0.003))[0] == quantization.KEEP_INT8
    assert quantization.verdict(val(-0.0031))[0] == quantization.KEEP_FP32
    assert quantization.verdict(val(0.0031))[0] == quantization.KEEP_FP32  # a gain that large is another model too


def test_the_verdict_keeps_fp32_when_too_many_validation_images_change_side():
    def val(changed):
        return {"auc_fp32": 0.99, "auc_change": 0.0, "changed_side": changed, "images": 200}

    assert quantization.verdict(val(10))[0] == quantization.KEEP_INT8  # 5 %: at the line
    kept, why = quantization.verdict(val(11))
    assert kept == quantization.KEEP_FP32 and "11 of 200 validation images (5.5%) changed side" in why
    assert quantization.verdict(val(11), max_changed=0.06)[0] == quantization.KEEP_INT8


def test_calibration_images_are_a_seeded_sample_of_training_images_only():
    splits = pd.DataFrame({"path": [f"img{i}" for i in range(30)], "split": ["train", "val", "test"] * 10})
    first = quantization.calibration_paths(splits, 5, seed=1)
    assert first == quantization.calibration_paths(splits, 5, seed=1)  # the same draw every time
    assert first != quantization.calibration_paths(splits, 5, seed=2)
    assert len(first) == 5 and set(first) <= set(splits.loc[splits["split"] == "train", "path"])
    assert len(quantization.calibration_paths(splits, 500, seed=1)) == 10  # at most every training image
    with pytest.raises(RunError, match="no training images"):
        quantization.calibration_paths(splits[splits["split"] != "train"], 5, seed=1)


def test_the_int8_engine_refuses_a_missing_or_stale_model(store):
    import keras

    from core.inference import evaluation
    from core.models import engine

    run = _load(store, "plain")
    model = evaluation.load_model(run.model_path)
    assert engine.make_engine(model, "int8", cache_path=run.folder / artifacts.INT8_MODEL).name == "int8"
    with pytest.raises(ValueError, match="no int8 model of these weights"):
        engine.make_engine(model, "int8", cache_path=run.folder / "nothing.tflite")
    with pytest.raises(ValueError, match="no int8 model of these weights"):  # other weights: the file is stale
        engine.make_engine(keras.models.clone_model(model), "int8", cache_path=run.folder / artifacts.INT8_MODEL)
    with pytest.raises(ValueError, match="no int8 model of these weights"):  # an fp32 file is not an int8 one
        engine.make_engine(model, "int8", cache_path=run.folder / artifacts.TFLITE_MODEL)


def test_the_model_card_zip_carries_a_kept_int8_model_and_its_agreement(store):
    import zipfile

    from core.reporting import export

    with zipfile.ZipFile(io.BytesIO(export.export_bytes(store, "plain"))) as archive:
        names = set(archive.namelist())
        assert {"plain/model.tflite", "plain/model.int8.onnx", "plain/int8.json"} <= names
        assert archive.read("plain/model.int8.onnx") == (_load(store, "plain").folder / artifacts.INT8_MODEL).read_bytes()
        record = json.loads(archive.read("plain/int8.json"))
        card = archive.read("plain/MODEL_CARD.md").decode()
    assert "## int8 model" in card and "| test | 12 |" in card
    assert f"{record['test']['auc_fp32']:.4f} | {record['test']['auc_int8']:.4f}" in card
    with zipfile.ZipFile(io.BytesIO(export.export_bytes(store, "wide"))) as archive:
        assert not any("int8" in n for n in archive.namelist())
        assert "`python -m core quantize wide` makes one" in archive.read("wide/MODEL_CARD.md").decode()


def test_a_run_quantised_before_int8_models_were_onnx_is_told_to_quantise_again(store, tmp_path):
    import shutil

    from core.reporting import export

    shutil.copytree(store / "plain", tmp_path / "older")  # its record says int8, its model was a model.int8.tflite
    run = _load(tmp_path, "older")
    assert run.read(artifacts.INT8_RECORD)["verdict"] == quantization.KEEP_INT8
    (run.folder / artifacts.INT8_MODEL).unlink()
    (run.folder / "model.int8.tflite").write_bytes(b"TFL3")
    assert quantization.int8_problem(run) == "run 'older' has no int8 model: run `python -m core quantize older` first"
    section = export.int8_section(run)
    assert "`python -m core quantize older` makes one" in section and "keeps fp32" not in section
