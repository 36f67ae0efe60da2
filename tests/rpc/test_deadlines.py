"""Clients that never finish: unauthenticated, idle or half-sent frames are closed past their
deadlines; partial frames share one daemon-wide budget; idle clients cannot lock others out.

Most tests drive the server's clock by hand (`Served.clock`) and run the sweep themselves, so no
test depends on how fast this machine is; one runs on real time to show the sweep is armed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from structlog.testing import capture_logs

from chimneyd.rpc.deadlines import ClientClock, Deadlines, overdue
from chimneyd.rpc.frame_budget import FrameBudget
from tests.rpc.support import HOST, Served, eventually, serving

TOKEN = "user-secret"
FAR = 1000.0  # a deadline no test reaches unless it moves the clock


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def hand_clocked(**rpc: Any) -> AsyncIterator[tuple[Served, Clock]]:
    for key in ("auth_timeout_s", "idle_timeout_s", "frame_timeout_s"):
        rpc.setdefault(key, FAR)
    async with serving(**rpc) as s:
        clock = Clock()
        s.server.now = clock
        yield s, clock


def request_head(msgid: int, size: int) -> tuple[bytes, bytes]:
    """A `tcp.send` frame of about `size` bytes, cut in two: all but its last byte, and that."""
    frame = msgpack.packb([0, msgid, "tcp.send", [1, b"x" * size]])
    return frame[:-1], frame[-1:]


# -- the rules, no sockets ---------------------------------------------------------------------


def test_overdue_rules() -> None:
    d = Deadlines(auth_timeout_s=10, idle_timeout_s=300, frame_timeout_s=30)
    c = ClientClock(connected_at=0, last_heard=0)
    assert overdue(d, c, 9, authed=False, holds_nothing=True) is None
    assert overdue(d, c, 11, authed=False, holds_nothing=True) == "not authenticated in time"
    assert overdue(d, c, 11, authed=True, holds_nothing=True) is None
    c.partial_since = 100
    assert overdue(d, c, 129, authed=True, holds_nothing=False) is None
    assert overdue(d, c, 131, authed=True, holds_nothing=False) == "a frame not completed in time"
    c.partial_since = None
    assert overdue(d, c, 301, authed=True, holds_nothing=True) == "idle"
    assert overdue(d, c, 10_000, authed=True, holds_nothing=False) is None  # holds something
    assert d.sweep_every_s == 1.0
    assert Deadlines(0.2, 300, 30).sweep_every_s == 0.05


def test_frame_budget_drops_the_largest() -> None:
    budget: FrameBudget[str] = FrameBudget(100)
    assert budget.set("a", 60) == []
    assert budget.set("b", 30) == []
    assert budget.set("c", 5) == []
    assert budget.set("b", 40) == ["a"]  # 105 > 100: a holds the most
    assert budget.total == 45 and budget.held == {"b": 40, "c": 5}
    assert budget.set("b", 0) == []  # its frame completed
    assert budget.total == 5
    budget.release("c")
    assert budget.total == 0 and budget.held == {}


# -- over the wire -----------------------------------------------------------------------------


async def test_unauthenticated_client_is_closed_after_auth_timeout() -> None:
    async with hand_clocked(token=TOKEN, auth_timeout_s=10) as (s, clock):
        lazy = await s.client()
        assert await lazy.ok("ping") == "pong"  # talking does not count: it must authenticate
        prompt = await s.client(TOKEN)
        clock.now += 11
        with capture_logs() as logs:
            s.server.sweep()
        assert await lazy.read_until_closed() == []
        assert await prompt.ok("ping") == "pong"
        [entry] = [e for e in logs if e["event"] == "rpc_client_timed_out"]
        assert entry["why"] == "not authenticated in time"


async def test_idle_client_holding_nothing_is_closed() -> None:
    async with hand_clocked(idle_timeout_s=300) as (s, clock):
        idle = await s.client()
        holder = await s.client()
        await holder.ok("tcp.connect", HOST, 9000)
        subscriber = await s.client()
        await subscriber.ok("events.subscribe", "*")
        clock.now += 299
        s.server.sweep()
        assert await idle.ok("ping") == "pong"  # heard from: its idle clock starts again
        clock.now += 299
        s.server.sweep()
        assert await idle.ok("ping") == "pong"
        clock.now += 301
        s.server.sweep()
        assert await idle.read_until_closed() == []
        # a client holding a connection or a subscription is never closed for idling
        assert await holder.ok("ping") == "pong"
        assert await subscriber.ok("ping") == "pong"


async def test_a_request_in_flight_is_not_idle() -> None:
    async with hand_clocked(idle_timeout_s=300) as (s, clock):
        c = await s.client()
        lid = await c.ok("tcp.listen", HOST, 0)
        assert lid == 1
        waiting = c.request("tcp.accept", lid)
        [session] = s.sessions()
        await eventually(lambda: session.in_flight == 1, "the accept is waiting")
        session.holdings.listeners.clear()  # only the request in flight is left to hold it
        clock.now += 1000
        s.server.sweep()
        conn = s.engine.incoming(lid)
        assert (await c.response(waiting))[2:] == [None, conn]


async def test_partial_frame_must_complete_in_time() -> None:
    async with hand_clocked(frame_timeout_s=30) as (s, clock):
        slow = await s.client()
        head, tail = request_head(5, 50_000)
        slow.send_raw(head)
        [session] = s.sessions()
        await eventually(lambda: session.partial == len(head), "the partial frame arrived")
        clock.now += 29
        s.server.sweep()
        slow.send_raw(tail)  # completed in time: answered (NOT_FOUND: no connection 1)
        assert (await slow.response(5))[2][0] == 3
        slow.send_raw(head)
        await eventually(lambda: session.partial == len(head), "the next partial frame")
        clock.now += 31
        with capture_logs() as logs:
            s.server.sweep()
        assert await slow.read_until_closed() == []
        assert [e["why"] for e in logs if e["event"] == "rpc_client_timed_out"] == [
            "a frame not completed in time"
        ]
        await s.another_client_pings()


async def test_partial_frames_share_one_budget_and_the_largest_goes() -> None:
    async with hand_clocked(max_message_bytes=64 * 1024, max_buffered_frame_bytes=128 * 1024) as (
        s,
        _,
    ):
        big, middle, small = await s.client(), await s.client(), await s.client()
        parts = {}
        for c, size in ((big, 60_000), (middle, 50_000)):
            parts[c] = request_head(1, size)
            c.send_raw(parts[c][0])
        await eventually(lambda: s.server.budget.total >= 110_000, "two partial frames held")
        parts[small] = request_head(1, 25_000)
        with capture_logs() as logs:
            small.send_raw(parts[small][0])  # 135 kB > 128 KiB: the largest is dropped
            assert await big.read_until_closed() == []
        [entry] = [e for e in logs if e["event"] == "rpc_frame_budget_exceeded"]
        assert entry["held"] > 59_000
        for c in (middle, small):  # the others finish their frames and are answered
            c.send_raw(parts[c][1])
            assert (await c.response(1))[2][0] == 3
        assert s.server.budget.total == 0
        assert (await middle.ok("stack.stats"))["rpc"]["buffered_frame_bytes"] == 0


async def test_a_client_we_do_not_read_is_not_timed_out_for_its_frame() -> None:
    """While the server pauses a client (its answers unread), the frame clock stops."""
    async with hand_clocked(frame_timeout_s=30) as (s, clock):
        c = await s.client()
        head, tail = request_head(9, 10_000)
        c.send_raw(head)
        [session] = s.sessions()
        await eventually(lambda: session.partial == len(head), "partial frame held")
        session.pause_writing()  # as the transport does when answers pile up
        clock.now += 1000
        s.server.sweep()
        assert not session.closing
        session.resume_writing()
        c.send_raw(tail)
        assert (await c.response(9))[2][0] == 3


async def test_idle_clients_cannot_lock_out_new_ones() -> None:
    async with hand_clocked(max_clients=3) as (s, clock):
        idle = [await s.client() for _ in range(2)]
        busy = await s.client()
        await busy.ok("tcp.connect", HOST, 9000)
        await eventually(lambda: len(s.sessions()) == 3, "three clients in")
        clock.now += 0.5  # too fresh to evict: the newcomer is refused
        late = await s.client()
        assert await late.read_until_closed() == []
        clock.now += 10
        with capture_logs() as logs:
            newcomer = await s.client()
            assert await newcomer.ok("ping") == "pong"
        assert [e["event"] for e in logs].count("rpc_client_evicted") == 1
        closed = 0
        for c in idle:
            try:
                await c.ok("ping")
            except (EOFError, AssertionError):
                closed += 1
        assert closed == 1  # one idle client made room
        assert await busy.ok("ping") == "pong"  # the one holding a connection stays


async def test_deadlines_run_on_their_own() -> None:
    """No hand on the clock: the sweep is armed by the first client and closes a silent one."""
    async with serving(token=TOKEN, auth_timeout_s=0.2) as s:
        silent = await s.client()
        assert await silent.read_until_closed() == []
        await eventually(lambda: s.server._sweep is None, "the sweep stopped with no client")
