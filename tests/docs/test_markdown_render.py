"""README.md and docs/ render on GitHub as written: every code fence is closed, headings are
headings (not swallowed by a code block), tables are tables, and relative links lead somewhere."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.docs.mdcheck import (
    ROOT,
    headings_in_code,
    links,
    load,
    markdown_files,
    stray_tables,
    unclosed_fences,
)

README = ROOT / "README.md"
#: Written on another branch; linked from here before it lands.
LINKED_BEFORE_IT_EXISTS = {ROOT / "docs" / "security.md"}
README_HEADINGS = [
    "chimneyd",
    "The path of one I/O",
    "Two commands",
    "Documentation",
    "A five-minute tour",
    "Beyond the contract (extensions)",
    "What is where",
    "Configuration",
    "Shards",
    "Seeing it",
    "Tests",
    "Soak and benchmarks",
    "Container",
    "License",
]
FILES = [p for p in markdown_files() if p.exists()]


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in paths]


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_every_fence_is_closed(path: Path) -> None:
    assert not unclosed_fences(load(path))


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_no_heading_is_inside_a_code_block(path: Path) -> None:
    assert not headings_in_code(load(path))


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_tables_render_as_tables(path: Path) -> None:
    assert not stray_tables(load(path))


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_relative_links_resolve(path: Path) -> None:
    doc = load(path)
    broken = []
    for line, target in links(doc):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.name}:{line + 1}: {target}"
        if dest in LINKED_BEFORE_IT_EXISTS:
            continue
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif (
            anchor and dest.suffix == ".md" and anchor not in {h.slug for h in load(dest).headings}
        ):
            broken.append(f"{where} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_sections_are_headings() -> None:
    headings = [h.text for h in load(README).headings if h.level <= 2]
    assert headings == README_HEADINGS


def test_readme_tour_output_and_explanation_render() -> None:
    doc = load(README)
    code = doc.code_lines()
    output = next(i for i, line in enumerate(doc.lines) if line.startswith("conn 1: closed"))
    explanation = doc.lines.index("What happened:")
    assert output in code, "the tour's output must be inside its code block"
    assert explanation not in code, "'What happened' must be text, not code"
    assert len([t for t in doc.tokens if t.type == "table_open"]) >= 2


def test_readme_points_to_the_documentation() -> None:
    text = README.read_text()
    for page in ("rpc.md", "spec.md", "faults.md", "configuration.md", "metrics.md", "security.md"):
        assert f"(docs/{page})" in text, f"README does not link docs/{page}"
    assert "make bench" in text and "python -m bench" not in text
    assert "--token ADMIN_TOKEN subscribe '*'" in text
    assert "../shared" not in text, "the README must not point outside the repository"
