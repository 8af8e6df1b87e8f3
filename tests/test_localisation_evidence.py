"""Tests for the explanation evidence that needs no lesion masks: core.evidence.faithfulness,
heat_location, synthetic_opacity and heatmap_grid. Pure NumPy "models"; no TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.evidence import faithfulness as fa
from core.evidence import heat_location as hl
from core.evidence import synthetic_opacity as so
from core.evidence.heatmap_grid import stretch
from core.evidence.statistics import resample_weights

# --------------------------------------------------------------------------
# A "model" that looks at one square of the image
# --------------------------------------------------------------------------

S = 64
SQUARE = (slice(8, 24), slice(40, 56))  # off-centre: rows 8..23, columns 40..55


def _image(seed: int = 1) -> np.ndarray:
    """A noisy mid-gray square image with a bright square where the "model" looks."""
    rng = np.random.default_rng(seed)
    image = np.clip(90.0 + rng.normal(0.0, 20.0, (S, S)), 0, 255)
    image[SQUARE] = 250.0
    return image.astype(np.float32)


def _score(batch: np.ndarray) -> np.ndarray:
    """Mean brightness inside the square, as a probability."""
    return batch[:, SQUARE[0], SQUARE[1], :].mean(axis=(1, 2, 3)) / 255.0


def _square_heatmap() -> np.ndarray:
    """An 8 x 8 map (cells of 8 pixels) hot exactly on the square's cells."""
    heat = np.zeros((8, 8), np.float32)
    heat[1:3, 5:7] = 1.0
    return heat


def test_stretch_is_bilinear_and_keeps_a_constant_map() -> None:
    assert stretch(np.full((7, 7), 0.3), 50, 40).shape == (40, 50)
    np.testing.assert_allclose(stretch(np.full((7, 7), 0.3), 50, 40), 0.3, atol=1e-6)
    ramp = stretch(np.array([[0.0, 1.0]]), 4, 1)[0]
    assert np.all(np.diff(ramp) >= 0) and ramp[0] == 0.0 and ramp[-1] == 1.0
    assert stretch(np.array([[np.nan, 1.0]]), 2, 1)[0, 0] == 0.0
    with pytest.raises(ValueError):
        stretch(np.zeros(5), 4, 4)


def test_pixel_order_is_hottest_first_with_stable_ties() -> None:
    heat = np.zeros((4, 4))
    heat[3, 3] = 1.0
    order = fa.pixel_order(heat, 4)
    assert sorted(order) == list(range(16))
    assert order[0] == 15
    # All-equal values keep row-major order.
    np.testing.assert_array_equal(fa.pixel_order(np.ones((2, 2)), 8), np.arange(64))
    # Hotness never increases along the order.
    values = stretch(fa.random_heatmap((5, 5), seed=3), 20, 20).ravel()[fa.pixel_order(fa.random_heatmap((5, 5), seed=3), 20)]
    assert np.all(np.diff(values) <= 0)


def test_blurred_keeps_brightness_and_wipes_detail() -> None:
    image = _image()
    canvas = fa.blurred(image)
    assert canvas.shape == (S, S, 3) and canvas.dtype == np.float32
    assert abs(canvas.mean() - image.mean()) < 1.0  # reflecting edges: overall brightness kept
    background = (slice(40, 60), slice(4, 30))
    assert canvas[background].std() < 0.3 * image[background].std()  # the local detail (noise) is gone
    assert canvas[SQUARE].mean() < 230  # the square's own evidence is partly removed
    np.testing.assert_allclose(fa.blurred(np.full((S, S, 1), 77.0)), 77.0, atol=1e-3)


