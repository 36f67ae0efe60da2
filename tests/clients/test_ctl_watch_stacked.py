"""`chimneyctl watch` in a terminal narrower than its one-line narrow rows (40-67 columns):
each hop is stacked over two lines (three when its status does not fit after the call), so
every line fits the terminal and the call name, the status and the event are whole."""

from __future__ import annotations

import pytest

from chimney_client.ctl_live import WatchLayout
from tests.clients.test_ctl_watch_width import HOPS, _Tty, _watch


@pytest.mark.parametrize("columns", [40, 50, 60, 67])
def test_stacked_hops_fit_and_keep_every_name_whole(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _watch(_Tty())
    too_wide = [(len(line), line) for line in lines if len(line) > columns]
    assert not too_wide, f"lines wider than the terminal's {columns} columns: {too_wide}"
    assert "…" not in "\n".join(lines), f"a cell cut at {columns} columns: {lines}"
    assert lines[0].split() == ["seq", "t", "(µs)", "layer", "hdl", "ctx", "nbl"], lines
    assert lines[1].split() == ["call", "status/event"], lines
    starts = [line for line in lines[2:-1] if not line.startswith(" ")]
    assert [r.split()[:3] for r in starts] == [
        [str(h["seq"]), f"{(h['t_ns'] - HOPS[0]['t_ns']) / 1000:.1f}", h["layer"]] for h in HOPS
    ], lines
    text = " ".join(lines)
    for h in HOPS:
        assert f" {h['call']}" in text, f"{h['call']} cut at {columns} columns: {lines}"
    for name in ("REQUEST_ABORTED", "TcpIndicateSendBacklogChange"):
        assert f" {name}" in text
    assert lines[-1] == "conn 7: closed"


@pytest.mark.parametrize("columns", [40, 50, 60])
def test_a_stacked_hop_keeps_its_handle_context_and_nbl_in_their_columns(columns: int) -> None:
    layout = WatchLayout(columns)
    first = layout.heading().splitlines()[0]
    row = layout.row(["4", "3000.0", "im0", "ProtocolTcpOffloadReceiveIndicate", "9", "12", "2",
                      "", "TcpIndicateAbort"]).splitlines()  # fmt: skip
    for heading, value in (("hdl", "9"), ("ctx", "12"), ("nbl", "2")):
        at = first.index(heading)
        assert row[0][at : at + len(value)] == value, (first, row)
    # the event after the call, or under it when the line cannot hold both
    assert " ".join(row[1:]).split() == ["ProtocolTcpOffloadReceiveIndicate", "TcpIndicateAbort"]
    assert all(len(line) <= columns for line in row), row
