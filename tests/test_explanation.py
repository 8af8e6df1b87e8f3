"""core.inference.explanation: Grad-CAM through every model structure, following the evidence, and overlays."""

import keras
import keras_tuner
import numpy as np
import pytest
from PIL import Image

from core import files
from core.data import loading
from core.inference import evaluation, explanation, methods
from core.models import backbones, builders
from core.runs import artifacts
from tests.helpers import OPACITY_SIZE, train_opacity_detector, with_square

SIZE = OPACITY_SIZE  # the tiny trained CNN's input


def _hp(**values) -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(np.float32)


def _inside(layer, model) -> bool:
    """Whether `layer` belongs to a model nested in `model` (not to `model`'s own layers)."""
    nested = [inner for inner in model.layers if isinstance(inner, keras.Model)]
    stack = list(nested)
    while stack:
        inner = stack.pop()
        if any(candidate is layer for candidate in inner.layers):
            return True
        stack += [child for child in inner.layers if isinstance(child, keras.Model)]
    return False


def _check_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> None:
    assert heatmap.shape == shape
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def _frozen(architecture: str, size: int) -> keras.Model:
    backbone = backbones.build_backbone(backbones.BackboneSpec(architecture, size, "none"))
    head = builders.build_head(_hp(dense_units=0, dropout=0.0), backbone.output_shape[-1])
    return builders.attach_head(backbone, head)


# ---------------------------------------------------------------------------- every structure


def test_custom_cnn_uses_its_last_spatial_layer():
    keras.utils.set_random_seed(0)
    model = builders.build_custom_cnn(_hp(conv_blocks=3, filters=16, kernel_size=3, batch_norm=True), SIZE)
    layer = explanation.find_last_feature_map(model)
    assert layer.name.startswith("max_pooling2d")  # the last block's output: 32 / 2**3 = 4
    _check_heatmap(explanation.grad_cam(model, _image(SIZE)), (4, 4))
    # A grayscale uint8 image, as data.load_image gives, is accepted too.
    gray = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    _check_heatmap(explanation.grad_cam(model, gray), (4, 4))
    with pytest.raises(ValueError, match="takes 32x32"):
        explanation.grad_cam(model, _image(40))


def test_frozen_mobilenet_classifier_looks_inside_the_nested_base():
    keras.utils.set_random_seed(0)
    model = _frozen("mobilenet_v2", 64)
    layer = explanation.find_last_feature_map(model)
    assert layer.name == "out_relu" and _inside(layer, model)  # not the base's pooling
    heatmap = explanation.grad_cam(model, _image(64))
    _check_heatmap(heatmap, (2, 2))
    assert heatmap.max() == pytest.approx(1.0)  # random weights still give some positive evidence


def test_finetune_model_and_its_reloaded_copy_give_the_same_heatmap(tmp_path):
    keras.utils.set_random_seed(0)
    model = builders.build_finetune(_hp(dense_units=0, dropout=0.0, unfreeze_layers=10), backbones.BackboneSpec("mobilenet_v2", 64, "none"))
    layer = explanation.find_last_feature_map(model)
    assert layer.name == "out_relu" and _inside(layer, model)
    heatmap = explanation.grad_cam(model, _image(64, seed=3))
    _check_heatmap(heatmap, (2, 2))

    # Saved as a run saves it and reloaded in safe mode: the nested graphs survive.
    files.save_model(tmp_path / artifacts.MODEL, model)
    reloaded = evaluation.load_model(tmp_path / artifacts.MODEL)
    assert explanation.find_last_feature_map(reloaded).name == "out_relu"
    np.testing.assert_allclose(explanation.grad_cam(reloaded, _image(64, seed=3)), heatmap, atol=1e-4)

    # heatmap_for_run: the run's input size for the network, the file's own size for the overlay.
    run = artifacts.Run("ft", tmp_path, {"image_size": 64}, {}, None)
    Image.fromarray(_image(90, seed=4)[:64, :, 0].astype(np.uint8), mode="L").save(tmp_path / "wide.png")
    run_heatmap, original = methods.heatmap_for_run(run, tmp_path / "wide.png", model=reloaded)
    _check_heatmap(run_heatmap, (2, 2))
    assert original.size == (90, 64)  # not squashed to the network's 64x64
    assert explanation.overlay(original, run_heatmap).size == original.size
    with pytest.raises(artifacts.RunError, match="no saved model"):
        methods.heatmap_for_run(artifacts.Run("empty", tmp_path / "empty", {}, {}, None), tmp_path / "wide.png")


