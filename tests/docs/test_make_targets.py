"""The make targets the documentation names and the Makefile's are the same: every `make
TARGET` in README.md and docs/ is one the Makefile has, and every target the Makefile has is
named in README.md (a newcomer could not guess `make unit`, the socket-free check);
`make help` lists them too (tests/docs/test_make_help.py)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs.mdcheck import ROOT, docs_markdown, load

#: targets not meant to be typed: `all` is `make` with no target, which is `make test`
_UNNAMED = {"all"}
_MAKE = re.compile(r"(?:^|[\s(])make[ \t]+([a-z][a-z-]*)", re.M)


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", text, re.M)
    assert phony, "the Makefile lists its targets under .PHONY"
    targets = set(phony.group(1).replace("\\\n", " ").split())
    defined = set(re.findall(r"^([a-z][a-z-]*):", text, re.M))
    assert targets <= defined, f".PHONY names targets the Makefile lacks: {targets - defined}"
    return targets


def named_targets(text: str) -> set[str]:
    """The TARGET of every `make TARGET` in the code of a Markdown page (spans and blocks)."""
    return set(_MAKE.findall(text))


def _page_code(path: Path) -> str:
    doc = load(path)
    parts = []
    for token in doc.tokens:
        if token.type in ("fence", "code_block"):
            parts.append(token.content)
        elif token.type == "inline" and token.children:
            parts += [c.content for c in token.children if c.type == "code_inline"]
    return "\n".join(parts)


def test_every_make_target_the_docs_name_exists() -> None:
    targets = makefile_targets()
    unknown = {
        f"{path.relative_to(ROOT)}: make {name}"
        for path in [ROOT / "README.md", *docs_markdown()]
        for name in named_targets(_page_code(path))
        if name not in targets
    }
    assert not unknown, f"the docs name make targets the Makefile does not have: {sorted(unknown)}"


def test_the_readme_names_every_make_target() -> None:
    named = named_targets(_page_code(ROOT / "README.md"))
    missing = sorted(makefile_targets() - _UNNAMED - named)
    assert not missing, f"README.md names no `make TARGET` for: {missing}"


def test_a_target_named_nowhere_is_caught() -> None:
    assert named_targets("make help\n.venv\nmake\nmake unit ARGS=x") == {"help", "unit"}
