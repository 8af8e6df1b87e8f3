"""The input kinds of a search (core.search.inputs) and the search loop that uses them.

The picker chooses the kind from the settings; each kind's prepared inputs, datasets and saved
model agree row for row with the table of usable images (an undecodable image dropped from all of
them, augmented views included); the loop itself reads the same for every kind.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import keras
import keras_tuner
import numpy as np
import pytest

from core import files
from core.data import augmentation, folders, loading
from core.runs import artifacts
from core.runs.progress import Progress, StopFlag
from core.search import inputs, loop
from core.search.hypermodel import SearchSpace
from core.search.settings import SearchSettings
from core.search.splits import prepare_split
from tests.helpers import SHARED_DATA, make_dataset

SIZE = 32
# Real ImageNet weights for the backbone kinds: random ones give all images nearly the same
# features, and then any model gives every image the same probability.
V2_WEIGHTS = SHARED_DATA.parent.parent / "keras_home" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _settings(tmp_path, **values) -> SearchSettings:
    values = {"family": "mobilenet", "weights": "none", "image_size": SIZE, **values}
    return SearchSettings(data_dir=str(tmp_path / "chest_xray"), batch_size=4, engine="keras",
                          artifacts_dir=str(tmp_path / "runs"), name="kind", **values).resolved()


@pytest.mark.parametrize(
    "values, kind",
    [
        ({"family": "custom_cnn"}, inputs.PixelInputs),
        ({"family": "custom_cnn", "feature_cache": True, "activation_cache": True}, inputs.PixelInputs),
        ({"mode": "frozen"}, inputs.FeatureInputs),
        ({"mode": "frozen", "tta": 3}, inputs.FeatureInputs),
        ({"mode": "frozen", "feature_cache": False}, inputs.PixelInputs),
        ({"mode": "finetune"}, inputs.ActivationInputs),
        ({"mode": "finetune", "augment": "light", "cut": "block_13_project_BN"}, inputs.ActivationInputs),
        ({"mode": "finetune", "activation_cache": False}, inputs.PixelInputs),
        ({"mode": "finetune", "activation_cache": False, "augment": "search"}, inputs.PixelInputs),
        ({"family": "xception", "mode": "frozen", "image_size": 71}, inputs.FeatureInputs),
    ],
)
def test_the_picker_chooses_the_kind_from_the_settings(tmp_path, values, kind):
    chosen = inputs.for_settings(_settings(tmp_path, **values))
    assert type(chosen) is kind
    assert chosen.n_features is None and chosen.cut is None, "nothing is built before prepare"


# settings, the timing it records, what metrics.json says about it
KINDS = {
    "custom CNN on pixels": ({"family": "custom_cnn"}, "decode_s", {"feature_cache": False, "activation_cache": None}),
    "frozen backbone on pixels": ({"mode": "frozen", "feature_cache": False}, "decode_s",
                                  {"feature_cache": False, "activation_cache": None}),
    "backbone fine-tuned on pixels": ({"mode": "finetune", "activation_cache": False}, "decode_s",
                                      {"feature_cache": False, "activation_cache": None}),
    "frozen features": ({"mode": "frozen"}, "features_s", {"feature_cache": True, "activation_cache": None}),
    "cut-point activations": ({"mode": "finetune", "augment": "light", "augment_views": 2}, "activations_s",
                              {"feature_cache": False, "activation_cache": {"cut": "block_12_add", "augment": "light", "views": 2}}),
}


@pytest.fixture
def prepared(request, tmp_path, monkeypatch):
    """A kind prepared on a tiny data set whose 4th training image no longer decodes."""
    monkeypatch.delenv("CXR_CACHE_DIR", raising=False)
    values, timing_key, record = KINDS[request.param]
    if values.get("family") != "custom_cnn":
        if not V2_WEIGHTS.exists():
            pytest.skip("../shared/keras_home has no MobileNetV2 weights")
        values = {**values, "weights": str(V2_WEIGHTS)}
    make_dataset(tmp_path / "chest_xray", {"train": 5, "val": 2, "test": 2}, images_per_patient=2, size=40)
    settings = _settings(tmp_path, **values)
    folder = artifacts.run_dir(settings.artifacts_dir, settings.name)
    folder.mkdir(parents=True)
    keras.utils.set_random_seed(settings.seed)
    full, _ = prepare_split(settings, folder, log=lambda _: None)
    bad = full.loc[full["split"] == "train", "path"].iloc[3]
    with open(bad, "wb") as handle:
        handle.write(b"not an image any more")
    kind = inputs.for_settings(settings)
    timings: dict[str, float] = {}
    table, model_inputs = kind.prepare(full, folder, Progress(folder), StopFlag(folder), lambda _: None, timings)
    return settings, kind, full, table, model_inputs, bad, folder, timings, timing_key, record


def _network_form(values: np.ndarray) -> np.ndarray:
    """What a model takes: pixels as float RGB, cached features and activations as float32."""
    values = np.asarray(values)
    return loading.to_network_input(values) if values.dtype == np.uint8 else values.astype(np.float32)


def _expected_inputs(kind: inputs.SearchInputs, pixels: np.ndarray) -> np.ndarray:
    """Each kind's inputs computed here directly from the pixels."""
    if isinstance(kind, inputs.FeatureInputs):
        return kind.backbone.predict(loading.to_network_input(pixels), verbose=0)
    if isinstance(kind, inputs.ActivationInputs):
        return kind.cut.bottom.predict(loading.to_network_input(pixels), verbose=0).astype(np.float16)
    return pixels


