"""core.models: each family builds and learns; weights are a choice with clear failures."""

import inspect
import os
import re
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from core.models import backbones, builders, families, search_space
from core.search import hypermodel

KERAS_HOME = Path(__file__).resolve().parent.parent.parent / "shared" / "keras_home"


def _learnable(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(80, 10, (n, size, size, 3))
    x[y == 1, size // 4 : size // 2, size // 4 : size // 2] += 120  # an "opacity" on pneumonia images
    return np.clip(x, 0, 255).astype("float32"), y


# The families whose saved model is also converted to TF Lite here: the recipe's (MobileNet, and the hybrid with
# its own layers). Converting DenseNet121, Xception or InceptionV3 costs 20-70 s each on 2 cores; the conversion
# itself is one code path for every Keras model (core.models.engine), and tests/test_engine.py converts InceptionV3.
CONVERTED_HERE = ("mobilenet", "hybrid")


@pytest.mark.parametrize("family", families.FAMILIES)
def test_each_family_builds_a_model_that_trains_and_reloads_with_its_preprocessing(family, tmp_path):
    """One build per family (a big backbone costs 15-30 s on 2 cores): it trains, and the saved file,
    loaded as the model card loads it, gives the same probabilities from raw pixels."""
    from core.models import engine

    info = families.FAMILIES[family]
    mode, size = ("finetune" if info.transfer else "scratch"), info.min_image_size  # the smallest input: quick
    keras.utils.set_random_seed(0)
    spec = info.backbone(size, "none")
    space = hypermodel.SearchSpace(family, mode, size, spec)
    hp = keras_tuner.HyperParameters()
    model = space.build(hp)
    assert model.input_shape == (None, size, size, 3) and model.output_shape == (None, 1)
    assert "learning_rate" in hp.values
    x, y = _learnable(16, size)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    probabilities = model.predict(x, verbose=0)[:, 0]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)  # as the model card loads it
    pixels = x[:3]
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, rtol=1e-4, atol=1e-5)
    if family in CONVERTED_HERE:
        fast = engine.make_engine(loaded, "tflite", threads=1)  # the engine every search and prediction uses
        np.testing.assert_allclose(fast.predict(pixels), expected, rtol=1e-3, atol=1e-4)


def test_frozen_mode_trains_only_a_head_that_joins_the_backbone():
    spec = backbones.BackboneSpec("mobilenet_v2", 32, "none")
    backbone = backbones.build_backbone(spec)
    assert not backbone.trainable
    features = backbone.predict(_learnable(8, 32)[0], verbose=0)
    head = hypermodel.SearchSpace("mobilenet", "frozen", 32, spec, n_features=features.shape[1]).build(keras_tuner.HyperParameters())
    assert head.input_shape == (None, 1280)
    joined = builders.attach_head(backbone, head)
    np.testing.assert_allclose(joined.predict(_learnable(8, 32)[0], verbose=0), head.predict(features, verbose=0), atol=1e-5)


def test_finetune_unfreezes_only_the_top_layers_and_keeps_batch_norm_frozen():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("unfreeze_layers", 10)
    model = builders.build_finetune(hp, backbones.BackboneSpec("mobilenet_v2", 32, "none"))
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert 0 < len(trainable) <= 10
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    last_weighted = [layer for layer in base.layers if layer.weights][-10:]
    assert all(layer in last_weighted for layer in trainable)


def test_custom_cnn_depth_is_bounded_by_the_image_size():
    assert search_space.max_conv_blocks(32) == 3 and search_space.max_conv_blocks(224) == 5
    hp = keras_tuner.HyperParameters()
    hp.Fixed("conv_blocks", 3)
    assert builders.build_custom_cnn(hp, 32).output_shape == (None, 1)


def test_weights_none_and_missing_files():
    assert backbones.resolve_weights(backbones.BackboneSpec("mobilenet_v2", 224, "none")) is None
    with pytest.raises(backbones.WeightsError, match="does not exist"):
        backbones.resolve_weights(backbones.BackboneSpec("mobilenet_v2", 224, "/no/such/file.h5"))


TRANSFER = [name for name, info in families.FAMILIES.items() if info.transfer]


@pytest.mark.parametrize("family", TRANSFER)
def test_offline_imagenet_names_the_file_and_the_folder(family, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)  # tests never touch the network
    info = families.FAMILIES[family]
    spec = info.backbone(info.default_image_size, "imagenet")
    with pytest.raises(backbones.WeightsError) as error:
        backbones.build_backbone(spec)
    message = str(error.value)
    assert spec.arch.weights_file(spec.image_size, spec.alpha) in message
    assert str(tmp_path / "models") in message and "--weights none" in message
    assert spec.arch.weights_url(spec.image_size, spec.alpha) in message  # where to download it by hand
    assert "storage.googleapis.com" in message


