"""How a run's end is recorded: `core.runs.progress.recorded_end` for searches, repeats and workers."""

from __future__ import annotations

import json

import pytest

from core.runs import artifacts
from core.runs.progress import STOPPED_MESSAGE, Progress, SearchStopped, StopFlag, recorded_end


def _saved_progress(folder) -> dict:
    return json.loads((folder / artifacts.PROGRESS).read_text())


def _asked_to_stop(folder) -> StopFlag:
    stop = StopFlag(folder)
    stop.file.write_text("")
    return stop


def test_a_stop_request_is_recorded_swallowed_and_its_file_removed(tmp_path):
    progress, lines, stop = Progress(tmp_path), [], _asked_to_stop(tmp_path)

    def body() -> str:
        with recorded_end(progress, lines.append, "trials are kept", stop):
            raise SearchStopped()
        return "after the block"

    assert body() == "after the block"
    saved = _saved_progress(tmp_path)
    assert (saved["state"], saved["phase"], saved["message"]) == ("stopped", "stopped", STOPPED_MESSAGE)
    assert lines == ["stopped: trials are kept"]
    assert not stop.file.exists()


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt("interrupted")])
def test_any_other_end_is_recorded_as_failed_and_raised_again(tmp_path, error):
    progress, lines, stop = Progress(tmp_path), [], _asked_to_stop(tmp_path)
    with pytest.raises(type(error)), recorded_end(progress, lines.append, "unused", stop):
        raise error
    saved = _saved_progress(tmp_path)
    assert (saved["state"], saved["phase"]) == ("failed", "failed")
    assert saved["error"] == f"{type(error).__name__}: {error}"
    assert lines == [f"failed: {error}"]
    assert not stop.file.exists()


def test_a_finished_block_leaves_the_progress_to_its_own_code(tmp_path):
    progress, lines, stop = Progress(tmp_path), [], _asked_to_stop(tmp_path)
    with recorded_end(progress, lines.append, "unused", stop):
        progress.update(state="completed", force=True)
    assert _saved_progress(tmp_path)["state"] == "completed"
    assert lines == []
    assert not stop.file.exists()  # a request that came too late does not stop the next resume


def test_a_worker_without_log_or_stop_flag_keeps_the_chiefs_request_file(tmp_path):
    progress, stop = Progress(tmp_path), _asked_to_stop(tmp_path)
    with recorded_end(progress):
        raise SearchStopped()
    assert _saved_progress(tmp_path)["state"] == "stopped"
    assert stop.file.exists()


def test_trials_finished_counts_the_current_trials_finished_epochs():
    """The live panel's bar and the time left read one count: trials done, plus the epochs of the
    current trial before the one running, as a fraction of it."""
    from core.runs.progress import trials_finished

    progress = {"trials_total": 4, "trials_done": 1, "epochs": 4, "epoch": 3}
    assert trials_finished(progress) == 1.5  # epochs 1 and 2 of the second trial are done
    assert trials_finished({**progress, "epoch": 1}) == 1.0  # the first epoch is still running
    assert trials_finished({**progress, "epoch": 9}) == 2.0  # never more than a whole trial
    assert trials_finished({**progress, "epochs": None}) is None  # not known yet: no bar, no estimate
    assert trials_finished({"trials_done": 0}) is None
