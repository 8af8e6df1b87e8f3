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


def _append_import(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(scratch_copy):
    """The bottom layer importing the top: the layers contract names the import."""
    _append_import(scratch_copy / "core" / "files.py", "from core import cli  # noqa")
    result = lint_imports(scratch_copy)
    assert result.returncode != 0
    assert "core.files is not allowed to import core.cli" in result.stdout


def test_a_sideways_import_between_independent_layers_breaks_them(scratch_copy):
    """models and evidence sit side by side and may not import each other."""
    _append_import(scratch_copy / "core" / "evidence" / "statistics.py", "from core.models import families  # noqa")
    result = lint_imports(scratch_copy)
    assert result.returncode != 0
    assert "core.evidence is not allowed to import core.models" in result.stdout


def test_an_import_cycle_inside_a_package_breaks_the_acyclic_contract(scratch_copy):
    """tasks is imported by folders; folders imported back by tasks is a circle in one layer."""
    _append_import(scratch_copy / "core" / "data" / "tasks.py", "from core.data import folders  # noqa")
    result = lint_imports(scratch_copy)
    assert result.returncode != 0
    assert "No cycles are allowed in core.data" in result.stdout


def test_streamlit_in_core_breaks_the_contracts(scratch_copy):
    _append_import(scratch_copy / "core" / "evidence" / "statistics.py", "import streamlit  # noqa")
    result = lint_imports(scratch_copy)
    assert result.returncode != 0
    assert "core.evidence.statistics -> streamlit" in result.stdout


def test_no_module_of_core_imports_streamlit_or_the_pages():
    """Read from the source, function-level imports included: the library stays usable headless."""
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("streamlit", "pages")]
    assert not offenders, offenders