@pytest.mark.parametrize("family", TRANSFER)
def test_a_local_weights_file_loads_offline(family, tmp_path, monkeypatch):
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("must not download"))
    info = families.FAMILIES[family]
    keras.utils.set_random_seed(1)
    saved = backbones.build_backbone(info.backbone(info.min_image_size, "none"))
    file = tmp_path / f"{family}.weights.h5"
    next(layer for layer in saved.layers if isinstance(layer, keras.Model)).save_weights(file)  # a no-top file
    keras.utils.set_random_seed(2)
    loaded = backbones.build_backbone(info.backbone(info.min_image_size, str(file)))
    # The file, not the seed, decided: seed 2 draws other random weights than the saved seed 1,
    # so only weights read from the file can equal the saved ones.
    for mine, theirs in zip(loaded.weights, saved.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert any(not np.allclose(np.asarray(w), 0) for w in saved.weights)  # weights really random, not all zero
    x = _learnable(2, info.min_image_size)[0]
    # Relative only: random MobileNetV2 features are tiny (about 1e-11), so any absolute tolerance passes
    np.testing.assert_allclose(loaded.predict(x, verbose=0), saved.predict(x, verbose=0), rtol=1e-4, atol=0)


def test_wrong_weights_file_is_refused(tmp_path):
    other = tmp_path / "other.weights.h5"
    backbones.build_backbone(backbones.BackboneSpec("mobilenet_v2", 32, "none")).save_weights(other)
    with pytest.raises(backbones.WeightsError, match="does not fit inception_v3"):
        backbones.build_backbone(backbones.BackboneSpec("inception_v3", 75, str(other)))


@pytest.mark.skipif(not (KERAS_HOME / "models").exists(), reason="../shared/keras_home is not beside the repository")
def test_local_imagenet_weights_load_offline(monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(KERAS_HOME))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: pytest.fail("must not download"))
    spec = backbones.BackboneSpec("mobilenet_v2", 224, "imagenet")
    assert backbones.resolve_weights(spec) == os.path.join(KERAS_HOME.resolve(), "models", spec.arch.weights_file(224, 1.0))
    x = _learnable(2, 224)[0]
    imagenet = backbones.build_backbone(spec).predict(x, verbose=0)
    random = backbones.build_backbone(backbones.BackboneSpec("mobilenet_v2", 224, "none")).predict(x, verbose=0)
    assert imagenet.shape == (2, 1280) and not np.allclose(imagenet, random)
    # ImageNet ReLU6 features are sparse and bounded: a sign the real weights loaded.
    assert 0 <= imagenet.min() and imagenet.max() <= 6.0001


BACKBONES = sorted({name for family in TRANSFER for name in [families.FAMILIES[family].architecture, *families.FAMILIES[family].versions.values()]})


@pytest.mark.parametrize("architecture", BACKBONES)
def test_min_image_size_is_the_smallest_keras_accepts(architecture):
    arch = backbones.ARCHITECTURES[architecture]
    constructor = getattr(keras.applications, arch.constructor)
    with pytest.raises(ValueError, match=f"at least {arch.min_image_size}x{arch.min_image_size}"):
        constructor(include_top=False, weights=None, input_shape=(arch.min_image_size - 1,) * 2 + (3,))


@pytest.mark.parametrize("family", families.FAMILIES)
def test_settings_refuse_an_input_below_the_familys_minimum(family, tmp_path):
    from core.search.settings import SearchSettings, SettingsError

    info = families.FAMILIES[family]
    if info.min_image_size > 32:  # below 32 the general size check speaks instead
        with pytest.raises(SettingsError, match=f"{family} needs images of at least {info.min_image_size} pixels"):
            SearchSettings(data_dir=str(tmp_path), family=family, mode=info.default_mode, image_size=info.min_image_size - 1).resolved()
    assert SearchSettings(data_dir=str(tmp_path), family=family, mode=info.default_mode, image_size=info.min_image_size).resolved()


def _keras_module(arch: backbones.Architecture):
    # The private module that defines the public constructor: where Keras keeps its weight addresses
    # and its `preprocess_input`. Reached through the public object, so a move inside keras.src
    # still finds it; a changed address or preprocessing fails here.
    return inspect.getmodule(getattr(keras.applications, arch.constructor))