def test_inception_at_75_px_falls_back_to_the_last_block_with_a_spatial_extent():
    keras.utils.set_random_seed(0)
    model = _frozen("inception_v3", 75)
    layer = explanation.find_last_feature_map(model)
    # mixed8..mixed10 are 1x1 at 75 px; mixed7 (3x3) is the last whole block, not a branch inside mixed8.
    assert layer.name == "mixed7" and _inside(layer, model)
    _check_heatmap(explanation.grad_cam(model, _image(75)), (3, 3))


def test_a_model_without_a_spatial_map_is_refused():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    with pytest.raises(ValueError, match="no spatial feature map"):
        explanation.find_last_feature_map(model)


# ---------------------------------------------------------------------------- following the evidence


def _quadrant(heatmap: np.ndarray) -> tuple[int, int]:
    """(row half, column half) of the heatmap's centre of mass: 0 = top/left, 1 = bottom/right."""
    rows, cols = np.indices(heatmap.shape) + 0.5
    total = heatmap.sum()
    centre = (float((rows * heatmap).sum() / total), float((cols * heatmap).sum() / total))
    return int(centre[0] > heatmap.shape[0] / 2), int(centre[1] > heatmap.shape[1] / 2)


@pytest.fixture(scope="module")
def opacity_detector() -> keras.Model:
    return train_opacity_detector()


@pytest.mark.parametrize(("top", "left"), [(2, 2), (22, 22), (2, 22), (22, 2)])
def test_heatmap_follows_the_opacity(opacity_detector, top, left):
    image = with_square(top, left, seed=top * 100 + left)
    assert opacity_detector.predict(image[None], verbose=0)[0, 0] > 0.5
    heatmap = explanation.grad_cam(opacity_detector, image)
    assert heatmap.shape == (8, 8)  # 32 px after two poolings
    expected = (int(top > SIZE / 2), int(left > SIZE / 2))
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert (int(peak[0] >= 4), int(peak[1] >= 4)) == expected
    assert _quadrant(heatmap) == expected


def test_saturated_sigmoid_still_gives_a_heatmap(opacity_detector, monkeypatch):
    """Scaled up so the probability rounds to 1.0: the logit still has gradients, p has none."""
    model = keras.models.clone_model(opacity_detector)
    model.set_weights(opacity_detector.get_weights())
    dense = explanation.output_dense(model)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 50, bias * 50])
    image = with_square(2, 2, seed=7)
    assert model.predict(image[None], verbose=0)[0, 0] == 1.0  # saturated in float32
    heatmap = explanation.grad_cam(model, image)
    assert heatmap.max() == pytest.approx(1.0)
    assert _quadrant(heatmap) == (0, 0)
    # The probability's gradients vanish here: without the logit the guard gives an empty map.
    monkeypatch.setattr(explanation, "output_dense", lambda _model: None)
    np.testing.assert_array_equal(explanation.grad_cam(model, image), 0.0)


# ---------------------------------------------------------------------------- overlays


