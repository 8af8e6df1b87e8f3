"""Images unlike the training X-rays (core.inference.ood): real test X-rays pass, blank, noise and photos are flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from core.data import folders, splitting
from core.inference import ood
from tools import ood_negatives


@pytest.fixture(scope="module")
def reference(data_dir) -> dict:
    """A reference made as a run makes it: from the training and validation images of a patient split."""
    dataset = folders.scan_folder(data_dir, check_images=False)
    table, _ = splitting.assign_splits(dataset.table, seed=42)
    return ood.build_reference(list(table.loc[table["split"] == "train", "path"]), list(table.loc[table["split"] == "val", "path"]))


def bad_images(folder):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:256, :256]
    images = {
        "black.jpeg": Image.new("L", (300, 300), 0),
        "blank-16-bit.png": Image.fromarray(np.zeros((200, 200), np.uint16)),
        "white.jpeg": Image.new("L", (300, 300), 255),
        "noise.png": Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)),
        "colour-noise.png": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "colour-gradient.jpeg": Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8)),
        "gray-gradient.jpeg": Image.fromarray(np.stack([x, x, x], -1).astype(np.uint8)),
    }
    text = Image.new("L", (400, 300), 255)
    draw = ImageDraw.Draw(text)
    for i in range(12):
        draw.text((10, 10 + 22 * i), "Lorem ipsum dolor sit amet, consectetur adipiscing elit", fill=0)
    images["text-on-white.png"] = text
    paths = []
    for name, image in images.items():
        image.save(folder / name)
        paths.append(str(folder / name))
    return paths


def test_real_test_xrays_are_almost_never_flagged(reference, data_dir):
    paths = sorted(str(p) for p in (data_dir / "test").glob("*/*") if p.suffix.lower() in folders.IMAGE_EXTENSIONS)
    flags = ood.flag_files(reference, paths)
    rate = float(flags["unusual"].astype(bool).mean())
    print(f"\nflagged {int(flags['unusual'].astype(bool).sum())} of {len(paths)} real test X-rays ({rate:.1%}); cut-off {reference['cutoff']:.2f}")
    assert len(paths) >= 300 and rate <= 0.02


def test_blank_noise_and_non_xray_images_are_flagged(reference, tmp_path):
    paths = bad_images(tmp_path / "bad")
    flags = ood.flag_files(reference, paths)
    assert flags["unusual"].astype(bool).all(), flags.assign(path=paths).to_string()
    # the statistic that is off, once, in words and units, beside the training X-rays' range
    labels = tuple(f"{label}: " for label in ood.LABELS.values())
    assert all(reason.startswith(labels) for reason in flags["unusual_reason"]), list(flags["unusual_reason"])
    assert all("where 98 % of the training X-rays lie between" in reason for reason in flags["unusual_reason"])
    assert not any("not like the training X-rays" in reason for reason in flags["unusual_reason"])


def test_a_flagged_image_is_not_assessed():
    labels = pd.Series(["PNEUMONIA", "NORMAL", "PNEUMONIA"])
    assessed = ood.assessed_labels(labels, pd.Series([True, False, pd.NA], dtype=object))
    assert list(assessed) == [ood.NOT_ASSESSED, "NORMAL", "PNEUMONIA"]  # NA (no reference): the model's call stands
    assert ood.NOT_ASSESSED == "not assessed: unlike the training X-rays"
    reference = {"train_low": [0.0] * len(ood.NAMES), "train_high": [0.021] * len(ood.NAMES)}
    stats = np.zeros(len(ood.NAMES))
    stats[ood.NAMES.index("near_black")] = 0.97
    assert ood.reason(reference, stats, ood.NAMES.index("near_black")) == (
        "near-black pixels (below 10 of 255): 97 % of the image, where 98 % of the training X-rays lie between 0.0 and 2.1"
    )


def test_a_run_reference_is_computed_once_and_saved(runs_dir, tmp_path):
    from core import files
    from core.runs import artifacts

    run = artifacts.load_run(runs_dir, "cnn-small")
    (run.folder / ood.REFERENCE).unlink(missing_ok=True)
    reference = ood.reference_for(run)
    assert reference is not None and (run.folder / ood.REFERENCE).exists()
    assert ood.reference_for(run) == files.read_json(run.folder / ood.REFERENCE)
    unreadable = tmp_path / "broken.jpeg"
    unreadable.write_bytes(b"not an image")
    flags = ood.flag_files(reference, [str(unreadable)])
    assert flags["unusual"].isna().all()
    assert ood.flag_files(None, [str(unreadable)])["unusual_reason"].iat[0].startswith("no reference")


def test_the_negative_set_is_greyscale_and_its_inverted_xrays_are_flagged(reference, data_dir, tmp_path):
    """The set `tools/ood_measure.py` measures both detectors on (docs/measurements.md): greyscale, so
    colour gives nothing away; the inverted X-rays, which the model's features miss, fail the statistics."""
    paths = ood_negatives.write_negatives(tmp_path, ood_negatives.xrays_to_invert(data_dir / "train"))
    assert len(paths) >= 60
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "L", path
    inverted = [p for p in paths if "inverted-" in p]
    assert len(inverted) == 10 and ood.flag_files(reference, inverted)["unusual"].astype(bool).all()
