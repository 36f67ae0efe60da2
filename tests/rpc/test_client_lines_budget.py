"""The budget of RPC client log lines (docs/configuration.md, `[log]`): how many clients of a
window are logged at info is `rpc.client_lines_per_window` (10 by default), the window
`rpc.client_lines_window_s`; the refusals of a stopping server, which have no line of their
own, spend none of it; a departure is counted in the window it happens in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from chimneyd.config import ConfigError, load_config
from tests.rpc.support import RawClient, eventually, serving


def lines(logs: list[dict[str, Any]], event: str, level: str | None = None) -> list[Any]:
    return [e for e in logs if e["event"] == event and (level is None or e["log_level"] == level)]


def test_the_budget_is_configured_and_bounded(tmp_path: Path) -> None:
    default = load_config(None).rpc
    assert (default.client_lines_per_window, default.client_lines_window_s) == (10, 60.0)
    path = tmp_path / "chimneyd.toml"
    path.write_text("[rpc]\nclient_lines_per_window = 0\nclient_lines_window_s = 5.0\n")
    rpc = load_config(path).rpc
    assert (rpc.client_lines_per_window, rpc.client_lines_window_s) == (0, 5.0)
    for key, value in (("client_lines_per_window", "-1"), ("client_lines_window_s", "0.0")):
        path.write_text(f"[rpc]\n{key} = {value}\n")
        with pytest.raises(ConfigError, match=rf"rpc\.{key}"):
            load_config(path)


async def test_the_configured_budget_is_the_servers() -> None:
    async with serving(client_lines_per_window=2, client_lines_window_s=5.0) as served:
        assert served.server.client_lines.window_s == 5.0
        with capture_logs() as logs:
            clients = [await RawClient.connect(served.address) for _ in range(3)]
            await eventually(lambda: len(served.server.sessions) == 3, "every client in")
            for c in clients:
                await c.close()
            await eventually(lambda: not served.server.sessions, "every client gone")
    assert len(lines(logs, "rpc_client_connected", "info")) == 2, logs
    assert len(lines(logs, "rpc_client_connected", "debug")) == 1, logs


async def test_refusals_of_a_stopping_server_spend_none_of_the_budget() -> None:
    """Clients refused because the server stops have no `rpc_client_refused` line of their
    own: counting them against the window's warnings would leave a server started again (or a
    full one in the same window) refusing at debug from its first refusal."""
    n = 3
    async with serving(max_clients=1, client_lines_per_window=n) as served:
        server = served.server
        with capture_logs() as logs:
            server.stopping = True  # as between `stop_accepting` and the end of `drain`
            for _ in range(n):
                refused = await RawClient.connect(served.address)
                assert await refused.read_until_closed() == []
                await refused.close()
            server.stopping = False  # `start` again
            holder = await RawClient.connect(served.address)
            await eventually(lambda: len(server.sessions) == 1, "the holder in")
            # not idle long enough to be evicted (EVICT_GRACE_S): the next is refused
            server.sessions.copy().pop().clock.last_heard = server.now() + 3600
            full = await RawClient.connect(served.address)
            assert await full.read_until_closed() == []
            await full.close()
            server.client_lines.end_window()
            await holder.close()
    (warned,) = lines(logs, "rpc_client_refused", "warning")
    assert warned["clients"] == 1, warned
    (summary,) = lines(logs, "rpc_clients", "info")
    # summed up all the same: every refusal of the window is counted
    assert summary["refused"] == n + 1 and summary["stopping_refused"] == n, summary


async def test_a_departure_is_counted_in_the_window_it_happens_in() -> None:
    """A client logged at info that leaves while no window is open has its own line; it is
    not counted in a later window's `left`, whose clients had not left."""
    with capture_logs() as logs:
        async with serving(client_lines_per_window=1) as served:
            lines_of = served.server.client_lines
            early = await RawClient.connect(served.address)
            await eventually(lambda: len(served.server.sessions) == 1, "the early client in")
            lines_of.end_window()
            await early.close()
            await eventually(lambda: not served.server.sessions, "the early client gone")
            assert lines_of.window_end is None, "a departure at info opened a window"
            later = [await RawClient.connect(served.address) for _ in range(2)]
            await eventually(lambda: len(served.server.sessions) == 2, "the later clients in")
            lines_of.end_window()
            for c in later:
                await c.close()
    # the first window (the early client alone, at info) had nothing to sum up
    summary = lines(logs, "rpc_clients", "info")[0]
    assert summary["connected"] == 2 and summary["left"] == 0, summary
    (total,) = lines(logs, "rpc_clients_served", "info")
    assert total["served"] == 3 and total["left"] == 3, total
