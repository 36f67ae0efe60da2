"""A reset late in the hold: its slot reopens and the reopened connection must carry verified
data (`_judge_conn_fault`, "the reopened slot carried no verified data"). After the hold the
soak's own final closes hold the RPC clients' semaphores, so a reopen asked for inside
`--settle` can be answered after it; the soak then closed the reopened connection before its
first round trip and failed a daemon that had done nothing wrong (a 10,000-connection soak
under load: resets at 50 s of a 60 s hold, two of five failed so). The reopened slot now has
that first round trip after the settle too (bounded by the round trip's own timeout and the
wind-down's `WIND_DOWN_S`), and one reset after the settle still reopens for it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from chimney_client.soak.conn import Conn
from chimney_client.soak.limits import SETTLE_S
from chimney_client.soak.outcomes import _judge_conn_fault
from tests.soak.test_slot_traffic import _stopped, _worker

pytestmark = pytest.mark.soak


def _reset_conn(cid: int, slot: int) -> tuple[Conn, dict[str, Any]]:
    """A connection the echo peer's RST reached (its reset's round trip verified what the
    daemon held), as `reset_now` leaves it."""
    conn = Conn(cid, 1, slot, 0, time.monotonic())
    conn.verified = conn.sent = 4096
    conn.expect_abort = conn.aborted = True
    rec: dict[str, Any] = {"tag": 1, "kind": "peer_reset", "injected": True, "conn": cid}
    rec.update(held_at_reset=4096, delivered=4096, _conn=conn)
    conn.faults.append(rec)
    return conn, rec


async def _run_reset_slot(*, stop_ago_at_close: float, stop_ago_at_open: float) -> dict[str, Any]:
    """Run slot 7, whose connection was reset, through its reopen; the hold ends while the
    reset connection closes (`stop_ago_at_close` seconds before), and the reopen is answered
    `stop_ago_at_open` seconds after the stop. The reset's record as the report judges it."""
    w = _worker()
    w.cfg = dataclasses.replace(w.cfg, peers=(("127.0.0.1", 9),))
    first, rec = _reset_conn(1, 7)
    w.fault_records.append(rec)
    opens: list[Conn] = []

    async def open_(rpc: object, slot: int, peer: int) -> Conn:
        if not opens:
            opens.append(first)
            return first
        # the reopen waited behind the final closes of the other connections
        _stopped(w, ago=stop_ago_at_open)
        new = Conn(1 + len(opens), 1, slot, peer, time.monotonic())
        opens.append(new)
        return new

    async def close_conn(rpc: object, conn: Conn, final: bool) -> None:
        if conn is first:
            _stopped(w, ago=stop_ago_at_close)  # the hold ended while the reset one closed
        w.by_id.pop(conn.cid, None)

    async def echo(rpc: object, conn: Conn) -> None:
        conn.sent += 4096
        conn.verified += 4096  # the daemon echoed it: a good daemon

    w.rpcs = [None]  # type: ignore[list-item]
    w.open = open_  # type: ignore[method-assign,assignment]
    w.close_conn = close_conn  # type: ignore[method-assign,assignment]
    w.echo = echo  # type: ignore[method-assign,assignment]
    w.think = lambda conn, s: asyncio.sleep(0)  # type: ignore[method-assign,assignment,return-value]
    await asyncio.wait_for(w.run_slot(0, 7), 5.0)
    w.finish_fault_records()
    return rec


def _judged(rec: dict[str, Any]) -> list[str]:
    e: dict[str, Any] = {"kind": "peer_reset", "problems": []}
    _judge_conn_fault(e, rec, set())
    return list(e["problems"])


@pytest.mark.timeout(10)
async def test_a_reopen_answered_after_the_settle_still_has_its_first_round_trip() -> None:
    """The reset connection closed just after the stop (its slot reopens, inside the settle);
    the reopen is answered after the settle. Before: `conn 1: the reopened slot carried no
    verified data`, the new connection closed before any round trip."""
    rec = await _run_reset_slot(stop_ago_at_close=0.0, stop_ago_at_open=SETTLE_S + 1.0)
    assert rec.get("new_conn") == 2, rec
    assert rec["done"] and rec["verified_after"] == 4096, rec
    assert _judged(rec) == []


@pytest.mark.timeout(10)
async def test_a_reset_whose_round_trip_ends_after_the_settle_still_reopens() -> None:
    """The reset's own round trip (the hold at the daemon, the RST, the abort, the read back)
    ended after the settle. Before: no reopen at all, and the same failure."""
    rec = await _run_reset_slot(stop_ago_at_close=SETTLE_S + 1.0, stop_ago_at_open=SETTLE_S + 2)
    assert rec.get("new_conn") == 2, rec
    assert rec["done"], rec
    assert _judged(rec) == []


@pytest.mark.timeout(10)
async def test_only_the_reopened_connections_first_round_trip_is_owed_after_the_settle() -> None:
    """Bounded: after the settle the reopened connection has one round trip, no more; one
    whose first round trip broke (aborted again) does not reopen a second time."""
    w = _worker()

    async def close_conn(rpc: object, conn: Conn, final: bool) -> None:
        return None

    w.close_conn = close_conn  # type: ignore[method-assign,assignment]
    _stopped(w, ago=SETTLE_S + 1.0)
    old = _reset_conn(1, 7)[0]
    new = Conn(2, 1, 7, 0, time.monotonic())
    w.after_reset(old, new)
    assert w.keep_going(new)  # its first round trip
    new.verified = 4096
    assert not w.keep_going(new)
    broken = Conn(3, 1, 8, 0, time.monotonic())
    broken.aborted = True  # its first round trip broke: no reset of its own
    assert await w.replace(None, 8, 0, broken) is None  # type: ignore[arg-type]
    w.fast_stop = True  # interrupted: nothing more is owed
    late = Conn(4, 1, 9, 0, time.monotonic())
    w.after_reset(_reset_conn(5, 9)[0], late)
    assert not w.keep_going(late)
