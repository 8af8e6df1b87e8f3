"""What the command line prints: our messages, real warnings, and no TensorFlow start-up chatter.

TensorFlow and its C++ libraries write start-up lines straight to file descriptor 2 ("All log
messages before absl::InitializeLog() ...", "oneDNN custom operations are on ...", the
cpu_feature_guard notice, "Created TensorFlow Lite XNNPACK delegate"), some of them before any
Python setting can stop them and whatever TF_CPP_MIN_LOG_LEVEL says. So `python -m core` sends fd
2 through a small filter process that drops those lines and passes every other line on; the
search's process.log (the dashboard's background searches) goes through the same filter.

On a terminal, `ProgressBar` draws one bar line for long steps (decoding, the backbone pass, the
trials) from the run's progress.json; when the output is a file or a pipe nothing is drawn, so
logs stay line-based. This module imports only the standard library: `--help` stays fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

# Set in the environment before TensorFlow is imported (our process and the searches we start):
# TensorFlow's C++ info and warning lines off, its errors kept. oneDNN stays on (it is faster on
# CPUs); its notice is filtered instead.
QUIET_TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}

# Start-up lines of TensorFlow, absl and TF Lite; nothing a user can act on.
NOISE = re.compile(
    "|".join(
        (
            r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"^I\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\] ",  # absl/glog INFO lines from C++
            r"oneDNN custom operations are on",
            r"cpu_feature_guard",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
            r"Created TensorFlow Lite XNNPACK delegate",
            r"^fully_quantize: \d+, inference_type: \d+",  # the int8 converter's settings (core.models.quantize)
        )
    )
)


def is_noise(line: str) -> bool:
    """True for a TensorFlow/absl start-up line that the command line does not show."""
    return bool(NOISE.search(line))


def quiet_tensorflow() -> None:
    """Ask TensorFlow's C++ logging for errors only (before it is imported), unless the user chose a level."""
    for key, value in QUIET_TF_ENV.items():
        os.environ.setdefault(key, value)


# The terminal's real stderr once fd 2 goes through the filter (progress bars are drawn there,
# since the filter passes whole lines only).
_terminal_fd: int | None = None


def filter_stderr() -> None:
    """Route this process's fd 2 through a child that drops `is_noise` lines; POSIX only.

    The filter is a forked process, not a thread: C++ code may write to fd 2 while holding the GIL,
    and a process also drains what a dying parent wrote last. It ignores SIGINT and SIGTERM (Ctrl-C
    and `stop` are for the search) and ends when every writer has closed the pipe.
    """
    global _terminal_fd
    if os.name != "posix" or _terminal_fd is not None or os.environ.get("CXR_RAW_STDERR"):
        return
    try:
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
    except OSError:
        return
    if pid == 0:  # the filter
        os.close(write_fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = 0
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                for raw in pipe:
                    if not is_noise(raw.decode("utf-8", "replace")):
                        os.write(2, raw)
        except OSError:
            code = 1
        os._exit(code)
    os.close(read_fd)
    _terminal_fd = os.dup(2)
    os.set_inheritable(_terminal_fd, False)
    os.dup2(write_fd, 2)
    os.close(write_fd)


def terminal_fd() -> int:
    return _terminal_fd if _terminal_fd is not None else 2


# --------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------


_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")


def describe(progress: dict) -> tuple[str, float] | None:
    """(label, fraction done) of a long step in a progress.json, or None when there is none."""
    phase, message = progress.get("phase") or "", progress.get("message") or ""
    if phase == "searching":
        total, epochs = progress.get("trials_total"), progress.get("epochs")
        if not total or not epochs:
            return None
        done, epoch = progress.get("trials_done") or 0, progress.get("epoch") or 0
        fraction = min(1.0, (done + min(max(epoch - 1, 0), epochs) / epochs) / total)
        return f"trial {progress.get('trial') or done}/{total} epoch {epoch}/{epochs}", fraction
    match = _FRACTION.search(message)
    if match and int(match.group(2)) > 0:
        return message, min(1.0, int(match.group(1)) / int(match.group(2)))
    return None


def render_bar(label: str, fraction: float, width: int = 28) -> str:
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} {label}"[:100]


class ProgressBar:
    """Draws the run's progress.json as one bar line on the terminal, redrawn a few times a second.

    Inactive (draws nothing) unless stderr is a terminal. `clear()` before printing a log line
    keeps lines and bar apart; `echo` does both.
    """

    def __init__(self, progress_file: Path | None = None, interval: float = 0.25, enabled: bool | None = None):
        self.progress_file = Path(progress_file) if progress_file else None
        self.interval = interval
        self.enabled = os.isatty(terminal_fd()) if enabled is None else enabled
        self._shown = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, text: str) -> None:
        try:
            os.write(terminal_fd(), text.encode())
        except OSError:
            self.enabled = False

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._write("\r" + " " * len(self._shown) + "\r")
                self._shown = ""

    def show(self, label: str, fraction: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            line = render_bar(label, fraction)
            if line != self._shown:
                self._write("\r" + line + " " * max(0, len(self._shown) - len(line)))
                self._shown = line

    def echo(self, line: str) -> None:
        """Print a log line above the bar."""
        self.clear()
        print(line, flush=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                progress = json.loads(self.progress_file.read_text())
            except (OSError, ValueError):
                continue
            shown = describe(progress) if isinstance(progress, dict) else None
            if shown:
                self.show(*shown)
            else:
                self.clear()

    def watch(self, progress_file: Path) -> ProgressBar:
        self.progress_file = Path(progress_file)
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="progress-bar", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.clear()
