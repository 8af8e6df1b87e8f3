"""Measure an ensemble under acquisition shifts: levels on validation, thresholds on validation, the test table once.

Works on a *copy* of the runs' folders (it rewrites the members' `val_stress_predictions.csv` and
builds a new ensemble `NAME-shifts` beside them). Three steps, as docs/measurements.md
("Acquisition shifts") reports them:

1. levels: for each kind of change, the share of validation images the unusual-image flag
   (`core.inference.ood`, the ensemble's reference) flags at each level of a grid;
2. thresholds: each member scores its validation images under the stress conditions it lacks, its
   pooled threshold is re-chosen, and the ensemble is rebuilt on them;
3. test: the test split at 224 px, changed as `TEST_SHIFTS` says (fixed before any result), written
   to files for the flag and scored by each member; a Markdown table of the ensemble at its saved
   and its new threshold.

    python tools/acquisition_shifts.py ARTIFACTS_COPY ENSEMBLE [--out DIR]

With `--test-only`, only step 3, at the ensemble's saved threshold: for a recipe made after the
conditions joined the stress test (its threshold already pools them). Either way the table gives the
share flagged by the image statistics alone and by the shipped flag (statistics or model features,
`core.inference.unusual`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import files  # noqa: E402
from core.data import acquisition as change  # noqa: E402
from core.data import loading  # noqa: E402
from core.evidence import statistics, stress  # noqa: E402
from core.inference import ensemble, evaluation, ood, unusual  # noqa: E402
from core.runs import artifacts  # noqa: E402

SIZE = 224
GRID = {
    "JPEG quality": (change.jpeg, [50, 30, 20, 15, 10]),
    "gamma (darker)": (change.gamma, [1.2, 1.4, 1.6]),
    "gamma (lighter)": (change.gamma, [0.8, 0.7, 0.6]),
    "exposure (darker)": (change.exposure, [0.9, 0.8, 0.7]),
    "exposure (brighter)": (change.exposure, [1.1, 1.2, 1.3]),
    "rotation °": (change.rotate, [3, 5, 7, 10]),
    "resolution ÷": (change.down_up, [2, 3, 4]),
    "framing wider": (change.zoom_out, [0.05, 0.1, 0.15, 0.2, 0.3]),
    "noise σ": (change.noise, [3, 5, 8, 12]),
}
TEST_SHIFTS = {
    "JPEG quality 15": lambda p: change.jpeg(p, 15),
    "gamma 1.6 (darker)": lambda p: change.gamma(p, 1.6),
    "gamma 0.6 (lighter)": lambda p: change.gamma(p, 0.6),
    "exposure ×0.75 (darker)": lambda p: change.exposure(p, 0.75),
    "exposure ×1.25 (brighter)": lambda p: change.exposure(p, 1.25),
    "rotated ±7°": lambda p: change.rotate(p, 7),
    "resolution ÷4 and back": lambda p: change.down_up(p, 4),
    "framed 20 % wider (black border)": lambda p: change.zoom_out(p, 0.20),
    "noise σ 10": lambda p: change.noise(p, 10, seed=1),
}
AS_IS = "as is (unchanged)"


def flagged_share(reference: dict, pixels: np.ndarray) -> float:
    """The share of (n, s, s, 1) images the flag's statistics call unusual."""
    stats = np.stack([ood.image_statistics(Image.fromarray(im[..., 0])) for im in pixels])
    return float((ood.scores(reference, stats)[0] > reference["cutoff"]).mean())


def scorer(run: artifacts.Run):
    model = evaluation.load_model(run.model_path)
    return lambda pixels: np.round(evaluation.probabilities(model, pixels, "auto", 64, run.folder / artifacts.TFLITE_MODEL)[0], 6)


