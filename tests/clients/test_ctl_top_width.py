"""`chimneyctl top` in an 80-column terminal: every row keeps its layer's name and every
heading is whole; a wide terminal and a pipe keep the full tables."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace
from typing import Any

import pytest

from chimney_client.ctl_live import top

LAYERS = ("tcpip", "filter0", "team0", "nic0", "nic1")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Client:
    """stack.stats of a teamed stack with one busy connection, as `top` reads it."""

    def __init__(self) -> None:
        self.sent = 0

    def stack_stats(self) -> dict[str, Any]:
        self.sent += 1_500_000
        layer = {
            "offloads_active": 1200,
            "handles": 3600,
            "outstanding_nbls": 17,
            "bytes_sent": self.sent,
            "bytes_received": self.sent,
            "calls": {
                "NdisOffloadTcpSend": 40_000,
                "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS": 39_990,
            },
        }
        return {
            "connections": 1,
            "tasks": 9,
            "rpc": {"clients": 3, "in_flight": 2},
            "engine": {"inbox": {n: 0 for n in LAYERS}, "invariant_violations": 0},
            "layers": {n: layer for n in LAYERS},
        }

    def stack_info(self) -> dict[str, Any]:
        return {"rpc": {"auth": True}}

    def tcp_list(self) -> list[int]:
        return [1000000000001]

    def tcp_info(self, conn: int) -> dict[str, Any]:
        return {
            "conn": conn,
            "state": "offloaded",
            "remote": "127.0.0.1:9000",
            "path": ["tcpip", "filter0", "team0", "nic1"],
            "bytes_sent": self.sent,
            "bytes_received": self.sent,
        }


def _top(file: io.StringIO) -> list[str]:
    from chimney_client.ctl_render import Output

    args = SimpleNamespace(rpc="127.0.0.1:7411", token="ADMIN")
    session = SimpleNamespace(client=_Client(), out=Output(json_mode=False, file=file), args=args)
    top(session, 0.01, 5, True)  # type: ignore[arg-type]
    return re.sub(r"\x1b\[[0-9;]*m", "", file.getvalue()).splitlines()  # rich's styles


def _layer_rows(lines: list[str]) -> list[str]:
    """The lines that start a layer's row (not a stacked connection's path, indented)."""
    return [line for line in lines if line.split(" ", 1)[0] in LAYERS]


@pytest.mark.parametrize("columns", [80, 100])
def test_top_fits_a_narrow_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = _top(_Tty())
    too_wide = [line for line in lines if len(line) > columns]
    assert not too_wide, f"wider than {columns} columns: {too_wide}"
    rows = _layer_rows(lines)
    assert [r.split()[0] for r in rows] == list(LAYERS), f"layer names lost: {lines}"
    headings = [line for line in lines if line.startswith(("layer ", "conn "))]
    assert len(headings) == 2 and not any("…" in h for h in headings), headings
    conn = next(line for line in lines if line.startswith("1000000000001 "))
    assert "offloaded" in conn and "127.0.0.1:9000" in conn


def test_a_wide_terminal_and_a_pipe_show_the_full_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    wide = _top(_Tty())
    monkeypatch.setenv("COLUMNS", "80")
    piped = _top(io.StringIO())
    for lines in (wide, piped):
        heading = next(line for line in lines if line.startswith("layer "))
        assert heading.split() == [
            "layer", "offloads_active", "handles", "outstanding_nbls", "inbox", "bytes_sent",
            "sent/s", "bytes_received", "recv/s", "calls", "calls/s", "failed",
        ]  # fmt: skip
        assert "tcpip → filter0 → team0 → nic1" in "\n".join(lines)
