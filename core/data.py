"""Chest X-ray data: find the images, name their patients, split by patient, summarise, load pixels.

A data folder is laid out like the public download (`<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*`).
Everything downstream works on one table (a pandas DataFrame, one row per image) with the columns
`path`, `class_name`, `kind`, `patient`, `folder_split` (where the file lies) and, once split,
`split` (where it is used). Pixels are decoded once per input size and kept in an on-disk cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from core.artifacts import read_csv, write_csv, write_npy
from core.tasks import PNEUMONIA, TASKS, Task  # noqa: F401 - Task and TASKS are re-exported

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# Fewer validation images than this in `val/` (the public download has 16) and we carve our own.
MIN_SPLIT_IMAGES_PER_CLASS = 25
TABLE_COLUMNS = ["path", "class_name", "kind", "patient", "folder_split"]

_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-", re.IGNORECASE)
_IGNORED_NAMES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")


class DataError(ValueError):
    """A data folder that cannot be used; the message says what is wrong and how to fix it."""


# The tasks (which images, which labels) live in core.tasks; `BINARY` is the pneumonia task's old name.
BINARY = PNEUMONIA


@dataclass
class UnreadableFile:
    path: str
    reason: str


@dataclass
class Dataset:
    """The scanned folder: the usable images and the files that were skipped, with reasons."""

    root: Path
    table: pd.DataFrame
    unreadable: list[UnreadableFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------


def parse_file_name(file_name: str, class_name: str) -> tuple[str, str]:
    """Return (patient id, pneumonia kind) for an image file name.

    `person123_bacteria_456.jpeg` -> ("person123_bacteria", "bacteria"); `IM-0115-0001.jpeg` ->
    ("IM-0115", "normal"); `NORMAL2-IM-0372-0001.jpeg` -> ("NORMAL2-IM-0372", "normal"). The data
    set numbers persons separately for each kind, so `person123_bacteria` and `person123_virus` are
    two children: the patient is number *and* kind. (In `train/`, 808 numbers carry both kinds whose
    images are no more alike than random pairs, and the 170 numbers found in both `train/` and the
    official `test/` always have another kind there.) A name we cannot read makes its own patient
    (the file stem), so it can never join another patient's group by mistake.
    """
    stem = Path(file_name).stem
    if class_name == "NORMAL":
        match = _NORMAL_NAME.match(stem)
        return (match.group(1).upper() if match else stem), "normal"
    match = _PNEUMONIA_NAME.match(stem)
    if match:
        kind = match.group(2).lower()
        return f"{match.group(1).lower()}_{kind}", kind
    return stem, "unknown"


# --------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------


def _child_dirs(folder: Path) -> dict[str, Path]:
    """Sub-folders by upper-case name, skipping hidden and macOS resource folders."""
    children = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return {}
    for entry in entries:
        if entry.name.startswith(".") or entry.name in _IGNORED_NAMES:
            continue
        try:
            if entry.is_dir():
                children.setdefault(entry.name.upper(), entry)
        except OSError:
            continue
    return children


def _looks_like_root(folder: Path) -> bool:
    children = _child_dirs(folder)
    has_split = any(name.upper() in children for name in SPLITS)
    has_classes = all(name in children for name in CLASS_NAMES)
    return has_split or has_classes


def find_data_root(folder: str | os.PathLike) -> Path:
    """Find the folder holding `train/`, `val/`, `test/` (or NORMAL/ and PNEUMONIA/ directly).

    Downloads unpack with extra levels (`chest_xray/chest_xray/...`, `__MACOSX/`), so we look up to
    three levels down through single candidate sub-folders before giving up.
    """
    start = Path(os.path.abspath(Path(folder).expanduser()))  # saved runs must not depend on the cwd
    if not start.exists():
        raise DataError(f"data folder {start} does not exist: pass the folder that holds train/ and test/")
    if not start.is_dir():
        raise DataError(f"{start} is a file, not a folder: pass the folder that holds train/ and test/")
    candidates = [start]
    for _ in range(3):
        for candidate in candidates:
            if _looks_like_root(candidate):
                return candidate
        candidates = [child for c in candidates for child in _child_dirs(c).values()]
    raise DataError(
        f"no chest X-ray images found under {start}: expected train/, val/ or test/ folders, each with "
        "NORMAL/ and PNEUMONIA/ inside (the layout of the public 'Chest X-Ray Images (Pneumonia)' download)"
    )


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: they carry the size


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header within `head`, or None when not found there."""
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
        if marker == 0xDA or length < 2:  # image data before any frame header: let Pillow judge
            return None
        i += 2 + length
    return None


