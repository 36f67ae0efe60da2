"""No request is ever left unanswered: a layer that raises answers the request that caused it,
NDIS fails the call for it, and the other connections go on (docs/spec.md §6.3).

The bugs are planted with the `raise_next` fault (docs/faults.md): it raises at the entry of the
layer's handler, through the handler table NDIS dispatches by, so the same tests run on the
compiled build. One test plants its bug midway through a forwarded chain instead."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig, LayerConfig
from chimneyd.drivers.tcp import Reassembly
from chimneyd.engine import Engine, start_engine
from chimneyd.observe import invariants
from tests.integration.support import eventually
from tests.integration.test_waiting_bytes import dial, read_all


def plant(engine: Engine, layer: str, call: str, **keys: int) -> None:
    """A bug in `layer`'s handler of `call`: its next run raises (a `raise_next` fault)."""
    engine.fault_inject({"kind": "raise_next", "layer": layer, "call": call, **keys})


def met(engine: Engine) -> bool:
    """Whether every planted bug went off (a used-up fault is no longer listed)."""
    return not [f for f in engine.fault_list() if f["kind"] == "raise_next"]


async def test_update_of_an_invalidated_connection_is_answered(
    make_engine: Any, echo_port: int
) -> None:
    """spec §3.1: never update an invalidated object. Asked anyway, the host answers
    INVALID_STATE instead of raising inside its task (which left the request unanswered)."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    fid = engine.fault_inject({"kind": "invalidate", "conn": conn, "object": "tcp"})
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.update(conn, {"RcvIndicationSize": 512}), 5.0)
    assert err.value.code == ErrorCode.INVALID_STATE
    engine.fault_clear(fid)
    # the connection was uploaded (InvalidState is a mandatory reason) and still carries data
    assert await asyncio.wait_for(engine.send(conn, b"still here"), 5.0) == 10
    assert await engine.recv(conn, 10, 5.0, True) == b"still here"


async def test_a_bug_in_the_target_answers_the_request(echo_port: int) -> None:
    """A bug goes off inside the NIC's task while it serves one connection's send: that send
    is answered INTERNAL, the error is counted, and another connection's sends still
    complete."""
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        victim = await engine.connect("127.0.0.1", echo_port)
        other = await engine.connect("127.0.0.1", echo_port)
        plant(engine, "nic0", "MiniportTcpOffloadSend")
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(engine.send(victim, b"lost in a bug"), 5.0)
        assert err.value.code == ErrorCode.INTERNAL
        assert "nic0 failed in MiniportTcpOffloadSend (PlantedBug)" in err.value.detail
        assert engine.layer_errors == 1
        # the checker counts the failed handler, and saw nothing else go wrong
        assert [v.split(":")[0] for v in engine.checker.violations] == ["nic0"]
        assert "PlantedBug" in engine.checker.violations[0]
        assert engine.stats()["engine"]["invariant_violations"] == 1
        assert await asyncio.wait_for(engine.send(other, b"fine"), 5.0) == 4
        assert await engine.recv(other, 4, 5.0, True) == b"fine"
        await engine.close(other)
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
        assert report["closed"] >= 1
    # the victim's send was failed for the NIC: no NBL of it stays outstanding
    assert report["left_over"] == {}, report


async def test_an_error_in_a_call_a_delay_held_answers_its_request(echo_port: int) -> None:
    """The same bug in a send that a `delay` fault held: it raises when the fault's timer
    releases it, and that must still answer the send that caused it (the error names the
    send's handler, whose arguments name the connection, not the timer). The calls held
    behind it still run, in order."""
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        victim = await engine.connect("127.0.0.1", echo_port)
        other = await engine.connect("127.0.0.1", echo_port)
        plant(engine, "nic0", "MiniportTcpOffloadSend")
        engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportTcpOffloadSend", "ms": 50}
        )
        lost = asyncio.ensure_future(engine.send(victim, b"lost in a bug"))
        after = asyncio.ensure_future(engine.send(other, b"held behind it"))
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(lost, 5.0)
        assert err.value.code == ErrorCode.INTERNAL
        assert "nic0 failed in MiniportTcpOffloadSend" in err.value.detail
        assert await asyncio.wait_for(after, 5.0) == 14
        assert await engine.recv(other, 14, 5.0, True) == b"held behind it"
        assert engine.layer_errors == 1
        engine.fault_clear(None)
        await engine.close(other)
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
        assert report["closed"] >= 1
    # the victim's send was failed for the NIC: no NBL of it stays outstanding
    assert report["left_over"] == {}, report


async def test_stats_count_every_violation_not_only_the_kept_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker keeps the first violations in full; `stack.stats` counts all of them."""
    monkeypatch.setattr(invariants, "KEPT_VIOLATIONS", 2)
    monkeypatch.setattr(invariants, "LOGGED_VIOLATIONS", 0)
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        assert engine.stats()["engine"]["invariant_violations"] == 0
        for n in range(5):
            engine.checker.violation(f"made up {n}")
        assert len(engine.checker.violations) == 2
        assert engine.stats()["engine"]["invariant_violations"] == 5
    finally:
        await asyncio.wait_for(engine.shutdown(2.0), 10.0)


async def _stack(layers: Any) -> Engine:
    """A stack (`layers`, None: the default) with the invariant checker on."""
    config = EngineConfig(invariants=True)
    return await (start_engine(config) if layers is None else start_engine(config, layers))


async def _goes_on_and_drains(engine: Any, conn: int, data: bytes | None) -> None:
    """After the bug: `conn` echoes `data` (if any), its close is answered, and the shutdown
    leaves no table, NBL or request over; no other handler raised."""
    try:
        if data is not None:
            assert await asyncio.wait_for(engine.send(conn, data), 5.0) == len(data)
            assert await engine.recv(conn, len(data), 5.0, True) == data
        await asyncio.wait_for(engine.close(conn), 5.0)
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
    assert report["left_over"] == {}, report
    assert engine.layer_errors == 1


# -- a state call the layer could not serve fails, and everything above unwinds ----------------
DEFAULT = None  # the embedded stack: tcpip → im0 → nic0
TEAM = (
    LayerConfig("tcpip", "host", ("team0",)),
    LayerConfig("team0", "mux", ("nic0", "nic1")),
    LayerConfig("nic0", "target", ()),
    LayerConfig("nic1", "target", ()),
)


#: the stacks and the layer a bug is planted in, one per layer kind
PER_LAYER = pytest.mark.parametrize(
    ("layers", "layer"),
    [(DEFAULT, "nic0"), (DEFAULT, "im0"), (TEAM, "team0")],
    ids=["nic0", "im0", "team0"],
)


@pytest.mark.parametrize("call", ["offload", "update", "query", "invalidate"])
@PER_LAYER
async def test_a_state_call_a_layer_raised_in_fails_for_it(
    echo_port: int, layers: Any, layer: str, call: str
) -> None:
    """A layer raises while serving an initiate, update or query: NDIS completes the block
    list for it with NDIS_STATUS_FAILURE, so the layers above unwind as for a refused call.
    The connection then still carries bytes both ways, its close is answered, and every
    table is empty after the shutdown. Without it the host waited for ever for the
    initiate's completion, and the close behind it was never answered."""
    engine = await _stack(layers)
    handler = {"offload": "Initiate", "update": "Update", "query": "Query"}.get(call, "Invalidate")
    if call == "offload":
        plant(engine, layer, f"Miniport{handler}Offload")
        conn = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
        assert engine.conn_info(conn)["state"] == "host"  # the initiate failed
    else:
        conn = await engine.connect("127.0.0.1", echo_port)
        assert engine.conn_info(conn)["state"] == "offloaded"
        plant(engine, layer, f"Miniport{handler}Offload")  # offloaded first; the next call meets it
        asked = {
            "update": lambda: engine.update(conn, {"RcvIndicationSize": 512}),
            "query": lambda: engine.query(conn),
            "invalidate": lambda: engine.invalidate(conn, "tcp"),
        }[call]
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(asked(), 5.0)
        assert err.value.code == ErrorCode.INTERNAL
        assert f"{layer} failed in " in err.value.detail
    assert engine.layer_errors == 1 and met(engine)
    assert [v.split(":")[0] for v in engine.checker.violations] == [layer]
    await _goes_on_and_drains(engine, conn, b"still carried after the bug" * 100)


async def test_an_initiate_a_delay_held_fails_for_the_layer_too(echo_port: int) -> None:
    """The same bug in an initiate a `delay` fault held: it raises when the timer releases it
    (the held call's arguments start with the layer), and the initiate still fails for it."""
    engine = await start_engine(EngineConfig(invariants=True))
    plant(engine, "nic0", "MiniportInitiateOffload")
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 30}
    )
    conn = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
    assert engine.conn_info(conn)["state"] == "host"
    assert engine.layer_errors == 1 and met(engine)
    engine.fault_clear(None)
    assert (await asyncio.wait_for(engine.offload(conn), 5.0))["state"] == "offloaded"
    await _goes_on_and_drains(engine, conn, b"offloaded after all")


