"""Unusual images in the model's own features (core.inference.feature_ood), combined with the image
statistics (core.inference.unusual): synthetic feature vectors, a tiny Keras model and a tiny real run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data import loading
from core.inference import feature_ood, ood, run_kinds, unusual
from core.runs import artifacts
from tests.helpers import make_dataset, model_run

pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
SCALES = np.linspace(0.1, 5.0, 40)  # the spread of each feature: some nearly constant, some wide


def _features(seed: int, n: int, scales: np.ndarray = SCALES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(scales))) * scales


def test_far_feature_vectors_are_flagged_and_training_like_ones_are_not():
    reference = feature_ood.fit(_features(0, 300), _features(1, 200))
    fresh = feature_ood.distances(reference, _features(2, 1000))
    assert np.mean(fresh > reference["cutoff"]) <= 0.02
    # The same step, 8, along the feature that barely varies in training and along the widest one:
    # the first is far (Mahalanobis), the second ordinary, though both are as far in plain distance.
    across, along = _features(3, 100), _features(3, 100)
    across[:, 0] += 8.0
    along[:, -1] += 8.0
    assert (feature_ood.distances(reference, across) > reference["cutoff"]).all()
    assert np.mean(feature_ood.distances(reference, along) > reference["cutoff"]) < 0.1
    assert (feature_ood.distances(reference, 10 * _features(4, 20)) > reference["cutoff"]).all()  # far out everywhere


def test_the_cutoff_is_chosen_on_the_validation_features():
    train, val = _features(0, 300), _features(1, 200)
    reference, wider = feature_ood.fit(train, val), feature_ood.fit(train, 1.5 * val)
    assert reference["cutoff"] == pytest.approx(np.percentile(feature_ood.distances(reference, val), feature_ood.QUANTILE))
    assert wider["cutoff"] > 1.3 * reference["cutoff"]  # only the validation features moved it
    np.testing.assert_array_equal(wider["mean"], reference["mean"])
    with pytest.raises(ValueError, match="too few"):
        feature_ood.fit(train[:3], val)


def test_pooled_features_are_what_the_head_receives_in_the_models_own_pass():
    import keras

    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(keras.layers.Rescaling(1 / 255)(inputs)))
    backbone = keras.Model(inputs, pooled, name="backbone")
    image = keras.Input((16, 16, 3))
    first = keras.layers.Dropout(0.5, name="first")
    x = keras.layers.Dropout(0.5)(keras.layers.Dense(5, activation="relu")(first(backbone(image))))
    model = keras.Model(image, keras.layers.Dense(1, activation="sigmoid", name="probability")(x))
    assert feature_ood.head_entry(model) is first
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    expected = backbone.predict(loading.to_network_input(pixels), verbose=0)
    np.testing.assert_allclose(feature_ood.pooled_features(model, pixels, batch_size=2), expected, rtol=1e-5, atol=1e-6)
    assert feature_ood.head_entry(object()) is None  # an imported file run as it is: no layers
    with pytest.raises(ValueError, match="no Dense head"):
        feature_ood.pooled_features(object(), pixels)


def test_the_combined_flag_says_which_detector_fired():
    statistics = pd.DataFrame({
        "unusual": [True, False, True, False, pd.NA],
        "unusual_reason": ["not like the training X-rays: edge density 0.300", "", "not like the training X-rays: colour 40.0", "", ""],
        "ood_score": [3.0, 0.5, 4.0, 0.2, np.nan],
    })
    flags = unusual.combine(statistics, np.array([0.5, 2.0, 3.0, 0.9, np.nan]))
    assert list(flags["unusual"]) == [True, True, True, False, pd.NA]
    reasons = list(flags["unusual_reason"])
    assert reasons[0] == "not like the training X-rays: edge density 0.300"
    assert reasons[1] == f"{unusual.FEATURE_REASON} (distance 2.0 × the validation cut-off)"
    assert reasons[2].startswith("not like the training X-rays: colour 40.0; " + unusual.FEATURE_REASON)
    assert reasons[3:] == ["", ""]
    np.testing.assert_array_equal(flags["ood_score"].to_numpy(float), statistics["ood_score"].to_numpy(float))
    alone = unusual.combine(statistics, np.full(5, np.nan), "the imported model file has no layers to read pooled features from")
    assert list(alone["unusual"]) == [True, False, True, False, pd.NA]
    assert all(f"no feature check ({unusual.STATISTICS_ONLY}): the imported model file" in r for r in alone["unusual_reason"][:4])
    assert alone["unusual_reason"].iat[4].startswith("no feature check: the imported model file")  # unreadable: neither checked


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> artifacts.Run:
    """A tiny real run (an untrained 32 px CNN, `model_run`), saved without a feature reference, as older runs are."""
    root = tmp_path_factory.mktemp("feature-ood")
    data = make_dataset(root / "data", {"train": 6, "test": 2})
    model_run(root / "artifacts", "plain", data, size=32)
    return artifacts.load_run(root / "artifacts", "plain")


def test_a_run_without_a_feature_reference_gets_one_and_is_flagged_with_both(tiny_run, tmp_path):
    assert not (tiny_run.folder / feature_ood.REFERENCE).exists()
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    Image.new("L", (64, 64), 255).save(tmp_path / "white.png")
    paths = [*tiny_run.predictions()["path"][:3], str(tmp_path / "white.png"), str(broken)]
    flags = unusual.flag_files(tiny_run, paths)
    saved = feature_ood.load(tiny_run.folder / feature_ood.REFERENCE)
    assert saved is not None and saved["cutoff"] > 0 and saved["n_train"] >= 5 and saved["n_val"] >= 5
    assert flags["unusual"].iat[3] is True and flags["unusual"].iat[4] is pd.NA
    assert "no feature check" not in " ".join(flags["unusual_reason"])
    (tiny_run.folder / feature_ood.REFERENCE).write_bytes(b"an old or broken reference")
    pd.testing.assert_frame_equal(unusual.flag_files(tiny_run, paths), flags)  # made again, the same
    predicted = run_kinds.predict_files(tiny_run, paths, engine="keras", unusual=True)
    pd.testing.assert_frame_equal(predicted[list(flags.columns)], flags)


def test_a_model_without_features_falls_back_to_the_statistics_and_says_so(tiny_run):
    paths = list(tiny_run.predictions()["path"][:3])
    flags = unusual.flag_files(tiny_run, paths, models=object())  # as a TF Lite or ONNX file run as it is
    statistics = ood.flag_files(ood.reference_for(tiny_run), paths)
    assert list(flags["unusual"]) == list(statistics["unusual"])
    assert all(r.endswith("the model has no layers to read pooled features from") and unusual.STATISTICS_ONLY in r
               for r in flags["unusual_reason"])
