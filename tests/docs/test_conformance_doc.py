"""docs/architecture.md, "The conformance suite", lists exactly the checks the suite registers,
each under its role: a new check comes with its line."""

from __future__ import annotations

import re

from chimneyd.testing.conformance import layer_kind_checks
from tests.docs.mdcheck import DOCS

_ITEM = re.compile(r"^- `([a-z_]+)`: ", re.M)


def _section() -> str:
    text = (DOCS / "architecture.md").read_text()
    start = text.index("## The conformance suite")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_page_lists_every_check_under_its_role() -> None:
    section = _section()
    bottom, middle = section.split("Middle checks")
    assert _ITEM.findall(bottom) == [c.name for c in layer_kind_checks("bottom")]
    assert _ITEM.findall(middle) == [c.name for c in layer_kind_checks("middle")]
