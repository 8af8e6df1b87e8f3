"""core.evidence.stress: validation images changed as sites differ, and what that does to a run's decisions."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from core.evidence import stress


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

    rows = stress.stress_rows(y, score(pixels), stress.stressed_scores(score, pixels), threshold=0.5)
    by_name = {row["condition"]: row for row in rows}
    assert [row["condition"] for row in rows] == ["as is", *stress.PERTURBATIONS]
    assert by_name["as is"]["specificity"] == 1.0 and by_name["as is"]["sensitivity"] == 1.0
    assert by_name["as is"]["specificity_change"] == 0.0
    assert by_name["framed 30 % tighter"]["specificity"] < 0.5  # normals now look "big"
    assert by_name["framed 30 % tighter"]["specificity_change"] == pytest.approx(by_name["framed 30 % tighter"]["specificity"] - 1.0)
    assert stress.worst(rows)["condition"] == "framed 30 % tighter"
    assert stress.worst(rows[:1]) is None


def _pooled_youden_by_hand(y, scores, floors=(0.0, 0.0)):
    """Independent reference: every distinct score as a threshold, J = sens + spec - 1 counted
    directly, ties to the highest threshold; only thresholds at which the first scores (the images
    as they are) keep sensitivity >= floors[0] and specificity >= floors[1] compete."""
    clean = scores[0]
    y_all, s = np.tile(y, len(scores)), np.concatenate(scores)
    best, best_j = None, -2.0
    for t in sorted(set(s.tolist()), reverse=True):
        if (clean[y == 1] >= t).mean() < floors[0] - 1e-9 or (clean[y == 0] < t).mean() < floors[1] - 1e-9:
            continue
        called = s >= t
        j = called[y_all == 1].mean() - called[y_all == 0].mean()
        if j > best_j + 1e-12:
            best, best_j = t, j
    return best


def _clean_youden_by_hand(y, as_is):
    """(sensitivity, specificity) at Youden's J of the images as they are, from scikit-learn's ROC."""
    fpr, tpr, _ = roc_curve(y, as_is, drop_intermediate=False)
    best = np.flatnonzero((tpr - fpr) == (tpr - fpr).max())[0]  # ties: the highest threshold
    return tpr[best], 1 - fpr[best]


def _weak_model(seed: int, n: int = 200, shift: float = 0.02):
    """A weak model's validation probabilities, all near 0.5 (AUC about 0.8), and six stressed copies
    that drift up by `shift` to `shift` + 0.025: the copies outweigh the originals six to one."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    as_is = np.round(0.48 + 0.02 * y + rng.normal(0, 0.0167, n), 6)
    stressed = {name: np.round(as_is + shift + 0.005 * i + rng.normal(0, 0.004, n), 6) for i, name in enumerate(stress.PERTURBATIONS)}
    return y, as_is, stressed


def test_the_pooled_threshold_never_gives_up_the_unchanged_images():
    # The degenerate case seen on a weak run: pooled with six upward-drifted copies, Youden's J sits
    # where the unchanged images are nearly all called normal (here sensitivity 9 %, specificity 99 %).
    y, as_is, stressed = _weak_model(3)
    assert 0.75 < roc_auc_score(y, as_is) < 0.9
    unbounded = _pooled_youden_by_hand(y, [as_is, *stressed.values()])
    assert (as_is[y == 1] >= unbounded).mean() < 0.5
    robust = stress.robust_threshold(y, as_is, stressed)
    sens, spec = (as_is[y == 1] >= robust).mean(), (as_is[y == 0] < robust).mean()
    clean_sens, clean_spec = _clean_youden_by_hand(y, as_is)
    assert sens >= 0.5 and spec >= 0.5
    assert sens >= clean_sens - stress.CLEAN_MARGIN - 1e-9 and spec >= clean_spec - stress.CLEAN_MARGIN - 1e-9
    assert robust > stress.clean_point(y, as_is)["threshold"]  # it still leans towards the changed copies
    point = stress.clean_point(y, as_is)
    assert (point["sensitivity"], point["specificity"]) == pytest.approx((clean_sens, clean_spec))