def check_image_file(path: Path) -> str | None:
    """Return why a file cannot be used as an image, or None when its header reads fine.

    This is the cheap check done at scan time; a truncated file is only caught when decoded.
    A plain JPEG's size is read from its frame header directly (a few times faster than Pillow
    over thousands of files); anything else goes through Pillow.
    """
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as handle:
            size = _jpeg_size(handle.read(65536))
        if size and 0 < size[0] * size[1] <= (Image.MAX_IMAGE_PIXELS or 2**62):
            width, height = size
            return f"image is only {width}x{height} pixels" if min(width, height) < 8 else None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
    except Image.DecompressionBombError as error:
        return f"image too large to decode safely ({error})"
    except Image.DecompressionBombWarning as error:
        return f"image too large to decode safely ({error})"
    except UnidentifiedImageError:
        return "not an image (the file's contents are not JPEG or PNG)"
    except (OSError, SyntaxError, ValueError) as error:
        return f"cannot read image: {error}"
    if min(width, height) < 8:
        return f"image is only {width}x{height} pixels"
    return None


def _image_files(class_folder: Path, unreadable: list[UnreadableFile]) -> list[Path]:
    files = []
    seen: set[str] = set()
    # os.walk(followlinks=False) cannot loop through a symlinked folder back into itself.
    for dirpath, dirnames, filenames in os.walk(class_folder, onerror=None, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _IGNORED_NAMES)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or name in _IGNORED_NAMES:
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the name: tables and CSVs cannot hold it
                shown = name.encode("utf-8", "replace").decode("utf-8")
                unreadable.append(UnreadableFile(str(Path(dirpath) / shown), "file name is not valid UTF-8: rename the file"))
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                unreadable.append(UnreadableFile(str(path), f"not a .jpeg/.jpg/.png file ({path.suffix or 'no extension'})"))
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            files.append(path)
    return files


def scan_folder(folder: str | os.PathLike, check_images: bool = True) -> Dataset:
    """Read a chest X-ray folder into a table of usable images and a list of skipped files."""
    root = find_data_root(folder)
    unreadable: list[UnreadableFile] = []
    notes: list[str] = []
    children = _child_dirs(root)
    if any(split.upper() in children for split in SPLITS):
        split_folders = {split: children[split.upper()] for split in SPLITS if split.upper() in children}
    else:  # NORMAL/ and PNEUMONIA/ directly under the root: everything is training data.
        split_folders = {"train": root}
        notes.append("no train/val/test folders: all images are treated as train/ and split by patient")
    unknown = sorted(set(children) - {s.upper() for s in SPLITS} - set(CLASS_NAMES))
    if unknown:
        notes.append(f"ignored folders that are not a split: {', '.join(unknown)}")

    rows = []
    for split, split_folder in split_folders.items():
        class_folders = _child_dirs(split_folder)
        for class_name in CLASS_NAMES:
            if class_name not in class_folders:
                notes.append(f"{split}/{class_name}/ is missing")
                continue
            for path in _image_files(class_folders[class_name], unreadable):
                patient, kind = parse_file_name(path.name, class_name)
                rows.append((str(path), class_name, kind, patient, split))
        extra = sorted(set(class_folders) - set(CLASS_NAMES))
        if extra:
            notes.append(f"ignored folders in {split}/: {', '.join(extra)} (only NORMAL and PNEUMONIA are used)")

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if check_images and len(table):
        with ThreadPoolExecutor(max_workers=4) as pool:
            problems = list(pool.map(check_image_file, map(Path, table["path"])))
        bad = [i for i, problem in enumerate(problems) if problem]
        unreadable += [UnreadableFile(table["path"].iat[i], problems[i]) for i in bad]
        table = table.drop(index=bad).reset_index(drop=True)
    return Dataset(root=root, table=table, unreadable=unreadable, notes=notes)


