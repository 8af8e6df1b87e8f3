"""Background searches: start the CLI in its own process, stop it, resume it (their cost: `core.search.cost`).

The dashboard never trains inside its own process: a search is `python -m core resume NAME` in a
new process session, so closing the browser tab, reloading, or a second user changes nothing.
The run folder is the only channel between them: `progress.json` going out, `stop.request`
(plus SIGTERM) coming in. Creating the run folder is atomic (`mkdir`), so one name is one search.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from core import files
from core.console import QUIET_TF_ENV
from core.evidence import localisation as saved_evidence
from core.runs import artifacts
from core.runs.progress import StopFlag
from core.search.settings import SearchSettings
from core.search.splits import preflight
from core.workflows import cross_fit, importing, localisation, recipe, repeat

PROCESS_LOG = "process.log"
# In progress.json while the pid is the launcher's (the dashboard's), not yet the search's: never signalled.
LAUNCHING = "launching"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_children: list[subprocess.Popen] = []


def _reap() -> None:
    """Collect finished children so they do not linger as zombies under a long-lived server."""
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)


def _launch(folder: Path, artifacts_dir: str, command: list[str] | None = None, log_name: str = PROCESS_LOG) -> int:
    """Start `python -m core COMMAND` (default: `resume FOLDER`) in its own session, output to the folder's process log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **QUIET_TF_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = command or ["resume", folder.name]
    with open(folder / log_name, "ab") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "core", *command, "--artifacts", os.path.abspath(artifacts_dir)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # not in the server's process group: no signal of its reaches it
        )
    _children.append(child)
    return child.pid


def _launch_visibly(folder: Path, artifacts_dir: str, progress: dict) -> int:
    """Start the search's process so that the run reads as active from before the launch on.

    `progress.json` says "starting" with *this* process's pid until the child's pid is known, so
    a page that lists the runs at any moment (another tab, a fragment, the rerun after Start) sees
    a starting search, never a run without progress or an interrupted one. If the launch fails,
    the run says so (failed, with the error) instead of seeming to start forever.
    """
    starting = {**progress, "state": "starting", "phase": "starting", "host": artifacts.this_host(), "error": None}
    starting.pop(LAUNCHING, None)
    files.write_json(folder / artifacts.PROGRESS, {**starting, "pid": os.getpid(), LAUNCHING: True})
    try:
        pid = _launch(folder, artifacts_dir)
    except OSError as error:
        files.write_json(folder / artifacts.PROGRESS, {**starting, "state": "failed", "phase": "failed", "pid": None,
                                                           "error": f"could not start the search process: {error}"})
        raise
    current = files.read_json(folder / artifacts.PROGRESS) or {}
    if current.get("pid") != pid:  # the child may already have written its own progress: keep it
        files.write_json(folder / artifacts.PROGRESS, {**starting, "pid": pid})
    return pid


