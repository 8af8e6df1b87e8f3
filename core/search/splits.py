"""The data of a run: checked before the run folder exists, split once, read back on resume.

`preflight` refuses a folder without usable images or weights that cannot be had before anything
is written; `make_split` applies the splitting rules; `prepare_split` makes the patient-level split table (`splits.csv`) and the data
summary on a run's first start and reads them back unchanged on resume; `drop_undecodable`
takes out images that failed to decode and lists them in the summary. The splitting rules
themselves live in `core.data`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core import files
from core.data import folders, splitting
from core.models import backbones
from core.runs import artifacts
from core.search.settings import SearchSettings


def preflight(settings: SearchSettings) -> folders.Dataset:
    """Check what can be checked before a run folder exists: the data and the weights.

    A folder without usable images of both classes, or weights that cannot be had, is refused
    here, so a mistake leaves no half-made run behind.
    """
    dataset = folders.scan_folder(settings.data_dir)
    folders.require_usable(dataset, settings.task_info)
    spec = settings.backbone()
    if spec is not None:
        backbones.resolve_weights(spec)
    return dataset


def prepare_split(settings: SearchSettings, folder: Path, log, dataset: folders.Dataset | None = None) -> tuple[pd.DataFrame, dict]:
    """The run's split table: saved on the first start, read back on resume so it never changes."""
    saved = folder / artifacts.SPLITS
    summary = files.read_json(folder / artifacts.DATA_SUMMARY)
    if saved.exists() and summary:
        table = files.read_csv(saved)
        missing = [p for p in table["path"] if not os.path.exists(p)]
        if missing:
            raise folders.DataError(
                f"{len(missing)} images of this run's split are gone (e.g. {missing[0]}): restore the data folder "
                "or start a new run"
            )
        log(f"resuming with the saved split: {len(table)} images")
        return table, summary
    if dataset is None:
        log(f"scanning {settings.data_dir}")
        dataset = folders.scan_folder(settings.data_dir)
        folders.require_usable(dataset, settings.task_info)
    table, summary = make_split(dataset, settings.task_info, settings.val_fraction, settings.test_fraction, settings.seed,
                                settings.max_per_class)
    files.write_csv(saved, table)
    files.write_json(folder / artifacts.DATA_SUMMARY, summary)
    for note in summary["notes"]:
        log(f"note: {note}")
    if summary["unreadable"]:
        log(f"skipped {len(summary['unreadable'])} unreadable files (listed in {artifacts.DATA_SUMMARY})")
    return table, summary


def make_split(
    dataset: folders.Dataset, task, val_fraction: float, test_fraction: float, seed: int, max_per_class: int | None
) -> tuple[pd.DataFrame, dict]:
    """The patient-level split table and the data summary: a search's rules, so that any run made
    with the same data, fractions, seed and cap (a search, an imported model) holds the same images
    in each split and pairs with the others."""
    table, notes = splitting.assign_splits(dataset.table, val_fraction, test_fraction, seed, task)
    dataset.notes.extend(notes)
    table = splitting.cap_per_class(table, max_per_class, seed, task)
    splitting.check_patient_disjoint(table)
    splitting.require_splits(table, task)
    return table, splitting.summarize(dataset, table, task)


def drop_undecodable(table: pd.DataFrame, pixels: np.ndarray, errors, folder: Path, log):
    """The table and pixels without the images that could not be decoded, which join the summary's unreadable list."""
    if not errors:
        return table, pixels
    bad = {e.path for e in errors}
    keep = ~table["path"].isin(bad).to_numpy()
    log(f"skipped {len(bad)} images that could not be decoded")
    summary = files.read_json(folder / artifacts.DATA_SUMMARY, {})
    listed = {u["path"] for u in summary.get("unreadable", [])}
    summary.setdefault("unreadable", []).extend({"path": e.path, "reason": e.reason} for e in errors if e.path not in listed)
    files.write_json(folder / artifacts.DATA_SUMMARY, summary)
    return table[keep].reset_index(drop=True), pixels[keep]
