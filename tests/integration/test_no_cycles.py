"""The steady data path, and a connection's end, free what they made by reference counting.

A reference cycle made per request lives until the collector's next young collection, and
whatever it holds lives with it: a cycle through each read's request held that read's bytes,
tens of thousands of reads' worth between collections, and cost the 100-connection echo bench
~15% of the daemon's CPU per round. A closed connection's records at every layer (TCB, IM
entry, NIC context, handles, socket) pointed at each other too: under churn they piled up in
the collector's oldest generation, and its collections of them paused the daemon for up to
half a second at 10,000 connections. The collector still runs in the daemon
(`runtime.memory`); these tests check that it finds nothing of the engine's on these paths."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import DEFAULT_LAYERS, LayerConfig, RpcConfig
from chimneyd.rpc.server import RpcServer
from tests.integration.support import accept_planted_bugs, eventually, topology
from tests.rpc.support import HOST, RawClient

ROUNDS = 50


@contextmanager
def cyclic_garbage() -> Iterator[Counter[str]]:
    """Count, by type, what the collector finds unreachable after the block (the block runs
    with the collector off, so nothing is collected while it runs)."""
    found: Counter[str] = Counter()
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        for obj in gc.garbage:
            t = type(obj)
            found[f"{t.__module__}.{t.__qualname__}"] += 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()


def _engines(found: Counter[str]) -> dict[str, int]:
    """What of it the daemon's code made: its own types, and the futures it answers with."""
    return {k: v for k, v in found.items() if k.startswith(("chimneyd.", "_asyncio.Future"))}


TOPOLOGIES = {
    "default": DEFAULT_LAYERS,
    "no IM": topology(0),
    "4 IMs": topology(4),
    "MUX over 2 NICs, an IM under one": (
        LayerConfig("tcpip", "host", ("team0",)),
        LayerConfig("team0", "mux", ("im0", "nic1"), policy="round-robin"),
        LayerConfig("im0", "passthrough", ("nic0",)),
        LayerConfig("nic0", "target"),
        LayerConfig("nic1", "target"),
    ),
}


