"""core.stress: validation images changed as sites differ, and what that does to a run's decisions."""

import numpy as np
import pytest

from core import stress


def _square(size: int = 40, side: int = 10) -> np.ndarray:
    image = np.full((1, size, size, 1), 40, np.uint8)
    start = (size - side) // 2
    image[0, start : start + side, start : start + side] = 220
    return image


def test_perturbations_change_framing_sharpness_and_contrast_only():
    image = _square()
    tighter = stress.zoom_in(image, 0.30)
    assert tighter.shape == image.shape
    assert (tighter > 128).sum() > 1.7 * (image > 128).sum()  # the square is enlarged about 1/0.7 on each side
    flat, steep = stress.contrast(image, 0.7), stress.contrast(image, 1.3)
    assert abs(flat.astype(float).mean() - image.mean()) < 1 and abs(steep.astype(float).mean() - image.mean()) < 1
    assert np.ptp(flat) < np.ptp(image) < np.ptp(steep.astype(int)) + 1
    for name, change in stress.PERTURBATIONS.items():
        changed = change(image)
        assert changed.shape == image.shape and changed.dtype == np.uint8, name
        assert not np.array_equal(changed, image), f"{name} changes the image"


def test_a_model_that_reads_framing_fails_the_framing_condition():
    rng = np.random.default_rng(0)
    sides = np.r_[rng.integers(6, 9, 30), rng.integers(11, 14, 30)]  # normal: small square; pneumonia: big
    pixels = np.concatenate([_square(side=int(s)) for s in sides])
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)

    def score(images):  # "pneumonia" = much bright area, i.e. a tightly framed chest
        return np.clip(((images > 128).sum(axis=(1, 2, 3)) - 64) / 57, 0, 1)

    rows = stress.stress_test(score, pixels, y, threshold=0.5)
    by_name = {row["condition"]: row for row in rows}
    assert [row["condition"] for row in rows] == ["as is", *stress.PERTURBATIONS]
    assert by_name["as is"]["specificity"] == 1.0 and by_name["as is"]["sensitivity"] == 1.0
    assert by_name["as is"]["specificity_change"] == 0.0
    assert by_name["framed 30 % tighter"]["specificity"] < 0.5  # normals now look "big"
    assert by_name["framed 30 % tighter"]["specificity_change"] == pytest.approx(by_name["framed 30 % tighter"]["specificity"] - 1.0)
    assert stress.worst(rows)["condition"] == "framed 30 % tighter"
    assert stress.worst(rows[:1]) is None
