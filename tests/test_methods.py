"""core.inference.methods and the methods it registers: each finds the evidence of a model whose
evidence is known; regions of heatmaps; the `explain` command."""

from __future__ import annotations

import io
import json

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import cli
from core.evidence import faithfulness, heat_location, synthetic_opacity
from core.evidence.heatmap_grid import stretch
from core.inference import attention, evaluation, explanation, methods, perturbation, regions
from tests.helpers import OPACITY_SIZE, make_dataset, model_run, train_opacity_detector, with_square

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
PER_IMAGE = ("gradcam", "gradcam++", "occlusion", "smoothgrad")  # the methods a CNN can use


@pytest.fixture(scope="module")
def opacity_detector() -> keras.Model:
    return train_opacity_detector()


def test_the_registry_names_its_methods():
    assert list(methods.METHODS) == ["gradcam", "gradcam++", "occlusion", "smoothgrad", "rollout"]
    assert methods.DEFAULT_METHOD == "gradcam"
    assert [m.name for m in methods.METHODS.values() if m.model_agnostic] == ["occlusion"]
    assert methods.method_named("gradcam++").label == "Grad-CAM++"
    with pytest.raises(ValueError, match=r"unknown explanation method 'nope': choose one of gradcam, gradcam\+\+, occlusion"):
        methods.method_named("nope")


@pytest.mark.parametrize("name", PER_IMAGE)
@pytest.mark.parametrize(("top", "left"), [(2, 2), (22, 22), (3, 21)])
def test_each_method_finds_the_opacity(opacity_detector, name, top, left):
    image = with_square(top, left, seed=top * 100 + left)
    method = methods.method_named(name)
    assert method.problem(opacity_detector) == ""
    heatmap = method.compute(opacity_detector, image, None)
    assert heatmap.dtype == np.float32 and heatmap.ndim == 2
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    heat = stretch(heatmap, OPACITY_SIZE, OPACITY_SIZE)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    margin = 4  # Grad-CAM's cells are 4 px: its peak may sit on the cell that holds the square's edge
    assert top - margin <= row < top + 8 + margin and left - margin <= col < left + 8 + margin, (name, row, col)
    inside = np.zeros(heat.shape, bool)
    inside[top : top + 8, left : left + 8] = True
    # SmoothGrad's sensitivity is diffuse (the background's pixels move the score a little too): its
    # square is about 1.7 times as hot as the rest, the others' 6 to 9 times.
    assert heat[inside].mean() > (1.4 if name == "smoothgrad" else 4) * heat[~inside].mean()
    # The region holding the hottest fifth of the heat is boxed on the square.
    x0, y0, x1, y1 = regions.region_of(heatmap, OPACITY_SIZE, OPACITY_SIZE, 0.2).box
    assert x0 < left + 8 and left < x1 and y0 < top + 8 and top < y1


@pytest.mark.parametrize("name", PER_IMAGE)
def test_a_model_that_sees_nothing_gives_an_empty_map(opacity_detector, name):
    """A model whose output ignores the image (a zero output kernel): no evidence, all zeros."""
    blind = keras.models.clone_model(opacity_detector)
    blind.set_weights(opacity_detector.get_weights())
    dense = explanation.output_dense(blind)
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), bias])
    heatmap = methods.METHODS[name].compute(blind, with_square(2, 2, seed=1), None)
    np.testing.assert_array_equal(heatmap, 0.0)
    assert regions.region_of(heatmap, 40, 30).box is None


def test_grad_cam_plus_plus_is_grad_cam_with_weighed_positions(opacity_detector):
    image = with_square(22, 2, seed=5)
    activations, gradients = explanation.feature_map_gradients(opacity_detector, image)
    np.testing.assert_allclose(explanation.grad_cam(opacity_detector, image),
                               explanation.normalised(activations @ gradients.mean(axis=(0, 1))), atol=1e-6)
    alpha = gradients**2 / (2 * gradients**2 + activations.sum(axis=(0, 1)) * gradients**3 + 1e-30)
    expected = explanation.normalised(activations @ (alpha * np.maximum(gradients, 0)).sum(axis=(0, 1)))
    np.testing.assert_allclose(explanation.grad_cam_plus_plus(opacity_detector, image), expected, atol=1e-5)


