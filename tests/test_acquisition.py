"""core.data.acquisition: each change does to the pixels what its name says, and the stress test carries them all."""

import numpy as np

from core.data import acquisition
from core.evidence import stress


def _ramp(n: int = 1, size: int = 32) -> np.ndarray:
    row = np.linspace(0, 255, size).round().astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (n, size, size, 1)).copy()


def test_gamma_and_exposure_darken_or_lighten_both_ways():
    ramp = _ramp()
    darker, lighter = acquisition.gamma(ramp, 1.6), acquisition.gamma(ramp, 0.6)
    mid = ramp == 128
    assert (darker[mid] < 128).all() and (lighter[mid] > 128).all()  # the mid-tones move
    for changed in (darker, lighter):  # black and white stay
        assert (changed[ramp == 0] == 0).all() and (changed[ramp == 255] == 255).all()
    np.testing.assert_array_equal(acquisition.exposure(ramp, 0.7), np.rint(ramp * 0.7).astype(np.uint8))
    brighter = acquisition.exposure(ramp, 1.2)
    assert (brighter[ramp >= 213] == 255).all() and (brighter[ramp == 100] == 120).all()  # saturates the whites


def test_jpeg_loses_more_at_lower_quality():
    rng = np.random.default_rng(0)
    image = np.clip(_ramp(2).astype(int) + rng.integers(-30, 30, (2, 32, 32, 1)), 0, 255).astype(np.uint8)
    error = {q: np.abs(acquisition.jpeg(image, q).astype(int) - image).mean() for q in (10, 90)}
    assert error[10] > 2 * error[90] > 0
    assert abs(acquisition.jpeg(image, 10).mean() - image.mean()) < 3  # the brightness stays


def test_lower_resolution_removes_fine_detail_and_keeps_the_broad():
    checker = ((np.indices((32, 32)).sum(axis=0) % 2) * 255).astype(np.uint8)[None, ..., None]
    flat = acquisition.down_up(checker, 4)
    assert flat.std() < 5 and abs(flat.mean() - checker.mean()) < 2  # one-pixel detail is gone
    ramp = _ramp()
    assert np.abs(acquisition.down_up(ramp, 4).astype(int) - ramp).mean() < 6  # a slow gradient survives


def test_wider_framing_puts_the_image_inside_a_black_border():
    white = np.full((1, 40, 40, 1), 255, np.uint8)
    wider = acquisition.zoom_out(white, 0.20)[0, ..., 0]  # the image at 32 px in the middle
    assert (wider[:4] == 0).all() and (wider[-4:] == 0).all() and (wider[:, :4] == 0).all() and (wider[:, -4:] == 0).all()
    assert (wider[5:35, 5:35] == 255).all()
    assert (wider > 0).sum() == 32 * 32


def test_rotation_turns_alternate_images_either_way_with_black_corners():
    bar = np.full((2, 41, 41, 1), 100, np.uint8)
    bar[:, 18:23] = 250  # a horizontal bar: symmetric about the horizontal axis
    turned = acquisition.rotate(bar, 10)
    assert (turned[:, 0, 0] == 0).all() and (turned[:, -1, -1] == 0).all()  # the corners come in black
    assert not np.array_equal(turned[0], turned[1])
    np.testing.assert_allclose(turned[1].astype(int), turned[0, ::-1].astype(int), atol=1)  # the mirror turn
    assert abs(turned[0, 20, 20, 0] - 250) <= 1  # about the centre


def test_noise_has_the_stated_spread_and_is_seeded():
    grey = np.full((4, 64, 64, 1), 128, np.uint8)
    noisy = acquisition.noise(grey, 12)
    difference = noisy.astype(float) - grey
    assert 11 < difference.std() < 13 and abs(difference.mean()) < 0.5
    np.testing.assert_array_equal(noisy, acquisition.noise(grey, 12))
    assert not np.array_equal(noisy, acquisition.noise(grey, 12, seed=1))


def test_the_stress_test_carries_every_acquisition_difference():
    names = " ".join(stress.PERTURBATIONS)
    for kind in ("tighter", "wider", "sharpened", "blurred", "contrast", "JPEG", "gamma 1.6", "gamma 0.6", "exposure ×0.7",
                 "exposure ×1.2", "rotated", "resolution", "noise"):
        assert kind in names, kind
