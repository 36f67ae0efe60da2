"""`tcp.update` of a neighbor or path (spec §3.4 (a)) while other things happen to the same
object: a new connection linked under it, its connections closing or uploaded, an invalidate
of it. Each update is held at a NIC (a `delay` fault, released by clearing it) so that the
other request meets it below; nothing is timed."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.integration.support import assert_clean, drained, eventually
from tests.integration.test_mux import echo, nic_of, teaming

MAC = "02:00:00:00:00:2a"
HOLD_MS = 60_000  # released by clearing the fault, never by its time running out


def _reached(engine: Any, conn: int, layer: str, call: str) -> bool:
    """Whether `call` has been handed to `layer` for `conn` (its trace; an object update's
    hops show in the trace of the connection that asked for it)."""
    return any(h["layer"] == layer and h["call"] == call for h in engine.trace(conn, None))


def _new_conn(engine: Any, known: set[int]) -> int | None:
    fresh = set(engine.conn_ids()) - known
    return fresh.pop() if fresh else None


def _neighbor_at(engine: Any, conn: int, layer: str) -> Any:
    return engine.conn_info(conn)["objects"][layer]["neighbor"]["DlDestinationAddress"]


async def test_a_connection_placed_on_a_nic_new_to_the_neighbor_while_its_update_is_below(
    make_engine: Any, echo_port: int
) -> None:
    """nic1 has no copy of the neighbor yet when its update goes down to nic0; a connection
    placed on nic1 meanwhile makes nic1's copy. That copy must end with the update's values,
    as every copy does (spec §3.4 (a)), not the ones from before it."""
    engine = await make_engine(teaming("round-robin", nics=2))
    first = await engine.connect("127.0.0.1", echo_port)
    assert nic_of(engine, first) == "nic0"
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportUpdateOffload", "ms": HOLD_MS}
    )
    update = asyncio.ensure_future(
        engine.update(first, {"object": "neighbor", "DlDestinationAddress": MAC})
    )
    await eventually(
        lambda: _reached(engine, first, "nic0", "MiniportUpdateOffload"), "the update at nic0"
    )
    second = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    # its initiate waits at the host, or is in the MUX's inbox before the update's
    # completion can be (FIFO)
    await eventually(
        lambda: (c := _new_conn(engine, {first})) is not None and _waiting_or_below(engine, c),
        "the second connection's initiate at the MUX",
    )
    engine.fault_clear(fid)
    assert await asyncio.wait_for(update, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    conn = await asyncio.wait_for(second, 5.0)
    assert nic_of(engine, conn) == "nic1"
    for c in (first, conn):
        for layer in ("tcpip", "team0", nic_of(engine, c)):
            assert _neighbor_at(engine, c, layer) == MAC, (c, layer)
        await echo(engine, c, os.urandom(256))


async def test_the_borrowed_trace_shows_only_the_update(make_engine: Any, echo_port: int) -> None:
    """The neighbor's handle lends the trace of the connection that asked for its update,
    for that call only: neither a connection linked under the neighbor meanwhile (its
    initiate names the neighbor's handle, spec §2.3) nor an invalidate of the neighbor asked
    through another connection may put their hops in it, nor into a closed connection's."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    asker = conns[0]
    last = max(h["seq"] for h in engine.trace(asker, None))
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportUpdateOffload", "ms": HOLD_MS}
    )
    update = asyncio.ensure_future(
        engine.update(asker, {"object": "neighbor", "DlDestinationAddress": MAC})
    )
    await eventually(
        lambda: _reached(engine, asker, "nic1", "MiniportUpdateOffload"), "the update at nic1"
    )
    third = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    await eventually(
        lambda: (
            (c := _new_conn(engine, set(conns))) is not None
            and (_reached(engine, c, "tcpip", "NdisInitiateOffload") or _blocked(engine, c))
        ),
        "the third connection's offload asked",
    )
    invalidate = asyncio.ensure_future(engine.invalidate(conns[1], "neighbor"))
    await eventually(
        lambda: (
            _reached(engine, conns[1], "tcpip", "NdisInvalidateOffload")
            or _reached(engine, asker, "tcpip", "NdisInvalidateOffload")
            or bool(_waiters(engine, asker))
        ),
        "the invalidate asked",
    )
    engine.fault_clear(fid)
    assert await asyncio.wait_for(update, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    assert await asyncio.wait_for(invalidate, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    await asyncio.wait_for(third, 5.0)
    calls = {h["call"] for h in engine.trace(asker, None) if h["seq"] > last}
    assert "NdisUpdateOffload" in calls
    assert not calls & {"NdisInitiateOffload", "NdisInvalidateOffload"}, calls


def _blocked(engine: Any, conn: int) -> bool:
    tcb = engine.host.tcbs.get(conn)
    return any(tcb in queued for queued in engine.host.initiates_blocked.values())


def _waiters(engine: Any, conn: int) -> list[Any]:
    """The requests waiting behind an update of the connection's neighbor."""
    tcb = engine.host.tcbs[conn]
    return list(tcb.path.parent.update_waiters)


def _waiting_or_below(engine: Any, conn: int) -> bool:
    """Whether the host has queued `conn`'s offload behind an object, or sent it down."""
    tcb = engine.host.tcbs.get(conn)
    return any(tcb in queued for queued in engine.host.initiates_blocked.values()) or _reached(
        engine, conn, "team0", "MiniportInitiateOffload"
    )


async def test_a_connection_waiting_behind_the_update_closes(
    make_engine: Any, echo_port: int
) -> None:
    """A connection whose offload waits for the neighbor's update (`_blocked`) is closed
    before the update is done (the close is answered after it); then every connection on the
    neighbor is: the update is answered, and nothing is left behind."""
    engine = await make_engine(teaming("round-robin", nics=2))
    first = await engine.connect("127.0.0.1", echo_port)
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportUpdateOffload", "ms": HOLD_MS}
    )
    update = asyncio.ensure_future(
        engine.update(first, {"object": "neighbor", "DlDestinationAddress": MAC})
    )
    await eventually(
        lambda: _reached(engine, first, "nic0", "MiniportUpdateOffload"), "the update at nic0"
    )
    second = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    await eventually(
        lambda: (c := _new_conn(engine, {first})) is not None and _blocked(engine, c),
        "the second connection's offload waiting",
    )
    waiting = _new_conn(engine, {first})
    assert waiting is not None
    # a close waits for the connection's offload (`disconnect.app_close`), so for the update
    closing = asyncio.ensure_future(engine.close(waiting))
    engine.fault_clear(fid)
    await asyncio.wait_for(closing, 5.0)
    await asyncio.wait_for(asyncio.gather(second, return_exceptions=True), 5.0)
    assert await asyncio.wait_for(update, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    await asyncio.wait_for(engine.close(first), 5.0)
    assert_clean(engine, await drained(engine))
    assert not engine.host.initiates_blocked