@pytest.mark.parametrize("layers", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
@pytest.mark.parametrize("size", [100, 64 * 1024 + 3])
async def test_send_and_read_rounds_leave_no_cycle(
    make_engine: Any, echo_port: int, layers: tuple[LayerConfig, ...], size: int
) -> None:
    engine = await make_engine(layers)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    for conn in conns:
        assert engine.conn_info(conn)["state"] == "offloaded"
        await engine.send(conn, payload)
        assert await engine.recv(conn, size, 5.0, True) == payload
    with cyclic_garbage() as found:
        for _ in range(ROUNDS // len(conns)):
            for conn in conns:
                assert await engine.send(conn, payload) == size
                assert await engine.recv(conn, size, 5.0, True) == payload
    assert _engines(found) == {}, found.most_common(12)


async def test_a_read_that_times_out_leaves_no_cycle(make_engine: Any, echo_port: int) -> None:
    """The withdraw path: the read's timer fires, the host withdraws it, the engine answers."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    await engine.send(conn, b"x")
    assert await engine.recv(conn, 1, 5.0) == b"x"
    with cyclic_garbage() as found:
        for _ in range(5):
            try:
                await engine.recv(conn, 10, 0.01)
            except EngineError as exc:
                assert exc.code is ErrorCode.TIMEOUT, exc
            else:
                raise AssertionError("a read with nothing to read was answered with data")
    assert _engines(found) == {}, found.most_common(12)


async def test_rpc_requests_leave_no_cycle(make_engine: Any, echo_port: int) -> None:
    """The same through the RPC server a client drives: pings, `tcp.send`, `tcp.recv` (with
    and without a timeout that fires), `tcp.info`, and the session's batching of answers."""
    engine = await make_engine()
    server = RpcServer(engine, RpcConfig(listen=(f"{HOST}:0",)))
    await server.start()
    host, port = server.addresses[0].rsplit(":", 1)
    client = await RawClient.connect((host, int(port)))
    try:
        conn = await client.ok("tcp.connect", "127.0.0.1", echo_port)
        payload = bytes(range(256)) * 64
        await client.ok("tcp.send", conn, payload)
        assert await client.ok("tcp.recv", conn, len(payload), 5.0, {"waitall": True}) == payload
        with cyclic_garbage() as found:
            for _ in range(ROUNDS):
                ids = [client.request("ping") for _ in range(8)]
                for msgid in ids:
                    assert (await client.response(msgid))[3] == "pong"
                assert await client.ok("tcp.send", conn, payload) == len(payload)
                got = await client.ok("tcp.recv", conn, len(payload), 5.0, {"waitall": True})
                assert got == payload
                assert (await client.ok("tcp.info", conn))["state"] == "offloaded"
            error, _ = await client.call("tcp.recv", conn, 10, 0.01)
            assert error is not None and error[0] == ErrorCode.TIMEOUT.value, error
        await client.ok("tcp.close", conn)
    finally:
        await client.close()
        await server.stop_accepting()
        await server.drain(5.0)
    assert _engines(found) == {}, found.most_common(12)


async def _close_offloaded(engine: Any, conn: int) -> None:
    await engine.close(conn)


async def _disconnect_then_close(engine: Any, conn: int) -> None:
    """Our FIN, the peer's back (the echo peer closes when it reads ours), then the close."""
    await engine.disconnect(conn, False)
    assert await engine.recv(conn, 10, 5.0) == b""
    await engine.close(conn)


async def _reset_then_close(engine: Any, conn: int) -> None:
    await engine.disconnect(conn, True)
    await engine.close(conn)


async def _peer_reset_then_close(engine: Any, conn: int) -> None:
    engine.sockets.wire_of(conn).inject_reset()
    await eventually(lambda: engine.conn_info(conn)["state"] != "offloaded", "the abort taken")
    await engine.close(conn)


async def _upload_offload_then_close(engine: Any, conn: int) -> None:
    await engine.upload(conn)
    await engine.offload(conn)
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await engine.send(conn, b"again") == 5
    assert await engine.recv(conn, 5, 5.0, True) == b"again"
    await engine.close(conn)


ENDS = {
    "close": _close_offloaded,
    "FIN both ways, then close": _disconnect_then_close,
    "RST, then close": _reset_then_close,
    "peer's RST, then close": _peer_reset_then_close,
    "upload, offload again, close": _upload_offload_then_close,
}


@pytest.mark.parametrize("layers", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
@pytest.mark.parametrize("end", ENDS.values(), ids=ENDS.keys())
async def test_a_connections_end_leaves_no_cycle(
    make_engine: Any, echo_port: int, layers: tuple[LayerConfig, ...], end: Any
) -> None:
    """Connections that carried data end, each in one way; another stays open throughout, so
    the neighbor and path stay offloaded (their end is the next test's)."""
    engine = await make_engine(layers)
    keep = await engine.connect("127.0.0.1", echo_port)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    for conn in [keep, *conns]:
        assert engine.conn_info(conn)["state"] == "offloaded"
        assert await engine.send(conn, b"x" * 1000) == 1000
        assert await engine.recv(conn, 1000, 5.0, True) == b"x" * 1000
    with cyclic_garbage() as found:
        for conn in conns:
            await end(engine, conn)
        await asyncio.sleep(0.1)  # the sockets' own close completes (`connection_lost`)
    assert _engines(found) == {}, found.most_common(12)
    assert engine.conn_ids() == [keep]


@pytest.mark.parametrize("layers", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
async def test_the_last_connections_end_leaves_no_cycle(
    make_engine: Any, echo_port: int, layers: tuple[LayerConfig, ...]
) -> None:
    """The last connections close: the host terminates their path and neighbor too, and a
    connection the host carried (never offloaded) closes as well."""
    engine = await make_engine(layers)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    conns.append(await engine.connect("127.0.0.1", echo_port, offload=False))
    for conn in conns:
        assert await engine.send(conn, b"y" * 100) == 100
        assert await engine.recv(conn, 100, 5.0, True) == b"y" * 100
    with cyclic_garbage() as found:
        for conn in conns:
            await engine.close(conn)
        await asyncio.sleep(0.1)
    assert _engines(found) == {}, found.most_common(12)
    assert engine.conn_ids() == []


#: Faults that fail, hold or break a call in a layer, each named by what it does there. They
#: are armed in the layer by the fault's id, and their hits noted by it: a fault that held
#: itself (its undo, or its hook for the hits) made a cycle per fault. A failed initiate's
#: handles at the IM and MUX pointed back at their records: a cycle per refused offload.
FAULTS: dict[str, dict[str, Any]] = {
    "a send failed": {"kind": "fail_next", "layer": "nic0", "call": "MiniportTcpOffloadSend"},
    "a send failed for an upload, in the IM": {
        "kind": "fail_next",
        "layer": "im0",
        "call": "MiniportTcpOffloadSend",
        "status": "NDIS_STATUS_UPLOAD_IN_PROGRESS",
    },
    "a bug in a send": {"kind": "raise_next", "layer": "nic0", "call": "MiniportTcpOffloadSend"},
    "sends held": {"kind": "delay", "layer": "nic0", "call": "MiniportTcpOffloadSend", "ms": 20},
    "an offload refused": {
        "kind": "fail_next",
        "layer": "nic0",
        "call": "MiniportInitiateOffload",
    },
    "a path's offload refused": {
        "kind": "fail_next",
        "layer": "nic0",
        "call": "MiniportInitiateOffload[path]",
    },
    "a neighbor's offload refused": {
        "kind": "fail_next",
        "layer": "nic0",
        "call": "MiniportInitiateOffload[neighbor]",
    },
    "a bug in an initiate": {
        "kind": "raise_next",
        "layer": "nic0",
        "call": "MiniportInitiateOffload",
    },
}
#: The kinds whose hits fault.list lists (`used`): the test waits for one.
LISTED = ("fail_next", "raise_next")
FAULT_TOPOLOGIES = {k: TOPOLOGIES[k] for k in ("default", "MUX over 2 NICs, an IM under one")}


async def _echo_once(engine: Any, conn: int) -> None:
    """One round trip, whatever the fault makes of it (a send failed, a connection reset)."""
    try:
        if await engine.send(conn, b"z" * 100) == 100:
            await engine.recv(conn, 100, 2.0, True)
    except EngineError:
        pass


@pytest.mark.parametrize("layers", FAULT_TOPOLOGIES.values(), ids=FAULT_TOPOLOGIES.keys())
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_a_fault_leaves_no_cycle(
    make_engine: Any,
    echo_port: int,
    layers: tuple[LayerConfig, ...],
    fault: dict[str, Any],
) -> None:
    """A fault is injected, hits, and is cleared, on connections opened (and their path and
    neighbor offloaded) after it went in; then they all close."""
    spec = fault
    engine = await make_engine(layers)
    warm = await engine.connect("127.0.0.1", echo_port)  # what a first connection sets up
    await _echo_once(engine, warm)
    await engine.close(warm)
    with cyclic_garbage() as found:
        fid = engine.fault_inject(dict(spec))
        conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
        for conn in conns:
            await _echo_once(engine, conn)

        def hit() -> bool:
            (entry,) = [e for e in engine.fault_entries() if e["id"] == fid]
            return bool(entry.get("failed") or entry.get("raised"))

        if spec["kind"] in LISTED:
            await eventually(hit, f"{spec['kind']} hit")
        engine.fault_clear(fid)
        for conn in conns:
            await _echo_once(engine, conn)
            await engine.close(conn)
        await asyncio.sleep(0.1)
    assert _engines(found) == {}, found.most_common(12)
    assert engine.conn_ids() == []
    if spec["kind"] == "raise_next":
        accept_planted_bugs(engine, 1)
