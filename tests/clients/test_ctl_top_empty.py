"""`chimneyctl top` of a stack with no layers in a terminal narrower than the layers' heading:
the stacked table is its headings alone. It crashed in `ctl_render.stacked` with "TypeError:
'int' object is not iterable" (max over the headings' width and no rows)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.ctl_render import stacked
from tests.clients.test_ctl_top_width import _Client, _top, _Tty


class _NoLayers(_Client):
    def stack_stats(self) -> dict[str, Any]:
        return {**super().stack_stats(), "layers": {}, "engine": {"inbox": {}}}


def test_stacked_with_no_rows_is_its_headings() -> None:
    lines = stacked(["layer", "offloads", "sent/s"], [], 20)
    assert lines[:2] == ["layer  offloads", "       sent/s"], lines
    assert lines[2].startswith("─") and len(lines) == 3, lines


@pytest.mark.parametrize("columns", [20, 40, 60])
def test_top_of_a_stack_with_no_layers(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr("tests.clients.test_ctl_top_width._Client", _NoLayers)
    lines = _top(_Tty())
    assert any(line.startswith("layer ") for line in lines), lines
    assert all(len(line) <= columns for line in lines), lines
