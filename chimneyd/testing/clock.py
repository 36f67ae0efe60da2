"""A manual clock, timers on it (`drivers.base.Timers`), and a scheduler that records deliveries.

The clock is the broker's injected clock (nanoseconds); it moves only when the test calls
`advance`. A timer that falls due is delivered to its layer through the broker's deliver
function, so it runs in the scheduler like `runtime.layer_task.LoopTimers` runs it in the
layer's task.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chimneyd.ndis.broker import Layer, SyncScheduler

from .memwire import Post

NS = 1_000_000_000


class ManualTimerHandle:
    """`drivers.base.TimerHandle` of a manual timer."""

    __slots__ = ("args", "cancelled", "due", "fn", "timers")

    def __init__(
        self, timers: ManualTimers, due: int, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        self.timers = timers
        self.due = due
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Nanoseconds that move only when told; call it for the time (the broker's `clock`)."""

    def __init__(self, start_ns: int = 0) -> None:
        self.now_ns = start_ns
        self._heap: list[tuple[int, int, ManualTimerHandle]] = []
        self._order = itertools.count()

    def __call__(self) -> int:
        return self.now_ns

    def timers(self, post: Post | None = None) -> ManualTimers:
        """Timers for one layer; `bind` them to it once it exists."""
        return ManualTimers(self, post)

    def _schedule(self, handle: ManualTimerHandle) -> None:
        heapq.heappush(self._heap, (handle.due, next(self._order), handle))

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled."""
        return sum(1 for _, _, h in self._heap if not h.cancelled)

    def advance(self, seconds: float, settle: Callable[[], object] | None = None) -> int:
        """Move the clock by `seconds`, firing every timer that falls due in due order (the
        clock reads each timer's due time while it fires); `settle` runs after each one, e.g.
        the scheduler, so what a timer causes happens before the next timer. Returns the
        number of timers fired."""
        end = self.now_ns + round(seconds * NS)
        fired = 0
        while self._heap and self._heap[0][0] <= end:
            due, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now_ns = max(self.now_ns, due)
            handle.timers.fire(handle)
            fired += 1
            if settle is not None:
                settle()
        self.now_ns = end
        return fired


class ManualTimers:
    """`drivers.base.Timers` on a `ManualClock`."""

    def __init__(self, clock: ManualClock, post: Post | None = None) -> None:
        self.clock = clock
        self.post = post
        self.layer: Layer | None = None

    def bind(self, layer: Layer) -> None:
        """Deliver this layer's timers to it through `post` (as `LoopTimers.task` does)."""
        self.layer = layer

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> ManualTimerHandle:
        if delay < 0:
            delay = 0
        handle = ManualTimerHandle(self, self.clock.now_ns + round(delay * NS), fn, args)
        self.clock._schedule(handle)
        return handle

    def fire(self, handle: ManualTimerHandle) -> None:
        if self.post is not None and self.layer is not None:
            self.post(self.layer, handle.fn, handle.args)
        else:
            handle.fn(*handle.args)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One handler call NDIS delivered: to which layer, which handler, with what."""

    seq: int
    layer: Layer
    handler: str
    args: tuple[Any, ...]


class RecordingScheduler(SyncScheduler):
    """`SyncScheduler` that keeps a log of every delivery it ran, in order: what crossed NDIS."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Delivery] = []
        # called with each delivery just before it runs, while slots and handles still read as
        # they were when NDIS made the call
        self.observers: list[Callable[[Delivery], None]] = []

    def run_one(self) -> bool:
        """Run the oldest queued delivery; False if there was none."""
        if not self.queue:
            return False
        layer, fn, args = self.queue.popleft()
        delivery = Delivery(len(self.log), layer, getattr(fn, "__name__", "?"), args)
        self.log.append(delivery)
        for observe in self.observers:
            observe(delivery)
        fn(*args)
        return True

    def run(self, limit: int = 1_000_000) -> int:
        n = 0
        while self.run_one():
            n += 1
            if n >= limit:
                raise RuntimeError("scheduler did not go idle")
        return n

    def delivered(self, layer: Layer | None = None, handler: str | None = None) -> list[Delivery]:
        """The log, filtered by receiving layer and/or handler name."""
        return [
            d
            for d in self.log
            if (layer is None or d.layer is layer) and (handler is None or d.handler == handler)
        ]
