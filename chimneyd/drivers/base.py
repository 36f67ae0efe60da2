"""What every driver layer shares: timers, injected faults, a handle/context table."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.handles import HandleTable
from chimneyd.ndis.status import NdisStatus


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The one clock-driven service a layer gets: run `fn(*args)` in the layer's task later."""

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> TimerHandle: ...


@dataclass(slots=True)
class FailNext:
    """`fail_next` fault: the next `count` calls of `call` complete with `status` (contract)."""

    fault_id: int
    call: str
    status: NdisStatus
    count: int


@dataclass(slots=True)
class Delay:
    """`delay` fault: every `call` is held `ms` milliseconds before it runs."""

    fault_id: int
    call: str
    ms: int


class DriverLayer(Layer):
    """A layer with injected timers and fault hooks."""

    def __init__(self, name: str, ndis: Ndis, timers: Timers, capacity: int) -> None:
        super().__init__(name, ndis)
        self.timers = timers
        # One table per layer: the live handles (protocol edge) and contexts (miniport edge).
        self.table: HandleTable[Any] = HandleTable(f"{name} handle/context table", capacity)
        self.fail_next: list[FailNext] = []
        self.delays: dict[str, Delay] = {}
        self._held: dict[str, deque[tuple[Callable[..., Any], tuple[Any, ...]]]] = {}
        self._releasing = False

    # -- table bookkeeping kept in step with the `handles` gauge ---------------------------------
    def table_add(self, object_id: int, obj: Any) -> None:
        self.table.add(object_id, obj)
        self.stats.handles = len(self.table)

    def table_remove(self, object_id: int) -> Any:
        obj = self.table.remove(object_id)
        self.stats.handles = len(self.table)
        return obj

    # -- faults -------------------------------------------------------------------------------
    def take_failure(self, call: str) -> NdisStatus | None:
        """If a `fail_next` fault covers `call`, use up one count and return its status."""
        if not self.fail_next:
            return None
        for fault in self.fail_next:
            if fault.call == call and fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.fail_next.remove(fault)
                return fault.status
        return None

    def held(self, call: str, fn: Callable[..., Any], *args: Any) -> bool:
        """If a `delay` fault covers `call`, run `fn(*args)` later and return True.

        Held calls stay in arrival order (one FIFO per call name), so a delay never reorders
        the I/O of a connection, even when the fault is cleared while calls are held.
        """
        if self._releasing or not (self.delays or self._held):
            return False
        queue = self._held.get(call)
        delay = self.delays.get(call)
        if delay is None and not queue:
            return False
        if queue is None:
            queue = self._held[call] = deque()
        queue.append((fn, args))
        self.timers.call_later(delay.ms / 1000.0 if delay else 0.0, self._release, call)
        return True

    def _release(self, call: str) -> None:
        queue = self._held[call]
        fn, args = queue.popleft()
        if not queue:
            del self._held[call]
        self._releasing = True
        try:
            fn(*args)
        finally:
            self._releasing = False
