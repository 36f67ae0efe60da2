"""The conformance suite for chimney layer kinds: what a layer owes the layers around it.

`check_layer_kind(make_stack)` runs every check against fresh stacks from `make_stack` and
raises `LayerKindNonconformance` naming each check that failed and why. The role comes from the
stack: with a `MiniportStub` below the layers under test the kind is in the *middle* (an IM:
spec §1.5, §1.6, §3.8, §4.8, §5.6); with none it is at the *bottom* (a target over
`MemoryWire`s: spec §3, §4, §5). Both roles end every check the same way: everything offloaded
was terminated; the clock moves `TIMER_HORIZON_S` on, firing every timer a layer left armed;
and the stack must be drained — every gauge of every layer at zero, every private table a
layer names in `DriverLayer.leftovers()` empty, no timer armed, no NBL left anywhere, nothing
seen by the invariant checker (`observe/invariants.py`) or the delivery audit
(`testing/audit.py`) (spec §3.6.4, §9). docs/architecture.md lists the checks.

Checks look only at what crosses NDIS: the calls each layer is given, completions, statuses,
handles and contexts in slots, NBL identity, `stats` gauges, and what reaches the wire.
"""

from __future__ import annotations

from . import bottom, middle  # registers the checks
from ._suite import (
    Check,
    CheckFailure,
    ConformanceFailure,
    LayerKindNonconformance,
    check_layer_kind,
    expect,
    expect_same,
    layer_check,
    layer_kind_checks,
    run_check,
    run_layer_kind_checks,
)

__all__ = [
    "Check",
    "CheckFailure",
    "ConformanceFailure",
    "LayerKindNonconformance",
    "bottom",
    "check_layer_kind",
    "expect",
    "expect_same",
    "layer_check",
    "layer_kind_checks",
    "middle",
    "run_check",
    "run_layer_kind_checks",
]