@PER_LAYER
async def test_a_send_a_layer_raised_in_fails_for_it(
    echo_port: int, layers: Any, layer: str
) -> None:
    """A layer raises on a send before it did anything with it: the send is answered
    INTERNAL and its NBLs are failed as the layer fails a send (a hole; the connection is
    uploaded), so every NBL completes once and none stays outstanding. The bytes sent before
    and after arrive in order; the failed send's bytes never reach the peer (it was failed).
    Without it the NBL stayed outstanding at every layer for ever."""
    engine = await _stack(layers)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await asyncio.wait_for(engine.send(conn, b"before "), 5.0) == 7
    plant(engine, layer, "MiniportTcpOffloadSend")
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.send(conn, b"lost in a bug"), 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTcpOffloadSend" in err.value.detail
    assert engine.layer_errors == 1
    assert await asyncio.wait_for(engine.send(conn, b"after"), 5.0) == 5
    assert await engine.recv(conn, 12, 5.0, True) == b"before after"
    await _goes_on_and_drains(engine, conn, b"and on")


@PER_LAYER
async def test_a_receive_a_layer_raised_in_fails_for_it(
    echo_port: int, layers: Any, layer: str
) -> None:
    """A layer raises on a receive request the host posted: the waiting recv is answered
    INTERNAL, the request completes with NDIS_STATUS_REQUEST_ABORTED (nothing placed), and the
    bytes the peer sends next still reach the application. Without it the request's NBL
    stayed outstanding for ever."""
    engine = await _stack(layers)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    plant(engine, layer, "MiniportTcpOffloadReceive")
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTcpOffloadReceive" in err.value.detail
    assert engine.layer_errors == 1
    await _goes_on_and_drains(engine, conn, b"hello")