def test_occlusion_is_model_agnostic_and_fills_with_a_blur():
    """A plain function as the scorer: the mean brightness of one 6x6 corner. Occluding it with the
    blurred image lowers the score only where a patch overlaps that corner."""
    size = 28
    pixels = np.full((size, size, 3), 40.0, np.float32)
    pixels[20:26, 20:26] = 220.0

    def predict(batch):
        return batch[:, 20:26, 20:26, 0].mean(axis=(1, 2)) / 255

    heatmap = perturbation.occlusion(predict, pixels)
    assert heatmap.shape == (size, size) and heatmap.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(heatmap), heatmap.shape)[0] in range(18, 28)
    assert heatmap[:12, :12].max() == 0.0  # patches far from the corner change nothing
    blur = perturbation.blurred(pixels)
    assert 40 < blur[22, 22, 0] < 220  # not black: a grey between the corner and its surroundings


# ---------------------------------------------------------------------------- attention rollout


def _attending_transformer(side: int = 4, patch: int = 2) -> keras.Model:
    """A tiny transformer whose attention goes to the brightest patch: each patch's token is its mean
    brightness, queries are constant and keys grow with brightness, so every token attends to it."""
    size = side * patch
    inputs = keras.Input((size, size, 3))
    embed = keras.layers.Conv2D(1, patch, strides=patch, use_bias=False, name="patches")
    tokens = keras.layers.Reshape((side * side, 1))(embed(inputs))
    mha = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2, name="attention")
    mixed = mha(tokens, tokens)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling1D()(mixed))
    model = keras.Model(inputs, outputs)
    embed.kernel.assign(np.full(embed.kernel.shape, 1 / (patch * patch * 3 * 255), np.float32))  # brightness in 0..1
    mha._query_dense.kernel.assign(np.zeros(mha._query_dense.kernel.shape, np.float32))
    mha._query_dense.bias.assign(np.ones(mha._query_dense.bias.shape, np.float32))
    mha._key_dense.kernel.assign(np.full(mha._key_dense.kernel.shape, 30.0, np.float32))
    mha._key_dense.bias.assign(np.zeros(mha._key_dense.bias.shape, np.float32))
    return model


def test_rollout_peaks_on_the_token_attention_goes_to():
    model = _attending_transformer()
    pixels = np.full((8, 8, 3), 50.0, np.float32)
    pixels[2:4, 4:6] = 250.0  # the patch at grid row 1, column 2
    rollout = methods.METHODS["rollout"]
    assert rollout.problem(model) == ""
    heatmap = rollout.compute(model, pixels, None)
    assert heatmap.shape == (4, 4) and heatmap.dtype == np.float32
    assert np.unravel_index(np.argmax(heatmap), heatmap.shape) == (1, 2) and heatmap.max() == pytest.approx(1.0)
    assert np.sort(heatmap.ravel())[-2] < 0.2  # the others keep only their own share
    # Nested in another model, the layer is still found; the model still answers as before.
    outer_input = keras.Input((8, 8, 3))
    outer = keras.Model(outer_input, model(outer_input))
    np.testing.assert_allclose(rollout.compute(outer, pixels, None), heatmap, atol=1e-6)
    np.testing.assert_allclose(outer(pixels[None]).numpy(), model(pixels[None]).numpy(), atol=1e-6)
    assert "call" not in vars(model.get_layer("attention"))  # the wrapper is gone after the pass


