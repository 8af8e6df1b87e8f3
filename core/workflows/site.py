"""Site adaptation of a saved run: score a small labelled site folder, save a named operating point, use it.

Owns the files and the scoring around `core.evidence.site_adaptation` (which owns the rules and the
numbers): reading a site folder (NORMAL/ and PNEUMONIA/, directly or in split folders, as
`core.data.folders.scan_folder` reads any data folder), scoring it with any kind of run
(`core.inference.run_kinds.predict_files`), and saving the result as a named operating point of the
run, `operating_points/<name>.json` in its folder (`core.runs.artifacts.OPERATING_POINTS`), written
whole or not at all. It is not a new training and not a new run: the run's model, threshold and
test predictions stay as they were, and every page and command that scores images can pick the
point by name (`apply_point`).

A saved point holds the site folder, the images used and skipped, the rule and its threshold, the
calibration's parameters, the site's sensitivity, specificity and accuracy with their intervals
(and what the run's own threshold gave there), the curve of how they vary with the number of site
images, and when it was made. Scoring 100 images takes seconds, so the dashboard runs this in the
page, not as a background job.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.data import folders, tasks
from core.evidence import site_adaptation
from core.evidence.site_adaptation import Calibration, SiteError
from core.inference import ood, run_kinds
from core.runs import artifacts
from core.runs.artifacts import Run, RunError

VALIDATION_POINT = "validation"  # `apply_point`'s name for the run's own, validation-chosen threshold


def site_images(run: Run, folder: str | os.PathLike) -> tuple[pd.DataFrame, list[folders.UnreadableFile]]:
    """(path, patient, y_true of each usable image of the site folder for `run`'s task, the files skipped).

    Every image of the folder counts, whatever split folder it lies in. `RunError` for a run whose
    decision is not one threshold (a three-class run calls the class of largest probability);
    `folders.DataError` when the folder holds no images.
    """
    task = tasks.task_for(run.task)
    if not task.is_binary:
        raise RunError(
            f"run {run.name!r} answers {task.title}: its label is the class of largest probability, not a threshold, "
            "so it has no operating point to adapt; adapt a two-class run"
        )
    dataset = folders.scan_folder(folder)
    table = task.select(dataset.table)
    if table.empty:
        raise folders.DataError(f"no images of the {task.name} task in {dataset.root}: put the site's X-rays in NORMAL/ and PNEUMONIA/")
    labels = task.binary_labels(task.labels(table))
    out = pd.DataFrame({"path": table["path"].to_numpy(), "patient": table["patient"].astype(str).to_numpy(),
                        "y_true": np.asarray(labels, dtype=np.int64)})
    return out, dataset.unreadable


def score_site(run: Run, images: pd.DataFrame, models: Any = None, engine: str = "auto") -> tuple[pd.DataFrame, int]:
    """(`images` with the run's probability, the images scored; the number it could not read)."""
    scores = run_kinds.predict_files(run, list(images["path"]), models, engine=engine)
    ok = (scores["error"] == "").to_numpy()
    scored = images.loc[ok].assign(probability=scores.loc[ok, "probability"].to_numpy(dtype=np.float64))
    return scored.reset_index(drop=True), int((~ok).sum())


def validation_sensitivity(run: Run) -> float | None:
    """The run's sensitivity on its validation split at its own threshold (the "sensitivity" rule's target)."""
    value = ((run.metrics or {}).get("val") or {}).get("sensitivity")
    return float(value) if isinstance(value, (int, float)) else None


def adapt_scores(
    run: Run, scored: pd.DataFrame, rule: str = site_adaptation.DEFAULT_RULE, calibration: str = site_adaptation.NO_CALIBRATION,
    n_draws: int = site_adaptation.CURVE_DRAWS, seed: int = site_adaptation.SEED,
) -> dict[str, Any]:
    """The operating point and curve of scored site images (path, patient, y_true, probability), as saved (without name)."""
    y = scored["y_true"].to_numpy(dtype=np.int64)
    s = scored["probability"].to_numpy(dtype=np.float64)
    groups = scored["patient"].astype(str).to_numpy()
    target = validation_sensitivity(run)
    if rule == site_adaptation.SENSITIVITY and target is None:
        raise SiteError(f"run {run.name!r} has no validation sensitivity saved: use the {site_adaptation.YOUDEN!r} rule")
    point = site_adaptation.adapt(y, s, run.threshold, groups, rule=rule, calibration=calibration, target_sensitivity=target)
    curve = site_adaptation.sample_size_curve(y, s, rule=rule, target_sensitivity=target, n_draws=n_draws, seed=seed)
    return {**point.to_dict(), "curve": curve.to_dict("records"), "curve_draws": int(n_draws), "seed": int(seed)}


def point_path(run: Run, name: str):
    return run.folder / artifacts.OPERATING_POINTS / f"{artifacts.check_point_name(name)}.json"


def adapt_run(
    run: Run, site_folder: str | os.PathLike, name: str, rule: str = site_adaptation.DEFAULT_RULE,
    calibration: str = site_adaptation.NO_CALIBRATION, models: Any = None, engine: str = "auto", replace: bool = False,
    n_draws: int = site_adaptation.CURVE_DRAWS, seed: int = site_adaptation.SEED,
) -> dict[str, Any]:
    """Score `site_folder` with `run`, choose the operating point by `rule`, save it as `name`; the saved record.

    `RunError` for a bad or taken name (unless `replace`), `folders.DataError` for a folder without
    images, `SiteError` for too few images of a class or a bad rule or calibration: each says what to do.
    """
    path = point_path(run, name)
    if path.exists() and not replace:
        raise RunError(f"run {run.name!r} already has an operating point named {name!r}: pick another name, or replace it")
    if rule not in site_adaptation.RULES:
        raise SiteError(f"unknown rule {rule!r}: choose one of {', '.join(site_adaptation.RULES)}")
    if calibration not in site_adaptation.CALIBRATIONS:
        raise SiteError(f"unknown calibration {calibration!r}: choose one of {', '.join(site_adaptation.CALIBRATIONS)}")
    images, unreadable = site_images(run, site_folder)
    scored, unscored = score_site(run, images, models, engine)
    record = {
        "name": name, "run": run.name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "site": str(os.path.abspath(site_folder)), "skipped_files": len(unreadable) + unscored,
        **adapt_scores(run, scored, rule, calibration, n_draws, seed),
    }
    files.write_json(path, record)
    return record


def apply_point(table: pd.DataFrame, run: Run, point: dict | None) -> pd.DataFrame:
    """A run's prediction table (`run_kinds.predict_files`) decided at a saved operating point.

    The label follows the point's threshold; `threshold` and `operating_point` columns say which
    decided, and a calibrated point adds `calibrated_probability` (the same decision: calibration
    is increasing). None keeps the run's own threshold (the point is then "validation").
    """
    task = tasks.task_for(run.task)
    out = table.copy()
    threshold = run.threshold if point is None else float(point["threshold"])
    out["threshold"] = threshold
    out["operating_point"] = VALIDATION_POINT if point is None else str(point.get("name", "site"))
    if point is None or not task.is_binary:
        return out
    scored = out["probability"].notna()
    probability = out.loc[scored, "probability"].to_numpy(dtype=np.float64)
    out.loc[scored, "label"] = [task.binary_classes[int(p >= threshold)] for p in probability]
    if "unusual" in out:  # a flagged image stays not assessed at any point; model_label says what the point decides
        out["model_label"] = out["label"]
        out["label"] = ood.assessed_labels(out["label"], out["unusual"])
    if point.get("calibration"):
        out["calibrated_probability"] = np.nan
        out.loc[scored, "calibrated_probability"] = Calibration.from_dict(point["calibration"]).apply(probability)
    return out


def delete_point(run: Run, name: str) -> None:
    """Remove a saved operating point (`RunError` when the run has none of that name)."""
    run.operating_point(name)
    point_path(run, name).unlink(missing_ok=True)