def require_usable(dataset: Dataset, task: Task = PNEUMONIA) -> None:
    """Refuse, before any training, a folder without images of every class of the task."""
    counts = dataset.table["class_name"].value_counts()
    missing = [name for name in CLASS_NAMES if counts.get(name, 0) == 0 and (task is PNEUMONIA or name == "PNEUMONIA")]
    if missing:
        skipped = f" ({len(dataset.unreadable)} files were unreadable)" if dataset.unreadable else ""
        raise DataError(
            f"no usable {' or '.join(missing)} images in {dataset.root}{skipped}: "
            "each split folder needs NORMAL/ and PNEUMONIA/ sub-folders with .jpeg/.jpg/.png X-rays"
        )
    counts = dataset.table[task.column].value_counts()
    missing = [name for name, shown in zip(task.classes, task.names, strict=True) if counts.get(name, 0) == 0]
    if missing:
        raise DataError(
            f"no {' or '.join(missing)} images in {dataset.root} for the {task.name} task: its pneumonia file names must "
            "carry the kind, as the public download's do (person12_bacteria_34.jpeg, person56_virus_78.jpeg); "
            "pick the pneumonia task for other folders"
        )


# --------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------


def _carve(pool: pd.DataFrame, fraction: float, seed: int, column: str = "class_name") -> pd.Series:
    """Pick about `fraction` of the pool's patients, stratified by `column` (the task's classes); True where picked."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    if pool["patient"].nunique() < n_splits:
        raise DataError(
            f"only {pool['patient'].nunique()} patients left to split: add images or lower the split fraction"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, picked = next(folds.split(pool, pool[column], groups=pool["patient"]))
    mask = pd.Series(False, index=pool.index)
    mask.iloc[picked] = True
    return mask


def _has_enough(table: pd.DataFrame, task: Task = PNEUMONIA) -> bool:
    counts = table[task.column].value_counts()
    return all(counts.get(name, 0) >= MIN_SPLIT_IMAGES_PER_CLASS for name in task.classes)


def assign_splits(
    table: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42, task: Task = PNEUMONIA
) -> tuple[pd.DataFrame, list[str]]:
    """Add a `split` column so that no patient is in two splits; return the table and notes.

    Only the task's images are kept (`Task.select`: pneumonia images for bacterial vs viral). The
    download's own `test/` is kept when it holds every class of the task; a missing or tiny `val/`
    (the public one has 16 images) is folded into the training pool and a validation split is
    carved out of it, stratified by the task's classes and grouped by patient.
    """
    notes: list[str] = []
    unused = int((~task.rows(table)).sum())
    table = task.select(table)
    if unused and task is not PNEUMONIA:
        notes.append(f"the {task.name} task uses {len(table):,} of the images; {unused:,} are not of its classes ({', '.join(task.names)})")
    table["split"] = ""
    in_folder = {split: table["folder_split"] == split for split in SPLITS}

    if _has_enough(table[in_folder["test"]], task):
        table.loc[in_folder["test"], "split"] = "test"
        pool = ~in_folder["test"]
    else:
        if in_folder["test"].any():
            notes.append(f"test/ has too few images per class (< {MIN_SPLIT_IMAGES_PER_CLASS}): carved a test split instead")
        pool = pd.Series(True, index=table.index)
    keep_val = _has_enough(table[in_folder["val"]], task)
    if keep_val:
        table.loc[in_folder["val"], "split"] = "val"
        pool &= ~in_folder["val"]
    elif in_folder["val"].any():
        notes.append(
            f"val/ has only {int(in_folder['val'].sum())} images: they join the training pool and a "
            f"patient-grouped validation split ({val_fraction:.0%}) is carved out of train/"
        )

    # A patient already in an official split may not also train: drop them from the pool.
    fixed_patients = set(table.loc[table["split"] != "", "patient"])
    leaking = pool & table["patient"].isin(fixed_patients)
    if leaking.any():
        notes.append(
            f"dropped {int(leaking.sum())} training images of {table.loc[leaking, 'patient'].nunique()} "
            "patients who also appear in the official val/ or test/ folders"
        )
        table = table[~leaking].copy()
        pool = pool[~leaking]

    pool_table = table[pool]
    carved_test = not (table["split"] == "test").any()
    if carved_test:
        picked = _carve(pool_table, test_fraction, seed, task.column)
        table.loc[picked[picked].index, "split"] = "test"
        pool_table = pool_table[~picked]
        notes.append(f"no usable test/ folder: carved a patient-grouped test split ({test_fraction:.0%})")
    if not keep_val:
        # The fraction is of the whole pool, so rescale it to what the test carve left.
        fraction = val_fraction / (1 - test_fraction) if carved_test else val_fraction
        picked = _carve(pool_table, min(0.5, fraction), seed + 1, task.column)
        table.loc[picked[picked].index, "split"] = "val"
        pool_table = pool_table[~picked]
    table.loc[pool_table.index, "split"] = "train"
    return table.reset_index(drop=True), notes


def cap_per_class(table: pd.DataFrame, max_per_class: int | None, seed: int = 42, task: Task = PNEUMONIA) -> pd.DataFrame:
    """Keep at most `max_per_class` images of each of the task's classes in each split, drawing whole patients.

    For quick runs. Patients are drawn at random (seeded) and kept whole, so a cap never splits
    a patient and never changes which split a patient is in.
    """
    if not max_per_class:
        return table
    rng = np.random.default_rng(seed)
    kept = []
    for _, group in table.groupby(["split", task.column], sort=True):
        patients = np.array(sorted(group["patient"].unique()))
        rng.shuffle(patients)
        sizes = group.groupby("patient").size()
        total = 0
        chosen = []
        for patient in patients:
            if total + sizes[patient] > max_per_class and total > 0:
                continue
            chosen.append(patient)
            total += sizes[patient]
            if total >= max_per_class:
                break
        kept.append(group[group["patient"].isin(chosen)])
    return pd.concat(kept).sort_index().reset_index(drop=True)


def check_patient_disjoint(table: pd.DataFrame) -> None:
    """Raise if any patient appears in two splits (a leak that would inflate test metrics)."""
    splits_per_patient = table.groupby("patient")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        raise DataError(f"patients in more than one split: {', '.join(leaking.index[:5])}")


def require_splits(table: pd.DataFrame, task: Task = PNEUMONIA) -> None:
    """Refuse a split table where a split lacks a class of the task: AUC and thresholds need every one."""
    for split in SPLITS:
        counts = table.loc[table["split"] == split, task.column].value_counts()
        missing = [name for name in task.classes if counts.get(name, 0) == 0]
        if missing:
            raise DataError(
                f"the {split} split has no {' or '.join(missing)} images: add images, or raise "
                "--max-per-class so every split gets every class"
            )


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights that make each class count as much as the others (n / (k * n_c))."""
    counts = np.bincount(labels, minlength=n_classes)
    return {c: float(len(labels) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def summarize(dataset: Dataset, table: pd.DataFrame | None = None, task: Task = PNEUMONIA) -> dict:
    """Counts a user checks before training: images and patients per split and class, kinds,
    class balance and weights, and the files that were skipped.

    `task_images` counts the task's classes per split and `class_weights` are the task's, as its
    training uses them (`images` stays by folder class, NORMAL and PNEUMONIA).
    """
    table = dataset.table if table is None else table
    split_column = "split" if "split" in table.columns else "folder_split"
    splits = [s for s in SPLITS if (table[split_column] == s).any()]
    images = {
        split: {name: int(((table[split_column] == split) & (table["class_name"] == name)).sum()) for name in CLASS_NAMES}
        for split in splits
    }
    patients = {split: int(table.loc[table[split_column] == split, "patient"].nunique()) for split in splits}
    kinds = {
        split: {k: int(v) for k, v in table.loc[table[split_column] == split, "kind"].value_counts().sort_index().items()}
        for split in splits
    }
    train = table[table[split_column] == "train"]
    normal, pneumonia = (int((train["class_name"] == name).sum()) for name in CLASS_NAMES)
    task_train = task.select(train)
    weights = class_weights(task.labels(task_train), task.n_classes) if len(task_train) else {}
    task_images = {
        split: {
            name: int(((table[split_column] == split) & (table[task.column] == value)).sum())
            for value, name in zip(task.classes, task.names, strict=True)
        }
        for split in splits
    }
    return {
        "root": str(dataset.root),
        "split_by": split_column,
        "task": task.name,
        "images": images,
        "task_images": task_images,
        "patients": patients,
        "kinds": kinds,
        "total_images": int(len(table)),
        "pneumonia_to_normal_ratio": round(pneumonia / normal, 3) if normal else None,
        "class_weights": {task.classes[c]: round(w, 4) for c, w in weights.items()},
        "unreadable": [{"path": u.path, "reason": u.reason} for u in dataset.unreadable],
        "notes": list(dataset.notes),
    }


def positive_per_negative(
    task_images: Mapping[str, Mapping[str, int]], task: Task, splits: Iterable[str] | None = None
) -> float | None:
    """Images of the task's binary positive class per negative one (``summarize``'s ``task_images``),
    over `splits` (default: all); None without negatives. A three-class task's positives are its
    bacterial and viral images, as in its pneumonia vs normal view."""
    shown = list(task_images) if splits is None else [s for s in splits if s in task_images]
    negative = sum(int(task_images[s].get(task.names[0], 0)) for s in shown)
    positive = sum(int(task_images[s].get(name, 0)) for s in shown for name in task.names[1:])
    return positive / negative if negative else None


# --------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one X-ray to a (size, size, 1) uint8 grayscale array.

    Handles what real folders hold: EXIF rotation, 16-bit PNGs (rescaled, not clipped), CMYK and
    alpha. Images are squashed to a square, as the backbones were trained on; X-rays are grayscale,
    so one channel is stored and repeated to three only when fed to a network.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (size, size))  # decode big JPEGs at a reduced scale: much faster
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float32)
                low, high = float(pixels.min()), float(pixels.max())
                pixels = (pixels - low) * (255.0 / (high - low)) if high > low else pixels * 0
                image = Image.fromarray(pixels.astype(np.uint8), mode="L")
            elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            image = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)[..., None]


