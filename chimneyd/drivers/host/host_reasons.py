"""Uploads the host decides by itself (spec §3.6.1, §6.2): a power change away from D0, a media
disconnect, a capability it disables, `NetEventPause`.

While one of these holds for a target, the host terminates every connection offloaded through it
(one still being offloaded once its initiate completes) and offloads nothing new to it. A power
change completes only once every such connection is back in the host (spec §6.2: the target
holds `OID_PNP_SET_POWER` until every terminate completed); chimneyd has no OID path to the
target, so the host records the moment and logs it (`host_power_change_complete`). Clearing the
event lets offloads go to the target again; connections already uploaded stay in the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from chimneyd.ndis.broker import Binding, Layer
from chimneyd.ndis.lifecycle import Phase

from ..queues import grown
from . import terminate
from .tcb import AppError, Tcb

if TYPE_CHECKING:
    from .stack import HostStack

log = structlog.get_logger("chimneyd.host")

POWER_DOWN = "power_down"
#: The host's reasons, by the names the `host_event` fault uses.
EVENTS = (POWER_DOWN, "media_disconnect", "capability_disabled", "net_event_pause")
#: Phases of a connection that still has something below the host.
_BELOW = frozenset(
    {
        Phase.OFFLOADING,
        Phase.OFFLOADED,
        Phase.INVALIDATED,
        Phase.UPLOAD_SUGGESTED,
        Phase.UPLOAD_REQUESTED,
        Phase.FAILED,
        Phase.TERMINATING,
    }
)


@dataclass
class Withheld:
    """Why the host keeps its connections off one target, and where a power change stands."""

    events: set[str] = field(default_factory=set)
    power_pending: bool = False  # a power change waits for the uploads
    power_complete: bool = False  # it completed: nothing of the host's is left on the target
    power_complete_ns: int = 0  # when (the NDIS clock)


def event(h: HostStack, target: str, name: str, on: bool) -> None:
    """`name` starts (`on`) or ends for `target`."""
    if not on:
        withheld = h.withheld.get(target)
        if withheld is not None:
            withheld.events.discard(name)
            if not withheld.events:
                del h.withheld[target]
        return
    withheld = h.withheld.setdefault(target, Withheld())
    withheld.events.add(name)
    if name == POWER_DOWN:
        withheld.power_pending = True
        withheld.power_complete = False
    for tcb in _on(h, target):
        tcb.upload_reason = name
        if tcb.lifecycle.phase is Phase.OFFLOADING:
            # terminated once its initiate completes (no operation on an object being offloaded)
            # if it landed on `target` (below a MUX it may have gone to another NIC)
            tcb.deferred = grown(tcb.deferred, functools.partial(_terminate_if_on, h, tcb, target))
        else:
            terminate.start(h, tcb)
    settled(h)


def _on(h: HostStack, target: str) -> list[Tcb]:
    """The connections that have something on `target` now, or may have once their initiate
    completes (until then the layers below have not linked their handles: spec §3.2)."""
    return [
        tcb
        for tcb in h.tcbs.values()
        if tcb.lifecycle.phase in _BELOW
        and (
            target in h.path_names(tcb)
            or (
                tcb.lifecycle.phase is Phase.OFFLOADING
                and tcb.binding is not None
                and target in _names_below(tcb.binding.lower)
            )
        )
    ]


def _terminate_if_on(h: HostStack, tcb: Tcb, target: str) -> None:
    if tcb.lifecycle.phase is Phase.OFFLOADED and target in h.path_names(tcb):
        terminate.start(h, tcb)


def refusal(h: HostStack, binding: Binding) -> AppError | None:
    """Why an offload down `binding` must not go, if it must not."""
    if not h.withheld:
        return None
    below = _names_below(binding.lower)
    for target, withheld in h.withheld.items():
        if target in below and withheld.events:
            why = ", ".join(sorted(withheld.events))
            return AppError(
                "INVALID_STATE", f"the host withholds offloads to {target}: {why} (spec §6.2)"
            )
    return None


def _names_below(layer: Layer) -> set[str]:
    names = {layer.name}
    for b in layer.lower_bindings:
        names |= _names_below(b.lower)
    return names


def settled(h: HostStack) -> None:
    """After an offload or upload completed: a power change whose target has nothing of the
    host's left on it completes now."""
    for target, withheld in h.withheld.items():
        if withheld.power_pending and not _on(h, target):
            withheld.power_pending = False
            withheld.power_complete = True
            withheld.power_complete_ns = h.ndis.clock()
            log.info("host_power_change_complete", target=target)
