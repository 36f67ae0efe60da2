"""`AsyncClient`: a coroutine notification handler runs one notification at a time, in order,
and what waits for it is bounded (`max_notifications`; past it the oldest are dropped and
counted in `dropped_notifications`), where each notification used to start a task of its own:
a flood of `tcp.event`s with a slow handler grew tasks without end, and ran them in any order."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from chimney_client import AsyncClient
from tests.clients.scripted import HANG, address, answer, scripted_server

FLOOD = 1000


def _flooding(t: Any, msgid: int, method: str, params: list[Any]) -> None:
    """`flood [n]`: n notifications `tick [i]`, then the answer."""
    if method == "flood":
        t.write(b"".join(msgpack.packb([2, "tick", [i]]) for i in range(params[0])))
    answer(t, msgid, True)


async def test_a_coroutine_handler_runs_one_notification_at_a_time_in_order() -> None:
    srv = await scripted_server(_flooding)
    try:
        async with await AsyncClient.connect(address(srv)) as c:
            gate = asyncio.Event()
            running = 0
            most = 0
            seen: list[int] = []

            async def handler(params: list[Any]) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                await gate.wait()
                seen.append(params[0])
                running -= 1

            c.on_notification("tick", handler)
            assert await asyncio.wait_for(c.call("flood", FLOOD), HANG) is True
            for _ in range(10):
                await asyncio.sleep(0)
            assert most == 1, f"{most} handler runs at once"
            assert len(c._handler_tasks) <= 1
            gate.set()
            while len(seen) < FLOOD:
                await asyncio.wait_for(asyncio.sleep(0.01), HANG)
            assert seen == list(range(FLOOD)), "handled out of order"
            assert c.dropped_notifications == 0
    finally:
        srv.close()


async def test_what_waits_for_a_coroutine_handler_is_bounded() -> None:
    srv = await scripted_server(_flooding)
    try:
        async with await AsyncClient.connect(address(srv), max_notifications=100) as c:
            gate = asyncio.Event()
            seen: list[int] = []
            sync_seen: list[int] = []

            async def handler(params: list[Any]) -> None:
                await gate.wait()
                seen.append(params[0])

            c.on_notification("tick", handler)
            c.on_notification("tick", lambda p: sync_seen.append(p[0]))  # called at once
            assert await asyncio.wait_for(c.call("flood", FLOOD), HANG) is True
            assert sync_seen == list(range(FLOOD))
            # the first runs (waits at the gate); 100 wait behind it; the oldest others went
            assert c.dropped_notifications == FLOOD - 1 - 100
            gate.set()
            while len(seen) < 101:
                await asyncio.wait_for(asyncio.sleep(0.01), HANG)
            assert seen == [0, *range(FLOOD - 100, FLOOD)]
    finally:
        srv.close()


async def test_a_handler_that_raises_cancelled_error_does_not_hold_back_the_next() -> None:
    """A coroutine handler that raises CancelledError of its own (it awaited something another
    task cancelled) while the task running it is not cancelled: a handler's failure, logged,
    and the notifications that waited behind it are handled next, in order. Not the end of
    the subscription's task leaving them waiting until another notification comes, and then
    handled after it."""
    srv = await scripted_server(_flooding)
    try:
        async with await AsyncClient.connect(address(srv)) as c:
            seen: list[int] = []
            done = asyncio.Event()
            cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            cancelled.cancel()

            async def handler(params: list[Any]) -> None:
                seen.append(params[0])
                if params[0] == 0:
                    await cancelled  # raises CancelledError
                if params[0] == 2:
                    done.set()

            c.on_notification("tick", handler)
            assert await asyncio.wait_for(c.call("flood", 3), HANG) is True
            try:
                await asyncio.wait_for(done.wait(), HANG)
            except TimeoutError:
                raise AssertionError(
                    f"ticks waiting behind the failed one not handled: {seen}"
                ) from None
            assert seen == [0, 1, 2]
    finally:
        srv.close()
