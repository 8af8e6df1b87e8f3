"""Where the models look: the files a run keeps of it, and the summary every page and the report show.

`core.workflows.localisation` measures a run's explanations on a seeded sample of its test images
and writes three files into the run folder, each whole or not at all:

- `localisation_images.csv`: one row per image × explanation method (and the two baselines,
  "random" and "centred blob"): the deletion and insertion areas (`faithfulness`), the share of
  heat in the border band and on bright text-like marks (`heat_location`);
- `localisation_synthetic.csv`: one row per healthy validation image with an inserted opacity ×
  method: the probability before and after, whether the heat's maximum hit the opacity, the IoU of
  the extracted region with it (`synthetic_opacity`);
- `localisation.json`: how it was measured (sample, seed, steps, share, band) and the mean curves.

This module reads them and summarises them (means with patient-bootstrap intervals). Conventions:
areas are under curves of the explained class's probability against the fraction of pixels
removed (deletion: lower is more faithful) or restored (insertion: higher is more faithful);
"negative"/"positive" are the task's two classes (healthy/pneumonia, bacterial/viral).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.evidence import faithfulness, heat_location

IMAGES_FILE = "localisation_images.csv"
SYNTHETIC_FILE = "localisation_synthetic.csv"
SUMMARY_FILE = "localisation.json"
PROGRESS_FILE = "localisation.progress.json"
STOP_FILE = "localisation.stop"
BASELINES = ("random", "centred blob")  # heatmaps that know nothing: what a method must beat
CLASS_GROUPS = ("all", "negative", "positive")
IMAGE_COLUMNS = ("run", "method", "path", "patient", "y_true", "probability", "deletion", "insertion",
                 "border_share", "mark_share", "mark_area")
SYNTHETIC_COLUMNS = ("run", "method", "path", "patient", "blobs", "mask_area", "p_before", "p_after", "hit", "iou")
# Insertion minus deletion, per image: the canvas's own effect cancels. A blurred X-ray reads as
# pneumonia to these models (lost edges look like an opacity), which lifts both curves alike; a
# random map scores about 0 and a faithful one above it (Blücher et al., 2024, "symmetric
# relevance gain": inserting the hottest pixels first is deleting the coldest first).
GAIN = "gain"
MEASURES = (GAIN, "deletion", "insertion", "border_share", "mark_share")


@dataclass(frozen=True)
class Saved:
    """What a run keeps of its localisation evidence; `about` is `localisation.json`."""

    about: dict
    images: pd.DataFrame
    synthetic: pd.DataFrame


SPLITS = ("test", "val")  # measured on test for the pages and the report; on validation to choose a remedy


def file_name(name: str, split: str = "test") -> str:
    """A split's file: the test split's as named above, validation's with ".val" before the suffix."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "test":
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{split}.{suffix}"


def read(folder: Path, split: str = "test") -> Saved | None:
    """The run's saved evidence on `split`, or None when it was never measured (or only partly written)."""
    about = files.read_json(folder / file_name(SUMMARY_FILE, split))
    images_path, synthetic_path = folder / file_name(IMAGES_FILE, split), folder / file_name(SYNTHETIC_FILE, split)
    if not about or not images_path.exists():
        return None
    images = files.read_csv(images_path)
    images[GAIN] = images["insertion"] - images["deletion"]
    synthetic = files.read_csv(synthetic_path) if synthetic_path.exists() else pd.DataFrame(columns=SYNTHETIC_COLUMNS)
    return Saved(about, images, synthetic)


def write(folder: Path, about: dict, images: pd.DataFrame, synthetic: pd.DataFrame, split: str = "test") -> None:
    """Save the three files; the summary goes last, so a reader never sees it with stale tables."""
    files.write_csv(folder / file_name(IMAGES_FILE, split), images.loc[:, list(IMAGE_COLUMNS)])
    files.write_csv(folder / file_name(SYNTHETIC_FILE, split), synthetic.loc[:, list(SYNTHETIC_COLUMNS)])
    files.write_json(folder / file_name(SUMMARY_FILE, split), about)


def _rows(images: pd.DataFrame, group: str) -> pd.DataFrame:
    if group == "negative":
        return images[images["y_true"] == 0]
    if group == "positive":
        return images[images["y_true"] == 1]
    return images


def _interval(values: pd.Series, patients: pd.Series, n_resamples: int, seed: int) -> dict[str, float]:
    """Mean [low, high] of finite values, patients resampled; NaNs when nothing is left to average."""
    keep = np.isfinite(values.to_numpy(dtype=np.float64))
    if not keep.any():
        return {"mean": np.nan, "low": np.nan, "high": np.nan, "n": 0}
    interval = faithfulness.mean_interval(values.to_numpy(dtype=np.float64)[keep], patients.to_numpy()[keep],
                                          n_resamples=n_resamples, seed=seed)
    return {"mean": interval.estimate, "low": interval.low, "high": interval.high, "n": int(keep.sum())}


def method_summary(saved: Saved, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per method (baselines too) and class group: the gain (insertion − deletion), the
    deletion and insertion areas and the border and mark shares as means with intervals, the share
    of images that look at the border and the border-heat warning of that group (a shortcut may show
    on one class only: healthy X-rays' weak evidence for pneumonia sits at the edges), and the
    synthetic check (hit rate, mean IoU, mean probability rise) on the method's rows."""
    rows = []
    for method, of_method in saved.images.groupby("method", sort=False):
        synthetic = saved.synthetic[saved.synthetic["method"] == method]
        for group in CLASS_GROUPS:
            images = _rows(of_method, group)
            if images.empty:
                continue
            row: dict[str, Any] = {"method": method, "images": group, "n": len(images)}
            for measure in MEASURES:
                for key, value in _interval(images[measure], images["patient"], n_resamples, seed).items():
                    row[f"{measure}_{key}"] = value
            shares = images["border_share"].to_numpy(dtype=np.float64)
            finite = shares[np.isfinite(shares)]
            row["looks_at_border"] = float(np.mean([heat_location.looks_at_border(s) for s in finite])) if finite.size else np.nan
            row["warning"] = heat_location.border_warning(list(finite)) if method not in BASELINES else ""
            row["synthetic_n"] = len(synthetic)
            row["hit_rate"] = float(synthetic["hit"].astype(bool).mean()) if len(synthetic) else np.nan
            row["iou"] = float(synthetic["iou"].mean()) if len(synthetic) else np.nan
            row["probability_rise"] = float((synthetic["p_after"] - synthetic["p_before"]).mean()) if len(synthetic) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def mean_curves(saved: Saved) -> dict[str, dict[str, list[float]]]:
    """{method: {"deletion": mean curve, "insertion": mean curve}} as saved in `localisation.json`."""
    return saved.about.get("curves", {})
