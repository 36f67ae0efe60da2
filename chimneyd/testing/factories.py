"""The one place that constructs the real layer kinds for socket-free tests.

Every test and the conformance suite build the pass-through IM and the offload target through
these functions; when a constructor changes, this module is the only one to adapt. Nothing else
under `chimneyd/testing` or `tests/unit` imports a layer class to build it.
"""

from __future__ import annotations

import functools
from typing import Any

from chimneyd.drivers.host import HostStack
from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import FindWire, OffloadTarget
from chimneyd.ndis.broker import Layer, Ndis

from .clock import ManualTimers
from .miniport_stub import MiniportStub
from .stack import MakeLayer, Stack, bottom_stack, middle_stack


def make_passthrough(stack: Stack, name: str, cls: type[PassthroughIm] = PassthroughIm) -> Layer:
    """A pass-through IM driver (or a subclass of it) on `stack`'s broker."""
    timers = stack.timers()
    layer = cls(name, stack.ndis, timers)
    timers.bind(layer)
    return layer


def make_mux(
    stack: Stack, name: str, policy: str = "round-robin", cls: type[MuxIm] = MuxIm
) -> Layer:
    """A teaming MUX IM (or a subclass of it) on `stack`'s broker (its lowers are bound by
    whoever builds the stack)."""
    timers = stack.timers()
    layer = cls(name, stack.ndis, timers, policy)
    timers.bind(layer)
    return layer


def make_passthrough_on(ndis: Ndis, timers: ManualTimers, name: str) -> PassthroughIm:
    """A pass-through IM driver on `ndis` (not bound)."""
    layer = PassthroughIm(name, ndis, timers)
    timers.bind(layer)
    return layer


def make_loopback_target(
    stack: Stack, name: str, cls: type[OffloadTarget] = OffloadTarget, **options: Any
) -> Layer:
    """The offload target, finding its connections among `stack.wires` (MemoryWires) instead of
    loopback sockets. `options` go to the constructor (max_connections, rx_buffer_bytes, …)."""
    timers = stack.timers()
    layer = cls(name, stack.ndis, timers, stack.wires.find, **options)
    timers.bind(layer)
    return layer


def make_host(ndis: Ndis, timers: ManualTimers, name: str = "tcpip", **options: Any) -> HostStack:
    """The host stack on `ndis` (`options` go to its constructor: rx_buffer_bytes,
    honor_optional_retrieve, …)."""
    host = HostStack(name, ndis, timers, **options)
    timers.bind(host)
    return host


def make_target(
    ndis: Ndis, timers: ManualTimers, find_wire: FindWire, name: str, **options: Any
) -> OffloadTarget:
    """The offload target on `ndis`, finding its connections with `find_wire`."""
    target = OffloadTarget(name, ndis, timers, find_wire, **options)
    timers.bind(target)
    return target


def passthrough_stack(depth: int = 1, cls: type[PassthroughIm] = PassthroughIm) -> Stack:
    """Protocol stub → `depth` pass-through IMs → miniport stub."""
    return middle_stack(functools.partial(make_passthrough, cls=cls), depth)


def loopback_target_stack(cls: type[OffloadTarget] = OffloadTarget, **options: Any) -> Stack:
    """Protocol stub → the offload target over MemoryWires."""
    return bottom_stack(functools.partial(make_loopback_target, cls=cls, **options))


def mux_stack(
    position: str = "top", policy: str = "round-robin", cls: type[MuxIm] = MuxIm
) -> Stack:
    """A MUX in the middle of a stack, over a miniport stub: `top` (protocol stub → MUX →
    stub), `under-im` (→ pass-through IM → MUX →) or `over-im` (→ MUX → pass-through IM →)."""
    mux: MakeLayer = functools.partial(make_mux, policy=policy, cls=cls)
    makers: list[MakeLayer] = {
        "top": [mux],
        "under-im": [make_passthrough, mux],
        "over-im": [mux, make_passthrough],
    }[position]
    stack = Stack()
    stack.under_test = [make(stack, f"im{i}") for i, make in enumerate(makers)]
    stack.bottom = MiniportStub("lower", stack.ndis)
    stack.checker.check_streams = False  # the stub makes up its bytes (as in `middle_stack`)
    stack.connect()
    return stack


def teamed_target_stack(
    nics: int = 2, policy: str = "round-robin", cls: type[MuxIm] = MuxIm, **options: Any
) -> Stack:
    """Protocol stub → a MUX → `nics` offload targets over MemoryWires: the MUX and its NICs
    together at the bottom of the stack."""
    stack = Stack()
    mux = make_mux(stack, "team0", policy, cls)
    targets = [make_loopback_target(stack, f"nic{i}", **options) for i in range(nics)]
    stack.under_test = [mux, *targets]
    stack.ndis.bind(stack.top, mux)
    for target in targets:
        stack.ndis.bind(mux, target)
    return stack


def live_call_entries(layer: Layer) -> int:
    """How many IM call entries a pass-through IM holds (spec §1.2: one per in-flight state
    operation, freed when its completion has been passed up). The only read of an IM's own
    bookkeeping in the socket-free tests; adapt it here if the IM's shape changes."""
    entries = getattr(layer, "call_entries", None)
    if entries is None:
        raise TypeError(f"{layer!r} keeps no IM call entries")
    return len(entries)


def fail_next(layer: Layer, call: str, status: Any, count: int = 1, skip: int = 0) -> None:
    """Arm the layer's `fail_next` fault: after `skip` calls of `call`, the next `count`
    complete with `status` (the RPC contract's `fault.inject` kind)."""
    from chimneyd.drivers.base import FailNext

    faults = getattr(layer, "fail_next", None)
    if faults is None:
        raise TypeError(f"{layer!r} takes no fail_next faults")
    faults.append(FailNext(len(faults) + 1, call, status, count, skip))
