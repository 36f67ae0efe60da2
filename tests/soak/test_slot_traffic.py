"""`only N of M connections carried traffic` (report `_limits_verdict`) is exact: M are the
slots but those whose first connect was refused or failed, N those of them that carried verified bytes on any of
their connections (a reset's round trip too, a connection whose reopen then failed too), and
a slot that got its connection as the hold ended still has its round trip (bounded by
SETTLE_S), as one that owes a fault's outcome does."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from chimney_client.soak.channels import LocalChannel
from chimney_client.soak.conn import Conn
from chimney_client.soak.limits import SETTLE_S
from chimney_client.soak.phases import slots_held
from chimney_client.soak.worker import Worker
from tests.soak.test_outage_accounts import _state

pytestmark = pytest.mark.soak


def _worker() -> Worker:
    return Worker(_state().cfg, LocalChannel(), LocalChannel())


def _stopped(w: Worker, ago: float = 0.0) -> None:
    w.stopping, w.stop_at = True, time.monotonic() - ago


def test_a_slot_that_got_its_connection_as_the_hold_ended_has_its_round_trip() -> None:
    """A slow ramp's last connects can be answered after the stop: the slot is held, and the
    report would count it as carrying nothing if it stopped before its first echo."""
    w = _worker()
    conn = Conn(1, 1, 7, 0, time.monotonic())
    _stopped(w)
    assert w.keep_going(conn)
    conn.verified = 100  # its round trip came back
    assert not w.keep_going(conn)


def test_a_slots_round_trip_is_owed_no_longer_than_the_settle_bound() -> None:
    w = _worker()
    _stopped(w, ago=SETTLE_S + 1.0)
    assert not w.keep_going(Conn(1, 1, 7, 0, time.monotonic()))


def test_a_slots_traffic_is_any_of_its_connections_verified_bytes() -> None:
    """Slot 7's first connection was reset after a round trip (reset_now verifies what the
    daemon held), and its reopen did not open; slot 8 held one that never carried a byte."""
    w = _worker()
    w.slots_unopened.add(9)  # its connect was refused
    first = Conn(1, 1, 7, 0, time.monotonic())
    first.verified = 4096
    assert not w.owes_traffic(first)
    assert w.owes_traffic(Conn(2, 1, 8, 0, time.monotonic()))
    final = w.final()
    assert (final["slots_unopened"], final["slots_with_traffic"]) == (1, 1)


async def test_a_slot_churned_before_its_first_round_trip_reopens_after_the_stop() -> None:
    """Churn closes a connection before its first echo, and the stop comes while it closes:
    the slot reopens for its round trip, as it would to show a reset's outcome."""
    w = _worker()
    opened: list[int] = []

    async def close_conn(rpc: object, conn: Conn, final: bool) -> None:
        _stopped(w)  # the hold ends meanwhile

    async def open_(rpc: object, slot: int, peer: int) -> Conn:
        opened.append(slot)
        return Conn(2, 1, slot, peer, time.monotonic())

    w.close_conn = close_conn  # type: ignore[method-assign,assignment]
    w.open = open_  # type: ignore[method-assign,assignment]
    new = await w.replace(None, 7, 0, Conn(1, 1, 7, 0, time.monotonic()))  # type: ignore[arg-type]
    assert new is not None and opened == [7]
    # one whose slot carried bytes already is not reopened after the stop
    done = Conn(3, 1, 8, 0, time.monotonic())
    done.verified = 10
    assert await w.replace(None, 8, 0, done) is None  # type: ignore[arg-type]


@pytest.mark.timeout(10)
async def test_the_ramp_waits_for_each_slots_first_connect_not_for_reopens() -> None:
    """Slot 7 connected, was churned and reopened while slot 8's first connect is still
    unanswered: two `opened` for two slots, but the ramp is not done until slot 8's."""
    w = _worker()
    w.cfg = dataclasses.replace(w.cfg, peers=(("127.0.0.1", 9),))
    answer = asyncio.Event()
    opened: list[int] = []

    async def open_(rpc: object, slot: int, peer: int) -> Conn | None:
        if slot == 8:
            await answer.wait()
        opened.append(slot)
        w.c["opened"] += 1
        conn = Conn(len(opened), 1, slot, peer, time.monotonic())
        conn.churn = len(opened) == 1  # slot 7's first: churned at once
        return conn

    async def echo(rpc: object, conn: Conn) -> None:
        conn.verified += 1
        await asyncio.sleep(0)

    async def close_conn(rpc: object, conn: Conn, final: bool) -> None:
        return None

    w.rpcs = [None]  # type: ignore[list-item]
    w.open = open_  # type: ignore[method-assign,assignment]
    w.echo = echo  # type: ignore[method-assign,assignment]
    w.close_conn = close_conn  # type: ignore[method-assign,assignment]
    w.think = lambda conn, s: asyncio.sleep(0)  # type: ignore[method-assign,assignment,return-value]
    w.tasks = [asyncio.create_task(w.run_slot(i, s)) for i, s in enumerate((7, 8))]
    while opened != [7, 7]:
        await asyncio.sleep(0)
    assert w.c["opened"] == len(w.tasks)  # what the ramp counted before
    assert not w.ramp_done()
    answer.set()
    while 8 not in opened:
        await asyncio.sleep(0)
    assert w.ramp_done()
    _stopped(w)
    w.fast_stop = True
    await asyncio.gather(*w.tasks)


def test_held_takes_out_the_slots_whose_first_connect_failed_not_each_failed_reopen() -> None:
    """Two workers of 50 slots: one slot's first connect refused by LIMIT; another slot's
    reopens refused 3 times after it carried traffic. 99 held, not 96."""
    finals = [{"slots_unopened": 1}, {"slots_unopened": 0}]
    counters = {"limit_refusals": 4, "connect_failures": 0}
    assert slots_held(100, 2, finals, counters) == 99
    # a worker's final missing: its slots' first connects are unknown, the attempts are all
    assert slots_held(100, 2, finals[:1], counters) == 96
