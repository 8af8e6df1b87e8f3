"""What core.search.tuner and core.runs.progress rely on from Keras Tuner, checked on real (training-free) searches.

The search loop counts Hyperband trials with its own formula and stops a search with a
BaseException; if a Keras Tuner release sizes brackets differently or starts catching such an
exception in its trial loop, these tests fail.
"""

from __future__ import annotations

import keras_tuner
import pytest

from core.runs.progress import SearchStopped
from core.search.tuner import HYPERBAND_FACTOR, hyperband_trials


class _ScoreTuner(keras_tuner.Tuner):
    """Trains nothing: a trial's score is its one hyperparameter; `stop_at` raises a stop there."""

    def __init__(self, *args, stop_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at
        self.ran: list[str] = []

    def run_trial(self, trial, *args, **kwargs):
        self.ran.append(trial.trial_id)
        if len(self.ran) == self.stop_at:
            raise SearchStopped()
        return {"score": trial.hyperparameters.get("x")}


def _space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Float("x", 0.0, 1.0)  # continuous: random draws never collide, so no trial is skipped
    return hp


@pytest.mark.parametrize("max_epochs", [2, 3, 4, 9, 10, 27])
def test_hyperband_trial_count_is_keras_tuners(max_epochs, tmp_path):
    oracle = keras_tuner.oracles.HyperbandOracle(
        objective=keras_tuner.Objective("score", "max"), max_epochs=max_epochs,
        factor=HYPERBAND_FACTOR, hyperparameters=_space(), seed=1,
    )
    tuner = _ScoreTuner(oracle=oracle, directory=str(tmp_path), project_name="hb")
    tuner.search()
    assert len(tuner.oracle.trials) == hyperband_trials(max_epochs)


def test_hyperband_trials_grow_with_the_epochs():
    counts = [hyperband_trials(epochs) for epochs in (2, 3, 9, 27)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def _random_tuner(folder, **kwargs) -> _ScoreTuner:
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=4, hyperparameters=_space(), seed=1,
    )
    return _ScoreTuner(oracle=oracle, directory=str(folder), project_name="stop", overwrite=False, **kwargs)


def test_a_stop_ends_the_search_and_its_trial_is_run_again_on_resume(tmp_path):
    first = _random_tuner(tmp_path, stop_at=2)
    with pytest.raises(SearchStopped):
        first.search()
    stopped = first.ran[-1]
    assert first.oracle.trials[stopped].status not in ("FAILED", "INVALID")  # not recorded as a failure

    resumed = _random_tuner(tmp_path)
    resumed.search()
    assert resumed.ran[0] == stopped  # the stopped trial comes first, with the same values
    statuses = [trial.status for trial in resumed.oracle.trials.values()]
    assert statuses == ["COMPLETED"] * 4