def start_search(settings: SearchSettings, extra_json: dict[str, dict] | None = None) -> str:
    """Create the run folder and start its search in the background; returns the run name.

    The run is listed (settings.json) only once its progress says "starting": a page that lists
    the runs right after this call, or during it, shows the search as running. `extra_json`
    (file name -> content, e.g. a recipe's plan) is written into the folder before the settings.
    """
    _reap()
    settings = settings.resolved()
    folder = artifacts.run_dir(settings.artifacts_dir, settings.name)
    if folder.exists():
        raise artifacts.RunError(f"a run named {settings.name!r} already exists: pick another name")
    preflight(settings)  # bad data or missing weights: say so now, in the page, not in a log
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: of two clicks on Start, one gets the folder
    except FileExistsError:
        raise artifacts.RunError(f"a run named {settings.name!r} already exists: pick another name") from None
    progress = {"trials_done": 0, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    files.write_json(folder / artifacts.PROGRESS, {**progress, "state": "starting", "phase": "starting",
                                                       "pid": os.getpid(), "host": artifacts.this_host(), LAUNCHING: True})
    for file_name, content in (extra_json or {}).items():
        files.write_json(folder / file_name, content)
    files.write_json(folder / artifacts.SETTINGS, settings.to_dict())
    _launch_visibly(folder, settings.artifacts_dir, progress)
    return settings.name


def start_repeat(artifacts_dir: str, source: str, n_seeds: int, name: str | None = None) -> str:
    """Start a repeat of `source`'s best hyperparameters with other seeds in the background (`core.workflows.repeat`);
    returns the new run's name. Bad input is refused here, before any process starts."""
    _reap()
    settings = repeat.plan_repeat(artifacts_dir, source, n_seeds, name)
    progress = {"trials_done": 0, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    folder = repeat.create_repeat(artifacts_dir, settings, {**progress, "state": "starting", "phase": "starting",
                                                            "pid": os.getpid(), "host": artifacts.this_host(), LAUNCHING: True})
    _launch_visibly(folder, artifacts_dir, progress)  # `core resume` continues a repeat as a repeat
    return settings["name"]


def start_import(options: importing.ImportOptions) -> str:
    """Import a model in the background (`core.workflows.importing`); returns the run's name. Every
    check (the data, the file, its input and output, its outputs on a few images) runs here, before
    any folder is made; the model file is copied into the run folder before this returns, so a
    temporary upload can be deleted after."""
    _reap()
    settings = importing.plan_import(options)
    progress = {"trials_done": 0, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    folder = importing.create_import(settings, options.model, {**progress, "state": "starting", "phase": "starting",
                                                               "pid": os.getpid(), "host": artifacts.this_host(), LAUNCHING: True})
    _launch_visibly(folder, options.artifacts_dir, progress)  # `core resume` scores an imported run
    return settings["name"]


def start_recipe(artifacts_dir: str, recipe_name: str, data_dir: str, overrides: dict | None = None) -> str:
    """Start the recommended recipe (`core.workflows.recipe`) in the background; returns its first step's run name.

    The first step's folder is made here, reading as starting, so the page lists it at once;
    `core resume` of a recipe's step goes on with the whole chain.
    """
    plan = recipe.make_plan(recipe_name, data_dir, overrides)
    for name in plan["steps"]:
        if artifacts.run_dir(artifacts_dir, name).exists():
            raise artifacts.RunError(f"a run named {name!r} already exists: pick another name for the recipe")
    first = recipe.search_settings(plan, recipe.first_search(plan), artifacts_dir)
    return start_search(first, extra_json={recipe.PLAN_FILE: recipe.step_plan(plan, 1)})


def continue_recipe(artifacts_dir: str, recipe_name: str) -> int:
    """Go on with a recipe none of whose steps is running (stopped, failed, or ended between steps); returns the pid."""
    _reap()
    plan = recipe.find_plan(artifacts_dir, recipe_name)
    if recipe.is_complete(artifacts_dir, plan):
        raise artifacts.RunError(f"recipe {recipe_name!r} is already complete")
    if recipe.is_active(artifacts_dir, plan):
        raise artifacts.RunError(f"recipe {recipe_name!r} is still running")
    first = artifacts.run_dir(artifacts_dir, plan["steps"][0])
    return _launch(first, artifacts_dir, ["recipe", "--name", recipe_name])


def resume_search(artifacts_dir: str, name: str) -> int:
    """Continue a stopped, failed or interrupted search in the background; returns its pid."""
    _reap()
    run = artifacts.load_run(artifacts_dir, name)
    if run.state in artifacts.ACTIVE_STATES or artifacts.is_locked(run.folder):
        raise artifacts.RunError(f"run {name!r} is still running")
    if run.metrics:
        raise artifacts.RunError(f"run {name!r} is already complete")
    return _launch_visibly(run.folder, artifacts_dir, run.progress)


def stop_search(artifacts_dir: str, name: str, force: bool = False) -> str:
    """Ask a search to stop after the current batch; `force` kills it (it can still be resumed).

    `name` may also be a recipe's whose result does not exist yet: its running step is stopped,
    which ends the recipe.
    """
    _reap()
    try:
        run = artifacts.load_run(artifacts_dir, name)
    except artifacts.RunError:
        try:
            plan = recipe.find_plan(artifacts_dir, name)
        except artifacts.RunError:
            raise artifacts.RunError(f"no run or recipe named {name!r} in {artifacts_dir}") from None
        running = recipe.running_steps(recipe.status(artifacts_dir, plan))
        if not running:
            return f"recipe {name!r} is not running"
        run = artifacts.load_run(artifacts_dir, running[0])
    if run.state not in artifacts.ACTIVE_STATES:
        return f"run {run.name!r} is not running (state: {run.state})"
    (run.folder / StopFlag.FILE).touch()
    pid = run.progress.get("pid")
    launching = run.progress.get(LAUNCHING) or pid == os.getpid()  # the pid is the launcher's, not the search's
    if pid and not launching and run.progress.get("host") == artifacts.this_host() and artifacts.pid_alive(pid):
        try:
            os.kill(int(pid), signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass
    _reap()
    return f"{'killed' if force else 'asked to stop'}: run {run.name!r} (completed trials are kept; resume to continue)"


# --------------------------------------------------------------------------
# Where the models look (core.workflows.localisation)
# --------------------------------------------------------------------------

LOCALISATION_LOG = "localisation.log"
QUEUED = "queued"


def localisation_state(run: artifacts.Run) -> str:
    """"" (never measured), "queued", "running", "completed", "stopped", "failed", or "interrupted"
    (its process is gone while the file still says queued or running)."""
    progress = localisation.progress_of(run)
    return artifacts.effective_state(progress, active=(QUEUED, "running")) if progress else ""


def start_where_it_looks(artifacts_dir: str, names: list[str]) -> int:
    """Measure where `names` look, one after the other, in one background process; returns its pid.

    Each run reads as queued from now on (its progress file names the process), so the page shows
    it at once; a run already being measured is refused.
    """
    _reap()
    runs = [artifacts.load_run(artifacts_dir, name) for name in names]
    if not runs:
        raise artifacts.RunError("pick at least one run to measure")
    busy = [run.name for run in runs if localisation_state(run) in (QUEUED, "running")]
    if busy:
        raise artifacts.RunError(f"already being measured: {', '.join(busy)}")
    queued = {"state": QUEUED, "done": 0, "total": None, "message": "waiting for its turn", "host": artifacts.this_host(),
              "pid": os.getpid(), "error": None}
    for run in runs:
        (run.folder / saved_evidence.STOP_FILE).unlink(missing_ok=True)  # an old request must not stop the new measurement
        files.write_json(run.folder / saved_evidence.PROGRESS_FILE, queued)
    try:
        pid = _launch(runs[0].folder, artifacts_dir, ["where-it-looks", *names], log_name=LOCALISATION_LOG)
    except OSError as error:
        for run in runs:
            files.write_json(run.folder / saved_evidence.PROGRESS_FILE, {**queued, "state": "failed", "error": str(error)})
        raise
    for run in runs:
        current = files.read_json(run.folder / saved_evidence.PROGRESS_FILE) or {}
        if current.get("state") == QUEUED:  # the child may already have started on it: keep its own
            files.write_json(run.folder / saved_evidence.PROGRESS_FILE, {**queued, "pid": pid})
    return pid


def stop_where_it_looks(artifacts_dir: str, names: list[str]) -> None:
    """Ask the measurement of `names` to stop; what each run saved before is kept."""
    for name in names:
        localisation.stop(artifacts.load_run(artifacts_dir, name))


# --------------------------------------------------------------------------
# The out-of-fold threshold (core.workflows.cross_fit)
# --------------------------------------------------------------------------

CROSS_FIT_ACTIVE = (QUEUED, "running", "starting")


def cross_fit_state(run: artifacts.Run) -> str:
    """"" (never started), "queued", "running", "completed", "stopped", "failed", or "interrupted"
    (its process is gone while the file still says it runs)."""
    progress = cross_fit.progress_of(run)
    return artifacts.effective_state(progress, active=CROSS_FIT_ACTIVE) if progress else ""


def start_cross_fit(artifacts_dir: str, name: str, n_folds: int = cross_fit.FOLDS) -> int:
    """Cross-fit run `name`'s threshold in a background process (`python -m core cross-fit NAME --folds K
    --replace`); returns its pid. Folds saved by an earlier, stopped cross-fit are kept. Refused, with
    the reason, for a run that cannot be cross-fitted or is being cross-fitted."""
    _reap()
    n_folds = cross_fit.check_folds(n_folds)
    run = artifacts.load_run(artifacts_dir, name)
    if problem := cross_fit.source_problem(run) or cross_fit.folds_problem(run, n_folds):
        raise artifacts.RunError(f"cannot cross-fit: {problem}")
    if cross_fit_state(run) in CROSS_FIT_ACTIVE:
        raise artifacts.RunError(f"{name} is already being cross-fitted")
    folder = run.folder / cross_fit.OOF_DIR
    folder.mkdir(exist_ok=True)
    (folder / cross_fit.STOP_FILE).unlink(missing_ok=True)  # an old request must not stop the new cross-fit
    queued = {"state": QUEUED, "message": "starting", "folds_done": 0, "folds_total": None, "host": artifacts.this_host(),
              "pid": os.getpid(), "error": None}
    files.write_json(folder / cross_fit.PROGRESS_FILE, queued)
    try:
        pid = _launch(folder, artifacts_dir, ["cross-fit", name, "--folds", str(n_folds), "--replace"])
    except OSError as error:
        files.write_json(folder / cross_fit.PROGRESS_FILE, {**queued, "state": "failed", "error": str(error)})
        raise
    current = files.read_json(folder / cross_fit.PROGRESS_FILE) or {}
    if current.get("state") == QUEUED:  # the child may already have written its own progress: keep it
        files.write_json(folder / cross_fit.PROGRESS_FILE, {**queued, "pid": pid})
    return pid

