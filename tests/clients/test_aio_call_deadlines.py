"""AsyncClient times its calls on one loop timer, not one armed per call (issue 15: a
`call_later` armed and cancelled per call cost ~4 µs of the RPC client's time per call), and
every call still ends at its own deadline, whatever the order the calls were made in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chimney_client import AsyncClient
from chimney_client.aio import _Deadlines
from chimney_client.errors import CallTimeout
from tests.clients.mini_server import MiniServer

#: bound on any one wait here, far above every call timeout of these tests
HANG = 10.0


@pytest.fixture
async def server() -> AsyncIterator[MiniServer]:
    srv = await MiniServer().start()
    yield srv
    await srv.close()


def _count_timers(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Count the timers armed on `loop` from now on (asyncio's `call_later` goes through
    `call_at`)."""
    armed = [0]
    call_at: Callable[..., asyncio.TimerHandle] = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        armed[0] += 1
        return call_at(when, callback, *args, **kw)

    loop.call_at = counting  # type: ignore[method-assign]
    return armed


async def test_calls_arm_no_timer_each(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address, call_timeout=30) as c:
        armed = _count_timers(asyncio.get_running_loop())
        for i in range(50):
            assert await c.call("test.delay", 0, i) == i
        await asyncio.gather(*(c.call("test.delay", 0, i) for i in range(50)))
        assert armed[0] <= 2, f"{armed[0]} timers armed for 100 calls"


async def test_a_later_shorter_call_times_out_first(server: MiniServer) -> None:
    """The one timer is armed again for a call whose deadline comes before those waiting."""
    async with await AsyncClient.connect(server.address) as c:
        long = asyncio.ensure_future(c.call("test.delay", 5, "long", timeout=3))
        await asyncio.sleep(0.01)
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(c.call("test.delay", 5, "short", timeout=0.05), HANG)
        assert not long.done()  # the short one ended first, not with the long one's timer
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(long, HANG)
        assert c.pending == 0


async def test_answered_calls_do_not_time_out_later(server: MiniServer) -> None:
    """A call answered leaves no deadline behind: the calls after it, of the same limit and
    answered too, are untouched when its deadline passes, and one left waiting times out."""
    async with await AsyncClient.connect(server.address, call_timeout=0.2) as c:
        assert await c.call("test.delay", 0, "a") == "a"
        slow = asyncio.ensure_future(c.call("test.delay", 5, "slow"))
        for i in range(300):  # past the compaction bound: cleared entries behind `slow`
            assert await c.call("test.delay", 0, i) == i
        assert c._deadlines._entries <= 256 + 2 * 1 + 1
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(slow, HANG)
        assert await c.call("test.delay", 0.05, "b") == "b"
        assert c.pending == 0 and c._deadlines._live == 0
    assert c._deadlines._handle is None  # closed: no timer holds the client


async def test_many_calls_of_many_limits_each_end_by_their_own() -> None:
    """Calls of different limits, made in any order, each raise CallTimeout (none is
    forgotten by the one timer) and none before its own limit."""
    srv = await MiniServer().start()
    try:
        async with await AsyncClient.connect(srv.address) as c:
            limits = [0.3, 0.05, 0.2, 0.05, 0.1, 0.3, 0.01]

            async def one(limit: float) -> float:
                t0 = asyncio.get_running_loop().time()
                with pytest.raises(CallTimeout):
                    await c.call("test.delay", 5, None, timeout=limit)
                return asyncio.get_running_loop().time() - t0

            took = await asyncio.wait_for(asyncio.gather(*(one(x) for x in limits)), HANG)
            for limit, t in zip(limits, took, strict=True):
                assert t >= limit - 0.002, (limit, t)
            assert c.pending == 0
    finally:
        await srv.close()


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _ManualLoop:
    """The clock and timers `_Deadlines` uses, moved by the test: no timing in the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, callback)
        self.timers.append(timer)
        return timer

    def fire(self, now: float) -> float:
        """The armed timer runs with the clock at `now`; returns the time it was armed for."""
        (timer,) = [t for t in self.timers if not t.cancelled]
        self.timers.remove(timer)
        self.now = now
        timer.callback()
        return timer.when


async def test_a_call_never_times_out_before_its_own_deadline() -> None:
    """The one timer, armed for the earliest deadline, ends the calls whose deadline it was
    armed for (the loop judged that time come, as it would a timer of their own, which uvloop
    may run a fraction of a millisecond early), and no call whose deadline is still ahead by
    the clock: an answer that comes in that time is its answer, not a CallTimeout."""
    loop = asyncio.get_running_loop()
    manual = _ManualLoop()
    deadlines = _Deadlines(manual)  # type: ignore[arg-type]
    first, second = loop.create_future(), loop.create_future()
    deadlines.add(1.0, first, "test.first", 1.0)
    deadlines.add(1.0009, second, "test.second", 1.0009)
    assert manual.fire(1.0) == 1.0
    assert first.done() and isinstance(first.exception(), CallTimeout)
    assert not second.done(), "a call timed out 0.9 ms before its deadline"
    # its own turn, the timer run early by the loop's clock: it ends then, not a turn later
    assert manual.fire(1.0005) == 1.0009
    assert second.done() and isinstance(second.exception(), CallTimeout)
    assert [t for t in manual.timers if not t.cancelled] == []


async def test_calls_of_distinct_limits_leave_no_queue_behind(server: MiniServer) -> None:
    """Each time left keys its own queue (a call after a wait for the write buffer has its
    own): the queue of a call that ended goes with it, even while another call still runs, so
    memory follows the calls running, not every limit ever used."""
    async with await AsyncClient.connect(server.address) as c:
        slow = asyncio.ensure_future(c.call("test.delay", 5, "slow", timeout=3))
        await asyncio.sleep(0)
        for i in range(300):
            assert await c.call("test.delay", 0, i, timeout=1 + i / 1000) == i
        await asyncio.gather(
            *(c.call("test.delay", 0, i, timeout=2 + i / 1000) for i in range(300))
        )
        deadlines = c._deadlines
        assert deadlines._live == 1 and len(deadlines._queues) == 1, len(deadlines._queues)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert deadlines._live == 0 and not deadlines._queues


@pytest.mark.parametrize("where", ["call", "client"])
async def test_a_nan_timeout_is_refused_not_taken_for_none(server: MiniServer, where: str) -> None:
    # NaN compares false with every deadline: kept, a call given it would never time out
    nan = float("nan")
    client = await AsyncClient.connect(
        server.address, call_timeout=nan if where == "client" else None
    )
    try:
        with pytest.raises(ValueError, match="NaN"):
            await asyncio.wait_for(
                client.call("ping", timeout=nan if where == "call" else None), HANG
            )
        assert await asyncio.wait_for(client.call("ping", timeout=1.0), HANG) == "pong"
    finally:
        await client.close()
