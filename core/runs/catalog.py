"""Many runs: archive, restore, delete, a note and tags per run, and filtering the run lists.

What the user says about a run lives in its folder as `notes.json` ({"note", "tags", "archived",
"archived_at"}), written atomically; a search never writes it, so editing a note cannot race a
search. An archived run keeps every file: it only leaves the default lists (Compare, Predict, the
Tune table) and can be shown and restored. Deleting removes one run folder and nothing else: never
another run, never the shared caches (`artifacts/.cache`, whose name no run can have). A running
search (active state, or a live process holding its lock) can be neither archived nor deleted, and
a run that an ensemble uses as a member cannot be deleted while that ensemble exists.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from core import files
from core.runs import artifacts
from core.runs.artifacts import Run, RunError

MAX_NOTE = 2000
MAX_TAGS = 20
TAG = re.compile(r"^[\w.+-][\w .+-]{0,39}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _running(run: Run) -> bool:
    return run.state in artifacts.ACTIVE_STATES or artifacts.is_locked(run.folder)


def _write_notes(run: Run, **changes) -> Run:
    notes = {**run.notes, **changes}
    files.write_json(run.folder / artifacts.NOTES, notes)
    run.__dict__["_notes"] = notes
    return run


def clean_tags(tags: Iterable[str] | str) -> list[str]:
    """Tags as typed ("a, b" or a list): trimmed, lower-case, unique, in order; a bad one raises RunError."""
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned: list[str] = []
    for tag in tags:
        tag = " ".join(str(tag).split()).lower()
        if not tag:
            continue
        if not TAG.match(tag):
            raise RunError(f"invalid tag {tag!r}: use up to 40 letters, digits, spaces, '.', '_', '+' or '-'")
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise RunError(f"too many tags ({len(cleaned)}): at most {MAX_TAGS} per run")
    return cleaned


def set_notes(artifacts_dir: str | os.PathLike, name: str, note: str | None = None, tags: Iterable[str] | str | None = None) -> Run:
    """Save the run's note and/or tags (None leaves that part as it is); returns the run."""
    run = artifacts.load_run(artifacts_dir, name)
    changes: dict = {}
    if note is not None:
        note = str(note).strip()
        if len(note) > MAX_NOTE:
            raise RunError(f"the note is {len(note)} characters long: at most {MAX_NOTE}")
        changes["note"] = note
    if tags is not None:
        changes["tags"] = clean_tags(tags)
    return _write_notes(run, **changes) if changes else run


def archive(artifacts_dir: str | os.PathLike, name: str) -> Run:
    """Hide a finished, stopped or failed run from the default lists; its files stay as they are."""
    run = artifacts.load_run(artifacts_dir, name)
    if _running(run):
        raise RunError(f"run {name!r} is running: stop it before archiving it")
    return _write_notes(run, archived=True, archived_at=_now())


def restore(artifacts_dir: str | os.PathLike, name: str) -> Run:
    """Bring an archived run back into the default lists."""
    run = artifacts.load_run(artifacts_dir, name)
    return _write_notes(run, archived=False, archived_at=None)


def ensembles_using(artifacts_dir: str | os.PathLike, name: str) -> list[str]:
    """The ensembles in the folder that have `name` as a member."""
    return [r.name for r in artifacts.list_runs(artifacts_dir) if r.is_ensemble and name in r.members]


def delete_problem(artifacts_dir: str | os.PathLike, name: str) -> str:
    """Why `delete` would refuse the run (it is running, or an ensemble's member), or ""."""
    run = artifacts.load_run(artifacts_dir, name)
    if _running(run):
        return "it is running: stop it first"
    users = ensembles_using(artifacts_dir, name)
    if users:
        return f"it is a member of the ensemble{'s' if len(users) > 1 else ''} {', '.join(users)}: delete {'them' if len(users) > 1 else 'it'} first"
    return ""


def delete(artifacts_dir: str | os.PathLike, name: str) -> None:
    """Remove one run folder for good. Refused for a running search and for an ensemble's member.

    The folder is first renamed (atomically) to a hidden name, so no page or search sees half a run,
    then removed. Only that folder goes: `check_run_name` refuses names such as `.cache`, `..` or a
    path, and `shutil.rmtree` does not follow symbolic links out of it.
    """
    run = artifacts.load_run(artifacts_dir, name)
    if _running(run):
        raise RunError(f"run {name!r} is running: stop it before deleting it")
    users = ensembles_using(artifacts_dir, name)
    if users:
        raise RunError(f"run {name!r} is a member of the ensemble{'s' if len(users) > 1 else ''} {', '.join(users)}: delete {'them' if len(users) > 1 else 'it'} first")
    folder = run.folder
    if folder.is_symlink() or folder.resolve().parent != Path(artifacts_dir).resolve():
        raise RunError(f"run {name!r} is not a plain folder inside {artifacts_dir}: not deleted")
    with artifacts.run_lock(folder):  # a search started meanwhile holds it: then this refuses
        trash = folder.parent / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, trash)
    shutil.rmtree(trash)


# --------------------------------------------------------------------------
# Filtering
# --------------------------------------------------------------------------


def _as_set(value) -> set[str] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return {value}
    return {str(v) for v in value} or None


def filter_runs(
    runs: Iterable[Run], family=None, task=None, state=None, tag=None, archived: bool | None = False
) -> list[Run]:
    """The runs that match every given filter; each filter is a value or a collection (any of them).

    `archived`: False (the default) leaves archived runs out, True keeps only them, None keeps both.
    A run with any of the given tags matches `tag`.
    """
    families, tasks, states, tags = _as_set(family), _as_set(task), _as_set(state), _as_set(tag)
    chosen = []
    for run in runs:
        if archived is not None and run.archived != archived:
            continue
        if families and run.family not in families:
            continue
        if tasks and run.task not in tasks:
            continue
        if states and run.state not in states:
            continue
        if tags and not tags & set(run.tags):
            continue
        chosen.append(run)
    return chosen


def filter_options(runs: Iterable[Run]) -> dict[str, list[str]]:
    """The values each filter can take among `runs`: family, task, state, tag (sorted)."""
    runs = list(runs)
    return {
        "family": sorted({r.family for r in runs}),
        "task": sorted({r.task for r in runs}),
        "state": sorted({r.state for r in runs}),
        "tag": sorted({t for r in runs for t in r.tags}),
    }
