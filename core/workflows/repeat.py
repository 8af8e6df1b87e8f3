"""Repeat the best: a finished run's best hyperparameters trained again with other seeds, as one new run.

Owns what a repeat is: which runs can be repeated (finished searches with saved best
hyperparameters; not ensembles, not repeats), which seeds (the source's seed + 1, + 2, ...), how
each seed is trained (an ordinary search of one trial with every hyperparameter fixed, on the
source's saved split, so only the training seed changes: weights, batch order, dropout and augmentation;
cut-point fine-tuning reuses the source's cached augmented views, and the seed draws which one each
epoch trains on), and
the spread of the test metrics over the seeds (mean, SD, range) that Compare shows.

A repeat is an ordinary run folder, so every page, the report, `predict` and `export` read it:
- `settings.json`: the source's settings with the first seed, one trial, the hyperparameters
  fixed (`fixed_hyperparameters`) and `repeat` = {source, seeds, main};
- `splits.csv`, `data_summary.json`: the source's;
- `seeds/seed-S/`: one whole run per seed (model, predictions, validation predictions, metrics, log);
- `seeds.csv`: one row per seed, its validation-chosen threshold and its validation and test metrics;
- `model.keras`, `predictions.csv`, `val_predictions.csv`, `metrics.json`: the **first seed's**.

The main predictions are the first seed's, not the mean probability over the seeds: the run
stays one model, so Predict, Grad-CAM and the model card use the very model whose predictions
Compare shows, and its numbers compare like with like with other single-model runs. A mean over
seeds is an ensemble, which usually beats each of its members and would flatter the
hyperparameters; `python -m core ensemble` builds one when that is what is wanted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core import files
from core.inference import ensemble, run_kinds
from core.runs import artifacts
from core.runs.artifacts import REPEAT, Run, RunError
from core.runs.progress import Progress, SearchStopped, StopFlag, open_log, recorded_end
from core.search.settings import SearchSettings, cache_root

SEEDS_DIR = "seeds"
SEED_TABLE = "seeds.csv"
MAX_SEEDS = 20
MAIN_PREDICTIONS = "the first seed's (one model: the one Predict, Grad-CAM and the model card use)"
# Per-seed column of seeds.csv -> its title in the spread table.
SPREAD_METRICS = {"test_auc": "test AUC", "test_sensitivity": "test sensitivity", "test_specificity": "test specificity"}
NOTE = (
    "The same hyperparameters and the same split, trained with different seeds: the spread is what luck alone "
    "changes. Sensitivity and specificity are each seed's at its own threshold, chosen on validation. "
    "SD is the sample standard deviation over the seeds (n − 1); range is min–max."
)


def other_seeds(source_seed: int, n_seeds: int) -> list[int]:
    """The seeds of a repeat: the `n_seeds` whole numbers after the source's own seed."""
    return [int(source_seed) + k for k in range(1, int(n_seeds) + 1)]


def seed_run_name(seed: int) -> str:
    return f"seed-{seed}"


def best_hyperparameters(run: Run) -> dict:
    """The hyperparameters of the run's best trial (Keras Tuner's own `tuner/...` entries left out)."""
    saved = run.read(artifacts.BEST_HYPERPARAMETERS) or (run.metrics or {}).get("best_hyperparameters") or {}
    return {k: v for k, v in saved.items() if not str(k).startswith("tuner/")} if isinstance(saved, dict) else {}


def source_problem(run: Run) -> str:
    """Why `run` cannot be repeated ("" when it can)."""
    if problem := run_kinds.repeat_problem(run):  # an ensemble, or a repeat itself
        return problem
    if run.state != "completed" or not run.metrics:
        return f"{run.name} is not finished (state: {run.state}): repeat a completed run"
    if not best_hyperparameters(run):
        return f"{run.name} has no saved best hyperparameters (saved by an older version): start a new search"
    if not (run.folder / artifacts.SPLITS).exists() or run.read(artifacts.DATA_SUMMARY) is None:
        return f"{run.name} has no saved split: a repeat trains on the source's split, so it cannot be repeated"
    return ""