def test_rollout_refuses_a_cnn_and_reads_a_class_token(opacity_detector):
    assert methods.METHODS["rollout"].problem(opacity_detector) == attention.NO_ATTENTION
    with pytest.raises(ValueError, match="no attention layers"):
        attention.attention_rollout(opacity_detector, with_square(2, 2, seed=0))
    # Five tokens: a class token, then a 2x2 grid; the class token attends to grid token 3 only.
    scores = np.zeros((1, 5, 5))
    scores[0, :, 0] = 1.0
    scores[0, 0] = [0, 0, 0, 1.0, 0]
    grid = attention.token_grid(attention.rollout_matrix([scores]))
    assert grid.shape == (2, 2) and np.unravel_index(np.argmax(grid), grid.shape) == (1, 0)
    with pytest.raises(ValueError, match="neither a square grid"):
        attention.token_grid(np.eye(7))
    # Two layers multiply in order: A2 (A1) with the identity mixed into each.
    a1, a2 = np.random.default_rng(0).dirichlet(np.ones(4), size=(2, 2, 4))
    mix = [(a.mean(axis=0) + np.eye(4)) / 2 for a in (a1, a2)]
    np.testing.assert_allclose(attention.rollout_matrix([a1, a2]), mix[1] @ mix[0])


# ---------------------------------------------------------------------------- regions


def test_a_single_hot_square_is_its_own_region():
    heat = np.zeros((60, 80), np.float32)
    heat[10:20, 30:45] = 1.0
    region = regions.region_of(heat, 80, 60, share=1.0)
    assert region.mask.shape == (60, 80) and region.mask.sum() == 150 and region.mask[10:20, 30:45].all()
    assert region.box == (30, 10, 45, 20)  # x1, y1 exclusive
    assert region.area_fraction == pytest.approx(150 / 4800) and region.heat_share == pytest.approx(1.0)
    half = regions.region_of(heat, 80, 60, share=0.5)
    assert half.mask.sum() == 75 and half.mask[10:20, 30:45].sum() == 75 and half.heat_share == pytest.approx(0.5)


def test_two_blobs_box_the_hotter_one_and_the_share_grows_the_mask():
    heat = np.zeros((50, 50), np.float32)
    heat[5:15, 5:15] = 0.6
    heat[30:42, 28:40] = 1.0
    region = regions.region_of(heat, 50, 50, share=0.9)
    assert region.mask[5:15, 5:15].any() and region.mask[30:42, 28:40].all()  # both blobs in the mask
    assert region.box == (28, 30, 40, 42)  # the box around the hotter one only
    areas = [regions.region_of(heat, 50, 50, share).area_fraction for share in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)]
    assert areas == sorted(areas) and areas[0] < areas[-1]
    shares = [regions.region_of(heat, 50, 50, share).heat_share for share in (0.1, 0.5, 0.9)]
    assert all(s >= target for s, target in zip(shares, (0.1, 0.5, 0.9), strict=True))
    with pytest.raises(ValueError, match="share"):
        regions.region_of(heat, 50, 50, share=0.0)


def test_a_coarse_map_is_upsampled_to_the_image_and_drawn_and_saved():
    coarse = np.zeros((4, 4), np.float32)
    coarse[0, 3] = 1.0  # top-right cell
    region = regions.region_of(coarse, 120, 80, share=0.5)
    assert region.mask.shape == (80, 120)
    x0, y0, x1, y1 = region.box
    assert x0 >= 60 and y1 <= 40  # in the top-right quarter of a 120x80 image
    picture = regions.draw_region(Image.new("RGB", (120, 80), (10, 10, 10)), region, colour=(0, 255, 0))
    pixels = np.asarray(picture)
    assert (pixels[y0, x0:x1] == (0, 255, 0)).all()  # the box's top edge
    assert (pixels[70, 10] == (10, 10, 10)).all()  # far away: untouched
    mask = np.asarray(Image.open(io.BytesIO(regions.mask_png(region))))
    assert mask.dtype == np.uint8 and mask.shape == (80, 120) and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, region.mask)
    record = regions.region_record(region, run="r", method="gradcam")
    assert json.loads(json.dumps(record)) == record
    assert record["box"] == {"x0": x0, "y0": y0, "x1": x1, "y1": y1} and (record["width"], record["height"]) == (120, 80)
    assert record["run"] == "r" and record["area_fraction"] == pytest.approx(region.area_fraction, abs=1e-6)
    empty = regions.region_of(np.zeros((4, 4)), 120, 80)
    assert regions.region_record(empty)["box"] is None and not empty.mask.any()
    assert np.array_equal(np.asarray(regions.draw_region(Image.new("RGB", (120, 80)), empty)), np.zeros((80, 120, 3)))


