"""No request is ever left unanswered: an illegal transition inside a layer answers the request
that caused it, and the other connections go on (spec §3.9: the lifecycle table raises)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig, LayerConfig
from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import adapter as target_adapter
from chimneyd.drivers.target import disconnect as target_disconnect
from chimneyd.drivers.target import receive as target_receive
from chimneyd.drivers.target import send as target_send
from chimneyd.drivers.target import state_ops as target_state_ops
from chimneyd.drivers.target import terminate as target_terminate
from chimneyd.engine import start_engine
from chimneyd.ndis.lifecycle import Event
from chimneyd.observe import invariants
from tests.integration.test_waiting_bytes import dial, read_all


def break_sends(monkeypatch: pytest.MonkeyPatch, victim: int) -> None:
    """The NIC's send raises IllegalTransition for `victim`'s sends (a bug planted there)."""
    real_send = target_send.send

    def broken_send(t: Any, c: Any, head: Any) -> None:
        if c.trace is not None and c.trace.conn_id == victim:
            c.lifecycle.fire(Event.INITIATE)  # not legal in OFFLOADED: IllegalTransition
        real_send(t, c, head)

    monkeypatch.setattr(target_send, "send", broken_send)


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


async def test_illegal_transition_in_the_target_answers_the_request(
    echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force an illegal transition inside the NIC's task while it serves one connection's
    send: that send is answered INTERNAL, the error is counted, and another connection's
    sends still complete."""
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        victim = await engine.connect("127.0.0.1", echo_port)
        other = await engine.connect("127.0.0.1", echo_port)
        break_sends(monkeypatch, victim)
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(engine.send(victim, b"lost in a bug"), 5.0)
        assert err.value.code == ErrorCode.INTERNAL
        assert "nic0" in err.value.detail
        assert engine.layer_errors == 1
        # the checker counts the failed handler, and saw nothing else go wrong
        assert [v.split(":")[0] for v in engine.checker.violations] == ["nic0"]
        assert "IllegalTransition" in engine.checker.violations[0]
        assert engine.stats()["engine"]["invariant_violations"] == 1
        assert await asyncio.wait_for(engine.send(other, b"fine"), 5.0) == 4
        assert await engine.recv(other, 4, 5.0, True) == b"fine"
        await engine.close(other)
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
        assert report["closed"] >= 1
    # the victim's send was failed for the NIC: no NBL of it stays outstanding
    assert report["left_over"] == {}, report


