"""The runner-up: a finished search's second-best trial, kept as its own run.

A search trains several trials and keeps the best, but Keras Tuner saves every trial's best epoch
in the search's `tuner/` folder. `keep_trial` makes the trial ranked `rank` (2, the runner-up, by
validation AUC as Keras Tuner ranks them) an ordinary run: the source's split, that trial's saved
weights, then the search's own evaluation (stress test, threshold, test metrics, model files;
`core.search.loop`, `SearchSettings.kept_trial`). Nothing trains, so it costs an evaluation.

The recommended recipe averages the best trial with the runner-up (`core.workflows.recipe`): on
validation as good as averaging it with a retrained repeat, for a fifth of the time
(docs/measurements.md, "The runner-up instead of the repeat").

The run folder: `settings.json` is the source's with `kept_trial` = {source, rank, trial_id}, one
trial and the trial's hyperparameters fixed (so the run can itself be repeated); the rest is what
any search writes, without a `tuner/` folder or `trials.json` of its own.
"""

from __future__ import annotations

import os

from core import files
from core.runs import artifacts
from core.runs.artifacts import Run, RunError
from core.search.settings import SearchSettings

RUNNER_UP = 2  # the rank the recipe keeps


def finished_trials(run: Run) -> list[dict]:
    """`run`'s finished trials (its `trials.json` rows with a score), best first, ties in trial
    order: Keras Tuner's own ranking (`Oracle.get_best_trials`)."""
    rows = run.read(artifacts.TRIALS) or []
    done = [row for row in rows if row.get("status") == "COMPLETED" and isinstance(row.get("score"), (int, float))]
    return sorted(done, key=lambda row: row["score"], reverse=True)


def source_problem(run: Run, rank: int = RUNNER_UP) -> str:
    """Why trial number `rank` of `run` cannot be kept as a run ("" when it can)."""
    if run.state != "completed" or not run.metrics:
        return f"{run.name} is not finished (state: {run.state}): keep a trial of a completed search"
    if not (run.folder / artifacts.TUNER_DIR).is_dir():  # an ensemble, a repeat, an import, a kept trial
        return (f"{run.name} has no search folder ({artifacts.TUNER_DIR}/) holding its trials' weights: keep a trial of "
                "a search run")
    if not (run.folder / artifacts.SPLITS).exists() or run.read(artifacts.DATA_SUMMARY) is None:
        return f"{run.name} has no saved split"
    finished = len(finished_trials(run))
    if finished < rank:
        return (f"{run.name} finished {finished} trial{'s' * (finished != 1)}, so it has no number {rank}: "
                "a search needs at least two trials to have a runner-up (or repeat its best with `python -m core repeat`)")
    return ""


def plan(artifacts_dir: str | os.PathLike, source: str, name: str, rank: int = RUNNER_UP) -> dict:
    """The new run's settings (nothing is written); `RunError` says what is wrong and what to do."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 2:
        raise RunError(f"the trial to keep is ranked 2 or more (1 is the search's own best), got {rank!r}")
    run = artifacts.load_run(artifacts_dir, source)  # RunError naming the runs there
    if problem := source_problem(run, rank):
        raise RunError(f"cannot keep trial number {rank}: {problem}")
    trial = finished_trials(run)[rank - 1]
    return {
        **run.settings,
        "name": artifacts.check_run_name(name),
        "artifacts_dir": str(artifacts_dir),
        "trials": 1,
        "tuner": "random",
        "fixed_hyperparameters": trial["hyperparameters"],
        "kept_trial": {"source": run.name, "rank": rank, "trial_id": str(trial["trial_id"])},
    }


def keep_trial(artifacts_dir: str | os.PathLike, source: str, name: str, rank: int = RUNNER_UP,
               extra_json: dict[str, dict] | None = None, log=print) -> dict:
    """Keep trial number `rank` of search `source` as run `name`, or finish doing so; returns its metrics.

    The folder gets the source's split and `extra_json` (file name -> content, e.g. a recipe's
    plan) first; the search loop writes the settings and evaluates. Called again on a run that
    was interrupted, it evaluates again.
    """
    from core.search import loop  # it loads TensorFlow

    folder = artifacts.run_dir(artifacts_dir, name)
    if (folder / artifacts.SETTINGS).exists():
        saved = files.read_json(folder / artifacts.SETTINGS)
        if not (saved or {}).get("kept_trial"):
            raise RunError(f"a run named {name!r} already exists and keeps no trial: pick another name")
        return loop.run_search(SearchSettings.from_dict({**saved, "artifacts_dir": str(artifacts_dir)}), log=log, resume=True)
    settings = plan(artifacts_dir, source, name, rank)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.copy_split(artifacts.run_dir(artifacts_dir, source), folder)
    for file_name, content in (extra_json or {}).items():
        files.write_json(folder / file_name, content)
    return loop.run_search(SearchSettings.from_dict(settings), log=log)