def _brute_force_batch(pixels: np.ndarray, heatmap: np.ndarray, steps: int, mode: str) -> np.ndarray:
    """One image at a time, one pixel at a time."""
    image = np.repeat(np.asarray(pixels, np.float32)[..., None], 3, axis=-1)
    canvas = fa.blurred(image)
    size = image.shape[0]
    order = fa.pixel_order(heatmap, size)
    out = []
    for k in range(steps + 1):
        n = math.floor(k * size * size / steps)
        start, change = (image, canvas) if mode == "deletion" else (canvas, image)
        step = start.copy()
        for p in order[:n]:
            step[p // size, p % size] = change[p // size, p % size]
        out.append(step)
    return np.stack(out)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_perturbation_batch_matches_a_brute_force_loop(mode: str) -> None:
    pixels, heat = _image()[:20, :20], fa.random_heatmap((5, 5), seed=2)
    np.testing.assert_array_equal(fa.perturbation_batch(pixels, heat, 7, mode), _brute_force_batch(pixels, heat, 7, mode))


def test_perturbation_batch_ends_are_the_image_and_the_canvas() -> None:
    image = _image()
    rgb = np.repeat(image[..., None], 3, axis=-1)
    canvas = fa.blurred(image)
    deletion = fa.perturbation_batch(image, _square_heatmap(), steps=16, mode="deletion")
    insertion = fa.perturbation_batch(image, _square_heatmap(), steps=16, mode="insertion")
    assert deletion.shape == insertion.shape == (17, S, S, 3)
    np.testing.assert_array_equal(deletion[0], rgb)
    np.testing.assert_array_equal(deletion[-1], canvas)
    np.testing.assert_array_equal(insertion[0], canvas)
    np.testing.assert_array_equal(insertion[-1], rgb)
    # Step 4 of 16 changes exactly a quarter of the pixels (those that differ from the canvas).
    changed = np.any(deletion[4] != rgb, axis=-1)
    assert changed.sum() <= S * S // 4
    with pytest.raises(ValueError):
        fa.perturbation_batch(image, _square_heatmap(), mode="sideways")


def test_deletion_and_insertion_favour_the_map_on_what_the_model_uses() -> None:
    image = _image()
    maps = {"square": _square_heatmap(), "random": fa.random_heatmap((8, 8), seed=0), "blob": fa.centred_blob((8, 8))}
    deletion = {k: fa.curve_area(fa.deletion_curve(_score, image, m)) for k, m in maps.items()}
    insertion = {k: fa.curve_area(fa.insertion_curve(_score, image, m)) for k, m in maps.items()}
    assert deletion["square"] < deletion["random"] - 0.05
    assert deletion["square"] < deletion["blob"] - 0.05
    assert insertion["square"] > insertion["random"] + 0.05
    assert insertion["square"] > insertion["blob"] + 0.05


def test_curves_make_one_batched_call_and_check_its_answer() -> None:
    calls = []

    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return _score(batch)

    curve = fa.deletion_curve(score, _image(), _square_heatmap(), steps=8)
    assert calls == [(9, S, S, 3)] and curve.shape == (9,)
    with pytest.raises(ValueError, match="values for a batch"):
        fa.insertion_curve(lambda b: np.zeros(3), _image(), _square_heatmap())
    with pytest.raises(ValueError, match="NaN"):
        fa.insertion_curve(lambda b: np.full(len(b), np.nan), _image(), _square_heatmap())


def test_curve_area_on_known_curves() -> None:
    assert fa.curve_area([1.0, 1.0]) == pytest.approx(1.0)
    assert fa.curve_area([1.0, 0.0]) == pytest.approx(0.5)
    assert fa.curve_area([0.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert fa.curve_area(np.linspace(0.0, 1.0, 17) ** 2) == pytest.approx(1 / 3, abs=1e-3)
    with pytest.raises(ValueError):
        fa.curve_area([0.4])


def test_baseline_heatmaps() -> None:
    noise = fa.random_heatmap((7, 9), seed=5)
    assert noise.shape == (7, 9) and noise.max() == 1.0 and noise.min() >= 0.0
    np.testing.assert_array_equal(noise, fa.random_heatmap((7, 9), seed=5))
    assert not np.array_equal(noise, fa.random_heatmap((7, 9), seed=6))
    blob = fa.centred_blob((9, 9))
    assert blob[4, 4] == 1.0 and np.unravel_index(np.argmax(blob), blob.shape) == (4, 4)
    np.testing.assert_allclose(blob, blob.T)  # isotropic
    np.testing.assert_allclose(blob, blob[::-1, ::-1])
    assert blob[4, 4 + 2] == pytest.approx(math.exp(-0.5 * (2 / (9 / 4)) ** 2))  # sd = a quarter of the side


# --------------------------------------------------------------------------
# mean_interval
# --------------------------------------------------------------------------


def _brute_force_mean_interval(values, patients, n_resamples, confidence, seed):
    """Draw patients with replacement, pool their images, take the mean; same RNG draws."""
    values = np.asarray(values, float)
    units = np.unique(patients)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        drawn = units[rng.integers(0, units.size, size=units.size)]
        pooled = np.concatenate([values[np.asarray(patients) == u] for u in drawn])
        means.append(pooled.mean())
    alpha = 1 - confidence
    return np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])


def test_mean_interval_matches_a_brute_force_patient_bootstrap() -> None:
    rng = np.random.default_rng(0)
    patients = np.array(["p3", "p1", "p1", "p2", "p4", "p4", "p4", "p5", "p2", "p6"])
    values = rng.random(patients.size)
    interval = fa.mean_interval(values, patients, n_resamples=300, confidence=0.9, seed=4)
    low, high = _brute_force_mean_interval(values, patients, 300, 0.9, 4)
    assert interval.estimate == pytest.approx(values.mean())
    assert (interval.low, interval.high) == pytest.approx((low, high))
    assert interval.confidence == 0.9 and interval.n_resamples == 300
    # The draws are those of resample_weights: the same patients as every other interval.
    weights = np.concatenate(list(resample_weights(values.size, patients, 300, 4)))
    means = weights @ values / weights.sum(axis=1)
    assert interval.low == pytest.approx(np.percentile(means, 5))


def test_mean_interval_contains_the_mean_and_widens_with_clustered_patients() -> None:
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(20), 5)
    values = np.repeat(rng.normal(0, 1, 20), 5) + rng.normal(0, 0.1, 100)  # patients differ, images agree
    clustered = fa.mean_interval(values, patients)
    ignoring = fa.mean_interval(values)
    assert clustered.low <= clustered.estimate <= clustered.high
    assert clustered.high - clustered.low > 1.5 * (ignoring.high - ignoring.low)
    with pytest.raises(ValueError, match="NaN"):
        fa.mean_interval([0.1, math.nan])


