"""Hostile inputs: what people really point the tool at. Each gets a reason; nothing else breaks."""

import os
import struct
import zlib

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import files
from core.data import folders, loading
from core.inference import evaluation
from core.runs import artifacts
from tests.helpers import make_dataset, run_cli, xray


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb that costs nothing to write."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A download with every kind of trouble in it, beside enough good images to train on."""
    root = make_dataset(tmp_path_factory.mktemp("messy") / "chest_xray", {"train": 14, "test": 13}, size=40)
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    rng = np.random.default_rng(1)
    (normal / "IM-9001-0001.jpeg").write_bytes(b"")
    good = (normal / "IM-0001-0001.jpeg").read_bytes()
    (normal / "IM-9002-0001.jpeg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (normal / "IM-9003-0001.jpeg").write_text("this is a text file, not an X-ray")
    (normal / "IM-9004-0001.png").write_bytes(_png_declaring(30000, 30000))
    Image.new("L", (1, 1), 80).save(normal / "IM-9005-0001.png")
    xray(rng, True, 40).convert("RGBA").save(pneumonia / "person9001_bacteria_1.png")  # alpha channel
    deep = (np.asarray(xray(rng, True, 40), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(pneumonia / "person9002_virus_1.png")  # 16-bit grayscale
    xray(rng, True, 40).convert("CMYK").save(pneumonia / "person9003_bacteria_1.jpeg")
    rotated = xray(rng, False, 40)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(normal / "IM-9006-0001.jpeg", exif=exif)
    odd_name = os.fsencode(str(normal)) + b"/IM-9007-0001-\xff\xfe.jpeg"  # not valid UTF-8
    with open(odd_name, "wb") as handle:
        handle.write(good)
    os.symlink(root / "train", normal / "loop")  # a folder symlink back up the tree
    os.symlink(normal / "IM-9998-0001.jpeg", normal / "IM-9999-0001.jpeg")  # a file symlink loop
    os.symlink(normal / "IM-9999-0001.jpeg", normal / "IM-9998-0001.jpeg")
    (root / "val" / "NORMAL").mkdir(parents=True)  # val/ with an empty class folder and no PNEUMONIA/
    (root / "extras").mkdir()
    return root


def test_every_bad_file_is_listed_with_its_reason(messy):
    dataset = folders.scan_folder(messy)
    reasons = {os.path.basename(u.path): u.reason for u in dataset.unreadable}
    assert "empty" in reasons["IM-9001-0001.jpeg"]
    assert "not an image" in reasons["IM-9003-0001.jpeg"]
    assert "too large" in reasons["IM-9004-0001.png"]
    assert "1x1" in reasons["IM-9005-0001.png"]
    assert "IM-9999-0001.jpeg" in reasons and "IM-9998-0001.jpeg" in reasons  # the symlink loop
    used = set(map(os.path.basename, dataset.table["path"]))
    for fine in ("person9001_bacteria_1.png", "person9002_virus_1.png", "person9003_bacteria_1.jpeg", "IM-9006-0001.jpeg"):
        assert fine in used, fine
    odd = [reason for name, reason in reasons.items() if name.startswith("IM-9007-0001-")]
    assert odd == ["file name is not valid UTF-8: rename the file"]
    assert not any("loop" in path for path in dataset.table["path"]), "the folder symlink is not followed"
    notes = " ".join(dataset.notes)
    assert "val/PNEUMONIA/ is missing" in notes and "EXTRAS" in notes


def test_truncated_images_are_dropped_at_decode_with_a_reason(messy):
    dataset = folders.scan_folder(messy)
    truncated = [p for p in dataset.table["path"] if p.endswith("IM-9002-0001.jpeg")]
    assert truncated, "a truncated JPEG has a valid header, so it passes the scan"
    pixels, errors = loading.load_images(truncated + list(dataset.table["path"][:2]), 32)
    assert [e.path for e in errors] == truncated and "truncated" in errors[0].reason
    assert pixels[1:].any()


def test_a_search_on_the_messy_folder_uses_the_good_images(messy, tmp_path):
    result = run_cli("tune", "--data", str(messy), "--family", "custom_cnn", "--trials", "1", "--epochs", "1",
                     "--image-size", "32", "--name", "messy", "--artifacts", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run = artifacts.load_run(tmp_path, "messy")
    skipped = {os.path.basename(u["path"]) for u in run.read("data_summary.json")["unreadable"]}
    assert {"IM-9001-0001.jpeg", "IM-9002-0001.jpeg", "IM-9003-0001.jpeg", "IM-9004-0001.png"} <= skipped
    splits = files.read_csv(run.folder / "splits.csv")
    assert splits["path"].str.endswith("person9002_virus_1.png").any()  # the 16-bit PNG trained
    predictions = run.predictions()
    assert not predictions["path"].str.endswith("IM-9002-0001.jpeg").any()


def test_a_folder_without_usable_images_is_refused_before_training(tmp_path):
    for class_name in ("NORMAL", "PNEUMONIA"):
        folder = tmp_path / "bad" / "train" / class_name
        folder.mkdir(parents=True)
        (folder / "IM-0001-0001.jpeg").write_text("nope")
    result = run_cli("tune", "--data", str(tmp_path / "bad"), "--family", "custom_cnn", "--artifacts", str(tmp_path / "a"))
    assert result.returncode == 2 and "no usable NORMAL or PNEUMONIA images" in result.stderr
    assert "2 files were unreadable" in result.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_predict_scores_good_files_and_explains_bad_ones(messy, tmp_path):
    result = run_cli("tune", "--data", str(messy), "--family", "custom_cnn", "--trials", "1", "--epochs", "1",
                     "--image-size", "32", "--max-per-class", "10", "--name", "p", "--artifacts", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run = artifacts.load_run(tmp_path, "p")
    normal = messy / "train" / "NORMAL"
    files = ["IM-9001-0001.jpeg", "IM-9002-0001.jpeg", "IM-9003-0001.jpeg", "IM-9004-0001.png", "IM-0001-0001.jpeg", "IM-9006-0001.jpeg"]
    table = evaluation.predict_files(run, [str(normal / f) for f in files])
    errors = dict(zip(files, table["error"], strict=True))
    assert all(errors[f] for f in files[:4]), errors
    assert not errors["IM-0001-0001.jpeg"] and not errors["IM-9006-0001.jpeg"]
    assert table["probability"].notna().sum() == 2


def test_foreign_code_in_a_model_file_is_refused(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)  # arbitrary Python code in the file
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(artifacts.RunError, match="cannot load model"):
        evaluation.load_model(path)
    (tmp_path / "garbage.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(artifacts.RunError, match="cannot load model"):
        evaluation.load_model(tmp_path / "garbage.keras")


@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", ".hidden", "x" * 81, "semi;colon", "spa ce", ""])
def test_run_names_cannot_escape_the_artifacts_folder(name, tmp_path):
    with pytest.raises(artifacts.RunError, match="invalid run name"):
        artifacts.run_dir(tmp_path, name)


def test_json_with_nan_stays_parseable(tmp_path):
    files.write_json(tmp_path / "m.json", {"auc": float("nan"), "n": np.int64(3)})
    assert files.read_json(tmp_path / "m.json") == {"auc": None, "n": 3}
    files.write_csv(tmp_path / "t.csv", pd.DataFrame({"path": ["a.jpeg"], "patient": ["007"]}))
    assert files.read_csv(tmp_path / "t.csv").iloc[0].tolist() == ["a.jpeg", "007"]


def test_json_safe_turns_numpy_and_non_finite_values_into_strict_json():
    value = {1: np.array([1.5, np.nan]), "b": np.bool_(True), "f": np.float32(np.inf), "t": (np.int16(2), -np.inf)}
    assert files.json_safe(value) == {"1": [1.5, None], "b": True, "f": None, "t": [2, None]}
    assert type(files.json_safe(np.int64(3))) is int


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    files.write_json(path, {"v": 1})

    def half_then_crash(tmp):
        tmp.write_text('{"v": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, half_then_crash)
    assert files.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_every_written_file_follows_the_umask_not_mkstemps_0600(tmp_path):
    expected = 0o666 & ~files._UMASK  # the umask this process started with
    if expected == 0o600:
        pytest.skip("this umask gives 0600 anyway: the chmod cannot be told apart")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    files.save_model(tmp_path / "model.keras", model)
    files.write_bytes(tmp_path / "m.tflite", b"flatbuffer")
    files.write_json(tmp_path / "m.json", {})
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["model.keras", "m.tflite", "m.json"], expected)