async def test_a_read_answered_for_a_failed_layer_takes_no_bytes_later(echo_port: int) -> None:
    """A read waits while a layer fails on another request of the same connection: the read
    is answered INTERNAL with it, and withdrawn from the host as a timed-out read is, so the
    bytes that arrive next go to the next read. Without it the host handed them to the read
    already answered, and nobody ever read them."""
    engine = await start_engine(EngineConfig(invariants=True))
    conn = await engine.connect("127.0.0.1", echo_port)
    waiting = asyncio.ensure_future(engine.recv(conn, 5, 5.0, True))
    await asyncio.sleep(0.05)
    plant(engine, "nic0", "MiniportTcpOffloadSend")
    for request in (engine.send(conn, b"lost in a bug"), waiting):
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(request, 5.0)
        assert err.value.code == ErrorCode.INTERNAL
    await _goes_on_and_drains(engine, conn, b"hello")


@PER_LAYER
async def test_a_disconnect_a_layer_raised_in_fails_for_it(
    echo_port: int, layers: Any, layer: str
) -> None:
    """A layer raises on a graceful disconnect: it is answered INTERNAL and refused for the
    layer as a `fail_next` disconnect is (no FIN sent), so its NBL completes, and the
    connection's close is answered (sending is over for it: the application asked to end).
    Without it the NBL stayed outstanding."""
    engine = await _stack(layers)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    plant(engine, layer, "MiniportTcpOffloadDisconnect")
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.disconnect(conn, False), 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTcpOffloadDisconnect" in err.value.detail
    await _goes_on_and_drains(engine, conn, None)


async def _forwarded_during_a_held_initiate(
    engine: Any, held: str, seed: int
) -> tuple[int, Any, bytes]:
    """A connection accepted in host mode whose initiate a `delay` fault holds in `held` while
    its peer sends 100 kB: the host forwards what it read meanwhile once the initiate
    completes (spec §3.2.7, §4.6). The connection, its peer and the bytes sent."""
    lid = await engine.listen("127.0.0.1", 0, False)
    peer = await dial(engine.listener_info(lid)["port"])
    conn = await engine.accept(lid, 5.0)
    engine.fault_inject(
        {"kind": "delay", "layer": held, "call": "MiniportInitiateOffload", "ms": 200}
    )
    offloading = asyncio.ensure_future(engine.offload(conn))
    data = random.Random(seed).randbytes(100_000)
    for i in range(0, len(data), 10_000):
        peer.transport.write(data[i : i + 10_000])
        await asyncio.sleep(0.01)
    with contextlib.suppress(EngineError):  # answered INTERNAL if it still waited
        await asyncio.wait_for(offloading, 5.0)
    engine.fault_clear(None)
    return conn, peer, data


async def _every_byte_once(engine: Any, conn: int, peer: Any, data: bytes) -> None:
    """`data` reads back whole and in order, and so do bytes the peer sends after it."""
    assert await read_all(engine, conn, len(data)) == data
    peer.transport.write(b"and after")
    assert await read_all(engine, conn, 9) == b"and after"