@pytest.mark.parametrize("architecture", BACKBONES)
def test_weight_addresses_agree_with_the_installed_keras(architecture):
    arch = backbones.ARCHITECTURES[architecture]
    module = _keras_module(arch)
    addresses = [v for v in vars(module).values() if isinstance(v, str) and v.startswith("https://")]
    for alpha in arch.widths or [1.0]:
        url = arch.weights_url(224, alpha)  # a whole address, or a file under Keras's base folder
        assert any(url == a or (a.endswith("/") and url.startswith(a)) for a in addresses), url


@pytest.mark.skipif(not (KERAS_HOME / "models").exists(), reason="../shared/keras_home is not beside the repository")
def test_weight_file_names_are_those_keras_saved():
    names = {arch.weights_file(224, alpha) for arch in backbones.ARCHITECTURES.values() for alpha in arch.widths or [1.0]}
    saved = {path.name for path in (KERAS_HOME / "models").glob("*.h5")}
    assert saved and saved <= names


@pytest.mark.parametrize("architecture", BACKBONES)
def test_preprocessing_is_kerass_preprocess_input(architecture):
    arch = backbones.ARCHITECTURES[architecture]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = np.asarray(_keras_module(arch).preprocess_input(pixels.copy()))
    ours = np.asarray(arch.preprocessing.layer()(pixels)) if arch.preprocessing else pixels
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_weights_file_names_a_width_keras_lacks():
    v1 = backbones.ARCHITECTURES["mobilenet_v1"]
    assert v1.weights_file(160, 0.5) == "mobilenet_5_0_160_tf_no_top.h5"  # Keras's own spelling of 0.5
    assert v1.weights_file(300, 1.0) == "mobilenet_1_0_224_tf_no_top.h5"  # other sizes use the 224 file
    with pytest.raises(ValueError, match="no ImageNet weights for mobilenet_v1 at width 0.35"):
        v1.weights_file(224, 0.35)


def test_one_weights_check_for_settings_and_backbones(tmp_path):
    from core.search.settings import SearchSettings, SettingsError

    assert backbones.weights_problem("imagenet") is None and backbones.weights_problem("none") is None
    file = tmp_path / "w.h5"
    file.write_bytes(b"x")
    assert backbones.weights_problem(str(file)) is None
    for bad in ("/no/such/file.h5", "", str(tmp_path)):
        problem = backbones.weights_problem(bad)
        assert problem and "does not exist" in problem
        with pytest.raises(SettingsError, match=re.escape(problem)):
            SearchSettings(data_dir=str(tmp_path), family="mobilenet", weights=bad).resolved()
        with pytest.raises(backbones.WeightsError, match=re.escape(problem)):
            backbones.resolve_weights(backbones.BackboneSpec("mobilenet_v2", 224, bad))


@pytest.mark.parametrize("family", families.FAMILIES)
def test_settings_take_the_versions_and_widths_of_the_familys_entry(family, tmp_path):
    """The settings check knows versions and widths only through the registry entry."""
    from core.search.settings import SearchSettings, SettingsError

    info = families.FAMILIES[family]
    base = {"data_dir": str(tmp_path), "family": family, "weights": "none", "mode": info.default_mode}
    for version in info.versions or [None]:
        name = info.versions[version] if version else info.architecture
        widths = tuple(backbones.ARCHITECTURES[name].widths) if name else ()
        assert info.widths(version) == widths
        assert set(widths) <= set(info.all_widths)
        chosen = {**base, "mobilenet_version": version or "v2"}
        for alpha in widths:
            assert SearchSettings(**chosen, alpha=alpha).resolved().alpha == alpha
        if widths:
            with pytest.raises(SettingsError, match=f"{info.title} {version} comes in widths"):
                SearchSettings(**chosen, alpha=0.123).resolved()
    if info.versions:
        assert info.versions[info.default_version] == info.architecture
        with pytest.raises(SettingsError, match=f"{info.title} {info.version_label} must be one of"):
            SearchSettings(**base, mobilenet_version="v0").resolved()
    else:
        assert info.default_version is None and info.all_widths == info.widths()


@pytest.mark.parametrize("family", TRANSFER)
def test_each_familys_default_cut_splits_its_backbone(family):
    from core.models import backbone_cut

    info = families.FAMILIES[family]
    spec = info.backbone(info.min_image_size, "none")
    keras.utils.set_random_seed(0)
    backbone = backbones.build_backbone(spec)
    cut = backbone_cut.split_backbone(backbone, spec.arch.default_cut)
    x = _learnable(2, info.min_image_size)[0]
    expected = backbone.predict(x, verbose=0)
    np.testing.assert_allclose(cut.top.predict(cut.bottom.predict(x, verbose=0), verbose=0), expected, rtol=1e-4, atol=1e-6)