@pytest.mark.parametrize("prepared", list(KINDS), indirect=True)
def test_prepared_inputs_follow_the_table_without_the_undecodable_image(prepared):
    settings, kind, full, table, model_inputs, bad, folder, timings, timing_key, record = prepared
    assert bad not in set(table["path"]) and len(table) == len(full) - 1
    assert bad in {u["path"] for u in files.read_json(folder / artifacts.DATA_SUMMARY)["unreadable"]}
    assert list(timings) == [timing_key]
    assert kind.record() == record
    assert len(model_inputs) == len(table)
    pixels, errors = loading.load_images(list(table["path"]), SIZE)
    assert not errors
    np.testing.assert_allclose(np.asarray(model_inputs, np.float32), np.asarray(_expected_inputs(kind, pixels), np.float32),
                               atol=2e-2 if isinstance(kind, inputs.ActivationInputs) else 1e-4)
    assert kind.n_features == (model_inputs.shape[1] if isinstance(kind, inputs.FeatureInputs) else None)


@pytest.mark.parametrize("prepared", ["cut-point activations"], indirect=True)
def test_augmented_views_drop_the_undecodable_image_too(prepared):
    settings, kind, full, table, model_inputs, bad, *_ = prepared
    train_paths = list(full.loc[full["split"] == "train", "path"])
    assert kind.views.shape == (2, len(train_paths) - 1, *kind.cut.activation_shape)
    # The views of the training images as the cache made them (one chunk, seeded by its start),
    # the undecodable image (decoded as zeros) among them; without it they are the kind's views.
    pixels, _ = loading.load_images(train_paths, SIZE)
    views = augmentation.augmented_views(pixels, augmentation.preset("light"), 2, seed=settings.seed)
    expected = np.stack([kind.cut.bottom.predict(loading.to_network_input(v), verbose=0) for v in views]).astype(np.float16)
    keep = np.array([path != bad for path in train_paths])
    np.testing.assert_allclose(np.asarray(kind.views, np.float32), expected[:, keep].astype(np.float32), atol=2e-2)


def _targets(settings: SearchSettings, table):
    task = settings.task_info
    part = {split: (table["split"] == split).to_numpy() for split in folders.SPLITS}
    return task.targets(task.labels(table)), part


@pytest.mark.parametrize("prepared", list(KINDS), indirect=True)
def test_datasets_pair_each_input_with_its_label(prepared):
    settings, kind, full, table, model_inputs, *_ = prepared
    targets, part = _targets(settings, table)
    train, val = kind.datasets(model_inputs, targets, part)
    x, y = (np.concatenate(parts) for parts in zip(*val.as_numpy_iterator(), strict=True))
    np.testing.assert_array_equal(x, _network_form(model_inputs[part["val"]]))
    np.testing.assert_array_equal(y, targets[part["val"]])
    # Training rows come shuffled, each image once per epoch, as a view of itself when the kind has views.
    train_inputs, train_targets = model_inputs[part["train"]], targets[part["train"]]
    sources = [train_inputs] if getattr(kind, "views", None) is None else list(kind.views)
    row_of = {row.tobytes(): i for source in sources for i, row in enumerate(_network_form(source))}
    seen = []
    for x, y in train.as_numpy_iterator():
        rows = [row_of[row.tobytes()] for row in x]
        np.testing.assert_array_equal(y, train_targets[rows])
        seen += rows
    assert sorted(seen) == list(range(len(train_targets)))


@pytest.mark.parametrize("prepared", list(KINDS), indirect=True)
def test_saved_model_takes_pixels_and_gives_the_trained_models_probabilities(prepared):
    settings, kind, full, table, model_inputs, *_ = prepared
    targets, part = _targets(settings, table)
    space = SearchSpace(settings.family, settings.mode, SIZE, settings.backbone(), n_features=kind.n_features,
                        task=settings.task_info, augment=settings.augment, cut=kind.cut)
    trained = space.build(keras_tuner.HyperParameters())
    trained.fit(kind.datasets(model_inputs, targets, part)[0], epochs=1, verbose=0)
    saved = kind.saved_model(trained)
    pixels = np.repeat(loading.load_images(list(table["path"]), SIZE)[0], 3, axis=-1)
    assert pixels.shape == (len(table), SIZE, SIZE, 3) and pixels.dtype == np.uint8
    own = trained.predict(_network_form(model_inputs), verbose=0)
    from_pixels = saved.predict(pixels, verbose=0)
    assert own.std() > 1e-4, "the probabilities depend on the image"
    np.testing.assert_allclose(from_pixels, own, atol=1e-4)


KIND_WORDS = ("mode", "feature", "activation", "cut", "backbone", "spec", "views", "tta", "kind", "inputs", "isinstance", "family")


def test_search_reads_top_to_bottom_without_branching_on_the_input_kind():
    source = textwrap.dedent(inspect.getsource(loop.search))
    assert len(source.splitlines()) <= 60, "search() grew: move detail into a helper or the input kinds"
    branches = [node.test for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.If, ast.IfExp, ast.While))]
    branches += [node.subject for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Match)]
    for test in branches:
        text = ast.get_source_segment(source, test)
        assert not any(word in text for word in KIND_WORDS), f"search() branches on the input kind: {text}"
