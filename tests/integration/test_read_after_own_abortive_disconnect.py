"""A read of an offloaded connection the application reset itself (an abortive
`tcp.disconnect`, spec §4.5) is answered the abort, not held for ever: reads of a reset
connection still offloaded wait for its upload (spec §5.1, §3.6.3; docs/rpc.md `tcp.recv`),
and the host uploads a connection it reset itself as one the peer reset. The make_engine
fixture checks the spec §9 invariants and that every table drains."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from chimneyd.engine import Engine
from tests.integration.support import eventually, topology


@pytest.mark.asyncio
@pytest.mark.parametrize("layers", [0, 1])
async def test_a_read_after_an_abortive_disconnect_of_an_offloaded_connection_gets_the_abort(
    make_engine: Callable[..., Any], layers: int
) -> None:
    engine: Engine = await make_engine(topology(layers))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        conn = await engine.connect("127.0.0.1", lsock.getsockname()[1], offload=True)
        peer, _ = lsock.accept()
        try:
            assert engine.conn_info(conn)["state"] == "offloaded"
            waiting = engine.start_recv(conn, 100, 30.0)  # asked before the reset
            assert await engine.disconnect(conn, True) == "NDIS_STATUS_SUCCESS"
            with pytest.raises(Exception, match="REQUEST_ABORTED"):
                await asyncio.wait_for(waiting, 30.0)
            with pytest.raises(Exception, match="REQUEST_ABORTED"):  # asked after it
                await engine.recv(conn, 100, 30.0)
            await eventually(lambda: engine.conn_info(conn)["state"] == "host", "the upload")
        finally:
            peer.close()
    finally:
        lsock.close()
    await engine.close(conn)
