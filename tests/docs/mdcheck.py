"""Markdown as GitHub renders it, for the documentation tests.

GitHub renders GitHub Flavored Markdown: CommonMark plus tables (and a few extensions that do not
change block structure). markdown-it-py's CommonMark preset with tables enabled builds the same
blocks, so a fence that is not closed, a heading swallowed by a code block or a table rendered as
text shows up here as it would on GitHub.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# a table's delimiter row: | --- | :---: | (GFM)
_DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class Heading:
    level: int
    text: str  # the rendered text: `code` spans without backticks
    line: int  # 0-based source line
    slug: str = ""


@dataclass
class Document:
    path: Path
    lines: list[str]
    tokens: list[Token]
    headings: list[Heading] = field(default_factory=list)

    def fences(self) -> list[Token]:
        return [t for t in self.tokens if t.type == "fence"]

    def table_lines(self) -> set[int]:
        covered: set[int] = set()
        for t in self.tokens:
            if t.type == "table_open" and t.map:
                covered.update(range(*t.map))
        return covered

    def code_lines(self) -> set[int]:
        covered: set[int] = set()
        for t in self.tokens:
            if t.type in ("fence", "code_block") and t.map:
                covered.update(range(*t.map))
        return covered

    def section_named(self, title: str, source: bool = False) -> list[str]:
        """Source lines under the heading whose text (or, with `source`, whose Markdown source
        after the #s) is `title`, up to the next heading of the same or a higher level."""
        for i, h in enumerate(self.headings):
            text = self.lines[h.line].lstrip("#").strip() if source else h.text
            if text == title:
                end = next(
                    (n.line for n in self.headings[i + 1 :] if n.level <= h.level), len(self.lines)
                )
                return self.lines[h.line + 1 : end]
        raise KeyError(title)

    def section(self, number: str) -> list[str]:
        """Source lines of the numbered heading `number` up to the next heading of any level."""
        for i, h in enumerate(self.headings):
            if heading_number(h.text) == number:
                end = self.headings[i + 1].line if i + 1 < len(self.headings) else len(self.lines)
                return self.lines[h.line + 1 : end]
        raise KeyError(number)


def renderer() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def slugify(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LMN":
            out.append("-" if ch == " " else ch)
    return "".join(out)


@cache
def load(path: Path) -> Document:
    text = path.read_text(encoding="utf-8")
    tokens = renderer().parse(text)
    doc = Document(path, text.splitlines(), tokens)
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t.type == "heading_open" and t.map:
            inline = tokens[i + 1]
            rendered = "".join(
                c.content for c in (inline.children or []) if c.type in ("text", "code_inline")
            )
            slug = slugify(rendered)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            doc.headings.append(
                Heading(int(t.tag[1]), rendered, t.map[0], slug if n == 0 else f"{slug}-{n}")
            )
    return doc


def heading_number(text: str) -> str | None:
    """`"4.4 Delivery algorithm"` → `"4.4"`; `"2. Data model"` → `"2"`; None if unnumbered."""
    m = re.match(r"(\d+(?:\.\d+)*)\.?\s", text)
    return m.group(1) if m else None


def unclosed_fences(doc: Document) -> list[str]:
    """Fences that run to the end of the document because nothing closes them."""
    bad = []
    for t in doc.fences():
        assert t.map is not None
        start, end = t.map
        last = doc.lines[end - 1].strip() if end - 1 > start else ""
        marker = t.markup[0]
        if not (last and set(last) == {marker} and len(last) >= len(t.markup)):
            bad.append(f"{doc.path.name}:{start + 1}: fence {t.markup}{t.info} is never closed")
    return bad


def stray_tables(doc: Document) -> list[str]:
    """Table delimiter rows that did not render as part of a table."""
    tables = doc.table_lines()
    return [
        f"{doc.path.name}:{i + 1}: table row renders as text or code: {line.strip()[:40]}"
        for i, line in enumerate(doc.lines)
        if _DELIMITER_ROW.match(line) and i not in tables
    ]


def headings_in_code(doc: Document) -> list[str]:
    """Markdown headings (## and deeper) that ended up inside a code block."""
    code = doc.code_lines()
    fence_lines = {t.map[0] for t in doc.fences() if t.map} | {
        t.map[1] - 1 for t in doc.fences() if t.map
    }
    return [
        f"{doc.path.name}:{i + 1}: heading inside a code block: {line.strip()[:50]}"
        for i, line in enumerate(doc.lines)
        if i in code and i not in fence_lines and re.match(r"^#{2,6} \S", line)
    ]


def links(doc: Document) -> list[tuple[int, str]]:
    """(line, target) of every inline link outside code."""
    code = doc.code_lines()
    found = []
    for i, line in enumerate(doc.lines):
        if i in code:
            continue
        stripped = re.sub(r"`[^`]*`", "", line)
        found.extend((i, m.group(1)) for m in _LINK.finditer(stripped))
    return found


def docs_markdown() -> list[Path]:
    """Every Markdown file of docs/ (not those of installed example dependencies)."""
    return sorted(p for p in DOCS.rglob("*.md") if "node_modules" not in p.parts)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *docs_markdown()]