@PER_LAYER
async def test_a_forward_a_layer_raised_in_loses_no_byte(layers: Any, layer: str) -> None:
    """A layer raises on the segments the host forwards after an initiate (what the peer sent
    while the initiate was held): they complete with NDIS_STATUS_UPLOAD_IN_PROGRESS, so the
    host keeps them, and the layer asks for the upload that lets the host process them. Every
    byte the peer sent arrives once, in order; the tables drain. Without it the forwarded
    NBLs stayed outstanding and their bytes were never delivered."""
    engine = await _stack(layers)
    plant(engine, layer, "MiniportTcpOffloadForward")  # nothing is forwarded before the initiate
    below_host = "im0" if layers is DEFAULT else "team0"  # its initiate is held
    conn, peer, data = await _forwarded_during_a_held_initiate(engine, below_host, 7)
    assert engine.layer_errors == 1
    assert met(engine), "the bug was never met: no forward went down"
    await _every_byte_once(engine, conn, peer, data)
    assert engine.conn_info(conn)["state"] == "host"  # the kept segments needed the upload
    await _goes_on_and_drains(engine, conn, None)


@pytest.mark.parametrize("request_kind", ["upload", "close"])
@PER_LAYER
async def test_a_terminate_a_layer_raised_in_fails_as_lost_hardware_state(
    echo_port: int, layers: Any, layer: str, request_kind: str
) -> None:
    """A layer raises on a terminate: it is failed for it as a terminate that finds the hardware
    state corrupt (spec §3.7: the retrieve and the abort go up, the host's next terminate
    finishes the connection; for the target, as a `fail_next` terminate is). The request is
    answered INTERNAL, the application hears of the reset, the close is answered and every
    table drains. Without it the host waited for the terminate's completion for ever: the close
    never came back, and the connection's handles and contexts stayed in every layer."""
    engine = await _stack(layers)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await asyncio.wait_for(engine.send(conn, b"before"), 5.0) == 6
    assert await engine.recv(conn, 6, 5.0, True) == b"before"
    plant(engine, layer, "MiniportTerminateOffload")
    asked = engine.upload(conn) if request_kind == "upload" else engine.close(conn)
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(asked, 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTerminateOffload" in err.value.detail
    assert engine.layer_errors == 1
    if request_kind == "upload":
        with pytest.raises(EngineError) as err:  # the connection was aborted with the state
            await asyncio.wait_for(engine.send(conn, b"after"), 5.0)
        assert err.value.code != ErrorCode.INTERNAL, err.value
    await _goes_on_and_drains(engine, conn, None)


async def test_a_forward_the_target_raised_in_midway_keeps_what_it_took() -> None:
    """The target raises on the third segment of a forwarded chain, inside the delivery
    algorithm's hand-off: the two before it are in its stream and complete with SUCCESS; the
    third and the rest go back to the host with NDIS_STATUS_UPLOAD_IN_PROGRESS. Every byte
    still arrives once, in order: a segment marked taken before the target had it would be
    lost, one handed back after it had it would arrive twice. The bug is planted in the
    context's `rx` (a `Reassembly`, chimneyd/drivers/tcp.py), swapped for a subclass's copy when
    nic0's first forward starts: a compiled class refuses a patched method, not a subclass
    (`allow_interpreted_subclasses`). Segments count only while nic0 runs a forward."""
    seen = [-1, False]  # segments of the forward being run (-1: none runs); whether it went off

    class Planted(Reassembly[memoryview]):
        def segment(
            self, offset: int, data: memoryview, flags: int, fin: bool
        ) -> tuple[list[tuple[memoryview, int]], bool]:
            if seen[0] >= 0:
                seen[0] += 1
                if seen[0] == 3 and not seen[1]:
                    seen[1] = True
                    raise AttributeError("a bug planted in the target, midway through a forward")
            return super().segment(offset, data, flags, fin)

    def counted(real: Any) -> Any:
        @functools.wraps(real)  # the runtime names the failed call by its handler's name
        def forward(ctx: Any, head: Any) -> None:
            if type(ctx.rx) is not Planted:  # the same stream state, in the planted class
                rx, ctx.rx = ctx.rx, Planted(ctx.rx.rcv_nxt)
                ctx.rx.ooo, ctx.rx.fin = rx.ooo, rx.fin
            seen[0] = 0
            try:
                real(ctx, head)
            finally:
                seen[0] = -1

        return forward

    engine = await start_engine(EngineConfig(invariants=True))
    handlers = engine.driver_layer("nic0").chimney_handlers  # what NDIS dispatches by
    handlers["MiniportTcpOffloadForward"] = counted(handlers["MiniportTcpOffloadForward"])
    conn, peer, data = await _forwarded_during_a_held_initiate(engine, "im0", 8)
    assert seen[1], "the bug was never met: no forward of three segments or more"
    assert engine.layer_errors == 1
    await _every_byte_once(engine, conn, peer, data)
    calls = engine.ndis.stats()["nic0"]["calls"]
    assert calls.get("NdisTcpOffloadForwardComplete/NDIS_STATUS_SUCCESS", 0) >= 2, calls
    assert calls.get("NdisTcpOffloadForwardComplete/NDIS_STATUS_UPLOAD_IN_PROGRESS", 0) >= 1, calls
    await _goes_on_and_drains(engine, conn, None)


async def test_raise_next_counts_skips_and_is_refused_where_nothing_recovers(
    echo_port: int,
) -> None:
    """The `raise_next` fault itself: `skip` calls run first, it is listed until its count
    is used up, and a call whose bug chimneyd does not recover from is refused, naming the
    calls the layer can raise in."""
    engine = await _stack(DEFAULT)
    for layer, call in (("nic0", "MiniportTcpOffloadReceiveReturn"), ("im0", "Nonsense")):
        with pytest.raises(EngineError) as err:
            plant(engine, layer, call)
        assert err.value.code == ErrorCode.INVALID_PARAMS
        assert f"layer {layer} cannot raise in {call!r}" in err.value.detail
        assert "MiniportTcpOffloadSend" in err.value.detail
    conn = await engine.connect("127.0.0.1", echo_port)
    plant(engine, "im0", "MiniportTcpOffloadSend", skip=1, count=1)
    assert await asyncio.wait_for(engine.send(conn, b"skipped"), 5.0) == 7
    assert not met(engine)
    (entry,) = engine.fault_entries()
    assert entry["active"] and entry["raised"] == []
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.send(conn, b"lost in a bug"), 5.0)
    assert "im0 failed in MiniportTcpOffloadSend (PlantedBug)" in err.value.detail
    assert met(engine) and engine.layer_errors == 1
    # what the bug hit stays known once it is used up (fault.list `used`)
    (entry,) = engine.fault_entries()
    assert not entry["active"]
    assert entry["raised"] == [
        {"layer": "im0", "handler": "MiniportTcpOffloadSend", "conns": [conn], "conns_total": 1}
    ]
    assert await asyncio.wait_for(engine.send(conn, b" and on"), 5.0) == 7
    assert await engine.recv(conn, 14, 5.0, True) == b"skipped and on"
    await _goes_on_and_drains(engine, conn, None)