# --------------------------------------------------------------------------
# heat_location
# --------------------------------------------------------------------------


def test_border_mask_covers_the_stated_share() -> None:
    mask = hl.border_mask(100, 100)
    assert mask.shape == (100, 100) and mask.mean() == pytest.approx(1 - 0.8**2)
    assert mask[0].all() and mask[:, -1].all() and not mask[10:90, 10:90].any() and mask[9, 50]
    wide = hl.border_mask(200, 50)
    assert wide.shape == (50, 200) and wide[:, :20].all() and not wide[5:45, 20:180].any()


def test_heat_share_on_hand_made_maps() -> None:
    mask = hl.border_mask(100, 100)
    corner = np.zeros((100, 100))
    corner[:5, :5] = 1.0
    assert hl.heat_share(corner, mask) == pytest.approx(1.0)
    centre = np.zeros((10, 10))
    centre[4:6, 4:6] = 1.0
    assert hl.heat_share(centre, mask) == pytest.approx(0.0)
    assert hl.heat_share(np.ones((7, 7)), mask) == pytest.approx(0.36)
    half = np.zeros((4, 4), bool)
    half[:2] = True
    assert hl.heat_share(np.ones((2, 2)), half) == pytest.approx(0.5)
    assert math.isnan(hl.heat_share(np.zeros((7, 7)), mask))