async def test_an_error_in_a_call_a_delay_held_answers_its_request(
    echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bug in a send that a `delay` fault held: it raises when the fault's timer
    releases it, and that must still answer the send that caused it (the error names the
    send's handler, whose arguments name the connection, not the timer). The calls held
    behind it still run, in order."""
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        victim = await engine.connect("127.0.0.1", echo_port)
        other = await engine.connect("127.0.0.1", echo_port)
        break_sends(monkeypatch, victim)
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


def _once(real: Any) -> tuple[Any, list[bool]]:
    """`real`, raising the first time after `armed[0]` is set (named as `real`)."""
    armed = [False]

    @functools.wraps(real)
    def planted(*args: Any) -> Any:
        if armed[0]:
            armed[0] = False
            raise AttributeError("a bug planted in the layer")
        return real(*args)

    return planted, armed


async def _stack_with(
    monkeypatch: pytest.MonkeyPatch, layers: Any, where: Any, name: str
) -> tuple[Any, list[bool]]:
    """A stack (`layers`, None: the default) with a one-shot bug planted in `where.name`
    before the stack binds its handlers; the bug is armed by setting `armed[0]`."""
    planted, armed = _once(getattr(where, name))
    monkeypatch.setattr(where, name, planted)
    config = EngineConfig(invariants=True)
    engine = await (start_engine(config) if layers is None else start_engine(config, layers))
    return engine, armed


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


def _per_layer(rows: list[tuple[Any, Any, str, str]]) -> pytest.MarkDecorator:
    """Run a test once per row: (stack, the class or module a bug is planted in, its function,
    the layer it is in), named by the layer."""
    return pytest.mark.parametrize(
        ("layers", "where", "name", "layer"), rows, ids=[row[-1] for row in rows]
    )


#: (stack, where the bug is planted, the layer it is in, the request that meets it)
PLANTED = [
    (DEFAULT, (target_adapter, "initiate"), "nic0", "offload"),
    (DEFAULT, (target_state_ops, "update"), "nic0", "update"),
    (DEFAULT, (target_state_ops, "query"), "nic0", "query"),
    (DEFAULT, (PassthroughIm, "_mirror"), "im0", "offload"),
    (DEFAULT, (PassthroughIm, "_mirror"), "im0", "update"),
    (DEFAULT, (PassthroughIm, "_mirror"), "im0", "query"),
    (TEAM, (MuxIm, "_initiate"), "team0", "offload"),
    (TEAM, (MuxIm, "_relay_op"), "team0", "update"),
    (TEAM, (MuxIm, "_relay_op"), "team0", "query"),
]


@pytest.mark.parametrize(
    ("layers", "bug", "layer", "call"),
    PLANTED,
    ids=[f"{layer}-{where[1]}-{call}" for _, where, layer, call in PLANTED],
)
async def test_a_state_call_a_layer_raised_in_fails_for_it(
    echo_port: int,
    monkeypatch: pytest.MonkeyPatch,
    layers: Any,
    bug: tuple[Any, str],
    layer: str,
    call: str,
) -> None:
    """A layer raises while serving an initiate, update or query: NDIS completes the block
    list for it with NDIS_STATUS_FAILURE, so the layers above unwind as for a refused call.
    The connection then still carries bytes both ways, its close is answered, and every
    table is empty after the shutdown. Without it the host waited for ever for the
    initiate's completion, and the close behind it was never answered."""
    planted, armed = _once(getattr(*bug))
    monkeypatch.setattr(*bug, planted)
    config = EngineConfig(invariants=True)
    engine = await (start_engine(config) if layers is None else start_engine(config, layers))
    if call == "offload":
        armed[0] = True
        conn = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
        assert engine.conn_info(conn)["state"] == "host"  # the initiate failed
    else:
        conn = await engine.connect("127.0.0.1", echo_port)
        assert engine.conn_info(conn)["state"] == "offloaded"
        armed[0] = True  # offloaded first; the next call meets the bug
        asked = engine.update(conn, {"RcvIndicationSize": 512}) if call == "update" else None
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(asked or engine.query(conn), 5.0)
        assert err.value.code == ErrorCode.INTERNAL
        assert f"{layer} failed in " in err.value.detail
    assert engine.layer_errors == 1
    assert [v.split(":")[0] for v in engine.checker.violations] == [layer]
    await _goes_on_and_drains(engine, conn, b"still carried after the bug" * 100)


async def test_an_initiate_a_delay_held_fails_for_the_layer_too(
    echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bug in an initiate a `delay` fault held: it raises when the timer releases it
    (the held call's arguments start with the layer), and the initiate still fails for it."""
    planted, armed = _once(target_adapter.initiate)
    monkeypatch.setattr(target_adapter, "initiate", planted)
    armed[0] = True
    engine = await start_engine(EngineConfig(invariants=True))
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 30}
    )
    conn = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
    assert engine.conn_info(conn)["state"] == "host"
    assert engine.layer_errors == 1
    engine.fault_clear(None)
    assert (await asyncio.wait_for(engine.offload(conn), 5.0))["state"] == "offloaded"
    await _goes_on_and_drains(engine, conn, b"offloaded after all")


@_per_layer(
    [
        (DEFAULT, target_send, "send", "nic0"),
        (DEFAULT, PassthroughIm, "relay_send", "im0"),
        (TEAM, MuxIm, "relay_send", "team0"),
    ]
)
async def test_a_send_a_layer_raised_in_fails_for_it(
    echo_port: int, monkeypatch: pytest.MonkeyPatch, layers: Any, where: Any, name: str, layer: str
) -> None:
    """A layer raises on a send before it did anything with it: the send is answered
    INTERNAL and its NBLs are failed as the layer fails a send (a hole; the connection is
    uploaded), so every NBL completes once and none stays outstanding. The bytes sent before
    and after arrive in order; the failed send's bytes never reach the peer (it was failed).
    Without it the NBL stayed outstanding at every layer for ever."""
    engine, armed = await _stack_with(monkeypatch, layers, where, name)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await asyncio.wait_for(engine.send(conn, b"before "), 5.0) == 7
    armed[0] = True
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.send(conn, b"lost in a bug"), 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTcpOffloadSend" in err.value.detail
    assert engine.layer_errors == 1
    assert await asyncio.wait_for(engine.send(conn, b"after"), 5.0) == 5
    assert await engine.recv(conn, 12, 5.0, True) == b"before after"
    await _goes_on_and_drains(engine, conn, b"and on")


@_per_layer(
    [
        (DEFAULT, target_receive, "post", "nic0"),
        (DEFAULT, PassthroughIm, "MiniportTcpOffloadReceive", "im0"),
        (TEAM, MuxIm, "MiniportTcpOffloadReceive", "team0"),
    ]
)
async def test_a_receive_a_layer_raised_in_fails_for_it(
    echo_port: int, monkeypatch: pytest.MonkeyPatch, layers: Any, where: Any, name: str, layer: str
) -> None:
    """A layer raises on a receive request the host posted: the waiting recv is answered
    INTERNAL, the request completes with NDIS_STATUS_REQUEST_ABORTED (nothing placed), and the
    bytes the peer sends next still reach the application. Without it the request's NBL
    stayed outstanding for ever."""
    engine, armed = await _stack_with(monkeypatch, layers, where, name)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    armed[0] = True
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 5.0)
    assert err.value.code == ErrorCode.INTERNAL
    assert f"{layer} failed in MiniportTcpOffloadReceive" in err.value.detail
    assert engine.layer_errors == 1
    await _goes_on_and_drains(engine, conn, b"hello")


async def test_a_read_answered_for_a_failed_layer_takes_no_bytes_later(
    echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read waits while a layer fails on another request of the same connection: the read
    is answered INTERNAL with it, and withdrawn from the host as a timed-out read is, so the
    bytes that arrive next go to the next read. Without it the host handed them to the read
    already answered, and nobody ever read them."""
    planted, armed = _once(target_send.send)
    monkeypatch.setattr(target_send, "send", planted)
    engine = await start_engine(EngineConfig(invariants=True))
    conn = await engine.connect("127.0.0.1", echo_port)
    waiting = asyncio.ensure_future(engine.recv(conn, 5, 5.0, True))
    await asyncio.sleep(0.05)
    armed[0] = True
    for request in (engine.send(conn, b"lost in a bug"), waiting):
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(request, 5.0)
        assert err.value.code == ErrorCode.INTERNAL
    await _goes_on_and_drains(engine, conn, b"hello")


@_per_layer(
    [
        (DEFAULT, target_disconnect, "disconnect", "nic0"),
        (DEFAULT, PassthroughIm, "MiniportTcpOffloadDisconnect", "im0"),
        (TEAM, MuxIm, "MiniportTcpOffloadDisconnect", "team0"),
    ]
)
async def test_a_disconnect_a_layer_raised_in_fails_for_it(
    echo_port: int, monkeypatch: pytest.MonkeyPatch, layers: Any, where: Any, name: str, layer: str
) -> None:
    """A layer raises on a graceful disconnect: it is answered INTERNAL and refused for the
    layer as a `fail_next` disconnect is (no FIN sent), so its NBL completes, and the
    connection's close is answered (sending is over for it: the application asked to end).
    Without it the NBL stayed outstanding."""
    engine, armed = await _stack_with(monkeypatch, layers, where, name)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    armed[0] = True
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


@_per_layer(
    [
        (DEFAULT, target_receive, "forward", "nic0"),
        (DEFAULT, PassthroughIm, "MiniportTcpOffloadForward", "im0"),
        (TEAM, MuxIm, "MiniportTcpOffloadForward", "team0"),
    ]
)
async def test_a_forward_a_layer_raised_in_loses_no_byte(
    monkeypatch: pytest.MonkeyPatch, layers: Any, where: Any, name: str, layer: str
) -> None:
    """A layer raises on the segments the host forwards after an initiate (what the peer sent
    while the initiate was held): they complete with NDIS_STATUS_UPLOAD_IN_PROGRESS, so the
    host keeps them, and the layer asks for the upload that lets the host process them. Every
    byte the peer sent arrives once, in order; the tables drain. Without it the forwarded
    NBLs stayed outstanding and their bytes were never delivered."""
    engine, armed = await _stack_with(monkeypatch, layers, where, name)
    armed[0] = True  # nothing is forwarded before the initiate
    below_host = "im0" if layers is DEFAULT else "team0"  # its initiate is held
    conn, peer, data = await _forwarded_during_a_held_initiate(engine, below_host, 7)
    assert engine.layer_errors == 1
    assert not armed[0], "the bug was never met: no forward went down"
    await _every_byte_once(engine, conn, peer, data)
    assert engine.conn_info(conn)["state"] == "host"  # the kept segments needed the upload
    await _goes_on_and_drains(engine, conn, None)


@pytest.mark.parametrize("request_kind", ["upload", "close"])
@_per_layer(
    [
        (DEFAULT, target_terminate, "terminate", "nic0"),
        (DEFAULT, PassthroughIm, "MiniportTerminateOffload", "im0"),
        (TEAM, MuxIm, "MiniportTerminateOffload", "team0"),
    ]
)
async def test_a_terminate_a_layer_raised_in_fails_as_lost_hardware_state(
    echo_port: int,
    monkeypatch: pytest.MonkeyPatch,
    layers: Any,
    where: Any,
    name: str,
    layer: str,
    request_kind: str,
) -> None:
    """A layer raises on a terminate: it is failed for it as a terminate that finds the hardware
    state corrupt (spec §3.7: the retrieve and the abort go up, the host's next terminate
    finishes the connection; for the target, as a `fail_next` terminate is). The request is
    answered INTERNAL, the application hears of the reset, the close is answered and every
    table drains. Without it the host waited for the terminate's completion for ever: the close
    never came back, and the connection's handles and contexts stayed in every layer."""
    engine, armed = await _stack_with(monkeypatch, layers, where, name)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await asyncio.wait_for(engine.send(conn, b"before"), 5.0) == 6
    assert await engine.recv(conn, 6, 5.0, True) == b"before"
    armed[0] = True
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


async def test_a_forward_the_target_raised_in_midway_keeps_what_it_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The target raises on the third segment of a forwarded chain: the two before it are in
    its stream and complete with SUCCESS; the third and the rest go back to the host with
    NDIS_STATUS_UPLOAD_IN_PROGRESS. Every byte still arrives once, in order: a segment marked
    taken before the target had it would be lost, one handed back after it had it would
    arrive twice."""
    real_forward, real_segment = target_receive.forward, target_receive.segment
    seen = [0, False]  # segments the forward handed on; whether the bug went off

    def forward(t: Any, c: Any, head: Any) -> None:
        seen[0] = 0
        try:
            real_forward(t, c, head)
        finally:
            seen[0] = -1

    def segment(t: Any, c: Any, *args: Any) -> None:
        if seen[0] >= 0:
            seen[0] += 1
            if seen[0] == 3 and not seen[1]:
                seen[1] = True
                raise AttributeError("a bug planted in the target, midway through a forward")
        real_segment(t, c, *args)

    seen[0] = -1
    monkeypatch.setattr(target_receive, "forward", forward)
    monkeypatch.setattr(target_receive, "segment", segment)
    engine = await start_engine(EngineConfig(invariants=True))
    conn, peer, data = await _forwarded_during_a_held_initiate(engine, "im0", 8)
    assert seen[1], "the bug was never met: no forward of three segments or more"
    assert engine.layer_errors == 1
    await _every_byte_once(engine, conn, peer, data)
    calls = engine.ndis.stats()["nic0"]["calls"]
    assert calls.get("NdisTcpOffloadForwardComplete/NDIS_STATUS_SUCCESS", 0) >= 2, calls
    assert calls.get("NdisTcpOffloadForwardComplete/NDIS_STATUS_UPLOAD_IN_PROGRESS", 0) >= 1, calls
    await _goes_on_and_drains(engine, conn, None)