def _check_seeds(n_seeds) -> int:
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, (int, np.integer)) or not 1 <= n_seeds <= MAX_SEEDS:
        raise RunError(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got {n_seeds!r}: pass e.g. --seeds 3")
    return int(n_seeds)


def _missing_images(run: Run) -> str:
    table = files.read_csv(run.folder / artifacts.SPLITS, usecols=["path"])
    missing = [p for p in table["path"] if not os.path.exists(p)]
    if not missing:
        return ""
    return (
        f"{len(missing)} images of {run.name}'s split are gone (e.g. {missing[0]}): a repeat trains on the same images; "
        "restore the data folder"
    )


def plan_repeat(artifacts_dir: str | os.PathLike, source: str, n_seeds: int, name: str | None = None) -> dict:
    """The new run's settings (nothing is written); `RunError` says what is wrong and what to do.

    Refuses an unknown run, one that is not finished, an ensemble or a repeat, a run without best
    hyperparameters or split, images that are gone, seeds outside 1..MAX_SEEDS and a taken name.
    """
    n_seeds = _check_seeds(n_seeds)
    run = artifacts.load_run(artifacts_dir, source)  # RunError naming the runs there
    problem = source_problem(run) or _missing_images(run)
    if problem:
        raise RunError(f"cannot repeat: {problem}")
    name = name or f"{source}-x{n_seeds}seeds"
    try:
        folder = artifacts.run_dir(artifacts_dir, name)
    except RunError as error:
        raise RunError(f"{error} (pass --name)") from None
    if folder.exists():
        raise RunError(f"a run named {name!r} already exists: pick another --name")
    seeds = other_seeds(run.settings.get("seed", 42), n_seeds)
    return {
        **run.settings,
        "name": name,
        "artifacts_dir": str(artifacts_dir),
        "seed": seeds[0],
        # The source's cached augmented views are reused: drawing new ones took most of a minute of
        # a recipe's repeat on 2 cores (docs/measurements.md), and which view each epoch draws still follows the seed.
        "views_seed": source_views_seed(run.settings),
        "trials": 1,
        "tuner": "random",  # one trial with every hyperparameter fixed: a tuner has nothing to choose
        "fixed_hyperparameters": best_hyperparameters(run),
        REPEAT: {"source": run.name, "seeds": seeds, "main": MAIN_PREDICTIONS},
    }


def source_views_seed(settings: dict) -> int:
    """The seed a run's cached augmented views were drawn with (`SearchSettings.views_seed`)."""
    views_seed = settings.get("views_seed")
    return int(settings.get("seed", 42) if views_seed is None else views_seed)


def create_repeat(artifacts_dir: str | os.PathLike, settings: dict, progress: dict | None = None,
                  extra_json: dict[str, dict] | None = None) -> Path:
    """Make the run folder of planned `settings`: the source's split, then `progress` and any `extra_json`
    files (file name -> content, e.g. a recipe's plan), then settings (listed last)."""
    folder = artifacts.run_dir(artifacts_dir, settings["name"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: of two clicks, one gets the folder
    except FileExistsError:
        raise RunError(f"a run named {settings['name']!r} already exists: pick another --name") from None
    source = artifacts.load_run(artifacts_dir, settings[REPEAT]["source"])
    artifacts.copy_split(source.folder, folder)
    if progress is not None:
        files.write_json(folder / artifacts.PROGRESS, progress)
    for file_name, content in (extra_json or {}).items():
        files.write_json(folder / file_name, content)
    files.write_json(folder / artifacts.SETTINGS, settings)
    return folder


# --------------------------------------------------------------------------
# Training the seeds
# --------------------------------------------------------------------------


def run_repeat(artifacts_dir: str | os.PathLike, name: str, log=print) -> dict:
    """Train (or go on training) the seeds of repeat `name`, then save the run; returns its metrics.

    Seeds already trained are kept; a seed stopped half-way resumes where it stopped. A stop
    request (the Stop button, `python -m core stop`, SIGTERM) ends it with state "stopped" and
    returns {"state": "stopped"}; `python -m core resume NAME` continues.
    """
    run = artifacts.load_run(artifacts_dir, name)
    if not run.is_repeat:
        raise RunError(f"run {name!r} is not a repeat")
    if run.metrics:
        raise RunError(f"run {name!r} is already complete; start a new repeat to train more seeds")
    seeds = [int(s) for s in run.settings[REPEAT]["seeds"]]
    seeds_dir = run.folder / SEEDS_DIR
    top = SearchSettings.from_dict({**run.settings, "artifacts_dir": str(artifacts_dir)})
    with artifacts.run_lock(run.folder):
        run_log = open_log(run.folder, log)
        progress = Progress(run.folder, run.progress if run.progress.get("trials_total") else None)
        stop = StopFlag(run.folder)
        stop.file.unlink(missing_ok=True)
        done = [s for s in seeds if (seeds_dir / seed_run_name(s) / artifacts.METRICS).exists()]
        progress.update(state="running", phase="searching", trials_total=len(seeds), trials_done=len(done), epochs=top.epochs,
                        force=True)
        run_log(f"repeat of {run.settings[REPEAT]['source']}: seeds {', '.join(map(str, seeds))}, hyperparameters "
                f"{top.fixed_hyperparameters}")
        kept = f"finished seeds are kept; resume with `python -m core resume {name}`"
        with recorded_end(progress, run_log, kept, stop):
            for number, seed in enumerate(seeds, 1):
                if seed in done:
                    continue
                stop.install_signal_handlers()  # each seed's search installs its own; between seeds, ours
                if stop.is_set():
                    raise SearchStopped()
                progress.update(trial=number, epoch=0, message=f"seed {seed} ({number} of {len(seeds)})", force=True)
                # The seed's own log lines come stamped with their time: drop that stamp, run_log adds one.
                seed_log = lambda line, seed=seed: run_log(f"seed {seed}: {line.split('] ', 1)[-1]}")  # noqa: E731
                result = _train_seed(top, seed, seeds_dir, run.folder, seed_log)
                if result.get("state") == "stopped":
                    raise SearchStopped()
                done.append(seed)
                val_auc = result["val"]["auc"]
                best = max(v for v in (progress.state.get("best_val_auc"), val_auc) if v is not None)
                progress.update(trials_done=len(done), latest_val_auc=val_auc, best_val_auc=best, force=True)
            progress.update(phase="evaluating", message="collecting the seeds", force=True)
            metrics = _collect(run, [artifacts.load_run(seeds_dir, seed_run_name(s)) for s in seeds])
            progress.update(state="completed", phase="done", message="completed", force=True)
            run_log(f"done: test AUC over {len(seeds)} seeds " + _spread_sentence(read_seed_table(run.folder)))
            return metrics
        return {"state": "stopped"}  # reached only when a stop request ended the block


def _train_seed(top, seed: int, seeds_dir: Path, folder: Path, log) -> dict:
    """One seed: an ordinary one-trial search in `seeds/seed-S`, on the repeat's split (copied in first)."""
    from core.search import loop  # it loads TensorFlow: Compare, which only reads repeats, does without it

    settings = SearchSettings.from_dict(
        {**top.to_dict(), "name": seed_run_name(seed), "seed": seed, "artifacts_dir": str(seeds_dir),
         "cache_dir": str(cache_root(top))}  # the caches beside the runs serve the seeds too
    )
    seed_folder = artifacts.run_dir(seeds_dir, settings.name)
    resume = (seed_folder / artifacts.SETTINGS).exists()
    if not resume:
        seed_folder.mkdir(parents=True, exist_ok=True)
        artifacts.copy_split(folder, seed_folder)  # `prepare_split` uses a saved split as it is
    return loop.run_search(settings, log=log, resume=resume)


def seed_table(seed_runs: Sequence[Run]) -> pd.DataFrame:
    """One row per seed run: seed, validation-chosen threshold, validation AUC and test metrics."""
    rows = []
    for run in seed_runs:
        metrics = run.metrics or {}
        test, val = metrics.get("test") or {}, metrics.get("val") or {}
        rows.append(
            {
                "seed": int(run.settings.get("seed")),
                "threshold": metrics.get("threshold"),
                "val_auc": val.get("auc"),
                **{f"test_{key}": test.get(key) for key in ("auc", "sensitivity", "specificity", "accuracy")},
                "test_images": test.get("n"),
            }
        )
    return pd.DataFrame(rows)


def _collect(run: Run, seed_runs: Sequence[Run]) -> dict:
    """Save the repeat: seeds.csv, then the first seed's model, predictions and metrics as the run's own."""
    first = seed_runs[0]
    tables = {r.name: (r.val_predictions(), r.predictions()) for r in seed_runs}
    for other in seed_runs[1:]:  # one split for all: a difference here is a bug, not luck
        for index, split in ((0, "validated"), (1, "tested")):
            problem = ensemble.same_images(first, other, tables[first.name][index], tables[other.name][index], split)
            if problem:
                raise RunError(f"the seeds of {run.name} differ: {problem}")
    table = seed_table(seed_runs)
    files.write_csv(run.folder / SEED_TABLE, table)
    for file_name in (artifacts.MODEL, artifacts.TFLITE_MODEL):
        if (first.folder / file_name).exists():
            files.write_bytes(run.folder / file_name, (first.folder / file_name).read_bytes())
    files.write_csv(run.folder / artifacts.VAL_PREDICTIONS, tables[first.name][0])
    files.write_csv(run.folder / artifacts.PREDICTIONS, tables[first.name][1])
    stressed = first.val_stress_predictions()  # so that an ensemble with this run chooses its threshold as the seed did
    if stressed is not None:
        files.write_csv(run.folder / artifacts.VAL_STRESS_PREDICTIONS, stressed)
    files.write_json(run.folder / artifacts.BEST_HYPERPARAMETERS, run.settings.get("fixed_hyperparameters") or {})
    metrics = dict(first.metrics or {})
    metrics["timings"] = {**(metrics.get("timings") or {}),
                          "search_s": ensemble.total([(r.metrics.get("timings") or {}).get("search_s") for r in seed_runs])}
    metrics["trials_completed"] = len(seed_runs)
    metrics[REPEAT] = {
        "source": run.settings[REPEAT]["source"],
        "seeds": [int(r.settings["seed"]) for r in seed_runs],
        "main": MAIN_PREDICTIONS,
        "spread": summarize_seeds(table).to_dict("records"),
    }
    files.write_json(run.folder / artifacts.METRICS, metrics)  # last: the run reads as finished once it is whole
    return metrics


# --------------------------------------------------------------------------
# The spread over seeds
# --------------------------------------------------------------------------


def summarize_seeds(per_seed: pd.DataFrame, metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per metric: the number of seeds, mean, SD (n − 1; NaN for one seed), min and max, and as text.

    `per_seed` has one row per seed and a column per metric (`seed_table`'s); seeds without a
    value for a metric are left out of that metric's row.
    """
    rows = []
    for key, title in (metrics or SPREAD_METRICS).items():
        values = pd.to_numeric(per_seed.get(key, pd.Series(dtype=float)), errors="coerce").dropna().to_numpy(np.float64)
        n = values.size
        mean = float(values.mean()) if n else np.nan
        sd = float(values.std(ddof=1)) if n > 1 else np.nan
        low, high = (float(values.min()), float(values.max())) if n else (np.nan, np.nan)
        rows.append(
            {
                "metric": title, "seeds": n, "mean": mean, "SD": sd, "min": low, "max": high,
                "mean ± SD": "n/a" if not n else f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f} (one seed)",
                "range": f"{low:.3f}–{high:.3f}" if n else "n/a",
            }
        )
    return pd.DataFrame(rows, columns=["metric", "seeds", "mean", "SD", "min", "max", "mean ± SD", "range"])


def read_seed_table(folder: Path) -> pd.DataFrame:
    path = Path(folder) / SEED_TABLE
    return files.read_csv(path) if path.exists() else pd.DataFrame()


def _spread_sentence(per_seed: pd.DataFrame) -> str:
    row = summarize_seeds(per_seed, {"test_auc": "test AUC"}).iloc[0]
    return f"{row['mean ± SD']} (range {row['range']})"


def seed_summary(run: Run) -> pd.DataFrame:
    """The spread of `run`'s test metrics over its seeds (`summarize_seeds`) with a `run` column; empty when
    `run` is not a finished repeat."""
    per_seed = read_seed_table(run.folder) if run.is_repeat else pd.DataFrame()
    if per_seed.empty:
        return pd.DataFrame()
    table = summarize_seeds(per_seed)
    table.insert(0, "run", run.name)
    table.insert(2, "seed list", ", ".join(str(int(s)) for s in per_seed["seed"]))
    return table


def seed_summaries(runs: Sequence[Run]) -> pd.DataFrame:
    """`seed_summary` of every repeat among `runs` with two seeds or more, one table (empty when none
    is): one seed has no spread to show."""
    tables = [t for t in (seed_summary(r) for r in runs) if not t.empty and int(t["seeds"].iat[0]) >= 2]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
