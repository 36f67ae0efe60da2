"""A stack of layers on one broker with no sockets and no event loop.

`Stack` owns the NDIS instance (with a `RecordingScheduler` as its deliver function, a
`ManualClock`, and the invariant checker as its observer), the `ProtocolStub` on top, the
layers of the kind under test, and either a `MiniportStub` below them (the kind is in the
*middle*) or nothing (the kind is at the *bottom*: a target over `MemoryWire`s).

`middle_stack` and `bottom_stack` build one from a `MakeLayer` function; the real layer kinds'
`MakeLayer`s live in `chimneyd.testing.factories`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from chimneyd.ndis.broker import Binding, Layer, Ndis
from chimneyd.observe.invariants import InvariantChecker

from .audit import DeliveryAudit
from .clock import ManualClock, ManualTimers, RecordingScheduler
from .memwire import WireDirectory
from .miniport_stub import MiniportStub
from .protocol_stub import ProtocolStub

GAUGES = ("offloads_active", "handles", "outstanding_nbls")


class Stack:
    """One broker, a protocol stub on top, the layers under test, maybe a miniport stub below."""

    def __init__(self, top_name: str = "tcpip") -> None:
        self.clock = ManualClock()
        self.scheduler = RecordingScheduler()
        self.ndis = Ndis(clock=self.clock, deliver=self.scheduler)
        self.checker = InvariantChecker()
        self.ndis.observer = self.checker
        self.audit = DeliveryAudit()
        self.scheduler.observers.append(self.audit)
        self.wires = WireDirectory(self.ndis.post)
        self.top = ProtocolStub(top_name, self.ndis)
        self.under_test: list[Layer] = []
        self.bottom: MiniportStub | None = None

    @property
    def role(self) -> str:
        """ "middle" when a miniport stub sits below the kind under test, else "bottom"."""
        return "bottom" if self.bottom is None else "middle"

    @property
    def binding(self) -> Binding:
        """The top stub's binding to the first layer under test."""
        return self.top.lower_bindings[0]

    def timers(self) -> ManualTimers:
        """Timers for a layer about to be built (bind them to it once it exists)."""
        return self.clock.timers(self.ndis.post)

    def layers(self) -> list[Layer]:
        out: list[Layer] = [self.top, *self.under_test]
        if self.bottom is not None:
            out.append(self.bottom)
        return out

    def connect(self) -> None:
        """Bind top → each layer under test → the bottom stub, if any."""
        chain = self.layers()
        for upper, lower in itertools.pairwise(chain):
            self.ndis.bind(upper, lower)

    def run(self) -> int:
        """Deliver everything queued, and what that causes, until idle."""
        return self.scheduler.run()

    def advance(self, seconds: float) -> int:
        """Move the clock, firing due timers (each followed by a run); returns timers fired."""
        fired = self.clock.advance(seconds, settle=self.scheduler.run)
        self.run()
        return fired

    def gauges(self) -> dict[str, dict[str, int]]:
        """Every layer's `offloads_active`, `handles` and `outstanding_nbls`."""
        return {
            name: {g: int(getattr(layer.stats, g)) for g in GAUGES}
            for name, layer in self.ndis.layers.items()
        }

    def drain_problems(self) -> list[str]:
        """What stops this stack counting as drained: a non-zero gauge at any layer, work left
        in the scheduler, an NBL not given back, or anything the invariant checker or the
        delivery audit saw (spec §9)."""
        problems = [f"invariant: {v}" for v in self.checker.violations]
        problems += [f"audit: {v}" for v in self.audit.violations]
        problems += [f"audit: {v}" for v in self.audit.outstanding()]
        problems += [f"{self.top.name}: {e}" for e in self.top.slot_errors]
        problems += self.checker.check_drained(self.ndis.stats())
        if self.scheduler.queue:
            problems.append(f"{len(self.scheduler.queue)} deliveries still queued")
        return problems


#: Builds one layer of the kind under test on `stack`, with the given name.
MakeLayer = Callable[[Stack, str], Layer]
#: Builds a whole stack for the conformance suite.
MakeStack = Callable[[], Stack]


def middle_stack(make: MakeLayer, depth: int = 1, **stub_options: Any) -> Stack:
    """Protocol stub → `depth` layers made by `make` → a miniport stub."""
    stack = Stack()
    stack.under_test = [make(stack, f"im{i}") for i in range(depth)]
    stack.bottom = MiniportStub("lower", stack.ndis, **stub_options)
    # the stub makes up the bytes it indicates and the delegated state it hands back: the
    # byte-stream rules of §9 item 4 have no real stream to hold it to
    stack.checker.check_streams = False
    stack.connect()
    return stack


def bottom_stack(make: MakeLayer, name: str = "nic0") -> Stack:
    """Protocol stub → one layer made by `make` (a target, finding connections in
    `stack.wires`)."""
    stack = Stack()
    stack.under_test = [make(stack, name)]
    stack.connect()
    return stack
