"""core.data: file names, folder layouts, patient-grouped splits, summaries, pixels."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data import folders, loading, splitting, tasks
from tests.helpers import SHARED_DATA, make_dataset


@pytest.mark.parametrize(
    ("name", "class_name", "patient", "kind"),
    [
        ("person123_bacteria_456.jpeg", "PNEUMONIA", "person123_bacteria", "bacteria"),
        ("person123_virus_457.jpeg", "PNEUMONIA", "person123_virus", "virus"),  # another child
        ("person45_virus_98.jpeg", "PNEUMONIA", "person45_virus", "virus"),
        ("person447_virus_921_1.jpeg", "PNEUMONIA", "person447_virus", "virus"),
        ("Person12_Bacteria_3.JPEG", "PNEUMONIA", "person12_bacteria", "bacteria"),
        ("IM-0115-0001.jpeg", "NORMAL", "IM-0115", "normal"),
        ("IM-0429-0001-0002.jpeg", "NORMAL", "IM-0429", "normal"),
        ("NORMAL2-IM-0372-0001.jpeg", "NORMAL", "NORMAL2-IM-0372", "normal"),
        ("scan_7.png", "PNEUMONIA", "scan_7", "unknown"),
    ],
)
def test_file_names_give_patient_and_kind(name, class_name, patient, kind):
    assert folders.parse_file_name(name, class_name) == (patient, kind)


def test_public_layout_keeps_official_test_and_carves_validation(tmp_path):
    # The public download: a real test/ split and a tiny val/ (16 images there, 4 here).
    root = make_dataset(tmp_path / "chest_xray", {"train": 40, "val": 1, "test": 15})
    dataset = folders.scan_folder(tmp_path)  # the parent folder: the root is found one level down
    assert dataset.root == root
    table, notes = splitting.assign_splits(dataset.table, val_fraction=0.2, seed=1)
    splitting.check_patient_disjoint(table)
    test = table[table["split"] == "test"]
    assert (test["folder_split"] == "test").all() and len(test) == 60
    val = table[table["split"] == "val"]
    # The tiny val/ folder joins the pool and a real validation split is carved from it.
    assert (val["folder_split"] != "test").all() and set(val["class_name"]) == {"NORMAL", "PNEUMONIA"}
    assert 0.12 < len(val) / (table["split"] != "test").sum() < 0.3
    assert any("val/ has only" in note for note in notes)


def test_a_zip_unpacked_on_a_mac_is_found_and_its_litter_ignored(tmp_path):
    # chest_xray/chest_xray/{train,test}, __MACOSX/ beside it, AppleDouble "._" twins and .DS_Store.
    root = make_dataset(tmp_path / "download" / "chest_xray" / "chest_xray", {"train": 6, "test": 3})
    litter = tmp_path / "download" / "chest_xray" / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    litter.mkdir(parents=True)
    (litter / "._IM-0001-0001.jpeg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    for folder in (root, root / "train", root / "train" / "PNEUMONIA"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "PNEUMONIA" / "._person1_bacteria_10.jpeg").write_bytes(b"\x00\x05\x16\x07")
    dataset = folders.scan_folder(tmp_path / "download")
    assert dataset.root == root
    assert len(dataset.table) == (6 + 3) * 2 * 2 and dataset.unreadable == []
    assert not dataset.table["path"].str.contains("__MACOSX|/\\._", regex=True).any()


def test_missing_test_split_is_carved_by_patient_with_both_classes(tmp_path):
    make_dataset(tmp_path, {"train": 60}, images_per_patient=3)
    table, notes = splitting.assign_splits(folders.scan_folder(tmp_path).table, 0.15, 0.15, seed=3)
    splitting.check_patient_disjoint(table)
    splitting.require_splits(table)
    fractions = table["split"].value_counts(normalize=True)
    assert 0.08 < fractions["test"] < 0.25 and 0.08 < fractions["val"] < 0.25
    assert any("carved a patient-grouped test split" in n for n in notes)
    # The same seed gives the same split; another seed another one.
    again, _ = splitting.assign_splits(folders.scan_folder(tmp_path).table, 0.15, 0.15, seed=3)
    other, _ = splitting.assign_splits(folders.scan_folder(tmp_path).table, 0.15, 0.15, seed=4)
    assert table["split"].tolist() == again["split"].tolist()
    assert table["split"].tolist() != other["split"].tolist()


def test_patients_shared_with_official_test_are_dropped_from_training(tmp_path):
    make_dataset(tmp_path, {"train": 30, "test": 15})
    scanned = folders.scan_folder(tmp_path).table
    # Copy one test patient's name into train/ as a second image of the same child.
    leaked = scanned[scanned["folder_split"] == "test"].iloc[0]
    extra = pd.DataFrame([{**leaked.to_dict(), "path": leaked["path"] + ".copy", "folder_split": "train"}])
    table, notes = splitting.assign_splits(pd.concat([scanned, extra], ignore_index=True), seed=0)
    splitting.check_patient_disjoint(table)
    assert leaked["path"] + ".copy" not in set(table["path"])
    assert any("also appear in the official" in n for n in notes)


def test_cap_per_class_keeps_whole_patients(tmp_path):
    make_dataset(tmp_path, {"train": 30, "test": 10}, images_per_patient=3)
    table, _ = splitting.assign_splits(folders.scan_folder(tmp_path).table, seed=0)
    capped = splitting.cap_per_class(table, 7, seed=0)
    counts = capped.groupby(["split", "class_name"]).size()
    assert (counts <= 7).all() and (counts >= 3).all()
    for patient, group in capped.groupby("patient"):
        assert len(group) == (table["patient"] == patient).sum(), "a capped patient keeps all images"


def test_unreadable_files_are_listed_and_skipped(tmp_path):
    make_dataset(tmp_path, {"train": 6})
    folder = tmp_path / "train" / "NORMAL"
    (folder / "IM-9000-0001.jpeg").write_bytes(b"")
    (folder / "IM-9001-0001.jpeg").write_text("not an image at all")
    (folder / "notes.txt").write_text("hello")
    (tmp_path / "train" / "OTHER").mkdir()
    dataset = folders.scan_folder(tmp_path)
    reasons = {p.split("/")[-1]: r for p, r in ((u.path, u.reason) for u in dataset.unreadable)}
    assert "empty" in reasons["IM-9000-0001.jpeg"]
    assert "not an image" in reasons["IM-9001-0001.jpeg"]
    assert "notes.txt" in reasons
    assert len(dataset.table) == 24 and not dataset.table["path"].str.contains("IM-900").any()
    summary = splitting.summarize(dataset)
    assert len(summary["unreadable"]) == 3
    assert any("OTHER" in note for note in summary["notes"])


def test_wrong_folders_are_refused_with_a_reason(tmp_path):
    with pytest.raises(folders.DataError, match="does not exist"):
        folders.find_data_root(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(folders.DataError, match="expected train/"):
        folders.find_data_root(tmp_path / "empty")
    (tmp_path / "only" / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "only" / "train" / "PNEUMONIA").mkdir(parents=True)
    with pytest.raises(folders.DataError, match="no usable NORMAL or PNEUMONIA images"):
        folders.require_usable(folders.scan_folder(tmp_path / "only"))


def test_summary_of_the_real_shared_folder():
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the repository")
    dataset = folders.scan_folder(SHARED_DATA)
    summary = splitting.summarize(dataset)
    assert summary["images"]["train"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    if (SHARED_DATA / "test").is_dir():  # half of the official test split (data README)
        assert summary["images"]["test"] == {"NORMAL": 117, "PNEUMONIA": 195}
    assert summary["pneumonia_to_normal_ratio"] == pytest.approx(3875 / 1341, abs=1e-3)
    assert summary["class_weights"]["NORMAL"] > 1 > summary["class_weights"]["PNEUMONIA"]
    table, notes = splitting.assign_splits(dataset.table)
    splitting.check_patient_disjoint(table)
    assert table.groupby("split")["kind"].nunique().min() == 3  # bacteria, virus, normal everywhere


def test_real_file_names_key_patients_by_number_and_kind():
    """A person number is counted per kind: with (number, kind) as the patient the official test
    split is patient-disjoint from train/, and no training image is dropped for it."""
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip("../shared/data has no test/ folder")
    table = folders.scan_folder(SHARED_DATA, check_images=False).table
    pneumonia = table[table["class_name"] == "PNEUMONIA"]
    numbers = pneumonia["patient"].str.extract(r"^(person\d+)_", expand=False)
    assert numbers.notna().all()
    both_kinds = pneumonia.groupby(numbers)["kind"].nunique()
    assert (both_kinds == 2).sum() > 100, "many person numbers carry both kinds: they must be two patients"
    assert (pneumonia.groupby("patient")["kind"].nunique() == 1).all()
    by_folder = table.groupby("patient")["folder_split"].nunique()
    assert (by_folder == 1).all(), "no (number, kind) patient is in both train/ and test/"
    split, notes = splitting.assign_splits(table)
    assert len(split) == len(table) and not any("dropped" in note for note in notes)
    assert (split.loc[split["folder_split"] == "test", "split"] == "test").all()
    splitting.check_patient_disjoint(split)


def test_load_image_handles_real_world_formats(tmp_path):
    gray16 = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(gray16)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (40, 30), (200, 200, 200, 255)).save(rgba)
    cmyk = tmp_path / "cmyk.jpeg"
    Image.new("CMYK", (40, 40), (0, 0, 0, 100)).save(cmyk)
    for path in (gray16, rgba, cmyk):
        pixels = loading.load_image(path, 32)
        assert pixels.shape == (32, 32, 1) and pixels.dtype == np.uint8
    deep = loading.load_image(gray16, 32)
    assert deep.min() < 20 and deep.max() > 235, "16-bit images are rescaled to 0..255, not clipped"
    # EXIF orientation 6 (rotate 90°): a wide image is stored, a tall one is meant.
    wide = Image.new("L", (60, 20), 0)
    wide.paste(255, (0, 0, 10, 20))  # white bar on the left of the stored image
    exif = wide.getexif()
    exif[0x0112] = 6
    wide.save(tmp_path / "rotated.jpeg", exif=exif)
    rotated = loading.load_image(tmp_path / "rotated.jpeg", 60)[..., 0]
    assert rotated[:10].mean() > 200 and rotated[-10:].mean() < 50, "the bar ends up on top once rotated"


def test_pixels_are_decoded_once_per_size(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d", {"train": 3})
    paths = sorted(str(p) for p in (tmp_path / "d").rglob("*.jpeg"))
    first, errors = loading.load_images(paths, 24, tmp_path / "cache")
    assert first.shape == (12, 24, 24, 1) and not errors
    monkeypatch.setattr(loading, "load_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    again, _ = loading.load_images(paths, 24, tmp_path / "cache")
    np.testing.assert_array_equal(first, again)
    _, errors = loading.load_images(paths, 28, tmp_path / "cache")  # another size is another decode
    assert len(errors) == 12 and "decoded again" in errors[0].reason


def test_tf_dataset_gives_rgb_float_batches(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 1), dtype=np.uint8)
    batches = list(loading.make_tf_dataset(pixels, np.arange(10) % 2, batch_size=4).as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 16, 16, 3), (4, 16, 16, 3), (2, 16, 16, 3)]
    np.testing.assert_array_equal(batches[0][0][..., 2], pixels[:4, ..., 0].astype(np.float32))


def test_training_pipelines_run_without_the_autotuning_thread():
    """With tf.data's autotuning on, Keras's per-epoch iterators each waited up to 10 s on its thread."""
    from core.search import activations

    labels = np.arange(10) % 2
    pixels = loading.make_tf_dataset(np.zeros((10, 8, 8, 1), np.uint8), labels, batch_size=4, shuffle=True)
    views = activations.training_dataset(np.zeros((2, 10, 2, 2, 1), np.float16), np.zeros((10, 2, 2, 1), np.float16), labels, 4, 0)
    for dataset in (pixels, views, loading.make_tf_dataset(np.zeros((10, 3)), batch_size=4)):
        assert dataset.options().autotune.enabled is False
    again = loading.make_tf_dataset(np.zeros((10, 8, 8, 1), np.uint8), labels, batch_size=4, shuffle=True)
    assert [list(y) for _, y in pixels.as_numpy_iterator()] == [list(y) for _, y in again.as_numpy_iterator()]  # seeded order kept


def test_the_fast_jpeg_header_check_agrees_with_pillow(tmp_path):
    sizes = [(64, 48), (7, 30), (300, 9)]
    for width, height in sizes:
        path = tmp_path / f"im-{width}x{height}.jpeg"
        Image.new("L", (width, height), 128).save(path, quality=90, exif=Image.Exif())
        with Image.open(path) as image:
            assert folders._jpeg_size(path.read_bytes()) == image.size == (width, height)
    assert folders.check_image_file(tmp_path / "im-64x48.jpeg") is None
    assert folders.check_image_file(tmp_path / "im-7x30.jpeg") == "image is only 7x30 pixels"
    fake = tmp_path / "fake.jpeg"
    fake.write_bytes(b"\xff\xd8" + b"not a jpeg at all" * 10)  # JPEG magic, then garbage: Pillow judges it
    assert folders._jpeg_size(fake.read_bytes()) is None and folders.check_image_file(fake) is not None
    if SHARED_DATA.exists():
        for path in sorted((SHARED_DATA / "test" / "NORMAL").glob("*.jpeg"))[:30]:
            with Image.open(path) as image:
                assert folders._jpeg_size(path.read_bytes()) == image.size


def test_positive_per_negative_follows_the_tasks_binary_view(tmp_path):
    counts = {"train": {"normal": 10, "bacterial": 20, "viral": 15}, "test": {"normal": 5, "bacterial": 4, "viral": 1}}
    assert splitting.positive_per_negative(counts, tasks.TASKS["three_class"]) == pytest.approx(40 / 15)  # pneumonia per normal
    assert splitting.positive_per_negative(counts, tasks.TASKS["three_class"], ["train"]) == pytest.approx(35 / 10)
    assert splitting.positive_per_negative(counts, tasks.TASKS["bacterial_vs_viral"], ["test", "val"]) == pytest.approx(1 / 4)
    assert splitting.positive_per_negative({"train": {"normal": 0, "pneumonia": 3}}, tasks.PNEUMONIA) is None
    # summarize's own counts: the folder's images per class, as the task names them
    root = make_dataset(tmp_path, {"train": 6}, images_per_patient=2, size=16)
    next((root / "train" / "NORMAL").iterdir()).unlink()  # 11 normal, 12 pneumonia
    dataset = folders.scan_folder(root)
    summary = splitting.summarize(dataset)
    images = summary["images"]["train"]
    assert splitting.positive_per_negative(summary["task_images"], tasks.PNEUMONIA) == pytest.approx(12 / 11) == images["PNEUMONIA"] / images["NORMAL"]
