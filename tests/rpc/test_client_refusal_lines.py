"""A client loop against a full daemon (docs/security.md, Logs: clients coming and going
cannot flood the log): the first refusals of a window are warnings of their own
(`rpc_client_refused`), later ones go at debug and are counted in the window's summary
(`rpc_clients`, `refused`) and in `rpc_clients_served`."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from chimneyd.rpc import server as server_module
from tests.rpc.support import RawClient, eventually, serving

BUDGET = server_module.CLIENT_LINES_PER_WINDOW


def lines(logs: list[dict[str, Any]], event: str, level: str | None = None) -> list[Any]:
    return [e for e in logs if e["event"] == event and (level is None or e["log_level"] == level)]


async def test_a_loop_of_refused_clients_is_not_a_warning_each() -> None:
    n = BUDGET * 3
    with capture_logs() as logs:
        async with serving(max_clients=1) as served:
            holder = await RawClient.connect(served.address)
            await eventually(lambda: len(served.server.sessions) == 1, "the holder in")
            # the holder is not idle long enough to be evicted (EVICT_GRACE_S): each is refused
            served.server.sessions.copy().pop().clock.last_heard = served.server.now() + 3600
            for _ in range(n):
                refused = await RawClient.connect(served.address)
                assert await refused.read_until_closed() == []
                await refused.close()
            served.server.client_lines.end_window()
            await holder.close()
            await eventually(lambda: not served.server.sessions, "the holder gone")
    assert len(lines(logs, "rpc_client_refused", "warning")) == BUDGET, logs
    assert len(lines(logs, "rpc_client_refused")) == n, logs
    (summary,) = lines(logs, "rpc_clients", "info")
    assert summary["refused"] == n, summary
    (total,) = lines(logs, "rpc_clients_served", "info")
    assert total["refused"] == n and total["served"] == 1, total
