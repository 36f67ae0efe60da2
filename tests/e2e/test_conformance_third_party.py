"""Contract conformance through an independent msgpack-RPC client from PyPI (aio-msgpack-rpc).

Not our client: its own framing, msgid handling and packer. Of the libraries tried,
`msgpack-rpc-python` needs `msgpack-python` 0.5 (which replaces the `msgpack` 1.x module the
daemon needs), `mprpc` does not build on Python 3.11 (its generated C includes
`longintrepr.h`), and `aiorpc` passes `loop=` to `asyncio.open_connection` (a TypeError since
Python 3.10); `aio-msgpack-rpc` works as published.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_msgpack_rpc
import msgpack
import pytest
from aio_msgpack_rpc.error import RPCResponseError

from chimney_client import PeerServer
from tests.e2e.support import HOST, Daemon, settled


@pytest.fixture
async def rpc(daemon: Daemon) -> AsyncIterator[aio_msgpack_rpc.Client]:
    reader, writer = await asyncio.open_connection(daemon.host, daemon.port)
    client = aio_msgpack_rpc.Client(reader, writer, response_timeout=30)
    try:
        yield client
    finally:
        client.close()


def error_of(exc: pytest.ExceptionInfo[RPCResponseError]) -> tuple[int, str]:
    code, message = exc.value.args[0]
    return code, message


async def test_ping_and_stack_info(rpc: aio_msgpack_rpc.Client, daemon: Daemon) -> None:
    assert await rpc.call("ping") == "pong"
    info = await rpc.call("stack.info")
    assert info["contract"] == 1
    assert isinstance(info["version"], str)
    assert [(la["name"], la["kind"], la["lower"]) for la in info["layers"]] == [
        ("tcpip", "host", ["im0"]),
        ("im0", "passthrough", ["nic0"]),
        ("nic0", "target", []),
    ]
    assert daemon.address in info["rpc"]["listen"]


async def test_connect_send_recv(rpc: aio_msgpack_rpc.Client, echo_peer: PeerServer) -> None:
    conn = await rpc.call("tcp.connect", HOST, echo_peer.port)
    assert isinstance(conn, int) and conn > 0
    info = await rpc.call("tcp.info", conn)
    assert info["state"] == "offloaded"
    assert info["path"] == ["tcpip", "im0", "nic0"]
    payload = bytes(range(256)) * 64
    assert await rpc.call("tcp.send", conn, payload) == len(payload)
    got = b""
    while len(got) < len(payload):
        chunk = await rpc.call("tcp.recv", conn, len(payload) - len(got), 10_000)
        assert isinstance(chunk, bytes) and chunk
        got += chunk
    assert got == payload
    # several calls in flight at once on this client's one connection
    results = await asyncio.gather(
        rpc.call("tcp.list"), rpc.call("ping"), rpc.call("trace.get", conn, 4)
    )
    assert results[0] == [conn]
    assert results[1] == "pong"
    assert len(results[2]) == 4
    assert await rpc.call("tcp.close", conn) is True
    await settled(lambda: rpc.call("stack.stats"))


async def test_errors(rpc: aio_msgpack_rpc.Client) -> None:
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("no.such.method")
    code, message = error_of(exc)
    assert code == 1 and message.startswith("NO_METHOD")
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("tcp.recv", 1)
    code, message = error_of(exc)
    assert code == 2 and message.startswith("INVALID_PARAMS")
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("tcp.info", 424242)
    code, message = error_of(exc)
    assert code == 3 and message.startswith("NOT_FOUND")
    # the connection is still good after errors
    assert await rpc.call("ping") == "pong"


async def test_old_raw_mode_client(daemon: Daemon, echo_peer: PeerServer) -> None:
    """A client that cannot send bin (msgpack raw mode): a `str` payload's raw bytes are sent
    as they are, valid UTF-8 or not (rpc-contract "Transport and framing")."""
    reader, writer = await asyncio.open_connection(daemon.host, daemon.port)
    raw_mode = aio_msgpack_rpc.Client(
        reader,
        writer,
        packer=msgpack.Packer(use_bin_type=False),
        unpacker=msgpack.Unpacker(raw=True),
        response_timeout=30,
    )
    try:
        assert await raw_mode.call("ping") == b"pong"
        conn = await raw_mode.call("tcp.connect", HOST, echo_peer.port)
        payload = b"\xff\xfe not utf-8 \x80\x00"
        assert await raw_mode.call("tcp.send", conn, payload) == len(payload)
        got = b""
        while len(got) < len(payload):
            got += await raw_mode.call("tcp.recv", conn, 100, 10_000)
        assert got == payload
        assert await raw_mode.call("tcp.close", conn) is True
    finally:
        raw_mode.close()


async def test_results_have_contract_types(rpc: aio_msgpack_rpc.Client) -> None:
    listener = await rpc.call("tcp.listen", HOST, 0)
    info: dict[str, Any] = await rpc.call("tcp.listener_info", listener)
    assert info["host"] == HOST and 0 < info["port"] < 65536 and info["pending"] == 0
    assert await rpc.call("fault.list") == []
    assert await rpc.call("events.subscribe", "*") is True


async def test_a_planted_bug_is_answered_and_the_daemon_goes_on(
    rpc: aio_msgpack_rpc.Client, daemon: Daemon, echo_peer: PeerServer
) -> None:
    """`raise_next` over RPC (an extension): the send the bug meets is answered INTERNAL, the
    connection carries the bytes around it in order, and the daemon drains."""
    conn = await rpc.call("tcp.connect", HOST, echo_peer.port)
    spec = {"kind": "raise_next", "layer": "nic0", "call": "MiniportTcpOffloadSend"}
    daemon.planted_bugs = 1  # the one violation the checker will see
    fid = await rpc.call("fault.inject", spec)
    assert [f["id"] for f in await rpc.call("fault.list")] == [fid]
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("tcp.send", conn, b"lost in a bug")
    code, message = error_of(exc)
    assert code == 10 and message.startswith("INTERNAL: nic0 failed in MiniportTcpOffloadSend")
    assert await rpc.call("fault.list") == []  # used up
    # and what it hit, on asking for the faults that ran their course too
    hit = {"layer": "nic0", "handler": "MiniportTcpOffloadSend", "conns": [conn], "conns_total": 1}
    used = await rpc.call("fault.list", {"used": True})
    assert used == [{"id": fid, **spec, "count": 1, "skip": 0, "active": False, "raised": [hit]}]
    assert await rpc.call("tcp.send", conn, b"still carried") == 13
    assert await rpc.call("tcp.recv", conn, 13, 10_000) == b"still carried"
    assert await rpc.call("tcp.close", conn) is True
    stats = await settled(lambda: rpc.call("stack.stats"))
    assert stats["engine"]["layer_errors"] == 1
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("fault.inject", {**spec, "call": "MiniportTcpOffloadReceiveReturn"})
    assert error_of(exc)[0] == 2  # INVALID_PARAMS: no recovery defined there


async def test_a_failed_send_is_listed_with_its_connection(
    rpc: aio_msgpack_rpc.Client, echo_peer: PeerServer
) -> None:
    """`fail_next` over RPC: the send it fails is answered with its NDIS status, and
    `fault.list {"used": true}` (an extension) says which connection that send was for."""
    conns = [await rpc.call("tcp.connect", HOST, echo_peer.port) for _ in range(2)]
    spec = {"kind": "fail_next", "layer": "im0", "call": "MiniportTcpOffloadSend"}
    fid = await rpc.call("fault.inject", spec)
    with pytest.raises(RPCResponseError) as exc:
        await rpc.call("tcp.send", conns[1], b"failed in the IM")
    assert "NDIS_STATUS_FAILURE" in error_of(exc)[1]
    hit = {"layer": "im0", "call": "MiniportTcpOffloadSend", "conns": [conns[1]], "conns_total": 1}
    (used,) = await rpc.call("fault.list", {"used": True})
    assert used["id"] == fid and not used["active"] and used["failed"] == [hit]
    for conn in conns:
        assert await rpc.call("tcp.close", conn) is True
