"""Measure the unusual-image flag on saved runs: how much of a greyscale non-X-ray set it flags, and how many test X-rays.

For each run, three detectors (`core.inference.unusual`): the image statistics alone
(`core.inference.ood`), the model's own features alone (`core.inference.feature_ood`), and their
combination as shipped (either fires). Each cut-off was chosen on the run's validation images; the
references are made (and saved in the run folders) on first use. The negative set is
`tools/ood_negatives.py`'s, written to a temporary folder, with ten training X-rays inverted.
Prints a Markdown table for docs/measurements.md.

    python tools/ood_measure.py ARTIFACTS RUN [RUN ...] --test FOLDER --train FOLDER
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.inference import ood, unusual  # noqa: E402
from core.runs import artifacts  # noqa: E402
from tools import ood_negatives  # noqa: E402


def flagged(run: artifacts.Run, paths: list[str]) -> dict[str, np.ndarray]:
    """detector -> flag of each image: statistics, features (NaN ratio: not flagged), combined."""
    statistics = ood.flag_files(ood.reference_for(run), paths)
    ratios, missing = unusual.feature_ratios(run, paths)
    if missing:
        print(f"{run.name}: {missing}", file=sys.stderr)
    combined = unusual.combine(statistics, ratios, missing)
    return {
        f"image statistics ({len(ood.NAMES)})": statistics["unusual"].astype(bool).to_numpy(),
        "model features (Mahalanobis)": np.nan_to_num(ratios, nan=0.0) > 1.0,
        "combined (either)": combined["unusual"].astype(bool).to_numpy(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--test", required=True, help="the shared test split's folder of X-rays")
    parser.add_argument("--train", required=True, help="a folder of training X-rays, ten of them inverted for the negative set")
    args = parser.parse_args(argv)
    test = sorted(str(p) for p in Path(args.test).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    xrays = ood_negatives.xrays_to_invert(args.train)
    with tempfile.TemporaryDirectory() as folder:
        negatives = ood_negatives.write_negatives(folder, xrays)
        print(f"| run | detector | non-X-ray set flagged (of {len(negatives)}) | test X-rays flagged (of {len(test)}) |")
        print("|---|---|---|---|")
        for name in args.runs:
            run = artifacts.load_run(args.artifacts, name)
            start = time.perf_counter()
            on_negatives, on_test = flagged(run, negatives), flagged(run, test)
            for detector in on_negatives:
                bad, good = on_negatives[detector], on_test[detector]
                print(f"| {name} | {detector} | {bad.sum()} ({bad.mean():.1%}) | {good.sum()} ({good.mean():.1%}) |")
            kinds = np.array([Path(p).name.split("-")[0] for p in negatives])
            for detector, hits in on_negatives.items():
                per_kind = ", ".join(f"{kind} {hits[kinds == kind].sum()}/{(kinds == kind).sum()}" for kind in dict.fromkeys(kinds))
                print(f"{name}, {detector}: {per_kind}", file=sys.stderr)
            missed = [Path(p).name for p, hit in zip(negatives, on_negatives["combined (either)"], strict=True) if not hit]
            print(f"{name}: {time.perf_counter() - start:.0f} s; missed by the combination: {', '.join(missed) or 'none'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