def extend_stress(run: artifacts.Run, val_pixels: np.ndarray, val_paths: list[str]) -> None:
    """Add the stress conditions `run` lacks to its `val_stress_predictions.csv`."""
    table = run.val_stress_predictions()
    missing = [c for c in stress.PERTURBATIONS if c not in table.columns]
    score = scorer(run)
    new = pd.DataFrame({"path": val_paths, **{c: score(stress.PERTURBATIONS[c](val_pixels)) for c in missing}})
    files.write_csv(run.folder / artifacts.VAL_STRESS_PREDICTIONS, table.merge(new, on="path"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts")
    parser.add_argument("ensemble")
    parser.add_argument("--out", default=None, help="where the shifted test files go (default: ARTIFACTS/shifted-test)")
    parser.add_argument("--test-only", action="store_true", help="only the test copies, at the saved threshold")
    args = parser.parse_args(argv)
    root = Path(args.artifacts)
    run = artifacts.load_run(root, args.ensemble)
    members = ensemble.member_runs(run)
    reference = ood.reference_for(run)
    thresholds = {"saved": run.metrics["threshold"]}
    if not args.test_only:
        thresholds["new"] = choose_thresholds(root, run, members, reference)
    return test_table(root, run, members, reference, thresholds, args.out)


def choose_thresholds(root: Path, run: artifacts.Run, members: list[artifacts.Run], reference: dict) -> float:
    """Steps 1 and 2: the flagged share of each level on validation, then each member's missing
    conditions scored and the ensemble rebuilt on them; its new threshold."""
    val = members[0].val_predictions()
    val_paths = list(val["path"])
    val_pixels = np.stack([loading.load_image(p, SIZE) for p in val_paths])

    print("## Levels: share of validation images flagged unusual\n")
    for kind, (make, levels) in GRID.items():
        print(f"- {kind}: " + ", ".join(f"{lv}: {flagged_share(reference, make(val_pixels, lv)):.1%}" for lv in levels))

    print("\n## Thresholds\n")
    for member in members:
        extend_stress(member, val_pixels, val_paths)
    rebuilt_name = f"{run.name}-shifts"
    shutil.rmtree(root / rebuilt_name, ignore_errors=True)
    rebuilt = ensemble.build_ensemble(root, [m.name for m in members], rebuilt_name, weighted=bool(run.settings.get("weighted")))
    print(f"- {run.name}: {run.metrics['threshold']:.3f} -> {rebuilt.metrics['threshold']:.3f}")
    return rebuilt.metrics["threshold"]


def test_table(root: Path, run: artifacts.Run, members: list[artifacts.Run], reference: dict, thresholds: dict, out: str | None) -> int:
    """Step 3: the test copies written, flagged and scored; the Markdown table."""
    test = run.predictions()
    y = test["y_true"].to_numpy()
    test_pixels = np.stack([loading.load_image(p, SIZE) for p in test["path"]])
    scores = {m.name: scorer(m) for m in members}
    weights = np.asarray(run.settings["weights"])
    out = Path(out or root / "shifted-test")
    rows = []
    for kind, make in {AS_IS: lambda p: p, **TEST_SHIFTS}.items():
        pixels = make(test_pixels)
        folder = out / "".join(ch if ch.isalnum() else "_" for ch in kind)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(pixels):
            Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
        paths = [str(folder / f"{i:03d}.png") for i in range(len(pixels))]
        flags = ood.flag_files(reference, paths)
        shipped = unusual.flag_files(run, paths)
        probability = ensemble.combine(np.column_stack([scores[m.name](pixels) for m in members]), weights)
        row = {"kind": kind, "flagged": float(flags["unusual"].astype(bool).mean()),
               "flagged shipped": float(shipped["unusual"].astype(bool).mean())}
        for name, threshold in thresholds.items():
            metrics = statistics.binary_metrics(y, probability, threshold)
            row |= {f"{name} {k}": float(metrics[k]) for k in ("accuracy", "sensitivity", "specificity")} | {"auc": float(metrics["auc"])}
        rows.append(row)
    table = pd.DataFrame(rows)
    clean = table.iloc[0]
    print("\n## Test copies\n")
    last = list(thresholds)[-1]
    header = ["kind", "flagged (statistics)", "flagged (shipped)", "AUC"]
    for name, threshold in thresholds.items():
        header += [f"{name} {threshold:.3f}: accuracy (change)", "sens / spec"]
    print("| " + " | ".join([*header, "target"]) + " |")
    print("|" + " --- |" * (len(header) + 1))
    for _, r in table.iterrows():
        held = r[f"{last} accuracy"] - clean[f"{last} accuracy"] >= -0.04 or r["flagged shipped"] >= 0.9
        cells = [f"{r['kind']}", f"{r['flagged']:.1%}", f"{r['flagged shipped']:.1%}", f"{r['auc']:.3f}"]
        for name in thresholds:
            cells += [f"{r[f'{name} accuracy']:.1%} ({100 * (r[f'{name} accuracy'] - clean[f'{name} accuracy']):+.1f})",
                      f"{r[f'{name} sensitivity']:.1%} / {r[f'{name} specificity']:.1%}"]
        print("| " + " | ".join([*cells, "—" if r["kind"] == AS_IS else ("holds" if held else "fails")]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
