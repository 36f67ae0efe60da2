"""The idle trim swaps the event loop's free lists for new objects, and leaves nothing behind
(no timer pending, no cyclic garbage)."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from chimneyd.runtime.memory import FREE_LIST_DEPTH, give_back, refresh_free_lists, tune_malloc


def _live_timers() -> int:
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if type(o).__name__ == "TimerHandle" and hasattr(o, "cancelled") and not o.cancelled()
    )


def test_refresh_calls_then_once_and_leaves_no_timer_pending() -> None:
    async def main() -> tuple[list[int], int, int]:
        loop = asyncio.get_running_loop()
        calls: list[int] = []
        before = _live_timers()
        for i in range(3):
            done = loop.create_future()
            refresh_free_lists(
                loop, lambda i=i, done=done: (calls.append(i), done.set_result(None))
            )
            await asyncio.wait_for(done, 5)
        ran: list[int] = []
        for _ in range(FREE_LIST_DEPTH):
            loop.call_soon(ran.append, 1)  # the loop still runs callbacks as before
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return calls, _live_timers() - before, len(ran)

    calls, timers_left, ran = uvloop.run(main())
    assert calls == [0, 1, 2]
    assert timers_left == 0, "the timers made to empty the free list must be cancelled"
    assert ran == FREE_LIST_DEPTH


def test_giving_back_memory_again_leaves_no_cycle() -> None:
    """Each trim used to load glibc anew: a `CDLL` and its function-pointer class, ~19 objects
    of cyclic garbage per trim of an idle daemon."""
    give_back()  # the first loads it
    # what earlier tests in this process left (a closed uvloop loop's handles) can take more
    # than one pass to go: freeing one cycle's objects may leave another unreachable, which
    # the measured pass would then count as this trim's
    for _ in range(10):
        if not gc.collect():
            break
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        give_back()
        tune_malloc()
        gc.collect()
        found = sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == []
