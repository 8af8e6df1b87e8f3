"""Searches over several machines, with Keras Tuner's own distributed mode.

One chief holds the oracle and hands out trials; workers train them. `configure_distributed`
sets Keras Tuner's environment variables and `run_worker` waits for the chief's split and then
trains; the chief's side, `watch_chief` (the workers' trials in its `progress.json`), is tuner-side
and lives in `core.search.tuner`. All of
them must see the same artifacts folder.
"""

from __future__ import annotations

import os
import time

from core import files
from core.runs import artifacts
from core.runs.progress import Progress, StopFlag, open_log, recorded_end
from core.search import loop
from core.search.settings import SearchSettings, SettingsError


def run_worker(artifacts_dir: str, name: str, worker_id: str, log=print, wait_s: float = 900) -> dict:
    """A distributed worker: wait for the chief's split, then train the trials the chief hands out."""
    folder = artifacts.run_dir(artifacts_dir, name)
    deadline = time.monotonic() + wait_s
    while not ((folder / artifacts.SPLITS).exists() and (folder / artifacts.DATA_SUMMARY).exists()):
        if time.monotonic() > deadline:
            raise artifacts.RunError(f"no chief started run {name!r} in {artifacts_dir} within {wait_s:.0f} s")
        time.sleep(1.0)
    settings = SearchSettings.from_dict({**files.read_json(folder / artifacts.SETTINGS), "artifacts_dir": artifacts_dir})
    workers = folder / "workers"
    workers.mkdir(exist_ok=True)
    run_log = open_log(workers, log, f"{worker_id}.log")
    progress = Progress(workers, file_name=f"{worker_id}.json")
    stop = StopFlag(folder)
    stop.install_signal_handlers()
    # No log lines and no stop file removed: the request file in the run folder is the chief's.
    with recorded_end(progress):
        result = loop.search(settings, folder, progress, stop, run_log, role="worker")
        progress.update(state="completed", phase="done", force=True)
        return result
    return {"state": "stopped"}  # reached only when a stop request ended the block


def configure_distributed(role: str, oracle: str, worker_id: str | None = None) -> None:
    """Set Keras Tuner's own distribution variables: one chief oracle, any number of workers.

    All processes must see the same artifacts folder (one machine, or a shared file system):
    workers write trial checkpoints there and the chief evaluates the best one at the end.
    """
    host, _, port = oracle.rpartition(":")
    if role not in ("chief", "worker") or not host or not port.isdigit():
        raise SettingsError("distributed searches need --distributed chief|worker and --oracle HOST:PORT")
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else f"tuner-{worker_id or os.getpid()}"
