"""Clients logged at debug that leave after their window ended (docs/configuration.md,
`[log]`): their departures are summed up at info by a window of their own, not left to the
stop's `rpc_clients_served` only (a soak's clients that connect in one burst and leave
minutes later would otherwise leave no info line until the daemon stops)."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from tests.rpc.support import RawClient, eventually, serving


def lines(logs: list[dict[str, Any]], event: str, level: str | None = None) -> list[Any]:
    return [e for e in logs if e["event"] == event and (level is None or e["log_level"] == level)]


async def test_quiet_clients_leaving_after_their_window_are_summed_up() -> None:
    async with serving() as served:
        lines_of = served.server.client_lines
        lines_of.per_window = 1  # the second client is logged at debug
        loud = await RawClient.connect(served.address)
        quiet = await RawClient.connect(served.address)
        await eventually(lambda: len(served.server.sessions) == 2, "both clients in")
        with capture_logs() as opened:
            lines_of.end_window()  # its timer, 60 s in the daemon
        (first,) = lines(opened, "rpc_clients", "info")
        assert first["connected"] == 2 and first["left"] == 0, first
        with capture_logs() as logs:
            await quiet.close()
            await loud.close()
            await eventually(lambda: not served.server.sessions, "both clients gone")
            # the quiet client's departure went at debug: a window is open to sum it up
            assert lines_of.window_end is not None, "a departure at debug opened no window"
            lines_of.end_window()
        (gone,) = lines(logs, "rpc_client_disconnected", "debug")
        assert gone["error"] is None, gone
        (summary,) = lines(logs, "rpc_clients", "info")
        assert summary["left"] == 2 and summary["connected"] == 0, summary
        assert summary["clients"] == 0, summary