async def test_connections_a_failed_resume_left_waiting_are_let_go_when_they_close(
    echo_port: int,
) -> None:
    """A target failure, then a bug in the initiate that offloads the NIC's connections again
    at RESUME: one call carries them all, and they all stay in host mode, carrying bytes; the
    host keeps them for the next RESUME. Closed before one comes, they are let go: the host
    kept each (and its socket) until a RESUME that might never come, and a soak's daemon grew
    by x1.39 after its drain (1,000 connections)."""
    engine = await _stack(DEFAULT)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    failure = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})

    def states() -> set[str]:
        return {engine.conn_info(c)["state"] for c in conns}

    await eventually(lambda: states() == {"host"}, "the NIC's connections uploaded")
    plant(engine, "nic0", "MiniportInitiateOffload")
    engine.fault_clear(failure)  # RESUME: one initiate of the three, which raises

    def waiting() -> list[int]:
        return sorted(c for w in engine.host.resume_offloads.values() for c in w)

    def failed_and_back() -> bool:
        # the initiate raised, and its failure came back up to the host: kept for the next
        # RESUME again (they waited for this one since the NIC's UPLOAD_ALL)
        done = met(engine) and engine.layer_errors == 1 and states() == {"host"}
        return done and waiting() == conns

    await eventually(failed_and_back, "the RESUME's initiate failed and back")
    (raised,) = next(f for f in engine.fault_entries() if f["kind"] == "raise_next")["raised"]
    assert raised["conns"] == conns and raised["handler"] == "MiniportInitiateOffload"
    assert states() == {"host"}
    for c in conns:
        assert await asyncio.wait_for(engine.send(c, b"on"), 5.0) == 2
        assert await engine.recv(c, 2, 5.0, True) == b"on"
        await asyncio.wait_for(engine.close(c), 5.0)
    assert waiting() == []
    report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
    assert report["left_over"] == {}, report
