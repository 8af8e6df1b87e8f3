"""The benchmark scripts in bench/ are run by hand, never by the suite: importing each one here makes
a renamed or removed name of `core` that a script still uses fail the suite, not the next person
who runs the benchmark."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("bench_*.py")))
def test_each_benchmark_script_imports_and_has_a_main(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import each other from their own folder
    module = importlib.import_module(script)
    try:
        assert callable(getattr(module, "main", None)), f"bench/{script}.py has no main()"
    finally:
        sys.modules.pop(script, None)
