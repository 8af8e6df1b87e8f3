"""Cut-point fine-tuning, augmentation and test-time augmentation.

The activation cache is reused when nothing that fixes it changed and rebuilt when the cut, the
weights or the augmentation changed; a model fine-tuned on cached activations gives, once saved
and reloaded, the probabilities of its evaluation from raw pixels.
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from core.data import augmentation, loading
from core.evidence import stress
from core.inference import evaluation
from core.models import backbone_cut, backbones
from core.runs import artifacts
from core.search import activations, hypermodel
from tests.helpers import SHARED_DATA, make_dataset, run_cli

V2_WEIGHTS = SHARED_DATA.parent.parent / "keras_home" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("cut") / "chest_xray", {"train": 4}, images_per_patient=1, size=40)
    return sorted(str(p) for p in root.rglob("*.jpeg"))


def _cut(weights: str = "none", cut: str = "block_12_add") -> tuple[backbone_cut.CutBackbone, backbones.BackboneSpec]:
    spec = backbones.BackboneSpec("mobilenet_v2", 32, weights)
    return backbone_cut.split_backbone(backbones.build_backbone(spec), cut), spec


def _cache(cut, spec, images, cache_dir, augment="light", views=2, seed=0, views_seed=None):
    train = np.arange(len(images)) < 6
    return activations.cached_activations(
        cut, spec, images, train, cache_dir, augmentation.preset(augment), views, seed=seed, log=lambda _: None, views_seed=views_seed,
    )


def test_split_backbone_joins_back_to_the_whole_backbone():
    keras.utils.set_random_seed(0)
    spec = backbones.BackboneSpec("mobilenet_v2", 32, "none")
    backbone = backbones.build_backbone(spec)
    cut = backbone_cut.split_backbone(backbone, "block_12_add")
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cut.top.predict(cut.bottom.predict(x, verbose=0), verbose=0), backbone.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(backbone_cut.CutError, match="has no layer 'nope'"):
        backbone_cut.split_backbone(backbone, "nope")
    with pytest.raises(backbone_cut.CutError, match="cannot be cut after 'block_12_project_BN'"):
        backbone_cut.split_backbone(backbone, "block_12_project_BN")  # the residual add also reads block 11


def test_activation_cache_is_reused_and_invalidated(images, tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    cut, spec = _cut()
    first = _cache(cut, spec, images, tmp_path)
    assert first.clean.shape == (len(images), *cut.activation_shape) and first.clean.dtype == np.float16
    assert first.views.shape == (2, 6, *cut.activation_shape)
    assert not np.array_equal(first.views[0], first.views[1]), "two augmented views differ"

    # Same backbone, cut, images and augmentation: read back, nothing computed.
    monkeypatch.setattr(activations, "_fill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = _cache(cut, spec, images, tmp_path)
    np.testing.assert_array_equal(np.asarray(first.clean), np.asarray(again.clean))
    np.testing.assert_array_equal(np.asarray(first.views), np.asarray(again.views))
    monkeypatch.undo()

    def files() -> set[str]:
        return {p.name for p in (tmp_path / "activations").glob("*.npy")}

    before = files()
    _cache(cut, spec, images, tmp_path, augment="medium")  # other augmentation: new views, same clean
    assert len(files() - before) == 1 and all("-views-" in name for name in files() - before)
    before = files()
    _cache(cut, spec, images, tmp_path, views=3)  # more views: new views file
    assert len(files() - before) == 1
    before = files()
    other_cut, _ = _cut(cut="block_13_project_BN")
    _cache(other_cut, spec, images, tmp_path)  # another cut: new clean and views
    assert len(files() - before) == 2 and all("block_13_project_BN" in name for name in files() - before)
    before = files()
    weights = tmp_path / "other.weights.h5"
    base = next(layer for layer in backbones.build_backbone(spec).layers if isinstance(layer, keras.Model))
    base.save_weights(weights)
    file_cut, file_spec = _cut(str(weights))
    first_file = _cache(file_cut, file_spec, images, tmp_path)  # other weights: new clean and views
    assert len(files() - before) == 2
    before = files()
    # A repeat trains with another seed on its source's views (views_seed): nothing new is cached,
    # while another seed's own views are new draws.
    repeat_views = _cache(file_cut, file_spec, images, tmp_path, seed=43, views_seed=0)
    assert files() == before
    np.testing.assert_array_equal(np.asarray(repeat_views.views), np.asarray(first_file.views))
    _cache(file_cut, file_spec, images, tmp_path, seed=43)
    assert len(files() - before) == 1 and all("-views-" in name for name in files() - before)


def test_training_data_draws_one_view_per_image_per_epoch():
    n, views = 40, 3
    clean = np.zeros((n, 2, 2, 1), np.float16)
    stacked = np.stack([np.full((n, 2, 2, 1), v, np.float16) + np.arange(n)[:, None, None, None] * 10 for v in range(views)])
    labels = np.arange(n) % 2
    dataset = activations.training_dataset(stacked, clean, labels, batch_size=8, seed=0)
    seen = set()
    for _ in range(2):
        rows = 0
        for x, y in dataset.as_numpy_iterator():
            image = (x[:, 0, 0, 0] // 10).astype(int)
            np.testing.assert_array_equal(labels[image], y)  # labels follow their images
            seen |= set((x[:, 0, 0, 0] % 10).astype(int).tolist())
            rows += len(y)
        assert rows == n  # every image once per epoch
    assert seen == {0, 1, 2}, "each view is drawn"


def test_augmentation_layers_change_images_only_while_training():
    layers = augmentation.augmentation_layers(augmentation.preset("medium"))
    assert len(layers) == 6 and augmentation.augmentation_layers(augmentation.preset("off")) == []
    x = np.random.default_rng(0).uniform(0, 255, (2, 24, 24, 1)).astype("float32")
    inference = train = x
    for layer in layers:
        inference, train = layer(inference, training=False), layer(train, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(inference), x)
    assert not np.allclose(keras.ops.convert_to_numpy(train), x)
    views = augmentation.augmented_views(x.astype(np.uint8), augmentation.preset("light"), 2, seed=3)
    np.testing.assert_array_equal(views, augmentation.augmented_views(x.astype(np.uint8), augmentation.preset("light"), 2, seed=3))
    with pytest.raises(ValueError, match="unknown augmentation 'wild'"):
        augmentation.preset("wild")


def test_border_erasing_blacks_out_the_border_band_of_some_views_and_only_there():
    pixels = np.full((200, 40, 40, 1), 200, np.uint8)
    erased = augmentation.erase_borders(pixels, 0.5, np.random.default_rng(0))
    changed = (erased != pixels).reshape(len(pixels), -1).any(axis=1)
    assert 0.35 < changed.mean() < 0.65  # about half the images
    low, high = augmentation.BORDER_BAND_RANGE
    for image in erased[changed]:
        black = image[..., 0] == 0
        assert black[:, 0].all() and black[0, :].all() and black[:, -1].all() and black[-1, :].all()  # every side
        assert not black[round(40 * high) : 40 - round(40 * high), round(40 * high) : 40 - round(40 * high)].any()  # never the centre
    np.testing.assert_array_equal(erased[~changed], pixels[~changed])
    # the cached views carry it, under their own cache key; the presets without it keep theirs
    strong, border = augmentation.preset("strong"), augmentation.preset("strong-border")
    views = augmentation.augmented_views(pixels[:20], border, 2, seed=1)
    assert (views[..., 0, 0, 0] == 0).mean() > 0.25
    assert activations.views_key(strong, 3, 42) != activations.views_key(border, 3, 42)
    assert activations.views_key(strong, 3, 42) == activations.views_key(augmentation.Augmentation(**{
        k: getattr(strong, k) for k in ("rotation_deg", "zoom", "zoom_in", "shift", "contrast", "brightness", "sharpness")}), 3, 42)
    # it is no Keras layer: a search that would need one is refused with the reason
    with pytest.raises(ValueError, match="cached augmented views only"):
        augmentation.augmentation_layers(border)
    assert not augmentation.in_model("strong-border") and augmentation.in_model("strong")


def test_acquisition_changes_and_noise_reach_the_cached_views_under_their_own_key():
    pixels = np.random.default_rng(0).integers(30, 220, (40, 24, 24, 1)).astype(np.uint8)
    changed = augmentation.change_acquisition(pixels, 1.0, np.random.default_rng(0))
    assert ((changed != pixels).reshape(len(pixels), -1).any(axis=1)).mean() > 0.9  # every image (a level near 1 may keep one)
    np.testing.assert_array_equal(augmentation.change_acquisition(pixels, 0.0, np.random.default_rng(0)), pixels)
    site = augmentation.Augmentation(acquisition=1.0)
    views = augmentation.augmented_views(pixels, site, 2, seed=1)
    assert (views != pixels[None]).reshape(2, len(pixels), -1).any(axis=2).mean() > 0.9
    np.testing.assert_array_equal(views, augmentation.augmented_views(pixels, site, 2, seed=1))
    noisy = augmentation.Augmentation(noise=0.04)
    grey = np.full((200, 16, 16, 1), 128, np.uint8)
    spreads = (augmentation.augmented_views(grey, noisy, 1, seed=0)[0].astype(float) - 128).std(axis=(1, 2, 3))
    assert spreads.max() < 0.04 * 255 * 1.2 and spreads.min() < 2 < 8 < spreads.max()  # σ drawn up to 4 % of 255
    strong, preset = augmentation.preset("strong"), augmentation.preset("strong-site")
    keys = {activations.views_key(a, 3, 42) for a in (strong, preset, site, noisy, augmentation.Augmentation())}
    assert len(keys) == 5
    with pytest.raises(ValueError, match="cached augmented views only"):
        augmentation.augmentation_layers(preset)
    assert not augmentation.in_model("strong-site") and "noise" in preset.describe() and not augmentation.cached_only(strong)


def test_tta_views_are_fixed_mild_variations():
    pixels = np.zeros((1, 50, 50, 1), np.uint8)
    pixels[0, 20:30, 20:30] = 255
    views = augmentation.tta_views(pixels, 6)
    assert len(views) == 6 and all(v.shape == pixels.shape for v in views)
    np.testing.assert_array_equal(views[0], pixels)
    centre = [np.argwhere(v[0, ..., 0] > 128).mean(axis=0) for v in views]
    assert np.allclose(centre[1], centre[0], atol=0.6)  # a zoom on the centre keeps the centre
    assert centre[2][1] > centre[0][1] and centre[3][1] < centre[0][1]  # shifted sideways by 2 px
    assert centre[4][0] > centre[0][0] and centre[5][0] < centre[0][0]  # and up and down
    with pytest.raises(ValueError, match="1 to 6 views"):
        augmentation.tta_views(pixels, 7)


def test_cut_model_builds_fresh_tops_per_trial():
    keras.utils.set_random_seed(0)
    cut, spec = _cut()
    hp = keras_tuner.HyperParameters()
    space = hypermodel.SearchSpace("mobilenet", "finetune", 32, spec, cut=cut)
    first = space.build(hp)
    trainable = {w.path for w in first.trainable_weights}
    assert any("dense" not in path and "probability" not in path for path in trainable), "the top trains"
    assert first.input_shape == (None, *cut.activation_shape)
    first.layers[1].set_weights([w * 0 for w in first.layers[1].get_weights()])
    second = space.build(hp)  # a new trial starts from the backbone's weights, not the last trial's
    assert any(np.abs(w).sum() > 0 for w in second.layers[1].get_weights())


def _cut_point_search(dataset: Path, tmp_path: Path, name: str) -> artifacts.Run:
    """A one-trial fine-tuned search above the cut on 2 cached views, its caches in tmp_path/cache."""
    result = run_cli(
        "tune", "--data", str(dataset), "--family", "mobilenet", "--mode", "finetune", "--weights", str(V2_WEIGHTS),
        "--image-size", "48", "--trials", "1", "--epochs", "1", "--augment", "light", "--augment-views", "2",
        "--name", name, "--artifacts", str(tmp_path / "runs"), env={"CXR_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return artifacts.load_run(tmp_path / "runs", name)


@pytest.mark.skipif(not V2_WEIGHTS.exists(), reason="../shared/keras_home has no MobileNetV2 weights")
def test_finetuned_run_reloads_and_reproduces_its_probabilities_from_pixels(tmp_path):
    dataset = make_dataset(tmp_path / "chest_xray", {"train": 12, "test": 6}, images_per_patient=2, size=48)
    run = _cut_point_search(dataset, tmp_path, "cut")
    assert run.metrics["activation_cache"] == {"cut": "block_12_add", "augment": "light", "views": 2}
    assert "bottom pass below block_12_add" in (run.folder / "log.txt").read_text()
    saved = run.predictions()
    assert saved["probability"].std() > 1e-4, "real features give image-specific probabilities"
    again = evaluation.predict_files(run, list(saved["path"]), engine="keras")
    np.testing.assert_allclose(again["probability"], saved["probability"], atol=1e-4)

    # The stress test scored the changed validation images through the top over their cached bottom
    # activations: what the saved model gives on the changed pixels, to the 6 decimals saved.
    stressed = run.val_stress_predictions()
    model = evaluation.load_model(run.model_path)
    pixels = np.stack([loading.load_image(p, 48) for p in stressed["path"]])
    for name in ("JPEG quality 10", "rotated ±10°", "noise σ 12"):
        whole, _ = evaluation.probabilities(model, stress.PERTURBATIONS[name](pixels), "auto")
        np.testing.assert_allclose(stressed[name], whole, atol=1e-6, err_msg=name)
    cached = list((tmp_path / "cache" / "activations").glob("*-stress-*.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").dtype == np.float32
    cut = backbone_cut.split_backbone(backbones.build_backbone(backbones.BackboneSpec("mobilenet_v2", 48, str(V2_WEIGHTS))), "block_12_add")
    logged = []
    with pytest.MonkeyPatch.context() as patch:  # a later run of the same backbone and cut computes nothing
        patch.setattr("core.models.engine.make_engine", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
        again = activations.stressed_activations(cut, backbones.BackboneSpec("mobilenet_v2", 48, str(V2_WEIGHTS)), list(stressed["path"]),
                                                 pixels, tmp_path / "cache", seed=42, log=logged.append)
    assert list(again) == list(stress.PERTURBATIONS) and "is cached" in logged[0]

    # The same search again, every cache now warm: it draws no views, and trains the same model.
    warm = _cut_point_search(dataset, tmp_path, "warm")
    log = (warm.folder / "log.txt").read_text()
    assert "bottom pass skipped" in log and "augmented views of" not in log
    for table in ("predictions", "val_predictions"):
        np.testing.assert_allclose(getattr(warm, table)()["probability"], getattr(run, table)()["probability"], atol=1e-6, err_msg=table)


@pytest.mark.skipif(not V2_WEIGHTS.exists(), reason="../shared/keras_home has no MobileNetV2 weights")
def test_tta_is_recorded_and_used_by_predict(tmp_path):
    dataset = make_dataset(tmp_path / "chest_xray", {"train": 12, "test": 6}, images_per_patient=2, size=48)
    result = run_cli(
        "tune", "--data", str(dataset), "--family", "mobilenet", "--weights", str(V2_WEIGHTS), "--image-size", "48",
        "--trials", "1", "--epochs", "1", "--tta", "3", "--name", "tta", "--artifacts", str(tmp_path / "runs"),
        env={"CXR_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = artifacts.load_run(tmp_path / "runs", "tta")
    assert run.metrics["tta"]["views"] == 3
    saved = run.predictions()
    model = evaluation.load_model(run.model_path)
    pixels = np.stack([loading.load_image(p, 48) for p in saved["path"]])
    plain, _ = evaluation.probabilities(model, pixels, "keras")
    averaged, _ = evaluation.probabilities(model, pixels, "keras", tta=3)
    np.testing.assert_allclose(saved["probability"], averaged, atol=1e-4)
    assert np.abs(plain - averaged).max() > 1e-5, "the views change the probabilities"
    np.testing.assert_allclose(evaluation.predict_files(run, list(saved["path"]))["probability"], averaged, atol=1e-4)


def test_a_presets_every_setting_is_the_search_it_starts():
    """What the Tune form shows for a preset equals the settings the search resolves to, field by
    field: its own settings, the search's defaults for the rest, the family's input size."""
    from dataclasses import asdict

    from core.search import presets
    from core.search.settings import SearchSettings

    for chosen in presets.PRESETS.values():
        shown = chosen.every_setting()
        resolved = asdict(SearchSettings(data_dir="D", **chosen.settings).resolved())
        compared = [key for key in shown if key in resolved and key not in ("data_dir", "name", "started_at")]
        assert {"tuner", "weights", "augment_views", "tta", "image_size", "trials", "epochs"} <= set(compared)
        assert {key: shown[key] for key in compared} == {key: resolved[key] for key in compared}


def test_presets_fill_settings_and_options_override_them():
    from core import cli
    from core.search import presets
    from core.search.settings import SearchSettings, SettingsError

    parser = cli.build_parser()
    recommended = presets.preset("recommended").settings
    settings = cli.tune_settings(parser.parse_args(["tune", "--data", "D", "--preset", "recommended"]))
    assert {key: getattr(settings, key) for key in recommended} == recommended
    assert settings.batch_size == SearchSettings(data_dir="D").batch_size  # not named: the default
    overridden = cli.tune_settings(parser.parse_args(["tune", "--data", "D", "--preset", "recommended", "--epochs", "2"]))
    assert overridden.epochs == 2 and overridden.augment == recommended["augment"]
    plain = cli.tune_settings(parser.parse_args(["tune", "--data", "D", "--family", "custom_cnn"]))
    assert (plain.trials, plain.epochs, plain.augment, plain.stress_test) == (10, 5, "off", True)
    quiet = cli.tune_settings(parser.parse_args(["tune", "--data", "D", "--family", "custom_cnn", "--no-stress-test"]))
    assert quiet.stress_test is False
    with pytest.raises(SettingsError, match="pass --family"):
        cli.tune_settings(parser.parse_args(["tune", "--data", "D"]))
    for name, chosen in presets.PRESETS.items():  # every preset is a valid search
        assert SearchSettings(data_dir="D", **chosen.settings).resolved().family == chosen.settings["family"]
        assert f"--preset {name}" in chosen.command()
