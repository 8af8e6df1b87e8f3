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


def _test_xrays(data_dir, n: int) -> list[np.ndarray]:
    paths = sorted(str(p) for p in (data_dir / "test" / "NORMAL").glob("*.jpeg"))[:n]
    return [np.asarray(Image.open(p).convert("L").resize((224, 224)), np.uint8) for p in paths]


def test_noise_and_heavy_jpeg_are_flagged_and_named(reference, data_dir, tmp_path):
    """The two acquisition changes that raise healthy X-rays' probabilities unseen by the other
    statistics (docs/measurements.md, "Acquisition shifts"): sensor noise and heavy JPEG compression,
    each flagged with its own statistic named; the same X-rays unchanged pass."""
    from core.data import acquisition

    xrays = np.stack(_test_xrays(data_dir, 6))[..., None]
    kinds = {"as-is": xrays, "noise": acquisition.noise(xrays, 10, seed=1), "jpeg": acquisition.jpeg(xrays, 15)}
    flags = {}
    for kind, pixels in kinds.items():
        paths = []
        for i, image in enumerate(pixels):
            paths.append(str(tmp_path / f"{kind}-{i}.png"))  # PNG: only the pixels carry the change
            Image.fromarray(image[..., 0]).save(paths[-1])
        flags[kind] = ood.flag_files(reference, paths)
    assert not flags["as-is"]["unusual"].astype(bool).any()
    assert flags["noise"]["unusual"].astype(bool).all()
    assert all(reason.startswith(ood.LABELS["noise"]) for reason in flags["noise"]["unusual_reason"])
    assert flags["jpeg"]["unusual"].astype(bool).all()
    assert all(reason.startswith(ood.LABELS["blockiness"]) for reason in flags["jpeg"]["unusual_reason"])


def test_blockiness_reads_the_8_pixel_grid_and_noise_the_laplacian():
    y, x = np.mgrid[:64, :64]
    smooth = (100 + 50 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.float32)
    assert ood.blockiness(smooth) == pytest.approx(1.0, abs=0.05)
    blocks = smooth.copy()
    steps = np.repeat(np.arange(8) * 6.0, 8)  # a step after every 8th pixel, flat inside
    blocks += steps[None, :] + steps[:, None]
    assert ood.blockiness(blocks) > 2.0
    shifted = blocks[3:, 3:]  # the same steps, 3 pixels off the grid: not JPEG's blocks
    assert ood.blockiness(shifted) < 1.3
    noisy = smooth + np.random.default_rng(0).normal(0, 10, smooth.shape)
    assert ood.laplacian_noise(smooth) < 1.0 < 20.0 < ood.laplacian_noise(noisy)


def test_cleaner_than_the_training_xrays_is_not_unusual(reference):
    """Noise and blockiness count one way: an image smoother, or never compressed, passes on them."""
    stats = np.asarray(reference["centre"], dtype=np.float64).copy()
    for name in ood.ONE_SIDED:
        low = stats.copy()
        low[ood.NAMES.index(name)] = 0.0 if name == "noise" else 0.5
        assert ood.scores(reference, low)[0][0] < reference["cutoff"]
        high = stats.copy()
        high[ood.NAMES.index(name)] = reference["train_high"][ood.NAMES.index(name)] + 5 * reference["above"][ood.NAMES.index(name)]
        distance, index = ood.scores(reference, high)
        assert distance[0] > reference["cutoff"] and ood.NAMES[index[0]] == name
