"""Socket-free doubles and the conformance suite for chimney layer kinds (like `trio.testing`).

* `MemoryWire`, `WireDirectory` — an in-memory `WirePort` with a peer the test plays;
* `ManualClock`, `ManualTimers` — a clock that moves when told and `Timers` on it;
* `RecordingScheduler` — the broker's synchronous deliver function, keeping a log of deliveries;
* `ProtocolStub`, `MiniportStub` — a protocol edge that plays the host and records everything,
  and a miniport edge that plays a lower driver under the test's control;
* `Stack`, `middle_stack`, `bottom_stack` — a broker with the stubs and the layers under test;
* `check_layer_kind` — everything a chimney layer owes its neighbours, for a kind in the middle
  of a stack (an IM) or at its bottom (a target).

The real layer kinds are built for these tests only in `chimneyd.testing.factories`.
"""

from __future__ import annotations

from .audit import DeliveryAudit
from .clock import Delivery, ManualClock, ManualTimers, RecordingScheduler
from .memwire import MemoryWire, WireDirectory
from .miniport_stub import MiniportStub, StubContext
from .protocol_stub import ProtocolStub
from .records import OffloadTree, accept_all, accept_bytes, refuse_all
from .stack import MakeLayer, MakeStack, Stack, bottom_stack, middle_stack

__all__ = [
    "Delivery",
    "DeliveryAudit",
    "MakeLayer",
    "MakeStack",
    "ManualClock",
    "ManualTimers",
    "MemoryWire",
    "MiniportStub",
    "OffloadTree",
    "ProtocolStub",
    "RecordingScheduler",
    "Stack",
    "StubContext",
    "WireDirectory",
    "accept_all",
    "accept_bytes",
    "bottom_stack",
    "middle_stack",
    "refuse_all",
]
