"""Uploads the host decides by itself (spec §3.6.1, §6.2): a power change away from D0, a media
disconnect, a capability it disables, `NetEventPause`.

While one of these holds for a target, the host terminates every connection offloaded through it
(one still being offloaded once its initiate completes) and offloads nothing new to it: below a
MUX, new offloads go to the team's other NICs (the placement wish the MUX reads, [EMU]). A power
change completes only once every such connection is back in the host, and their path and
neighbor with them (spec §6.2: the target holds `OID_PNP_SET_POWER` until every terminate
completed); chimneyd has no OID path to the
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
#: No NIC: a placement wish that keeps the connection off none.
NO_NICS: frozenset[str] = frozenset()
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
        if tcb.lifecycle.phase is Phase.OFFLOADING:
            # terminated once its initiate completes (no operation on an object being offloaded)
            # if it landed on `target` (below a MUX it may have gone to another NIC). The reason
            # is set then too: one that landed elsewhere is not uploaded for the event, and a
            # later upload of it must not be reported as the event's (spec §6.2)
            tcb.deferred = grown(
                tcb.deferred, functools.partial(_terminate_if_on, h, tcb, target, name)
            )
        else:
            _for_the_event(tcb, name)
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


def _terminate_if_on(h: HostStack, tcb: Tcb, target: str, name: str) -> None:
    if tcb.lifecycle.phase is Phase.OFFLOADED and target in h.path_names(tcb):
        _for_the_event(tcb, name)
        terminate.start(h, tcb)


#: Phases of a connection already on its way up for a reason of its own: its terminate is
#: below or queued (`tcp.upload`, a retrieve taken), an invalidate (of it or of an object it
#: depends on) or the target's request (TIME_WAIT, a timeout, spec §5.2) will take it up, or a
#: terminate failed and the host terminates it again (spec §3.7).
_GOING_UP = frozenset({Phase.TERMINATING, Phase.INVALIDATED, Phase.UPLOAD_REQUESTED, Phase.FAILED})


def _for_the_event(tcb: Tcb, name: str) -> None:
    """The event's name becomes the reason the connection's `uploaded` event gives, unless it
    was already going up for its own (spec §6.2, docs/rpc.md `uploaded`): the event's
    terminate adds nothing to that one's, and the client must not be told the event took up a
    connection that was leaving anyway. A terminate asked and waiting behind a query or update
    (not yet started, `terminate.start`) is too, whatever asked it: the application (its
    `tcp.upload` or `tcp.close`), the peer's RST (answered with a terminate, spec §5.1), an
    optional request of the target the host honours (spec §5.2), or a host event that came
    first, whose name it keeps."""
    if tcb.lifecycle.phase in _GOING_UP or tcb.upload_done or tcb.upload_waits:
        return
    tcb.upload_reason = name


def refusal(h: HostStack, tcb: Tcb, binding: Binding) -> AppError | None:
    """Why the offload of `tcb` down `binding` must not go, if it must not.

    The reasons hold per NIC: below a MUX the connection may go to a NIC none holds for. The
    NICs that hold one join its placement wish, which the MUX reads [EMU], and it is refused
    only when the NIC it is pinned to, or every NIC below `binding`, is withheld."""
    wish = tcb.wish
    pin = wish[0] if wish is not None else None
    if not h.withheld:
        if wish is not None and wish[1]:
            tcb.wish = (pin, NO_NICS) if pin is not None else None
        return None
    nics = _nics_below(binding.lower)
    held = sorted(t for t, withheld in h.withheld.items() if withheld.events and t in nics)
    refused = [pin] if pin is not None and pin in held else held if len(held) == len(nics) else []
    if refused:
        why = "; ".join(f"{t}: {', '.join(sorted(h.withheld[t].events))}" for t in refused)
        return AppError("INVALID_STATE", f"the host withholds offloads to {why} (spec §6.2)")
    avoid = frozenset(held) if held else NO_NICS
    tcb.wish = (pin, avoid) if pin is not None or held else None
    return None


def withholds(h: HostStack, binding: Binding) -> AppError | None:
    """Why the host offloads no new neighbor or path down `binding` now (a next-hop change's
    new neighbor, `state_ops`): every NIC below it is withheld. Below a MUX with a NIC not
    withheld, the MUX offloads its copies where the path's are."""
    if not h.withheld:
        return None
    nics = _nics_below(binding.lower)
    held = sorted(t for t, withheld in h.withheld.items() if withheld.events and t in nics)
    if not held or len(held) < len(nics):
        return None
    why = "; ".join(f"{t}: {', '.join(sorted(h.withheld[t].events))}" for t in held)
    return AppError("INVALID_STATE", f"the host withholds offloads to {why} (spec §6.2)")


def _nics_below(layer: Layer) -> set[str]:
    """The targets below `layer` (itself, if it is one): the layers with none below them."""
    if not layer.lower_bindings:
        return {layer.name}
    nics: set[str] = set()
    for b in layer.lower_bindings:
        nics |= _nics_below(b.lower)
    return nics


def _names_below(layer: Layer) -> set[str]:
    names = {layer.name}
    for b in layer.lower_bindings:
        names |= _names_below(b.lower)
    return names


def _objects_on(h: HostStack, target: str) -> bool:
    """Whether a neighbor or path of the host's is still offloaded (or on its way in or out)
    on `target` alone: one through a pass-through IM or straight to it. The host terminates
    them after their connections, in a call of their own (`terminate.flush_terminates`, spec
    §3.1, §5.5), and the target holds the power change until every terminate completed (spec
    §6.2). Under a teaming MUX the host's object stands for copies on several NICs, which the
    MUX terminates on `target` with their last connection there (`MuxIm._terminate_unused`)."""
    for obj in h.all_objects():
        if obj.lifecycle.phase is not Phase.IDLE and _nics_below(obj.binding.lower) == {target}:
            return True
    return False


def settled(h: HostStack) -> None:
    """After an offload or upload completed: a power change whose target has nothing of the
    host's left on it, connections (`_on`) and their path and neighbor (`_objects_on`),
    completes now."""
    for target, withheld in h.withheld.items():
        if withheld.power_pending and not _on(h, target) and not _objects_on(h, target):
            withheld.power_pending = False
            withheld.power_complete = True
            withheld.power_complete_ns = h.ndis.clock()
            log.info("host_power_change_complete", target=target)
