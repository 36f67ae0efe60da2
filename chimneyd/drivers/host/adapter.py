"""What the host knows of each binding below it: the target's capabilities and the parameters
it set (OIDs, spec §1.3, §8), the adapter status indications (spec §5.5), and its answers to
neighbor reachability queries (spec §5.4).

The host decides whether to offload from the capabilities, instead of learning limits only by
refusal: no chimney where the target advertises none (or an encapsulation chimney does not
recognise), no IPv6 connection where it has no IPv6, and never more connections than its
advertised capacity. It reads them at bind and again after every RESUME.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import structlog

from chimneyd.ndis.blocks import OffloadBlock
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.lifecycle import LIVE, Event, Phase
from chimneyd.ndis.oid import NdisOidRequest, NdisTcpConnectionOffload, Oid
from chimneyd.ndis.status import IndicateOffloadEvent, NdisStatus

from ..queues import grown
from . import offload, terminate
from .tcb import AppError, HostObject, Tcb, ndis_error

if TYPE_CHECKING:
    from .stack import HostStack

log = structlog.get_logger("chimneyd.host")
S = NdisStatus
#: The capabilities of a binding not yet answered.
ASKED = "asked"


def bound(h: HostStack, binding: Binding) -> None:
    """The host opened `binding`: set the parameters, read the capabilities (spec §1.3)."""
    params = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS, set=True, data=h.params)
    h.ndis.NdisOidRequest(h, binding, params)
    ask_capabilities(h, binding)


def ask_capabilities(h: HostStack, binding: Binding) -> None:
    h.capabilities[binding.id] = ASKED
    request = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG)
    h.ndis.NdisOidRequest(h, binding, request)


def oid_complete(h: HostStack, binding: Binding, request: NdisOidRequest) -> None:
    """`ProtocolOidRequestComplete`."""
    if request.oid is Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS:
        if request.status != S.NDIS_STATUS_SUCCESS:
            log.warning("offload_parameters_refused", layer=binding.lower.name)
        return
    ok = request.status == S.NDIS_STATUS_SUCCESS
    h.capabilities[binding.id] = request.data if ok else None  # None: no chimney below
    if offload.initiates_due(h):
        offload.flush_initiates(h)
    # a next-hop change whose new neighbor waited for them (`object_refusal`, spec §5.5)
    h.objects_settled()


def refusal(h: HostStack, tcb: Tcb, binding: Binding) -> AppError | str | None:
    """Why the host will not offload `tcb` through `binding` (an error), or `ASKED` while
    the capabilities are not known yet, or None."""
    ipv6 = ipaddress.ip_address(tcb.wire.local[0]).version == 6
    refused = object_refusal(h, binding, ipv6)
    if refused is not None:
        return refused
    caps: NdisTcpConnectionOffload = h.capabilities[binding.id]
    if h.offloads_on.get(binding.id, 0) >= caps.TcpConnectionOffloadCapacity:
        return ndis_error(
            S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES,
            f" {binding.lower.name} advertises room for {caps.TcpConnectionOffloadCapacity}"
            " connections (spec §8)",
        )
    return None


def object_refusal(h: HostStack, binding: Binding, ipv6: bool) -> AppError | str | None:
    """Why the host will not offload a neighbor or path of a path of that IP version through
    `binding` (an error), or `ASKED` while the capabilities are not known yet (at bind, and
    again from a RESUME on: spec §5.5), or None: a next-hop change's new neighbor
    (`state_ops`) is offloaded only where a connection of that path could be (spec §1.3,
    §8); the connection count is no concern of it."""
    caps: NdisTcpConnectionOffload | str | None = h.capabilities.get(binding.id)
    if caps is ASKED:
        return ASKED
    if not isinstance(caps, NdisTcpConnectionOffload) or not caps.recognised():
        detail = f" {binding.lower.name} offers no TCP chimney (spec §1.3)"
        return ndis_error(S.NDIS_STATUS_NOT_SUPPORTED, detail)
    if (ipv6 and not caps.SupportIPv6) or (not ipv6 and not caps.SupportIPv4):
        return ndis_error(
            S.NDIS_STATUS_NOT_SUPPORTED,
            f" {binding.lower.name} does not offload IPv{6 if ipv6 else 4} (spec §8)",
        )
    return None


def status(h: HostStack, binding: Binding, code: NdisStatus) -> None:
    """`ProtocolStatusEx`: adapter status indications (spec §5.5)."""
    if code == S.NDIS_STATUS_OFFLOAD_PAUSE:
        h.paused.add(binding.id)
    elif code == S.NDIS_STATUS_UPLOAD_ALL:
        h.paused.add(binding.id)
        for tcb in list(h.tcbs.values()):
            if tcb.binding is binding and tcb.lifecycle.phase in LIVE:
                tcb.lifecycle.fire(Event.UPLOAD_ALL)
                h.emit(
                    tcb.conn_id,
                    "TcpIndicateRetrieve",
                    {"reason": code.name, "mandatory": True, "honored": True},
                )
                offer_again_at_resume(h, tcb, binding)
                terminate.start(h, tcb)
    elif code == S.NDIS_STATUS_OFFLOAD_RESUME:
        h.paused.discard(binding.id)
        ask_capabilities(h, binding)  # they may differ now (spec §5.5)
        for tcb in h.resume_offloads.pop(binding.id, {}).values():
            _offload_again(h, tcb, binding)


def offer_again_at_resume(h: HostStack, tcb: Tcb, binding: Binding) -> None:
    """A connection the target asked back while the binding is paused (a failover: spec §5.5
    PAUSE, the uploads, RESUME) is offloaded again at RESUME [EMU: the host's policy]."""
    if binding.id in h.paused:
        h.resume_offloads.setdefault(binding.id, {})[tcb.conn_id] = tcb


def forget(h: HostStack, tcb: Tcb) -> None:
    """`tcb` closes: it waits for no RESUME any more (else a refused re-offload kept it, and
    its socket, until a RESUME that may never come)."""
    for waiting in h.resume_offloads.values():
        waiting.pop(tcb.conn_id, None)


def _offload_again(h: HostStack, tcb: Tcb, binding: Binding, pinned: bool = True) -> None:
    """Offload `tcb` again at a RESUME (`offer_again_at_resume`). A connection the application
    pinned to a NIC (`tcp.connect`'s `target`) goes there first, as its placement wish [EMU,
    docs/rpc.md]: the pin is kept, and a team puts it back on its NIC when that NIC can take
    it (one of a failover of another NIC, asked up meanwhile by its own NIC, spec §5.2), and
    a rebalance then leaves it there. Refused there (its NIC is the one that failed, taken
    out, full, or withheld by the host, spec §6.2), it is offered once more without the pin,
    and the team's policy places it: the pin is where the connection is placed, not where it
    must stay, and a failover moves it (docs/rpc.md). Neither asks for a pin the host does
    not have (`pinned` False: the second offer)."""
    if tcb.lifecycle.phase is Phase.TERMINATING:
        # its upload is on the way
        tcb.deferred = grown(tcb.deferred, lambda: _offload_again(h, tcb, binding, pinned))
    elif tcb.lifecycle.phase is Phase.IDLE and tcb.conn_id in h.tcbs:
        pin = pinned and tcb.target is not None

        def done(result: Any, error: AppError | None) -> None:
            if error is None or tcb.conn_id not in h.tcbs:
                return
            if pin:
                # the pinned NIC cannot take it now: where the team's policy puts it. Not while
                # the host still walks this offload's callbacks (a refused initiate,
                # `offload._not_offloaded`, or one refused before it went, `_unqueue`): the
                # second offer would join that list and take this refusal for its own, and
                # wait for a later RESUME wherever it landed. Both run `tcb.deferred` after:
                # first in it, so the requests the application made while this offload went
                # (a `tcp.upload`) still wait for the second offer, as they would have
                if any(d is done for d in tcb.offload_done):
                    tcb.deferred = [lambda: _offload_again(h, tcb, binding, False), *tcb.deferred]
                else:
                    _offload_again(h, tcb, binding, pinned=False)
            elif error.symbol == "NDIS_STATUS":
                # the outcome is the `offloaded` event; refused (no room, no NIC for its IP
                # version yet), it is offered again at the next RESUME, when what the target
                # offers changed
                h.resume_offloads.setdefault(binding.id, {})[tcb.conn_id] = tcb

        offload.request(h, tcb, tcb.target, done, pin=pin)


def refused(h: HostStack, tcb: Tcb, error: AppError, completed: bool = False) -> None:
    """An offload of `tcb` was refused with `error` (`completed`: by its initiate's
    completion, else by the host before the initiate went down): kept for `tcp.info`'s
    `offload_refused` until an offload succeeds (`refusal_info`). The error and the layer
    that refused it, as known now: the host itself, or the lowest layer whose initiate
    completion failed the connection, which NDIS noted on the host's handle as it read that
    completion (`NdisOffloadHandle.failed_at`), also when a layer above it then left the
    block out (lost below, spec §6.3 [EMU]); None if none did. A RESUME may see thousands
    refused in one completion: a small tuple each, nothing read from the hop trace, which is
    for watching (`engine.trace_depth`)."""
    handle = tcb.handle
    tcb.offload_refused = (error, (handle.failed_at if handle else None) if completed else h.name)


def refusal_info(tcb: Tcb) -> dict[str, Any] | None:
    """`tcp.info`'s `offload_refused` (docs/rpc.md): nil, or why the last offload of `tcb` was
    refused. `status`: the `NDIS_STATUS` it was refused with, None for a reason of the host's
    own that has none (a `host_event` withholding the NIC, spec §6.2; a closed connection) or
    a connection lost below (spec §6.3 [EMU]); `layer`: the host itself when it refused before
    the initiate went down (the target paused offloads, or has no room or no chimney for the
    connection by its capabilities, spec §5.5, §8; a host event), else the lowest layer whose
    initiate completion failed it (`refused`); `reason`: the refused request's answer, which
    names the limit or the host event."""
    if tcb.offload_refused is None:
        return None
    error, layer = tcb.offload_refused
    return {
        "status": error.status.name if error.status is not None else None,
        "layer": layer,
        "reason": str(error),
    }


def offload_event(h: HostStack, block: OffloadBlock, code: IndicateOffloadEvent) -> None:
    """`ProtocolIndicateOffloadEvent` (spec §5.4): a neighbor reachability query is answered
    at once with the host's HRD in the block's cached state. A loopback neighbor is always
    reachable, confirmed just now: HRD 1 tick [EMU] (0 would mean "stale")."""
    if code is IndicateOffloadEvent.NeighborReachabilityQuery and block.cached is not None:
        block.cached.HostReachabilityDelta = 1
    h.stats.count(f"ProtocolIndicateOffloadEvent/{code.name}")
    h.ndis.NdisReturnOffloadEventIndicate(h, block)


def describe(h: HostStack) -> dict[str, Any]:
    """The capabilities each binding advertised, as the host last read them."""
    out: dict[str, Any] = {}
    for binding in h.lower_bindings:
        caps = h.capabilities.get(binding.id)
        out[binding.lower.name] = (
            caps.as_map() if isinstance(caps, NdisTcpConnectionOffload) else caps
        )
    paused = sorted(b.lower.name for b in h.lower_bindings if b.id in h.paused)
    # the neighbor and path objects the host holds, and the connections waiting for an
    # initiate: what a new offload waits for when it waits (spec §2.3, §3.1)
    objects = [
        {
            "kind": o.block_kind,
            "binding": o.binding.lower.name,
            "phase": o.lifecycle.phase.value,
            "refs": o.refs,
            "pending_ops": o.pending_ops,
            **_next_hop(o),
        }
        for o in h.all_objects()  # one leaving beside a fresh one of its key too
    ]
    waiting = [t.conn_id for t in h.pending_initiates]
    waiting += [t.conn_id for tcbs in h.initiates_blocked.values() for t in tcbs]
    return {"capabilities": out, "paused": paused, "objects": objects, "waiting": waiting}


def _next_hop(obj: HostObject) -> dict[str, str]:
    """A neighbor's next hop (its key, spec §3.4 (b)), e.g. `{"next_hop": "02:00:00:00:00:2b"}`;
    a path's, that of the neighbor it hangs under."""
    neighbor = obj if obj.parent is None else obj.parent
    hop = neighbor.key[2] if len(neighbor.key) > 2 else None
    return {"next_hop": hop.hex(":")} if isinstance(hop, bytes) else {}
