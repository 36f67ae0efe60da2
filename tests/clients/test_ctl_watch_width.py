"""`chimneyctl watch` in a terminal: every line fits the terminal's width (80 columns and
narrower too), while a pipe still gets every cell whole."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from chimney_client.ctl_live import watch
from chimney_client.ctl_render import Output


def hop(seq: int, layer: str, call: str, **kw: Any) -> dict[str, Any]:
    return {"seq": seq, "t_ns": 1_000_000 * seq, "layer": layer, "call": call, **kw}


#: a send, its completion, a receive indication and its return, an event: the longest names
HOPS = [
    hop(1, "tcpip", "NdisOffloadTcpSend", handle=3, nbl=1),
    hop(2, "im0", "MiniportTcpOffloadSend", context=8, nbl=1),
    hop(3, "nic0", "NdisTcpOffloadSendComplete", nbl=1, status="NDIS_STATUS_SUCCESS"),
    hop(4, "im0", "ProtocolTcpOffloadReceiveIndicate", handle=9, nbl=2),
    hop(5, "nic0", "NdisTcpOffloadReceiveHandler:return", nbl=2, status="NDIS_STATUS_SUCCESS"),
    hop(6, "nic0", "NdisTcpOffloadEventHandler", handle=9, event="TcpIndicateSendBacklogChange"),
    hop(7, "tcpip", "ProtocolTcpOffloadSendComplete", nbl=3, status="NDIS_STATUS_REQUEST_ABORTED"),
]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Client:
    """The two calls `watch` makes: the connection is closed, so one read prints it all."""

    def tcp_info(self, conn: int) -> dict[str, Any]:
        return {"conn": conn, "state": "closed"}

    def trace_get(self, conn: int) -> list[dict[str, Any]]:
        return HOPS


def _watch(file: io.StringIO) -> list[str]:
    session = SimpleNamespace(client=_Client(), out=Output(json_mode=False, file=file))
    result = watch(session, 7, 0.01, False)  # type: ignore[arg-type]
    assert result == {"conn": 7, "hops": len(HOPS), "closed": True}
    return file.getvalue().splitlines()


@pytest.mark.parametrize("columns", [80, 100, 68])  # narrower: test_ctl_watch_stacked.py
def test_every_line_fits_the_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _watch(_Tty())
    too_wide = [(len(line), line) for line in lines if len(line) > columns]
    assert not too_wide, f"lines wider than the terminal's {columns} columns: {too_wide}"
    assert lines[0].split()[:4] == ["seq", "t", "(µs)", "layer"]
    rows = lines[1:-1]
    assert [r.split()[0] for r in rows] == [str(h["seq"]) for h in HOPS]
    assert [r.split()[2] for r in rows] == [h["layer"] for h in HOPS]
    if columns >= 80:
        assert rows[0].split()[3] == "NdisOffloadTcpSend"  # a short name stays whole
    assert lines[-1] == "conn 7: closed"


def test_eighty_columns_keep_the_status() -> None:
    from chimney_client.ctl_live import WatchLayout

    layout = WatchLayout(80)
    row = layout.row(["3", "2000.0", "nic0", "NdisTcpOffloadSendComplete", "", "", "1",
                      "NDIS_STATUS_REQUEST_ABORTED"])  # fmt: skip
    assert row.endswith(" REQUEST_ABORTED"), row
    assert "NdisTcpOffloadSendComplete" in row
    cut = layout.row(["4", "1.0", "im0", "X" * 60, "9", "", "2", "", "TcpIndicateAbort"])
    assert len(cut) <= 80 and "X…" in cut and cut.endswith("TcpIndicateAbort"), cut


def test_a_wide_terminal_and_a_pipe_keep_every_cell_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    wide = _watch(_Tty())
    monkeypatch.setenv("COLUMNS", "80")
    piped = _watch(io.StringIO())
    assert wide == piped
    text = "\n".join(piped)
    for name in ("NdisTcpOffloadReceiveHandler:return", "NDIS_STATUS_REQUEST_ABORTED"):
        assert name in text
    assert "TcpIndicateSendBacklogChange" in text and "…" not in text
