"""The target as an adapter: capabilities and parameters (OIDs, spec §1.3, §8), PAUSE /
UPLOAD_ALL / RESUME (spec §5.5), and neighbor reachability (spec §5.4).

While paused, initiates that were already on their way are queued and offloaded at RESUME
(spec §5.5, §6.2: "still accept/queue initiates already in flight").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    NeighborOffloadStateDelegated,
    OffloadBlock,
    new_neighbor_block,
)
from chimneyd.ndis.lifecycle import LIVE, Event
from chimneyd.ndis.oid import (
    NdisEncapsulation,
    NdisOidRequest,
    NdisTcpConnectionOffload,
    NdisTcpConnectionOffloadParameters,
    Oid,
)
from chimneyd.ndis.status import IndicateOffloadEvent, NdisStatus

from . import offload
from .contexts import NeighborContext, TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
ULONG = 0xFFFFFFFF


# -- OID requests ---------------------------------------------------------------------------------
def capabilities(t: OffloadTarget) -> NdisTcpConnectionOffload:
    """`NDIS_TCP_CONNECTION_OFFLOAD` of this NIC: a loopback TCP under Linux does both IP
    versions and SACK; it says it offloads the versions it is configured for (a NIC without
    IPv6 offload is common), and its capacity is the configured connection count."""
    return NdisTcpConnectionOffload(
        # a NIC whose chimney is off advertises no encapsulation chimney is recognised with
        Encapsulation=NdisEncapsulation.NDIS_ENCAPSULATION_IEEE_802_3 if t.tcp_chimney else 0,
        SupportIPv4=t.ipv4,
        SupportIPv6=t.ipv6,
        TcpConnectionOffloadCapacity=t.max_connections,
    )


def oid_request(t: OffloadTarget, request: NdisOidRequest) -> None:
    """`MiniportOidRequest`: answer the capability queries, honour the parameters set."""
    if request.oid is Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS and request.set:
        params: NdisTcpConnectionOffloadParameters = request.data
        if params.TicksPerSecond not in capabilities(t).TicksPerSecond:
            request.status = S.NDIS_STATUS_NOT_SUPPORTED
        else:
            t.params = params
            t.push_ticks = params.TcpPushTicks / params.TicksPerSecond
            request.status = S.NDIS_STATUS_SUCCESS
    elif request.oid is not Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS and not request.set:
        request.data = capabilities(t)
        request.status = S.NDIS_STATUS_SUCCESS
    else:
        request.status = S.NDIS_STATUS_NOT_SUPPORTED
    t.ndis.NdisMOidRequestComplete(t, request)


# -- PAUSE / UPLOAD_ALL / RESUME -------------------------------------------------------------------
def fail(t: OffloadTarget) -> None:
    """NIC failure: stop offloading and ask the host to upload everything (spec §5.5)."""
    t.state = "failed"
    traces = [c.trace for c in t.connections() if c.trace is not None]
    t.ndis.NdisMIndicateStatusEx(t, S.NDIS_STATUS_OFFLOAD_PAUSE, traces)
    for c in t.connections():
        if c.lifecycle.phase in LIVE:
            c.lifecycle.fire(Event.UPLOAD_ALL)  # sends now get UPLOAD_IN_PROGRESS (spec §5.5)
    t.ndis.NdisMIndicateStatusEx(t, S.NDIS_STATUS_UPLOAD_ALL, traces)


def recover(t: OffloadTarget) -> None:
    """The NIC works again: RESUME, then offload what arrived while paused (spec §5.5)."""
    t.state = "running"
    traces = [c.trace for c in t.connections() if c.trace is not None]
    t.ndis.NdisMIndicateStatusEx(t, S.NDIS_STATUS_OFFLOAD_RESUME, traces)
    queued, t.paused_initiates = t.paused_initiates, []
    for root, arrived_ns in queued:
        offload.initiate(t, root, arrived_ns)


def initiate(t: OffloadTarget, root: OffloadBlock) -> None:
    """`MiniportInitiateOffload`, queued while the adapter is paused."""
    if t.failed:
        t.paused_initiates.append((root, t.ndis.clock()))
        return
    offload.initiate(t, root)


# -- neighbor reachability (spec §5.4) ------------------------------------------------------------
def ticks(t: OffloadTarget) -> int:
    """The NIC's clock (NCT) in ticks of the parameters' `TicksPerSecond`."""
    return t.ndis.clock() * t.params.TicksPerSecond // 1_000_000_000


def forward_progress(t: OffloadTarget, c: TcpContext) -> None:
    """An ACK for data we sent, or data in reply to ours: the neighbor is reachable (NRT=NCT)."""
    # `ticks` written out: this runs on every socket read and every acknowledgement
    c.path.neighbor.nrt = t.ndis.clock() * t.params.TicksPerSecond // 1_000_000_000


def before_send(t: OffloadTarget, c: TcpContext) -> None:
    """Before sending, ask the host about a neighbor nobody has heard from for NceStaleTicks
    (spec §5.4): `NdisMOffloadEventIndicate(NeighborReachabilityQuery)` with HRD and NRD."""
    n = c.path.neighbor
    params = t.params
    now = t.ndis.clock() * params.TicksPerSecond // 1_000_000_000  # `ticks`, on every send
    stale = params.NceStaleTicks
    if n.query_pending or (now - n.nrt) <= stale or (now - n.hrt) <= stale:
        return
    n.query_pending = True
    block = new_neighbor_block(
        None,
        n.const,
        NeighborOffloadStateCached(n.cached.DlDestinationAddress, (now - n.hrt) & ULONG),
        NeighborOffloadStateDelegated(NicReachabilityDelta=(now - n.nrt) & ULONG),
    )
    block.status = S.NDIS_STATUS_SUCCESS
    block.ndis_offload_handle = n.upper  # the miniport view names the host's object
    block.miniport_reserved = n
    t.ndis.NdisMOffloadEventIndicate(
        t, block, IndicateOffloadEvent.NeighborReachabilityQuery, c.trace
    )


def reachability_answered(t: OffloadTarget, block: OffloadBlock) -> None:
    """The host's answer, its HRD in the block's cached state: HRT = NCT - HRD (spec §5.4)."""
    n: NeighborContext = block.miniport_reserved
    block.miniport_reserved = None
    n.query_pending = False
    n.hrt = ticks(t) - block.cached.HostReachabilityDelta
