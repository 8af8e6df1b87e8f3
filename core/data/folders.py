"""A chest X-ray data folder: find its images, name their patients, list the files that cannot be read.

A data folder is laid out like the public download (`<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*`).
Everything downstream works on one table (a pandas DataFrame, one row per image) with the columns
`path`, `class_name`, `kind`, `patient`, `folder_split` (where the file lies) and, once split,
`split` (where it is used: `core.data.splitting`). Pixels come from `core.data.loading`.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from core.data.tasks import PNEUMONIA, Task

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
