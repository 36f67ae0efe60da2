"""No request is ever left unanswered: an illegal transition inside a layer answers the request
that caused it, and the other connections go on (spec §3.9: the lifecycle table raises)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig
from chimneyd.drivers.target import send as target_send
from chimneyd.engine import start_engine
from chimneyd.ndis.lifecycle import Event
from chimneyd.observe import invariants


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
