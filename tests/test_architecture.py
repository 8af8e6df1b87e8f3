"""The architecture holds: core's layers, no Streamlit in core, no import cycles (pyproject.toml,
[tool.importlinter]); and the contracts really fail when a change breaks them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def scratch_copy(tmp_path) -> Path:
    """core/ and pyproject.toml copied to a scratch folder, to break on purpose."""
    shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


BREAKS = {
    # what is added, to which file: the contract's words that must name it
    "an upward import (the bottom layer importing the top)": (
        "files.py", "from core import cli", "core.files is not allowed to import core.cli"),
    "a sideways import between independent layers (models and evidence)": (
        "evidence/statistics.py", "from core.models import families", "core.evidence is not allowed to import core.models"),
    "an import cycle inside a package (folders imports tasks)": (
        "data/tasks.py", "from core.data import folders", "No cycles are allowed in core.data"),
    "streamlit in core": (
        "evidence/statistics.py", "import streamlit", "core.evidence.statistics -> streamlit"),
}


@pytest.mark.parametrize("kind", BREAKS)
def test_each_contract_fails_when_a_change_breaks_it(scratch_copy, kind):
    module, line, message = BREAKS[kind]
    path = scratch_copy / "core" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(scratch_copy)
    assert result.returncode != 0
    assert message in result.stdout


def test_no_module_of_core_imports_streamlit_or_the_pages():
    """Read from the source, function-level imports included: the library stays usable headless."""
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("streamlit", "pages")]
    assert not offenders, offenders
