"""What the daemon logs per RPC client (docs/configuration.md, `[log]`): the first few
clients of a window get their `rpc_client_connected` / `rpc_client_disconnected` lines at info;
past that a burst of clients (a soak, a `chimneyctl` loop) is logged at debug, one client
at a time, and summed up at info (`rpc_clients`) when its window ends, and once more at the stop
(`rpc_clients_served`). Refusals, auth failures and clients that end in an error stay at
info or warning, whatever the rate."""

from __future__ import annotations

import socket
import struct
from typing import Any

from structlog.testing import capture_logs

from chimneyd.rpc import server as server_module
from tests.rpc.support import RawClient, eventually, serving, start, stop

BUDGET = server_module.CLIENT_LINES_PER_WINDOW


def lines(logs: list[dict[str, Any]], event: str, level: str | None = None) -> list[Any]:
    return [e for e in logs if e["event"] == event and (level is None or e["log_level"] == level)]


async def one_client(address: tuple[str, int]) -> None:
    c = await RawClient.connect(address)
    try:
        msgid = c.request("ping")
        assert await c.read() == [1, msgid, None, "pong"]
    finally:
        await c.close()


async def test_a_burst_of_clients_is_not_two_info_lines_each() -> None:
    n = BUDGET * 3
    served = await start()
    try:
        with capture_logs() as logs:
            for _ in range(n):
                await one_client(served.address)
            await eventually(lambda: not served.server.sessions, "every client gone")
            await stop(served)
    finally:
        if not served.server.stopping:
            await stop(served)
    # the first BUDGET clients: both lines at info, as ever; the rest at debug only
    assert len(lines(logs, "rpc_client_connected", "info")) == BUDGET, logs
    assert len(lines(logs, "rpc_client_disconnected", "info")) == BUDGET, logs
    assert len(lines(logs, "rpc_client_connected")) == n
    assert len(lines(logs, "rpc_client_disconnected")) == n
    # nothing lost: the stop sums up every client the server served
    (total,) = lines(logs, "rpc_clients_served", "info")
    assert total["served"] == n and total["refused"] == 0, total
    assert total["at_debug"] == n - BUDGET and total["peak"] >= 1, total


async def test_a_window_with_clients_logged_at_debug_is_summed_up_at_info() -> None:
    async with serving() as served:
        lines_of = served.server.client_lines
        with capture_logs() as logs:
            for _ in range(BUDGET + 2):
                await one_client(served.address)
            await eventually(lambda: not served.server.sessions, "every client gone")
            # the window's timer is armed (60 s in the daemon); here it ends at once
            assert lines_of.window_end is not None
            assert not lines(logs, "rpc_clients")
            lines_of.end_window()
        (summary,) = lines(logs, "rpc_clients")
        assert summary["log_level"] == "info", summary
        assert summary["connected"] == BUDGET + 2 and summary["at_debug"] == 2, summary
        assert summary["left"] == BUDGET + 2 and summary["clients"] == 0, summary
        assert summary["peak"] >= 1 and summary["refused"] == 0, summary
        # a new window: its first client is at info again, and a window whose every client
        # was logged at info needs no summary
        with capture_logs() as quiet:
            await one_client(served.address)
            await eventually(lambda: not served.server.sessions, "the client gone")
            assert lines_of.window_end is not None
            lines_of.end_window()
        assert len(lines(quiet, "rpc_client_connected", "info")) == 1, quiet
        assert not lines(quiet, "rpc_clients"), quiet
        assert lines_of.window_end is None


async def test_the_window_ends_by_itself() -> None:
    async with serving() as served:
        served.server.client_lines.window_s = 0.05  # 60 s in the daemon
        served.server.client_lines.per_window = 0  # every client at debug: always a summary
        with capture_logs() as logs:
            await one_client(served.address)
            await eventually(lambda: lines(logs, "rpc_clients"), "the window never ended")
        assert lines(logs, "rpc_clients")[0]["connected"] == 1, logs
        assert not lines(logs, "rpc_client_connected", "info"), logs


async def test_a_few_clients_keep_their_info_lines() -> None:
    """A client of a quiet daemon (a `chimneyctl` by hand) is logged as before, with its
    address and what it did."""
    async with serving() as served:
        with capture_logs() as logs:
            await one_client(served.address)
            await eventually(
                lambda: lines(logs, "rpc_client_disconnected"), "the client's end not logged"
            )
        (connected,) = lines(logs, "rpc_client_connected", "info")
        (left,) = lines(logs, "rpc_client_disconnected", "info")
        assert connected["client"] == left["client"] and left["requests"] == 1, left


async def test_refusals_auth_failures_and_resets_stay_logged_past_the_budget() -> None:
    async with serving(max_clients=1, token="s3cret") as served:
        with capture_logs() as logs:
            for _ in range(BUDGET):  # the window's info lines spent
                await one_client_authed(served.address)
            await eventually(lambda: not served.server.sessions, "every client gone")
            holder = await served.client("s3cret")
            refused = await RawClient.connect(served.address)  # one too many
            assert await refused.read_until_closed() == []
            await refused.close()
            await holder.close()
            await eventually(lambda: not served.server.sessions, "the holder gone")
            wrong = await RawClient.connect(served.address)
            await wrong.fails("auth", "nope")
            # a client that ends in an error (a reset) is worth a line at any rate
            sock = wrong.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await wrong.close()
            await eventually(lambda: not served.server.sessions, "the reset client gone")
        assert lines(logs, "rpc_client_refused", "warning"), logs
        assert lines(logs, "rpc_auth_failed", "warning"), logs
        (reset,) = [e for e in lines(logs, "rpc_client_disconnected") if e["error"]]
        assert reset["log_level"] == "info", reset
        assert len(lines(logs, "rpc_client_disconnected", "info")) == BUDGET + 1, logs


async def one_client_authed(address: tuple[str, int]) -> None:
    c = await RawClient.connect(address)
    try:
        assert await c.ok("auth", "s3cret") is True
    finally:
        await c.close()
