"""Measure site adaptation on saved runs: does the interval stated on a few site images hold the whole split's figure?

A labelled split of each run plays the site (`core.evidence.site_adaptation.coverage`): validation
(`val_predictions.csv`), where the rule and the intervals were chosen, or test (`predictions.csv`,
the shifted official test split), measured once. No model is loaded: the saved probabilities are
all it needs. Prints a Markdown table for docs/measurements.md.

    python tools/site_coverage.py ARTIFACTS RUN [RUN ...] [--split val|test] [--n-site 50] [--draws 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.evidence import run_evidence, site_adaptation  # noqa: E402
from core.runs import artifacts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--n-site", type=int, default=50)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--rules", default=",".join(site_adaptation.RULES))
    args = parser.parse_args(argv)
    print("| run | rule | split | draws | sensitivity in interval (whole split / rest) | specificity in interval (whole / rest) "
          "| both (whole / rest) | median interval width, sens / spec |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.runs:
        run = artifacts.load_run(args.artifacts, name)
        table = run.val_predictions() if args.split == "val" else run.predictions()
        y, s, groups = run_evidence.arrays(table)
        target = ((run.metrics or {}).get("val") or {}).get("sensitivity")
        for rule in args.rules.split(","):
            c = site_adaptation.coverage(y, s, groups, n_site=args.n_site, rule=rule, target_sensitivity=target, n_draws=args.draws)
            print(f"| {name} | {rule} | {args.split} ({len(y)}) | {c['draws']} | {c['full_sensitivity']:.1%} / {c['rest_sensitivity']:.1%} "
                  f"| {c['full_specificity']:.1%} / {c['rest_specificity']:.1%} | {c['full_both']:.1%} / {c['rest_both']:.1%} "
                  f"| {c['width_sensitivity']:.2f} / {c['width_specificity']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
