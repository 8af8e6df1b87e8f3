"""Many runs (core.runs.catalog): archive, restore, delete, notes and tags, filtering; on hand-made run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.runs import artifacts, catalog
from core.runs.artifacts import RunError


def make_run(root: Path, name: str, family: str = "custom_cnn", state: str = "completed", **settings) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"name": name, "family": family, **settings}))
    progress = {"state": state, "started_at": f"2024-01-01T00:00:{len(list(root.iterdir())):02d}+00:00"}
    if state == "running":  # a live process: this one
        progress.update(pid=os.getpid(), host=artifacts.this_host())
    (folder / "progress.json").write_text(json.dumps(progress))
    (folder / "model.keras").write_bytes(b"model")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    make_run(root, "cnn-a")
    make_run(root, "cnn-b", task="pneumonia")
    make_run(root, "mob-a", family="mobilenet", state="failed")
    make_run(root, "busy", state="running")
    make_run(root, "other-task", task="kinds")
    cache = root / ".cache" / "features"
    cache.mkdir(parents=True)
    (cache / "mobilenet-224px-abc.npz").write_bytes(b"features")
    (root / ".cache" / "pixels-32.npy").write_bytes(b"pixels")
    return root


def test_notes_and_tags_are_saved_in_the_run_folder_and_shown_in_the_table(store):
    catalog.set_notes(store, "cnn-a", note="  baseline, 32 px  ", tags="Baseline, small ,baseline")
    saved = json.loads((store / "cnn-a" / artifacts.NOTES).read_text())
    assert saved["note"] == "baseline, 32 px" and saved["tags"] == ["baseline", "small"]
    catalog.set_notes(store, "cnn-a", tags=["x"])  # the note stays when only the tags change
    run = artifacts.load_run(store, "cnn-a")
    assert run.notes["note"] == "baseline, 32 px" and run.tags == ["x"]
    table = artifacts.runs_table(artifacts.list_runs(store)).set_index("run")
    assert table.loc["cnn-a", "note"] == "baseline, 32 px" and table.loc["cnn-a", "tags"] == "x"
    assert table.loc["cnn-b", "note"] == "" and not table.loc["cnn-b", "archived"]
    assert not list((store / "cnn-a").glob(".*.tmp"))  # written atomically
    with pytest.raises(RunError, match="invalid tag"):
        catalog.set_notes(store, "cnn-a", tags=["a/b"])
    with pytest.raises(RunError, match="at most"):
        catalog.set_notes(store, "cnn-a", note="x" * (catalog.MAX_NOTE + 1))
    with pytest.raises(RunError, match="no run named"):
        catalog.set_notes(store, "nope", note="x")


def test_a_broken_notes_file_reads_as_empty(store):
    (store / "cnn-a" / artifacts.NOTES).write_text("{not json")
    run = artifacts.load_run(store, "cnn-a")
    assert run.notes["note"] == "" and run.tags == [] and not run.archived


def test_archive_hides_a_run_from_the_default_lists_and_restore_brings_it_back(store):
    before = snapshot(store / "cnn-a")
    catalog.archive(store, "cnn-a")
    runs = artifacts.list_runs(store)
    assert "cnn-a" not in {r.name for r in catalog.filter_runs(runs)}
    assert {r.name for r in catalog.filter_runs(runs, archived=True)} == {"cnn-a"}
    assert "cnn-a" in {r.name for r in catalog.filter_runs(runs, archived=None)}
    after = snapshot(store / "cnn-a")
    assert {k: v for k, v in after.items() if k != artifacts.NOTES} == before  # nothing else changed
    catalog.restore(store, "cnn-a")
    assert "cnn-a" in {r.name for r in catalog.filter_runs(artifacts.list_runs(store))}


def test_a_running_search_can_be_neither_archived_nor_deleted(store):
    with pytest.raises(RunError, match="is running"):
        catalog.archive(store, "busy")
    with pytest.raises(RunError, match="is running"):
        catalog.delete(store, "busy")
    assert (store / "busy" / "settings.json").exists() and not (store / "busy" / artifacts.NOTES).exists()


def test_a_run_whose_lock_is_held_is_not_deleted(store):
    with artifacts.run_lock(store / "cnn-b"):
        with pytest.raises(RunError, match="is running"):
            catalog.delete(store, "cnn-b")
    assert (store / "cnn-b" / "settings.json").exists()


def test_delete_removes_one_run_and_nothing_else(store):
    others = {p.name: snapshot(p) for p in store.iterdir() if p.name != "cnn-a"}
    catalog.delete(store, "cnn-a")
    assert not (store / "cnn-a").exists()
    assert {p.name: snapshot(p) for p in store.iterdir()} == others  # other runs and .cache untouched
    assert not [p for p in store.iterdir() if p.name.startswith(".deleting")]
    with pytest.raises(RunError, match="no run named"):
        catalog.delete(store, "cnn-a")
    for bad in (".cache", "..", "../x", "cnn-b/../mob-a"):
        with pytest.raises(RunError):
            catalog.delete(store, bad)
    assert (store / ".cache" / "features" / "mobilenet-224px-abc.npz").read_bytes() == b"features"


def test_an_ensemble_member_is_not_deleted_while_its_ensemble_exists(store):
    make_run(store, "duo", family="ensemble", members=["cnn-a", "cnn-b"], weights=[0.5, 0.5])
    # said before a confirmation is offered (the Tune page asks `delete_problem` first)
    assert catalog.delete_problem(store, "cnn-b") == "it is a member of the ensemble duo: delete it first"
    assert catalog.delete_problem(store, "duo") == ""
    with pytest.raises(RunError, match="member of the ensemble duo"):
        catalog.delete(store, "cnn-b")
    catalog.delete(store, "duo")
    assert catalog.delete_problem(store, "cnn-b") == ""
    catalog.delete(store, "cnn-b")
    assert not (store / "cnn-b").exists() and (store / "cnn-a").exists()


def test_filters_by_family_task_state_and_tag(store):
    catalog.set_notes(store, "cnn-b", tags="keep, small")
    catalog.set_notes(store, "mob-a", tags="keep")
    runs = artifacts.list_runs(store)

    def names(**filters):
        return {r.name for r in catalog.filter_runs(runs, **filters)}

    assert names(family="mobilenet") == {"mob-a"}
    assert names(family=["mobilenet", "custom_cnn"]) == {"cnn-a", "cnn-b", "mob-a", "busy", "other-task"}
    assert names(task="pneumonia") == {"cnn-a", "cnn-b", "mob-a", "busy"}  # no task: pneumonia
    assert names(task="kinds") == {"other-task"}
    assert names(state="failed") == {"mob-a"}
    assert names(state=["running"]) == {"busy"}
    assert names(tag="keep") == {"cnn-b", "mob-a"}
    assert names(tag="keep", family="custom_cnn") == {"cnn-b"}
    assert names(tag=[]) == names()
    options = catalog.filter_options(runs)
    assert options["task"] == ["kinds", "pneumonia"] and options["tag"] == ["keep", "small"]
    assert "running" in options["state"] and options["family"] == ["custom_cnn", "mobilenet"]