def _fingerprint(paths: list[str], size: int) -> str:
    digest = hashlib.sha256(f"pixels-v1|{size}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"|{path}|missing".encode())
    return digest.hexdigest()[:24]


def load_images(
    paths: list[str], size: int, cache_dir: str | os.PathLike | None = None, progress=None
) -> tuple[np.ndarray, list[UnreadableFile]]:
    """Decode `paths` at `size` into an (n, size, size, 1) uint8 array, once per size.

    With `cache_dir`, the array is saved there keyed by the files (path, size, mtime) and the input
    size, so the next run with the same images skips decoding. Files that fail to decode come back
    as all-zero images and in the list of failures; callers drop them.
    """
    cache_file = Path(cache_dir) / f"pixels-{_fingerprint(paths, size)}.npy" if cache_dir else None
    errors_file = cache_file.with_suffix(".errors.csv") if cache_file else None
    if cache_file and cache_file.exists():
        try:
            pixels = np.load(cache_file, mmap_mode="r")
            errors = read_csv(errors_file) if errors_file.exists() else pd.DataFrame(columns=["path", "reason"])
            if pixels.shape == (len(paths), size, size, 1):
                return pixels, [UnreadableFile(p, r) for p, r in zip(errors["path"], errors["reason"], strict=True)]
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below

    pixels = np.zeros((len(paths), size, size, 1), dtype=np.uint8)
    errors: list[UnreadableFile] = []

    def decode(i: int) -> None:
        try:
            pixels[i] = load_image(paths[i], size)
        except Exception as error:  # any decoder failure means "skip this file", never a crash
            errors.append(UnreadableFile(paths[i], f"cannot decode image: {error}"))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), start=1):
            if progress and (done % 200 == 0 or done == len(paths)):
                progress(done, len(paths))
    if cache_file:
        write_csv(errors_file, pd.DataFrame([(e.path, e.reason) for e in errors], columns=["path", "reason"]))
        write_npy(cache_file, pixels)
    return pixels, errors


def make_tf_dataset(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 32, shuffle: bool = False, seed: int = 42):
    """A tf.data pipeline over decoded pixels or cached features.

    Pixels stay uint8 with one channel in memory; the map step turns them into the float RGB the
    networks take, batch by batch, overlapped with training by `prefetch`.
    """
    import tensorflow as tf

    inputs = tf.data.Dataset.from_tensor_slices(x)
    if x.ndim == 4:
        inputs = inputs.map(_to_network_input, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = inputs if y is None else tf.data.Dataset.zip((inputs, tf.data.Dataset.from_tensor_slices(y)))
    if shuffle:
        dataset = dataset.shuffle(min(len(x), 4096), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _to_network_input(pixels):
    import tensorflow as tf

    rgb = tf.image.grayscale_to_rgb(pixels) if pixels.shape[-1] == 1 else pixels
    return tf.cast(rgb, tf.float32)


def to_network_input(pixels: np.ndarray) -> np.ndarray:
    """Numpy twin of the pipeline's map step: (n, s, s, 1) uint8 -> (n, s, s, 3) float32 in 0..255."""
    pixels = np.asarray(pixels)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels.astype(np.float32)