@pytest.mark.parametrize("seed", range(8))
def test_robust_threshold_is_pooled_youden_within_the_clean_range(seed):
    # Weak and strong models, copies drifting up or down: the rule is the by-hand pooled Youden among
    # the thresholds that keep the unchanged images within CLEAN_MARGIN of their own Youden point.
    rng = np.random.default_rng(100 + seed)
    y, as_is, stressed = _weak_model(seed, shift=rng.uniform(-0.04, 0.04))
    if seed % 2:  # a strong model: the bound rarely binds
        as_is = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.1, y.size), 0, 1), 6)
        stressed = {name: np.round(np.clip(as_is + 0.05 * (y == 0) + rng.normal(0, 0.02, y.size), 0, 1), 6) for name in stressed}
    clean_sens, clean_spec = _clean_youden_by_hand(y, as_is)
    floors = (clean_sens - stress.CLEAN_MARGIN, clean_spec - stress.CLEAN_MARGIN)
    robust = stress.robust_threshold(y, as_is, stressed)
    assert robust == pytest.approx(_pooled_youden_by_hand(y, [as_is, *stressed.values()], floors))
    if roc_auc_score(y, as_is) > 0.75:
        assert min((as_is[y == 1] >= robust).mean(), (as_is[y == 0] < robust).mean()) >= 0.5


def test_robust_threshold_is_youden_on_the_pooled_conditions():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40), np.ones(60)].astype(int)
    as_is = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.15, y.size), 0, 1), 6)
    # Under the changes, the healthy images drift up (as another site's X-rays do), the ranking stays.
    stressed = {name: np.round(np.clip(as_is + 0.1 * (k + 1) * (y == 0) + rng.normal(0, 0.02, y.size), 0, 1), 6)
                for k, name in enumerate(list(stress.PERTURBATIONS)[:3])}
    robust = stress.robust_threshold(y, as_is, stressed)
    clean_sens, clean_spec = _clean_youden_by_hand(y, as_is)
    floors = (clean_sens - stress.CLEAN_MARGIN, clean_spec - stress.CLEAN_MARGIN)
    assert robust == pytest.approx(_pooled_youden_by_hand(y, [as_is, *stressed.values()], floors))
    fpr, tpr, thresholds = roc_curve(y, as_is)
    plain = thresholds[np.argmax(tpr - fpr)]
    assert robust > plain  # the drift of the healthy images moves it up
    worst_plain = min((s[y == 0] < plain).mean() for s in stressed.values())
    worst_robust = min((s[y == 0] < robust).mean() for s in stressed.values())
    assert worst_robust > worst_plain  # and the changed healthy images are called healthy more often
    with pytest.raises(ValueError, match="class"):
        stress.robust_threshold(np.ones(5, int), as_is[:5], {"x": as_is[:5]})


def test_saved_scores_follow_the_asked_order_and_refuse_what_does_not_fit():
    stressed = {name: np.arange(3) / 10 + k for k, name in enumerate(stress.PERTURBATIONS)}
    table = stress.scores_table(["a", "b", "c"], stressed)
    assert list(table.columns) == ["path", *stress.PERTURBATIONS]
    again = stress.saved_scores(table, ["c", "a"])
    assert list(again) == list(stress.PERTURBATIONS)
    first = next(iter(stress.PERTURBATIONS))
    assert again[first].tolist() == [0.2, 0.0]
    assert stress.saved_scores(table, ["a", "z"]) is None  # an image it did not score
    assert stress.saved_scores(None, ["a"]) is None  # a run saved before they were kept
    assert stress.saved_scores(pd.concat([table, table]), ["a"]) is None  # an image listed twice
    assert stress.saved_scores(table[["path"]], ["a"]) is None  # no condition