def test_overlay_keeps_the_original_size_and_aspect_ratio():
    original = Image.new("L", (120, 80), 100)  # PIL sizes are (width, height): a landscape image
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = 1.0  # hot top-left corner
    result = explanation.overlay(original, heatmap, opacity=0.5)
    assert result.mode == "RGB" and result.size == (120, 80)
    pixels = np.asarray(result).astype(int)
    # jet: the hot corner is tinted red, the cold opposite corner blue, over the grey of 100.
    hot, cold = pixels[2, 2], pixels[-3, -3]
    assert hot[0] > 100 and hot[2] < 60
    assert cold[2] > 100 and cold[0] < 60
    # The heatmap was stretched to the original's 3:2 shape: a heatmap hot in its left column is
    # hot over the left quarter of the width, whatever the height.
    column = np.zeros((4, 4), np.float32)
    column[:, 0] = 1.0
    red = np.asarray(explanation.overlay(original, column, opacity=1.0))[..., 0].astype(int)
    assert (red[:, 5] > 100).all() and (red[:, 60] < 20).all()
    # Arrays: (H, W) and (H, W, 3) give the same size.
    assert explanation.overlay(np.asarray(original), heatmap).size == (120, 80)
    assert explanation.overlay(np.zeros((80, 120, 3), np.uint8), heatmap, colormap="turbo").size == (120, 80)


def test_overlay_at_zero_opacity_is_the_original():
    rgb = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(explanation.overlay(rgb, np.ones((3, 3)), opacity=0.0)), rgb)
    gray = Image.fromarray(rgb[..., 0], mode="L")
    np.testing.assert_array_equal(np.asarray(explanation.overlay(gray, np.ones((3, 3)), opacity=0.0)), np.asarray(gray.convert("RGB")))


def test_the_overlays_original_is_decoded_as_the_networks_input(tmp_path):
    """One decoder: `load_original` (the overlay's picture, unresized) and `loading.load_image` (the
    network's input) give the same pixels for a 16-bit PNG and an RGBA PNG."""
    rng = np.random.default_rng(0)
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(1000, 40000, (48, 64)).astype(np.uint16)).save(deep)
    alpha = tmp_path / "alpha.png"
    rgba = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    rgba[:, :16, 3] = 0  # a transparent strip
    Image.fromarray(rgba, mode="RGBA").save(alpha)
    for path in (deep, alpha):
        original = explanation.load_original(path)
        assert original.mode == "L" and original.size == (64, 48)
        squashed = np.asarray(original.resize((32, 32), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(loading.load_image(path, 32)[..., 0], squashed)
        np.testing.assert_array_equal(loading.load_image(path, 48)[..., 0], np.asarray(original.resize((48, 48), Image.Resampling.BILINEAR)))
    stretched = np.asarray(explanation.load_original(deep))
    assert stretched.min() == 0 and stretched.max() >= 254  # 16 bits rescaled to the image's own range, not clipped
    assert not np.asarray(explanation.load_original(alpha))[:, :16].any()  # transparent pixels lie on black


def test_colormaps_run_from_cold_to_hot_and_bad_arguments_are_refused():
    for name in explanation.COLORMAPS:
        cold, hot = explanation.colorize(np.array([0.1, 0.9]), name)
        assert cold[2] > cold[0] and hot[0] > hot[2]  # blue end, red end
    with pytest.raises(ValueError, match="unknown colormap"):
        explanation.colorize(np.zeros(2), "viridis")
    with pytest.raises(ValueError, match="opacity"):
        explanation.overlay(np.zeros((4, 4)), np.zeros((2, 2)), opacity=1.5)


def test_the_keras_internals_grad_cam_reads_still_exist():
    """Grad-CAM reads two private Keras attributes (no public API says which layer made a tensor, or
    which nodes a Functional graph has at each depth). If a Keras upgrade renames either, the
    fallbacks would quietly pick another layer (the last of `model.layers`) or none: this test
    fails first, naming the function to update.
    """
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    output = keras.layers.Dense(1, activation="sigmoid", name="probability")(pooled)
    model = keras.Model(inputs, output)

    history = getattr(model.outputs[0], "_keras_history", None)
    assert history is not None, "keras tensors lost `_keras_history`: update explanation.output_dense"
    assert history[0].name == "probability"
    assert explanation.output_dense(model).name == "probability"
    by_depth = getattr(model, "_nodes_by_depth", None)
    assert by_depth, "Functional models lost `_nodes_by_depth`: update explanation._nodes_in_order"
    assert explanation.find_last_feature_map(model).name == "conv"