def _synthetic_xray(letter: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 256-px frontal-film lookalike (body, lungs, spine, ribs, a bright collimator band) with an "R"."""
    image = Image.new("L", (256, 256), 30)
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 30, 236, 250), fill=120)  # body
    draw.ellipse((45, 60, 120, 200), fill=60)  # right lung
    draw.ellipse((136, 60, 211, 200), fill=60)  # left lung
    draw.rectangle((118, 30, 138, 250), fill=170)  # spine and mediastinum
    for y in range(80, 200, 22):
        draw.arc((40, y - 20, 125, y + 20), 200, 340, fill=140, width=3)
        draw.arc((131, y - 20, 216, y + 20), 200, 340, fill=140, width=3)
    draw.rectangle((0, 240, 255, 255), fill=240)  # collimator edge: bright but large
    pixels = np.asarray(image, np.float64) + np.random.default_rng(0).normal(0, 4, (256, 256))
    pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    drawn = Image.new("L", (256, 256), 0)
    if letter:  # an "R": stem, bowl and leg, 3 pixels wide, in the top-left corner
        pen = ImageDraw.Draw(drawn)
        pen.line((12, 10, 12, 38), fill=255, width=3)
        pen.arc((4, 10, 30, 26), 270, 90, fill=255, width=3)
        pen.line((12, 18, 17, 18), fill=255, width=3)
        pen.line((16, 24, 28, 38), fill=255, width=3)
    marks = np.asarray(drawn) > 0
    pixels[marks] = 255
    return pixels, marks


def test_bright_marks_covers_the_letter_and_not_the_body() -> None:
    film, letter = _synthetic_xray(letter=True)
    marks = hl.bright_marks(film)
    assert letter.sum() > 50
    assert marks[letter].all()  # every pixel of the letter
    assert marks.sum() > letter.sum()  # widened around it
    assert not marks[50:, :].any() and not marks[:, 50:].any()  # nothing on body, spine or collimator band
    blank, _ = _synthetic_xray(letter=False)
    assert not hl.bright_marks(blank).any()
    # A heatmap on the letter puts its heat on the marks; one on the lungs does not.
    on_letter = np.zeros((8, 8))
    on_letter[0, 0] = 1.0
    on_lungs = np.zeros((8, 8))
    on_lungs[3:5, 2] = on_lungs[3:5, 5] = 1.0
    assert hl.heat_share(on_letter, marks) > 0.5
    assert hl.heat_share(on_lungs, marks) == 0.0


def test_looks_at_border_and_the_run_warning() -> None:
    assert hl.looks_at_border(0.6) and not hl.looks_at_border(0.5) and not hl.looks_at_border(math.nan)
    assert hl.border_warning([0.1, 0.2, 0.15, 0.3]) == ""
    assert hl.border_warning([]) == "" and hl.border_warning([math.nan]) == ""
    warning = hl.border_warning([0.8, 0.7, 0.9, 0.2])
    assert warning.startswith("looks at markers, not lungs")
    assert "3 of 4 images (75%)" in warning and "median border share is 75%" in warning
    # At the stated level: one image in four fires, one in five does not; NaN maps are left out.
    assert hl.border_warning([0.9, 0.1, 0.1, 0.1, math.nan]) != ""
    assert hl.border_warning([0.9, 0.1, 0.1, 0.1, 0.1]) == ""


# --------------------------------------------------------------------------
# synthetic_opacity
# --------------------------------------------------------------------------


def test_lung_field_boxes_are_the_stated_fractions() -> None:
    assert so.lung_field_box(200, 100, "right") == (30, 25, 90, 75)
    assert so.lung_field_box(200, 100, "left") == (110, 25, 170, 75)
    with pytest.raises(ValueError):
        so.lung_field_box(200, 100, "middle")


def test_opacity_mask_is_soft_and_crosses_half_at_the_radius() -> None:
    soft = so.opacity_mask(101, 81, (50.0, 40.0), 20.0)
    assert soft.shape == (81, 101) and soft.min() == 0.0 and soft.max() == 1.0
    assert soft[40, 50] == 1.0 and soft[40, 70] == pytest.approx(0.5) and soft[40, 80] == 0.0
    assert 0.0 < soft[40, 73] < 0.5 < soft[40, 67] < 1.0  # a smooth edge, not a rim
    tall = so.opacity_mask(101, 81, (50.0, 40.0), 20.0, aspect=1.5)
    assert tall[40 + 30, 50] == pytest.approx(0.5) and tall[40, 70] == pytest.approx(0.5)


def test_insert_opacity_brightens_only_around_the_mask() -> None:
    film, _ = _synthetic_xray(letter=False)
    centre, radius = (80.0, 130.0), 20.0
    out, mask = so.insert_opacity(film, centre, radius, density=0.35, seed=3)
    assert out.dtype == np.uint8 and out.shape == film.shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, so.opacity_mask(256, 256, centre, radius) > 0.5)
    support = so.opacity_mask(256, 256, centre, radius) > 0
    changed = out != film
    assert not changed[~support].any()
    assert np.all(out >= film)
    assert out[mask].mean() > film[mask].mean() + 30
    np.testing.assert_array_equal(out, so.insert_opacity(film, centre, radius, seed=3)[0])  # seeded
    assert not np.array_equal(out, so.insert_opacity(film, centre, radius, seed=4)[0])  # textured


def test_random_opacities_alternate_lungs_inside_the_fields() -> None:
    blobs = so.random_opacities(300, 200, 6, seed=1)
    assert blobs == so.random_opacities(300, 200, 6, seed=1) and len(blobs) == 6
    for i, ((x, y), radius) in enumerate(blobs):
        x0, y0, x1, y1 = so.lung_field_box(300, 200, so.LUNGS[i % 2])
        assert x0 <= x < x1 and y0 <= y < y1
        assert 0.06 * 300 <= radius <= 0.12 * 300


def test_hit_and_iou_on_hand_cases() -> None:
    mask = np.zeros((40, 40), bool)
    mask[20:40, 20:40] = True
    peak_inside = np.zeros((4, 4))
    peak_inside[3, 3] = 1.0
    peak_outside = np.zeros((4, 4))
    peak_outside[0, 0] = 1.0
    assert so.hit(peak_inside, mask) and not so.hit(peak_outside, mask)
    assert not so.hit(np.zeros((4, 4)), mask)
    assert not so.hit(np.ones((4, 4)), mask)  # a flat map points at the first pixel, not everywhere
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert so.iou(a, b) == pytest.approx(4 / 12)
    assert so.iou(a, a) == 1.0 and so.iou(a, ~a) == 0.0
    assert math.isnan(so.iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))
    with pytest.raises(ValueError):
        so.iou(a, np.zeros((3, 3), bool))