# ---------------------------------------------------------------------------- evidence on models of known evidence


@pytest.mark.parametrize("name", PER_IMAGE)
def test_each_methods_map_deletes_the_evidence_faster_than_a_random_map(opacity_detector, name):
    """On a model that depends on one known region (the square), deleting by the method's map loses
    the probability sooner than deleting by random maps: a lower deletion area, a higher gain."""
    image = with_square(20, 4, seed=7)  # off-centre, so a centred guess would not do either

    def score(batch: np.ndarray) -> np.ndarray:
        return evaluation.score_pixels(opacity_detector, batch)

    heatmap = methods.method_named(name).compute(opacity_detector, image, None)
    deletion = faithfulness.curve_area(faithfulness.deletion_curve(score, image, heatmap, steps=8))
    gain = faithfulness.curve_area(faithfulness.insertion_curve(score, image, heatmap, steps=8)) - deletion
    random_areas, random_gains = [], []
    for seed in range(5):
        noise = faithfulness.random_heatmap((8, 8), seed)
        random_deletion = faithfulness.curve_area(faithfulness.deletion_curve(score, image, noise, steps=8))
        random_areas.append(random_deletion)
        random_gains.append(faithfulness.curve_area(faithfulness.insertion_curve(score, image, noise, steps=8)) - random_deletion)
    assert deletion < min(random_areas), (name, deletion, random_areas)
    assert gain > max(random_gains), (name, gain, random_gains)


def _region_reader(size: int, rows: slice, cols: slice) -> keras.Model:
    """A hand-weighted model that calls an image positive when something bright (> 200) lies in
    `rows` x `cols`, and ignores everything else: its evidence is known by construction."""
    inputs = keras.Input((size, size, 3))
    brightness = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer=keras.initializers.Constant(1 / 27),
                                     bias_initializer=keras.initializers.Constant(-200.0))(inputs)
    window = np.zeros((1, size, size, 1), np.float32)
    window[:, rows, cols] = 1.0
    seen = keras.layers.Multiply()([keras.layers.ReLU()(brightness), keras.layers.Rescaling(0.0, offset=1.0)(inputs)[..., :1] * window])
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(0.2),
                                 bias_initializer=keras.initializers.Constant(-2.0))(keras.layers.GlobalMaxPooling2D()(seen))
    return keras.Model(inputs, outputs)


def _film(size: int, seed: int, bright: tuple[slice, slice]) -> np.ndarray:
    """A dark noisy film with one bright mark (a laterality letter, or a lesion)."""
    pixels = np.random.default_rng(seed).normal(70, 12, (size, size))
    pixels[bright] = 255
    return np.clip(pixels, 0, 255).astype(np.float32)[..., None].repeat(3, axis=-1)


@pytest.mark.parametrize("name", PER_IMAGE)
def test_the_border_measure_flags_a_model_that_reads_a_corner_marker(name):
    size = 64
    corner, centre = (slice(1, 6), slice(1, 6)), (slice(28, 36), slice(28, 36))
    marker_reader = _region_reader(size, slice(0, 8), slice(0, 8))
    lung_reader = _region_reader(size, slice(20, 44), slice(20, 44))
    border = heat_location.border_mask(size, size)
    method = methods.method_named(name)
    on_marker = [heat_location.heat_share(method.compute(marker_reader, _film(size, seed, corner), None), border) for seed in range(4)]
    on_lungs = [heat_location.heat_share(method.compute(lung_reader, _film(size, seed, centre), None), border) for seed in range(4)]
    assert float(marker_reader(_film(size, 0, corner)[None])[0, 0]) > 0.9  # it does read the marker
    assert heat_location.border_warning(on_marker).startswith("looks at markers, not lungs"), (name, on_marker)
    assert heat_location.border_warning(on_lungs) == "", (name, on_lungs)


