"""A running search's side of the run folder: progress out, stop requests in, the log.

`Progress` rewrites `progress.json` atomically so the dashboard and `python -m core runs` can
read it at any moment; `StopFlag` turns SIGTERM/SIGINT or a `stop.request` file into
`SearchStopped`; `open_log` appends time-stamped lines to the run's log; `recorded_end` writes how
a run's training ended (stopped or failed) into its progress and log. No Keras import.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from core import files
from core.runs import artifacts


class SearchStopped(BaseException):  # noqa: N818 - a signal, not an error
    """Raised inside training when a stop was asked for.

    A BaseException on purpose, like KeyboardInterrupt: Keras Tuner records an `Exception` in a
    trial as a failed trial and goes on, whereas this must end the search and leave the trial to
    be retried on resume. Keras Tuner's documented `errors.FatalError` also passes its trial loop,
    but it is an `Exception`, so any `except Exception` around a stop check (image decoding, the
    TF Lite fallback) would swallow the stop, and subclassing it would import Keras Tuner, hence
    TensorFlow, with this module (`--help`, the dashboard). tests/test_tuner_contract.py checks
    that Keras Tuner lets this through and keeps the trial.
    """


def now_utc() -> str:
    """The current UTC time as saved in run files, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class ProgressFile:
    """A state other processes read (a page, `stop`), rewritten whole and atomically at most once a
    second, or at once when forced; `updated_at` says when."""

    def __init__(self, path: Path, state: dict):
        self.path = path
        self.state = state
        self._start = time.monotonic()
        self._last_write = 0.0
        self.write()

    def update(self, force: bool = False, **values) -> None:
        self.state.update(values)
        now = time.monotonic()
        if force or now - self._last_write >= 1.0:
            self.write()

    def write(self) -> None:
        self.state["updated_at"] = now_utc()
        self._last_write = time.monotonic()
        files.write_json(self.path, self.state)


class Progress(ProgressFile):
    """The run's `progress.json`: a search's state, trials and epochs, and how long it has run."""

    def __init__(self, folder: Path, previous: dict | None = None, file_name: str = artifacts.PROGRESS):
        previous = previous or {}
        super().__init__(folder / file_name, {
            "state": "starting",
            "phase": "starting",
            "message": "",
            "trial": 0,
            "trials_total": None,
            "trials_done": previous.get("trials_done", 0),
            "epoch": 0,
            "epochs": None,
            "latest_val_auc": previous.get("latest_val_auc"),
            "best_val_auc": previous.get("best_val_auc"),
            "elapsed_s": 0.0,
            "elapsed_before_s": previous.get("elapsed_before_s", 0.0) + previous.get("elapsed_s", 0.0),
            "started_at": previous.get("started_at") or now_utc(),
            "resumed_at": now_utc() if previous else None,
            "updated_at": now_utc(),
            "pid": os.getpid(),
            "host": artifacts.this_host(),
            "error": None,
        })

    def write(self) -> None:
        self.state["elapsed_s"] = round(time.monotonic() - self._start, 1)
        super().write()


class StopFlag:
    """Set by SIGTERM/SIGINT or by a `stop.request` file in the run folder (another work on a
    finished run, such as measuring where it looks, names its own file)."""

    FILE = "stop.request"

    def __init__(self, folder: Path, file_name: str = FILE):
        self.file = folder / file_name
        self.event = threading.Event()
        self._last_check = 0.0

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())

    def is_set(self) -> bool:
        if self.event.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check > 0.5:  # a stat per half second, not per batch
            self._last_check = now
            if self.file.exists():
                self.event.set()
        return self.event.is_set()

    def check(self) -> None:
        if self.is_set():
            raise SearchStopped()


def open_log(folder: Path, echo, file_name: str = artifacts.LOG):
    """A `log(message)` that appends a time-stamped line to `folder/file_name` and echoes it."""
    path = folder / file_name

    def log(message: str) -> None:
        line = f"[{datetime.now().strftime('%H:%M:%S')}] {message}"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            echo(line)

    return log


STOPPED_MESSAGE = "stopped by request; resume to continue"


@contextmanager
def recorded_end(
    progress: Progress,
    log: Callable[[str], None] | None = None,
    stopped_note: str = "",
    stop: StopFlag | None = None,
) -> Iterator[None]:
    """Record in `progress` (and `log`) how the training inside the block ended, for the dashboard.

    A stop request (`SearchStopped`) sets state "stopped", logs "stopped: <stopped_note>" and is
    swallowed: the code after the block runs, and returns what a stopped run returns. Anything else,
    KeyboardInterrupt included, sets state "failed" with the error, logs "failed: <error>" and is
    raised again. Either way `stop`'s request file is removed, so the next resume starts afresh; a
    distributed worker passes none, since the request file is its chief's to remove.
    """
    try:
        yield
    except SearchStopped:
        progress.update(state="stopped", phase="stopped", message=STOPPED_MESSAGE, force=True)
        if log is not None:
            log(f"stopped: {stopped_note}")
    except BaseException as error:
        progress.update(state="failed", phase="failed", error=f"{type(error).__name__}: {error}", force=True)
        if log is not None:
            log(f"failed: {error}")
        raise
    finally:
        if stop is not None:
            stop.file.unlink(missing_ok=True)


def trials_finished(progress: dict) -> float | None:
    """How many of its trials a search has done, the current trial's finished epochs counting as a
    fraction of it; None before it knows how many trials and epochs it runs. The live panel's bar
    and the time-left estimate (`core.search.cost`) both read it."""
    total, done = progress.get("trials_total"), progress.get("trials_done") or 0
    epochs, epoch = progress.get("epochs"), progress.get("epoch") or 0
    if not total or not epochs:
        return None
    return done + min(max(epoch - 1, 0), epochs) / epochs  # the current epoch is not done yet
