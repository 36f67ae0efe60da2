"""Every `spec §N.M` the code cites is a section of docs/spec.md (and `design §N` of
docs/architecture.md), so a reader of the repository can look up what a comment refers to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.mdcheck import DOCS, ROOT, heading_number, load

CITING = ("chimneyd", "clients", "tests", "bench")
# "spec §4.2", "spec §4.2-§4.4", "spec §4, §1.5 item 6", "spec §3.4 step 1"
_CITATION = re.compile(
    r"\bspec (§\d+(?:\.\d+)*(?:\s+item\s+\d+)?(?:\s*(?:,|-|\u2013|and)\s*§\d+(?:\.\d+)*(?:\s+item\s+\d+)?)*)"
)
_REF = re.compile(r"§(\d+(?:\.\d+)*)(?:\s+item\s+(\d+))?")
_DESIGN = re.compile(r"\bdesign §(\d+)")

#: The section numbers of the behavioural specification the code was written against; docs/spec.md
#: keeps exactly these so that every citation means what its author meant.
SPEC_SECTIONS = [
    "0",
    "1", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6",
    "2", "2.1", "2.2", "2.3", "2.4",
    "3", "3.1", "3.2", "3.2.1", "3.2.2", "3.2.3", "3.2.4", "3.2.5", "3.2.6", "3.2.7",
    "3.3", "3.4", "3.5", "3.6", "3.6.1", "3.6.2", "3.6.3", "3.6.4", "3.7", "3.8", "3.9",
    "4", "4.0", "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8",
    "5", "5.1", "5.2", "5.3", "5.4", "5.5", "5.6",
    "6", "6.1", "6.2", "6.3", "6.4",
    "7", "8", "9", "10",
]  # fmt: skip


def sources() -> list[Path]:
    return sorted(
        p
        for top in CITING
        for p in (ROOT / top).rglob("*")
        if p.suffix in (".py", ".toml", ".md") and "__pycache__" not in p.parts
    )


def citations(pattern: re.Pattern[str]) -> dict[tuple[str, str | None], list[str]]:
    """(section, item or None) → where it is cited."""
    found: dict[tuple[str, str | None], list[str]] = {}
    for path in sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            for m in pattern.finditer(line):
                if pattern is _CITATION:
                    for ref in _REF.finditer(m.group(1)):
                        found.setdefault((ref.group(1), ref.group(2)), []).append(where)
                else:
                    found.setdefault((m.group(1), None), []).append(where)
    return found


def numbered_sections(path: Path) -> list[str]:
    return [n for h in load(path).headings if (n := heading_number(h.text)) is not None]


def test_the_code_cites_the_spec() -> None:
    # guards the scanner itself: a regex that matches nothing would pass every check below
    cited = citations(_CITATION)
    assert len(cited) > 30
    assert ("1.5", "8") in cited


def test_spec_keeps_the_source_numbering() -> None:
    assert numbered_sections(DOCS / "spec.md") == SPEC_SECTIONS


def test_every_cited_spec_section_exists() -> None:
    sections = set(numbered_sections(DOCS / "spec.md"))
    missing = {
        f"§{section}": where[:3]
        for (section, _), where in citations(_CITATION).items()
        if section not in sections
    }
    assert not missing, f"cited but not in docs/spec.md: {missing}"


def test_every_cited_item_exists() -> None:
    """`spec §1.5 item 8` needs an eighth numbered point in §1.5."""
    doc = load(DOCS / "spec.md")
    missing = {}
    for (section, item), where in citations(_CITATION).items():
        if item is None:
            continue
        body = doc.section(section)
        if not any(re.match(rf"{item}\. \S", line) for line in body):
            missing[f"§{section} item {item}"] = where[:3]
    assert not missing, f"cited items missing from docs/spec.md: {missing}"


def test_every_cited_design_principle_exists() -> None:
    principles = set(numbered_sections(DOCS / "architecture.md"))
    cited = citations(_DESIGN)
    assert cited, "no `design §N` citation found: is the pattern still right?"
    missing = {f"design §{n}": where[:3] for (n, _), where in cited.items() if n not in principles}
    assert not missing, f"cited but not in docs/architecture.md: {missing}"


@pytest.mark.parametrize("tag", ["[DOC]", "[HDR]", "[INF]", "[EMU]"])
def test_spec_explains_and_uses_each_tag(tag: str) -> None:
    doc = load(DOCS / "spec.md")
    explained = "\n".join(doc.section("0"))
    assert f"**{tag}**" in explained
    assert sum(line.count(tag) for line in doc.lines) > 2
