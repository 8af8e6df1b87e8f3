"""Files written whole or not at all, file locks, and the CSV/JSON/npy formats every run file uses.

Every file is written to a temporary file in the same folder and renamed into place, so a crash
leaves the previous version or the new one, never half a file. The bottom of `core`: it imports
nothing from the rest of the package.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class LockBusy(Exception):
    """Another process holds the lock (`file_lock(..., wait=False)`)."""


@contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    `wait=False` raises `LockBusy` at once when another process holds it. `fcntl.flock` is
    released by the kernel when the process dies, even by SIGKILL, so a killed process never
    leaves a stale lock behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(path: str | os.PathLike) -> bool:
    """Whether another process holds the lock on `path` now (False when the file does not exist)."""
    if not Path(path).exists():
        return False
    try:
        with file_lock(path, wait=False):
            return False
    except LockBusy:
        return True


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Write a file whole or not at all: `write(tmp)` fills a temporary file beside `path`, which
    is flushed to disk and renamed over it, so readers and a crash see the old or the new file.

    `suffix` ends the temporary name (Keras only saves to a name ending in `.keras`). The file
    gets the umask's permissions, not mkstemp's 0600: runs are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the data is on disk before the rename makes it the file
        finally:
            os.close(descriptor)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """`value` with NumPy arrays and scalars as Python values and NaN/infinity as None (strict JSON,
    so every reader can parse the file); dict keys become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy arrays and scalars
        return json_safe(value.tolist())
    return value


def write_json(path: str | os.PathLike, data) -> None:
    text = json.dumps(json_safe(data), indent=2, sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def read_json(path: str | os.PathLike, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> None:
    atomic_write(Path(path), lambda tmp: table.to_csv(tmp, index=False, encoding="utf-8"))


def read_csv(path: str | os.PathLike, dtype: dict | None = None, **options) -> pd.DataFrame:
    """Read a CSV written by `write_csv`; patient ids stay strings ("007" is not 7), and so do the
    other columns named in `dtype`."""
    return pd.read_csv(path, dtype={"patient": str, **(dtype or {})}, encoding="utf-8", **options)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(Path(path), write)


def save_model(path: str | os.PathLike, model) -> None:
    """Save a Keras model atomically (Keras needs the `.keras` suffix on the temporary name)."""
    atomic_write(path, lambda tmp: model.save(tmp), suffix=".keras")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive in memory of {name inside the zip: content} (what a page's download button serves)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()
