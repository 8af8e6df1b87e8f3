"""Say when an image is not like the training X-rays (out-of-distribution flag).

Method: a few robust statistics of each decoded image, the same ones for every run, computed on the
grayscale image as `core.data.loading.load_image` decodes it, at `FEATURE_SIZE` pixels (16-bit PNGs,
EXIF rotation and alpha handled as for the network), plus one colour statistic from the file:

- intensity mean, standard deviation and the 1st, 5th, 25th, 50th, 75th, 95th, 99th percentiles;
- the fraction of near-black (< 10) and near-white (> 245) pixels;
- edge density (fraction of pixels whose gradient magnitude exceeds `EDGE_STEP`) and the mean
  gradient magnitude;
- histogram entropy (32 bins, bits);
- centre minus border brightness, and left-right asymmetry (mean |image − its mirror|);
- colourfulness (mean spread between the R, G and B channels; 0 for a grayscale file);
- noise: the median absolute Laplacian at `NOISE_SIZE` px (grey levels), which sensor noise raises
  and X-rays' smooth shading does not;
- blockiness: how much stronger brightness steps are across the 8-pixel grid of JPEG blocks than
  elsewhere, measured on the file at its own size, where the grid lies (1 for an image never
  compressed hard).

Noise and heavy JPEG compression move a model's probabilities of healthy X-rays up while none of the
other statistics notices (docs/measurements.md, "Acquisition shifts"): these two are what flags them.
They count one way only (`ONE_SIDED`): a cleaner image than the training X-rays is not unusual.

Each run gets a reference from its own training images (from its `splits.csv`, at most
`MAX_REFERENCE` of them): per statistic the median and, on each side of it, the distance to the
training 1st / 99th percentile as the scale (floored at `FLOORS` so that a statistic that is
constant on X-rays, such as colourfulness, does not turn a rounding difference into an alarm). An image's distance is its largest absolute robust z-score
over the statistics; the statistic behind it is the reason. The cut-off is the 99.5th percentile
of the distances of the run's validation images (never its test images), and at least `MIN_CUTOFF`.
The reference is stored in the run folder (`ood_reference.json`, written atomically) the first time
it is needed, so older runs get one lazily. No network pass is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core import files
from core.data import loading
from core.runs import artifacts

REFERENCE = "ood_reference.json"
VERSION = 3  # 3: noise and blockiness
FEATURE_SIZE = 128
EDGE_STEP = 24.0
MAX_REFERENCE = 800  # training images per reference (a fixed, seeded sample): about a second to decode
QUANTILE = 99.5  # of the validation distances: the cut-off
MIN_CUTOFF = 2.0
METHOD = (
    f"largest robust z-score (from the median, scaled by the distance to the 1st or 99th percentile) over {{n}} image "
    f"statistics at {FEATURE_SIZE} px, against the "
    f"run's training images; cut-off: the {QUANTILE}th percentile of the validation images' scores (at least {MIN_CUTOFF})"
)
NAMES = (
    "mean", "std", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "near_black", "near_white",
    "edge_density", "gradient", "entropy", "centre_minus_border", "asymmetry", "colourfulness", "noise", "blockiness",
)
LABELS = {
    "mean": "mean brightness", "std": "contrast (standard deviation of brightness)", "p1": "1st-percentile brightness",
    "p5": "5th-percentile brightness", "p25": "25th-percentile brightness", "p50": "median brightness",
    "p75": "75th-percentile brightness", "p95": "95th-percentile brightness", "p99": "99th-percentile brightness",
    "near_black": "near-black pixels (below 10 of 255)", "near_white": "near-white pixels (above 245 of 255)",
    "edge_density": f"edge pixels (brightness changing by more than {EDGE_STEP:.0f} per pixel)", "gradient": "mean gradient", "entropy": "histogram entropy",
    "centre_minus_border": "centre − border brightness", "asymmetry": "left-right asymmetry", "colourfulness": "colour",
    "noise": "noise (median absolute Laplacian)", "blockiness": "JPEG blockiness (steps on the 8-pixel grid against elsewhere)",
}
# The least spread each statistic is given (its units), so near-constant statistics stay sane.
FLOORS = {
    "mean": 2.0, "std": 2.0, "p1": 2.0, "p5": 2.0, "p25": 2.0, "p50": 2.0, "p75": 2.0, "p95": 2.0, "p99": 2.0,
    "near_black": 0.01, "near_white": 0.01, "edge_density": 0.01, "gradient": 0.5, "entropy": 0.05,
    "centre_minus_border": 2.0, "asymmetry": 1.0, "colourfulness": 2.0, "noise": 0.5, "blockiness": 0.05,
}
ONE_SIDED = ("noise", "blockiness")  # only a high value is unusual
NOISE_SIZE = 224  # the input size of the recommended models: noise as the network sees it
BLOCK = 8  # JPEG's block side, in pixels of the file
_CONTRAST_FLOOR = 0.5  # grey levels per pixel added to both sides of the blockiness ratio: a flat image is not blocky


def laplacian_noise(x: np.ndarray) -> float:
    """Median absolute 4-neighbour Laplacian of a 2-D float image, in grey levels: about 0.6 times the
    Laplacian's spread for noise; X-rays' slow shading and sparse edges leave the median small."""
    if x.shape[0] < 3 or x.shape[1] < 3:
        return 0.0
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.median(np.abs(lap)))


def blockiness(gray: np.ndarray) -> float:
    """Mean brightness step across the boundaries of the `BLOCK`-pixel grid over the mean step
    elsewhere (rows and columns together), both plus `_CONTRAST_FLOOR`: about 1 for an image that
    was never compressed hard, well above 1 when JPEG's blocks show. Measured at the image's own
    size, where the grid of a compressed file lies; a resize scatters it (and the blocks with it)."""
    x = np.asarray(gray, dtype=np.float32).reshape(gray.shape[0], gray.shape[1])
    steps = [np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0)).T]  # step j lies between pixels j and j + 1
    across = inside = 0.0
    n_across = n_inside = 0
    for step in steps:
        if step.shape[1] < 2 * BLOCK:
            return 1.0
        on_grid = np.zeros(step.shape[1], dtype=bool)
        on_grid[BLOCK - 1 :: BLOCK] = True
        across += float(step[:, on_grid].sum())
        inside += float(step[:, ~on_grid].sum())
        n_across += int(on_grid.sum()) * step.shape[0]
        n_inside += int((~on_grid).sum()) * step.shape[0]
    return (across / n_across + _CONTRAST_FLOOR) / (inside / n_inside + _CONTRAST_FLOOR)


def statistics_of(gray: np.ndarray, colourfulness: float = 0.0, noise: float = 0.0, blocks: float = 1.0) -> np.ndarray:
    """The statistics (in `NAMES` order) of one grayscale image, (s, s) or (s, s, 1) uint8, given the
    file's colourfulness, noise and blockiness (which the small image cannot show)."""
    x = np.asarray(gray, dtype=np.float32).reshape(gray.shape[0], gray.shape[1])
    percentiles = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
    gy, gx = np.gradient(x)
    magnitude = np.hypot(gx, gy)
    counts = np.histogram(x, bins=32, range=(0, 256))[0].astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    h, w = x.shape
    centre = x[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean()
    border = np.concatenate([x[: h // 8].ravel(), x[-(h // 8) :].ravel(), x[:, : w // 8].ravel(), x[:, -(w // 8) :].ravel()]).mean()
    return np.array(
        [
            x.mean(), x.std(), *percentiles, (x < 10).mean(), (x > 245).mean(),
            (magnitude > EDGE_STEP).mean(), magnitude.mean(), float(-(p * np.log2(p)).sum()),
            centre - border, np.abs(x - x[:, ::-1]).mean(), colourfulness, noise, blocks,
        ],
        dtype=np.float64,
    )


def _colourfulness(path: str | os.PathLike) -> float:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1", "F"):
            return 0.0
        image.draft("RGB", (64, 64))
        rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean())


def image_statistics(native: Image.Image, colourfulness: float = 0.0) -> np.ndarray:
    """The statistics of one decoded grayscale ("L") image at its own size: blockiness from it as it
    is, noise from it resized to `NOISE_SIZE` and the rest resized to `FEATURE_SIZE`, each as
    `loading.load_image` resizes."""

    def resized(size: int) -> np.ndarray:
        return np.asarray(native.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)

    noise = laplacian_noise(resized(NOISE_SIZE).astype(np.float32))
    return statistics_of(resized(FEATURE_SIZE), colourfulness, noise, blockiness(np.asarray(native)))


def file_statistics(path: str | os.PathLike) -> np.ndarray:
    """The statistics of one image file (raises what `loading.decode_image` raises for a bad file),
    decoded once at its own size, where a compressed file's block grid lies."""
    return image_statistics(loading.decode_image(path), _colourfulness(path))


def _many(paths: list[str]) -> np.ndarray:
    rows = []
    for path in paths:
        try:
            rows.append(file_statistics(path))
        except Exception:  # an unreadable training image is simply left out of the reference
            continue
    return np.array(rows).reshape(-1, len(NAMES))


def fit(train: np.ndarray, val: np.ndarray) -> dict:
    """A reference from the statistics of training images (centre, spreads) and validation images (cut-off).

    Each statistic is scaled on each side of its training median by the distance to the training
    1st (below) or 99th (above) percentile, floored at `FLOORS`: a z of 1 is as far out as the
    outermost 1 % of training X-rays, whichever way the statistic is skewed.
    """
    if len(train) < 5:
        raise ValueError(f"too few readable training images for a reference ({len(train)})")
    floors = np.array([FLOORS[n] for n in NAMES])
    centre = np.median(train, axis=0)
    low, high = np.percentile(train, 1, axis=0), np.percentile(train, 99, axis=0)
    reference = {
        "version": VERSION, "names": list(NAMES), "centre": centre.tolist(),
        "below": np.maximum(centre - low, floors).tolist(), "above": np.maximum(high - centre, floors).tolist(),
        "train_low": low.tolist(), "train_high": high.tolist(),
    }
    held_out = val if len(val) else train
    distances = scores(reference, held_out)[0]
    reference.update(
        cutoff=float(max(MIN_CUTOFF, np.percentile(distances, QUANTILE))),
        n_train=int(len(train)), n_val=int(len(val)), feature_size=FEATURE_SIZE, method=METHOD.format(n=len(NAMES)),
    )
    return reference


def scores(reference: dict, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index of the statistic behind it) of each row of `stats`."""
    d = np.atleast_2d(stats) - np.asarray(reference["centre"])
    z = np.where(d >= 0, d / np.asarray(reference["above"]), -d / np.asarray(reference["below"]))
    below_on_one_side = np.isin(reference.get("names", NAMES), ONE_SIDED) & (d < 0)  # a cleaner image: no distance
    z = np.where(below_on_one_side, 0.0, z)
    return z.max(axis=1), z.argmax(axis=1)


# How each statistic is measured, for the reason an image is flagged: (unit after the number, scale).
# Grey levels run 0-255; fractions are given in per cent of the image's pixels.
_UNITS = {
    **{name: ("of 255 grey levels", 1.0) for name in ("mean", "std", "p1", "p5", "p25", "p50", "p75", "p95", "p99")},
    "near_black": ("% of the image", 100.0), "near_white": ("% of the image", 100.0),
    "edge_density": ("% of the image", 100.0), "gradient": ("grey levels per pixel", 1.0),
    "entropy": ("bits", 1.0), "centre_minus_border": ("grey levels", 1.0), "asymmetry": ("grey levels", 1.0),
    "colourfulness": ("grey levels between the colour channels", 1.0),
    "noise": ("grey levels", 1.0), "blockiness": ("times the steps elsewhere", 1.0),
}
# What a flagged image's label says instead of a class: the run does not assess it.
NOT_ASSESSED = "not assessed: unlike the training X-rays"


def reason(reference: dict, stats: np.ndarray, index: int) -> str:
    """Which statistic is off, in words and units, once: "near-black pixels (below 10 of 255): 97 % of the
    image, where 98 % of the training X-rays lie between 0 and 2.1"."""
    name = NAMES[index]
    unit, scale = _UNITS[name]
    value = float(stats[index]) * scale
    low, high = reference.get("train_low", [None] * len(NAMES))[index], reference.get("train_high", [None] * len(NAMES))[index]

    def fmt(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}" if abs(v) >= 1 or v == 0 else f"{v:.2f}"

    typical = f", where 98 % of the training X-rays lie between {fmt(low * scale)} and {fmt(high * scale)}" if low is not None and high is not None else ""
    return f"{LABELS[name]}: {fmt(value)} {unit}{typical}"


def assessed_labels(labels: pd.Series, unusual: pd.Series) -> pd.Series:
    """`labels` with `NOT_ASSESSED` where an image is flagged: a flagged image gets no diagnosis."""
    flagged = unusual.map(lambda value: value is not pd.NA and value is not None and bool(value))
    return labels.where(~flagged.astype(bool), NOT_ASSESSED)


def _sample(paths: list[str], limit: int, seed: int = 0) -> list[str]:
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]


def build_reference(train_paths: list[str], val_paths: list[str]) -> dict:
    return fit(_many(_sample(train_paths, MAX_REFERENCE)), _many(_sample(val_paths, MAX_REFERENCE, seed=1)))


def reference_images(run: artifacts.Run) -> tuple[list[str], list[str]] | None:
    """(training, validation) image paths of the run that are still on disk, from its `splits.csv`:
    what a reference of unusual images (these statistics, or the model's features) is built from.
    None when the run has no `splits.csv`."""
    splits_path = run.folder / artifacts.SPLITS
    if not splits_path.exists():
        return None
    table = files.read_csv(splits_path, usecols=["path", "split"]).drop_duplicates("path")
    exists = table["path"].map(lambda p: Path(p).is_file())
    return (list(table.loc[(table["split"] == "train") & exists, "path"]),
            list(table.loc[(table["split"] == "val") & exists, "path"]))


def reference_for(run: artifacts.Run) -> dict | None:
    """The run's reference: read from its folder, else computed from its training images and saved.

    None when the run has no `splits.csv` or its training images are gone.
    """
    path = run.folder / REFERENCE
    stored = files.read_json(path)
    if isinstance(stored, dict) and stored.get("version") == VERSION and stored.get("names") == list(NAMES):
        return stored
    if (images := reference_images(run)) is None:
        return None
    try:
        reference = build_reference(*images)
    except ValueError:
        return None
    try:
        files.write_json(path, reference)
    except OSError:  # a read-only artifacts folder: use it without saving it
        pass
    return reference


def flag_files(reference: dict | None, paths: list[str]) -> pd.DataFrame:
    """unusual (bool, or NA without a reference or for an unreadable file), unusual_reason, ood_score."""
    rows = []
    for path in paths:
        if reference is None:
            rows.append({"unusual": pd.NA, "unusual_reason": "no reference (the run's training images are not available)", "ood_score": np.nan})
            continue
        try:
            stats = file_statistics(path)
        except Exception:
            rows.append({"unusual": pd.NA, "unusual_reason": "", "ood_score": np.nan})
            continue
        distance, index = scores(reference, stats)
        unusual = bool(distance[0] > reference["cutoff"])
        rows.append(
            {
                "unusual": unusual,
                "unusual_reason": reason(reference, stats, int(index[0])) if unusual else "",
                "ood_score": round(float(distance[0]), 3),
            }
        )
    return pd.DataFrame(rows, columns=["unusual", "unusual_reason", "ood_score"])
