"""The README and the manual in docs/ against the repository: named files exist, nav is complete.

Text checks only (pathlib, re, yaml): nothing here imports `core`. `mkdocs build --strict` (run by
`make test`) checks the links between pages; these tests check what a link checker cannot: that
every file the prose names is there, and that "where to add things" names one file for each kind
of addition.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MKDOCS = REPO / "mkdocs.yml"

DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]

# A backticked repository path of a Python file under core/, pages/ or tests/.
CODE_PATH = re.compile(r"`((?:core|pages|tests)/[^`\s]*\.py)`")
# The kinds of addition each "where to add things" list must place, as named in its bullets.
ADDITIONS = ("model family", "input kind", "run kind", "explanation method", "chart", "statistic", "task", "page")
README_MAX_LINES = 160
README_START = [
    "```bash",
    "make dashboard   # set up .venv on a fresh machine, then open the dashboard at http://localhost:8501",
    "make test        # set up .venv (and Chromium for the browser test), then lint, check the layers, build the docs, test",
]


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def named_paths(text: str) -> list[str]:
    """The backticked core/, pages/ and tests/ .py paths in a text, globs and placeholders left out."""
    return [p for p in CODE_PATH.findall(text) if not any(c in p for c in "<>*?[]{}")]


def section(text: str, title: str) -> str:
    """The body of the first heading containing `title` (case-insensitive), up to the next heading
    of the same or a higher level; '' when there is none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+)\s+(.*)", line)
        if m and title.lower() in m.group(2).lower():
            level = len(m.group(1))
            body = []
            for rest in lines[i + 1:]:
                n = re.match(r"(#+)\s", rest)
                if n and len(n.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    return ""


def bullets(text: str) -> list[str]:
    """Top-level '- ' bullet items of a text, each with its indented continuation lines joined."""
    items: list[str] = []
    open_item = False
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
            open_item = True
        elif open_item and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
        else:
            open_item = False  # a blank or unindented line ends the item
    return items


def where_to_add(text: str) -> dict[str, list[str]]:
    """Each kind of addition -> the files its bullet names, from the "where to add things" section.

    A bullet is for a kind when the kind is in its lead (the words before its first colon), e.g.
    "**A model family**: one entry in `FAMILIES` in `core/models/families.py` ...".
    """
    found: dict[str, list[str]] = {}
    for item in bullets(section(text, "where to add things")):
        lead = item.split(":", 1)[0].lower()
        for kind in ADDITIONS:
            if re.search(rf"\b{kind}\b", lead) and kind not in found:
                found[kind] = named_paths(item)
    return found


def test_the_helpers_find_what_they_should() -> None:
    # A real test must be able to fail: the helpers see paths, skip globs, and split bullets.
    text = (
        "## Where to add things\n\n- **A chart**: `core/x.py` and\n  `pages/_<page>_*.py`.\n"
        "- **A page**: `pages/y.py`\n\n## Next\n- **A task**: `core/z.py`\n"
    )
    assert named_paths(text) == ["core/x.py", "pages/y.py", "core/z.py"]
    assert where_to_add(text) == {"chart": ["core/x.py"], "page": ["pages/y.py"]}


@pytest.mark.parametrize("doc", DOC_FILES, ids=_rel)
def test_every_named_code_path_exists(doc: Path) -> None:
    missing = [p for p in named_paths(doc.read_text(encoding="utf-8")) if not (REPO / p).is_file()]
    assert not missing, f"{_rel(doc)} names files that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", [README, DOCS / "architecture.md"], ids=_rel)
def test_where_to_add_things_names_one_existing_place_for_each_kind(doc: Path) -> None:
    places = where_to_add(doc.read_text(encoding="utf-8"))
    absent = [kind for kind in ADDITIONS if not places.get(kind)]
    assert not absent, f"{_rel(doc)}: 'where to add things' names no file for: {absent}"
    missing = {kind: [p for p in paths if not (REPO / p).is_file()] for kind, paths in places.items()}
    missing = {kind: paths for kind, paths in missing.items() if paths}
    assert not missing, f"{_rel(doc)}: 'where to add things' names files that do not exist: {missing}"


def test_readme_is_a_short_landing_page_that_starts_with_the_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    assert lines[0].startswith("# ")
    body = [line for line in lines[1:] if line.strip()]
    assert body[: len(README_START)] == README_START, "README.md must open with the make dashboard / make test block"


def _nav_pages(nav: object) -> list[str]:
    """Every page file in a mkdocs nav (strings, lists and {title: page or list} mappings)."""
    if isinstance(nav, str):
        return [] if re.match(r"[a-z]+://", nav) else [nav]
    if isinstance(nav, list):
        return [page for entry in nav for page in _nav_pages(entry)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def test_mkdocs_nav_lists_every_page_and_only_pages_that_exist() -> None:
    config = yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))
    docs_dir = REPO / config.get("docs_dir", "docs")
    pages = _nav_pages(config["nav"])
    missing = [page for page in pages if not (docs_dir / page).is_file()]
    assert not missing, f"mkdocs.yml nav lists pages that do not exist: {missing}"
    on_disk = {p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md")}
    left_out = sorted(on_disk - set(pages))
    assert not left_out, f"docs pages missing from mkdocs.yml nav: {left_out}"
    assert len(pages) == len(set(pages)), "a page is listed twice in mkdocs.yml nav"


def test_readme_links_into_docs_resolve() -> None:
    # README links are read on GitHub, outside MkDocs: each relative link must name a file here.
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    assert targets, "README.md links to no page of the manual"
    broken = [t for t in targets if not (REPO / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
