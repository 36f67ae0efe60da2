"""`chimneyctl top` from 40 columns up: no cell is ever cut. Narrower than its tables, each
layer and each connection is stacked over as many lines as it needs, its fields in the same
place on every row, so nothing is lost; a wide terminal keeps the one-line tables."""

from __future__ import annotations

import pytest

from tests.clients.test_ctl_top_width import LAYERS, _layer_rows, _top, _Tty

#: every value the fake stack has, as `top` prints it
_LAYER_VALUES = ("1,200", "3,600", "17")
_CONN_VALUES = ("1000000000001", "offloaded", "127.0.0.1:9000", "MiB")
_PATH = "tcpip → filter0 → team0 → nic1"


@pytest.mark.parametrize("columns", [40, 50, 60, 69, 80, 120])
def test_no_cell_is_cut(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _top(_Tty())
    too_wide = [line for line in lines if len(line) > columns]
    assert not too_wide, f"wider than {columns} columns: {too_wide}"
    cut = [line for line in lines if "…" in line]
    assert not cut, f"cells cut at {columns} columns: {cut}"
    assert [r.split()[0] for r in _layer_rows(lines)] == list(LAYERS), lines
    text = "\n".join(lines)
    for value in (*_LAYER_VALUES, *_CONN_VALUES, "inbox", "failed", "calls/s", "sent/s"):
        assert value in text, f"{value!r} lost at {columns} columns: {lines}"
    # a path too long for its line is folded at its arrows, never cut
    assert " ".join(text.split()).count(_PATH) == 1, f"the path lost at {columns}: {lines}"
    layer = _layer_rows(lines)[0].split()
    assert layer[1] == "1,200", f"offloads is not first after the layer's name: {layer}"


@pytest.mark.parametrize("columns", [40, 60])
def test_stacked_rows_keep_their_fields_in_place(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each layer takes the same lines, each field the same column, as its heading's."""
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _top(_Tty())
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    rule = next(i for i in range(start, len(lines)) if lines[i].startswith("─"))
    heading = lines[start:rule]
    assert len(heading) > 1, f"not stacked at {columns} columns: {lines}"
    rows = lines[rule + 1 : rule + 1 + len(heading) * len(LAYERS)]
    for k, layer in enumerate(LAYERS):
        block = rows[k * len(heading) : (k + 1) * len(heading)]
        assert block[0].startswith(layer + " "), (layer, block)
        for head, line in zip(heading, block, strict=True):
            for word_at in [i for i, ch in enumerate(head) if ch != " " and head[i - 1] == " "]:
                assert line[word_at] != " " and line[word_at - 1] == " ", (head, line)


def test_the_heading_wraps_between_its_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    lines = _top(_Tty())
    head = lines[: lines.index("")]
    for item in ("rpc clients 3", "in flight 2", "invariant violations 0", "every 0.01 s"):
        assert any(item in line for line in head), f"{item!r} split over two lines: {head}"
