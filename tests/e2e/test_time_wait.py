"""An offloaded connection that closes first (the active closer) is uploaded when it enters
TIME_WAIT (docs/spec.md §5.2), through a real daemon and a real echo peer: the application
reads the echo and the end of stream, the disconnect succeeds, the connection is carried by
the host afterwards, and `tcp.close` still works."""

from __future__ import annotations

import asyncio
from typing import Any

from chimney_client import AsyncClient, PeerServer
from tests.e2e.support import HOST, Daemon


async def test_the_active_closer_is_uploaded_in_time_wait(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    c = await AsyncClient.connect(daemon.address, call_timeout=15.0)
    try:
        seen: list[tuple[str, dict[str, Any]]] = []
        uploaded = asyncio.Event()
        conn = await c.tcp_connect(HOST, echo_peer.port, offload=True)

        def on_event(conn_id: int, event: str, info: dict[str, Any]) -> None:
            if conn_id == conn:
                seen.append((event, info))
                if event == "uploaded":
                    uploaded.set()

        c.on_tcp_event(on_event)
        await c.events_subscribe(conn)
        assert (await c.tcp_info(conn))["state"] == "offloaded"
        assert await c.tcp_send(conn, b"hi") == 2
        assert await c.tcp_recv(conn, 2, 5000, waitall=True) == b"hi"
        assert await c.tcp_disconnect(conn) == "NDIS_STATUS_SUCCESS"
        # the echo peer closes on our FIN: its FIN takes us to TIME_WAIT
        assert await c.tcp_recv(conn, 10, 5000) == b""
        async with asyncio.timeout(10):
            await uploaded.wait()
        retrieves = [i.get("reason") for e, i in seen if e == "TcpIndicateRetrieve"]
        assert retrieves == ["UploadRequested"], seen
        assert (await c.tcp_info(conn))["state"] == "host"
        assert await c.tcp_recv(conn, 10, 5000) == b""  # the end stays the end
        assert await c.tcp_close(conn) is True
    finally:
        await c.close()
