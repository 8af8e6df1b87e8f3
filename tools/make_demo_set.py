"""Build the demo data set in `demo_data/chest_xray/` from a copy of the public data set.

    python tools/make_demo_set.py [SOURCE] [--seed 15]

SOURCE is the public "Chest X-Ray Images (Pneumonia)" folder (default ../shared/data/chest_xray).
How the images are chosen, so that anyone can check or redo it:

- whole patients only (the patient comes from the file name, as in `core.data.folders.parse_file_name`),
  drawn in a seeded random order; patients with more than MAX_IMAGES_PER_PATIENT images are skipped
  so that the images come from many children;
- demo train/ from the source's train/, demo test/ from the source's test/: TRAIN_PER_CLASS and
  TEST_PER_CLASS images per class. Pneumonia is half bacterial, half viral in both parts;
- train and test share no patient, not even a patient number (`person12_bacteria` in train keeps
  `person12_virus` out of test);
- each image is converted to grayscale, shrunk to SIZE pixels on its longer side and saved as JPEG
  at QUALITY, under its original file name.

TEST_PER_CLASS is MIN_SPLIT_IMAGES_PER_CLASS (25), so a search keeps the demo's test/ as its test
split, as it keeps the full download's. `demo_data/MANIFEST.csv` lists each image with its patient,
kind and source file. The images are committed; this script only documents and repeats the choice.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.data.folders import CLASS_NAMES, IMAGE_EXTENSIONS, MIN_SPLIT_IMAGES_PER_CLASS, parse_file_name  # noqa: E402

DEMO_ROOT = REPO / "demo_data"
TARGET = DEMO_ROOT / "chest_xray"
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = MIN_SPLIT_IMAGES_PER_CLASS
MAX_IMAGES_PER_PATIENT = 3
SIZE = 128
QUALITY = 85


def patients_in(folder: Path, class_name: str) -> dict[str, list[Path]]:
    """patient -> image files of one class folder, in name order."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((folder / class_name).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            found[parse_file_name(path.name, class_name)[0]].append(path)
    return dict(found)


def number(patient: str) -> str:
    """`person12_bacteria` -> `person12`; a normal patient is its own number."""
    return patient.split("_")[0]


def draw(patients: dict[str, list[Path]], want: int, rng: random.Random, taken: set[str]) -> list[str]:
    """Whole patients, in a seeded order, until exactly `want` images (skipping those that overshoot)."""
    order = sorted(patients)
    rng.shuffle(order)
    chosen, count = [], 0
    for patient in order:
        images = len(patients[patient])
        if number(patient) in taken or images > MAX_IMAGES_PER_PATIENT or count + images > want:
            continue
        chosen.append(patient)
        count += images
        if count == want:
            return chosen
    raise SystemExit(f"could not draw exactly {want} images of whole patients (got {count})")


def groups(patients: dict[str, list[Path]], class_name: str) -> list[tuple[dict[str, list[Path]], float]]:
    """(patients, share of the images) per pneumonia kind; normal is one group."""
    if class_name == "NORMAL":
        return [(patients, 1.0)]
    by_kind: dict[str, dict[str, list[Path]]] = defaultdict(dict)
    for patient, paths in patients.items():
        by_kind[parse_file_name(paths[0].name, class_name)[1]][patient] = paths
    return [(by_kind["bacteria"], 0.5), (by_kind["virus"], 0.5)]


def save_small(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        image = image.convert("L")
        image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "JPEG", quality=QUALITY, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    source = Path(args.source)
    rng = random.Random(args.seed)

    if TARGET.exists():
        shutil.rmtree(TARGET)
    rows = []
    taken: set[str] = set()  # patient numbers already in the demo's train/
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for class_name in CLASS_NAMES:
            patients = patients_in(source / split, class_name)
            kinds = groups(patients, class_name)
            left = per_class
            for index, (group, share) in enumerate(kinds):
                want = left if index == len(kinds) - 1 else round(per_class * share)  # the last kind takes the rest
                left -= want
                for patient in draw(group, want, rng, taken if split == "test" else set()):
                    for path in patients[patient]:
                        target = TARGET / split / class_name / path.name
                        save_small(path, target)
                        kind = parse_file_name(path.name, class_name)[1]
                        rows.append((f"chest_xray/{split}/{class_name}/{path.name}", split, class_name, kind, patient,
                                     f"{split}/{class_name}/{path.name}"))
                    if split == "train":
                        taken.add(number(patient))
    with open(DEMO_ROOT / "MANIFEST.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "split", "class_name", "kind", "patient", "source_file"])
        writer.writerows(rows)
    size = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"{len(rows)} images, {size / 1e6:.2f} MB in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
