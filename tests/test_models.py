"""core.models: each family builds and learns; weights are a choice with clear failures."""

import os

import keras
import keras_tuner
import numpy as np
import pytest

from core import models

KERAS_HOME = models.Path(__file__).resolve().parent.parent.parent / "shared" / "keras_home"


def _learnable(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(80, 10, (n, size, size, 3))
    x[y == 1, size // 4 : size // 2, size // 4 : size // 2] += 120  # an "opacity" on pneumonia images
    return np.clip(x, 0, 255).astype("float32"), y


@pytest.mark.parametrize(
    ("family", "mode", "size"),
    [("custom_cnn", "scratch", 32), ("mobilenet", "finetune", 32), ("inception_v3", "finetune", 75), ("xception", "frozen", 71)],
)
def test_each_family_builds_a_model_that_trains(family, mode, size):
    keras.utils.set_random_seed(0)
    info = models.FAMILIES[family]
    spec = info.backbone(size, "none")
    space = models.SearchSpace(family, mode, size, spec)
    hp = keras_tuner.HyperParameters()
    model = space.build(hp)
    assert model.input_shape == (None, size, size, 3) and model.output_shape == (None, 1)
    assert "learning_rate" in hp.values
    x, y = _learnable(16, size)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    probabilities = model.predict(x, verbose=0)[:, 0]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_frozen_mode_trains_only_a_head_that_joins_the_backbone():
    spec = models.BackboneSpec("mobilenet_v2", 32, "none")
    backbone = models.build_backbone(spec)
    assert not backbone.trainable
    features = backbone.predict(_learnable(8, 32)[0], verbose=0)
    head = models.SearchSpace("mobilenet", "frozen", 32, spec, n_features=features.shape[1]).build(keras_tuner.HyperParameters())
    assert head.input_shape == (None, 1280)
    joined = models.attach_head(backbone, head)
    np.testing.assert_allclose(joined.predict(_learnable(8, 32)[0], verbose=0), head.predict(features, verbose=0), atol=1e-5)


def test_finetune_unfreezes_only_the_top_layers_and_keeps_batch_norm_frozen():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("unfreeze_layers", 10)
    model = models.build_finetune(hp, models.BackboneSpec("mobilenet_v2", 32, "none"))
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert 0 < len(trainable) <= 10
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    last_weighted = [layer for layer in base.layers if layer.weights][-10:]
    assert all(layer in last_weighted for layer in trainable)


def test_custom_cnn_depth_is_bounded_by_the_image_size():
    assert models.max_conv_blocks(32) == 3 and models.max_conv_blocks(224) == 5
    hp = keras_tuner.HyperParameters()
    hp.Fixed("conv_blocks", 3)
    assert models.build_custom_cnn(hp, 32).output_shape == (None, 1)


def test_weights_none_and_missing_files():
    assert models.resolve_weights(models.BackboneSpec("mobilenet_v2", 224, "none")) is None
    with pytest.raises(models.WeightsError, match="does not exist"):
        models.resolve_weights(models.BackboneSpec("mobilenet_v2", 224, "/no/such/file.h5"))


def test_offline_imagenet_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)  # tests never touch the network
    with pytest.raises(models.WeightsError) as error:
        models.build_backbone(models.BackboneSpec("inception_v3", 299, "imagenet"))
    message = str(error.value)
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "--weights none" in message
    assert "storage.googleapis.com" in message  # where to download it by hand


def test_wrong_weights_file_is_refused(tmp_path):
    other = tmp_path / "other.weights.h5"
    models.build_backbone(models.BackboneSpec("mobilenet_v2", 32, "none")).save_weights(other)
    with pytest.raises(models.WeightsError, match="does not fit inception_v3"):
        models.build_backbone(models.BackboneSpec("inception_v3", 75, str(other)))


@pytest.mark.skipif(not (KERAS_HOME / "models").exists(), reason="../shared/keras_home is not beside the repository")
def test_local_imagenet_weights_load_offline(monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(KERAS_HOME))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("must not download"))
    spec = models.BackboneSpec("mobilenet_v2", 224, "imagenet")
    assert models.resolve_weights(spec) == os.path.join(KERAS_HOME.resolve(), "models", spec.arch.weights_file(224, 1.0))
    x = _learnable(2, 224)[0]
    imagenet = models.build_backbone(spec).predict(x, verbose=0)
    random = models.build_backbone(models.BackboneSpec("mobilenet_v2", 224, "none")).predict(x, verbose=0)
    assert imagenet.shape == (2, 1280) and not np.allclose(imagenet, random)
    # ImageNet ReLU6 features are sparse and bounded: a sign the real weights loaded.
    assert 0 <= imagenet.min() and imagenet.max() <= 6.0001