@pytest.mark.parametrize("name", ["gradcam", "occlusion"])
def test_the_synthetic_opacity_check_finds_an_opacity_a_model_responds_to(opacity_detector, name):
    hits, ious, rises = [], [], []
    for seed in range(6):
        film = np.clip(np.random.default_rng(seed).normal(50, 15, (OPACITY_SIZE, OPACITY_SIZE)), 0, 255).astype(np.uint8)
        centre, _ = synthetic_opacity.random_opacities(OPACITY_SIZE, OPACITY_SIZE, 2, seed)[seed % 2]
        changed, mask = synthetic_opacity.insert_opacity(film, centre, 5.0, density=0.8, seed=seed)
        before, after = (np.repeat(x.astype(np.float32)[..., None], 3, axis=-1) for x in (film, changed))
        rises.append(float(evaluation.score_pixels(opacity_detector, np.stack([before, after])) @ [-1, 1]))
        heatmap = methods.method_named(name).compute(opacity_detector, after, None)
        hits.append(synthetic_opacity.hit(heatmap, mask))
        ious.append(synthetic_opacity.iou(regions.region_of(heatmap, OPACITY_SIZE, OPACITY_SIZE, 0.5).mask, mask))
    assert np.mean(rises) > 0.3, rises  # the model responds to the inserted opacity
    assert np.mean(hits) >= 5 / 6, hits  # and the heat's peak lands in it
    assert np.mean(ious) > 0.2, ious


# ---------------------------------------------------------------------------- the explain command


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    data = make_dataset(root / "data", {"train": 4, "test": 2}, images_per_patient=1)
    model_run(root / "artifacts", "tiny", data, size=32)
    return root


def test_explain_writes_overlays_masks_boxes_and_a_table(tiny_store, tmp_path, capsys):
    images = sorted(str(p) for p in (tiny_store / "data" / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    code = cli.main(["explain", "tiny", *images, str(broken), "--method", "occlusion", "--out", str(out),
                     "--share", "0.4", "--artifacts", str(tiny_store / "artifacts")])
    assert code == 0
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert list(table.columns) == ["image", "run", "method", "probability", "label", "box", "heat_share", "error"]
    assert table["error"].iat[-1].startswith("cannot read image") and not (out / "broken.mask.png").exists()
    for image, row in zip(images, table.itertuples(), strict=False):
        stem = image.rsplit("/", 1)[1].rsplit(".", 1)[0]
        box = json.loads((out / f"{stem}.box.json").read_text())
        assert box["method"] == "occlusion" and box["run"] == "tiny" and box["share"] == 0.4
        assert (box["width"], box["height"]) == (48, 48)  # the image's own size
        mask = np.asarray(Image.open(out / f"{stem}.mask.png"))
        assert mask.shape == (48, 48) and mask.max() in (0, 255)
        if box["box"] is not None:
            b = box["box"]
            assert row.box == f"{b['x0']},{b['y0']},{b['x1']},{b['y1']}"
            assert mask[b["y0"] : b["y1"], b["x0"] : b["x1"]].any()
            assert box["heat_share"] >= 0.4
        assert (out / f"{stem}.overlay.png").exists() and not row.error
    capsys.readouterr()


def test_explain_refuses_a_method_that_does_not_apply_or_is_unknown(tiny_store, tmp_path, capsys):
    image = str(next((tiny_store / "data" / "test" / "NORMAL").glob("*.jpeg")))
    arguments = ["explain", "tiny", image, "--out", str(tmp_path / "o"), "--artifacts", str(tiny_store / "artifacts")]
    assert cli.main([*arguments, "--method", "rollout"]) == cli.EXIT_USAGE
    assert "no attention layers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main([*arguments, "--method", "lime"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'lime'" in error and "'gradcam++'" in error and "'rollout'" in error
    assert not (tmp_path / "o" / "explanations.csv").exists()
