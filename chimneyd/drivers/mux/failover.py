"""The MUX as an adapter: the capabilities it advertises, derived from its NICs (spec §1.3,
§8), the parameters it passes to all of them, and failover (spec §5.5).

When a NIC fails (it indicates PAUSE and UPLOAD_ALL) or is taken out of service, the MUX does
what teaming drivers do — PAUSE above, get the affected connections uploaded, RESUME — one
step finer than LBFO: it asks for the upload of only the connections on that NIC, one
`TcpIndicateRetrieve` each (spec §5.2), and the others keep moving data. At RESUME the layer
above reads the capabilities again (the NIC's capacity is gone from them) and offloads the
uploaded connections anew, which the policy places on the NICs left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.oid import (
    NdisEncapsulation,
    NdisOidRequest,
    NdisTcpConnectionOffload,
    Oid,
)
from chimneyd.ndis.status import NdisStatus

from . import relink
from .objects import ASKABLE, Instance, Lower, MuxConnection, VirtualObject
from .placement import fit_of

if TYPE_CHECKING:
    from .mux import MuxIm

S = NdisStatus


# -- capabilities and parameters ------------------------------------------------------------------
def bound(mux: MuxIm, lower: Lower) -> None:
    """A NIC bound below: read its capabilities, hand it the parameters set from above."""
    ask(mux, lower)
    if mux.params is not None:
        _set_params(mux, lower, None)


def ask(mux: MuxIm, lower: Lower) -> None:
    lower.caps = None
    request = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG)
    mux.own_queries[id(request)] = lower
    mux.ndis.NdisOidRequest(mux, lower.binding, request)


def capabilities(mux: MuxIm) -> NdisTcpConnectionOffload:
    """What the MUX offers above: the sum of its NICs in service (spec §8), an IP version or
    option if any of them has it, the tick lengths all of them support."""
    answered = [lo.caps for lo in mux.lower_list() if lo.in_service and lo.caps is not None]
    # a NIC whose chimney is off offers the team nothing (spec §1.3); with none that offers
    # it, the team offers none either
    caps = [c for c in answered if c.recognised()]
    if answered and not caps:
        return NdisTcpConnectionOffload(Encapsulation=0)
    if not caps:  # chimney stays recognised, with room for nothing until a NIC is back
        return NdisTcpConnectionOffload(TcpConnectionOffloadCapacity=0)
    ticks = set(caps[0].TicksPerSecond).intersection(*(c.TicksPerSecond for c in caps[1:]))
    encapsulation = 0
    for c in caps:
        encapsulation |= c.Encapsulation
    return NdisTcpConnectionOffload(
        Encapsulation=encapsulation or NdisEncapsulation.NDIS_ENCAPSULATION_IEEE_802_3,
        SupportIPv4=any(c.SupportIPv4 for c in caps),
        SupportIPv6=any(c.SupportIPv6 for c in caps),
        SupportIPv6ExtensionHeaders=any(c.SupportIPv6ExtensionHeaders for c in caps),
        SupportSack=all(c.SupportSack for c in caps),
        CongestionAlgorithm=caps[0].CongestionAlgorithm,
        TcpConnectionOffloadCapacity=sum(c.TcpConnectionOffloadCapacity for c in caps),
        TicksPerSecond=tuple(sorted(ticks)) or (1000,),
    )


def oid_request(mux: MuxIm, request: NdisOidRequest) -> None:
    """`MiniportOidRequest` from above: capabilities answered from the NICs' (once all have
    answered), parameters passed to every NIC (spec §1.3)."""
    if request.oid is Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS and request.set:
        mux.params = request.data
        lowers = mux.lower_list()
        if not lowers:
            request.status = S.NDIS_STATUS_SUCCESS
            mux.ndis.NdisMOidRequestComplete(mux, request)
            return
        group = [request, len(lowers), S.NDIS_STATUS_SUCCESS]
        for lower in lowers:
            _set_params(mux, lower, group)
    elif request.oid is not Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS and not request.set:
        mux.cap_waiters.append(request)
        _answer_waiters(mux)
    else:
        request.status = S.NDIS_STATUS_NOT_SUPPORTED
        mux.ndis.NdisMOidRequestComplete(mux, request)


def _set_params(mux: MuxIm, lower: Lower, group: list[object] | None) -> None:
    sub = NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_PARAMETERS, set=True, data=mux.params)
    mux.param_sets[id(sub)] = group if group is not None else [None, 1, S.NDIS_STATUS_SUCCESS]
    mux.ndis.NdisOidRequest(mux, lower.binding, sub)


def oid_complete(mux: MuxIm, lower: Lower, request: NdisOidRequest) -> None:
    asked = mux.own_queries.pop(id(request), None)
    if asked is not None:
        ok = request.status == S.NDIS_STATUS_SUCCESS
        lower.caps = (
            request.data if ok else NdisTcpConnectionOffload(TcpConnectionOffloadCapacity=0)
        )
        _answer_waiters(mux)
        if not mux.own_queries:
            mux.retry_deferred()  # initiates that waited for the NICs' answers
            _offer_changed(mux)
            if mux.rebalance_asked:
                rebalance(mux)  # one that waited for a NIC just back (`rebalance`)
        return
    group = mux.param_sets.pop(id(request))
    if request.status != S.NDIS_STATUS_SUCCESS:
        group[2] = request.status
    group[1] -= 1
    upper = group[0]
    if group[1] == 0 and isinstance(upper, NdisOidRequest):
        upper.status = group[2]
        mux.ndis.NdisMOidRequestComplete(mux, upper)


def _answer_waiters(mux: MuxIm) -> None:
    if mux.own_queries:
        return  # a NIC has not answered yet
    waiters, mux.cap_waiters = mux.cap_waiters, []
    for request in waiters:
        request.data = mux.offered = capabilities(mux)
        request.status = S.NDIS_STATUS_SUCCESS
        mux.ndis.NdisMOidRequestComplete(mux, request)


# -- status from a NIC, and failover ------------------------------------------------------------
def lower_status(mux: MuxIm, lower: Lower, status: NdisStatus) -> None:
    """`ProtocolStatusEx` from one NIC. Its PAUSE stops placements there; its UPLOAD_ALL moves
    its connections; its RESUME puts it back in service (its capabilities read again)."""
    if status == S.NDIS_STATUS_OFFLOAD_PAUSE:
        lower.paused = True
    elif status == S.NDIS_STATUS_UPLOAD_ALL:
        lower.failed = True
        forget_plans(mux, lower)
        relink.lower_failed(mux, lower)  # a move's copy it may hold until its RESUME
        mux.owed.update(_initiating_on(mux, lower))
        _evacuate(mux, [c for c in mux.connections() if c.lower is lower.binding])
        # an update waiting for a copy this NIC is offloading waits no more: the failover
        # takes that copy away with its connection (`MuxIm._update`); without a retry here it
        # would wait for this NIC's RESUME, which may never come (spec §5.5)
        mux.retry_deferred()
    elif status == S.NDIS_STATUS_OFFLOAD_RESUME:
        lower.paused = lower.failed = False
        ask(mux, lower)


def offloaded_late(mux: MuxIm, entries: list[MuxConnection]) -> None:
    """Connections an initiate has just offloaded above whose NIC failed, or was taken out,
    while the initiate was completing. The evacuation then could not ask them up: the MUX
    finds its connections in its table, and these were not offloaded above yet (an initiate
    split over NICs completes above only once every NIC has). They go now.

    A NIC that failed and is back in service (RESUME) by now still holds what its UPLOAD_ALL
    asked for: it refuses their I/O as an upload under way and never asks for them again
    (spec §5.5). So what was in flight on it then goes too (`mux.owed`), whether or not it is
    in service now."""
    gone = {lo.binding.id for lo in mux.lower_list() if lo.failed or lo.taken_out}
    late = [e for e in entries if (e.lower.id in gone or e in mux.owed) and e.id in mux.table]
    mux.owed.difference_update(entries)
    if late:
        _evacuate(mux, late)


def _initiating_on(mux: MuxIm, lower: Lower) -> list[MuxConnection]:
    """The connections of initiates in flight that the MUX placed on `lower`."""
    return [e for e in initiating(mux) if e.lower is lower.binding]


def initiating(mux: MuxIm) -> list[MuxConnection]:
    """The connections of initiates in flight, each placed on a NIC."""
    return [
        obj
        for call in mux.call_entries
        if call.op == "Initiate"
        for _, _, obj in call.links
        if isinstance(obj, MuxConnection)
    ]


def take_out(mux: MuxIm, lower: Lower) -> None:
    lower.taken_out = True
    forget_plans(mux, lower)
    _evacuate(mux, [c for c in mux.connections() if c.lower is lower.binding])


def put_back(mux: MuxIm, lower: Lower) -> None:
    lower.taken_out = False
    _offer_changed(mux)


def rebalance(mux: MuxIm) -> None:
    """Move connections from the NICs that carry the most to those that carry the fewest,
    until they differ by one at most; the moved ones are placed where planned."""
    if any(_returning(mux, lo) for lo in mux.lower_list()):
        # a NIC just back (its RESUME, `nic_up` after a bind) is out of service until it has
        # said again what it can carry (spec §5.5): planned now, the rebalance would leave it
        # out, and move nothing onto it. It runs once the answer is in (`oid_complete`)
        mux.rebalance_asked = True
        return
    mux.rebalance_asked = False
    forget_plans(mux)  # the last rebalance's: this one plans from the load as it is now
    lowers = [lo for lo in mux.lower_list() if lo.in_service]
    if len(lowers) < 2:
        return
    # the connections asked up (a NIC's failure, one taken out, an earlier rebalance) are on
    # their way up: they leave their NIC and are placed anew when offloaded again at the
    # RESUME (spec §5.5). Counted where they still are (a failed NIC back in service before
    # the layer above has uploaded them), the team looked even and nothing moved, and they
    # then all went where the policy put them. They count on no NIC; each gets a plan too,
    # to the NIC the fewest stay on, before the busiest NICs' connections are moved. Not one
    # its NIC found corrupt in the terminate (`completing` until it completes above, spec
    # §3.7), nor one the MUX failed as corrupt itself (FAILED: it leaves `evacuating` then,
    # `MuxIm.fail_unserved_terminate`, as one its NIC failed does once completed above; the
    # phase is checked all the same): it is aborted and never offloaded again, so its plan
    # would stay unused, and the NIC counted for it would take one connection fewer
    leaving = sorted(
        (
            c
            for c in mux.evacuating
            if c.id in mux.table and not c.completing and c.lifecycle.phase is not Phase.FAILED
        ),
        key=lambda c: c.id,
    )
    # those that stay on their NIC, and may move: not on their way up already (asked up by
    # their NIC, or terminated by the layer above, which may be closing them), nor corrupt.
    # The MUX cannot ask those up (`retrieve_all`), nor tell whether they come back: they
    # count on no NIC, and get no plan, which would stay unused when they do not
    by_lower = {
        lo.binding.id: [
            c
            for c in mux.connections()
            if c.lower is lo.binding and c not in mux.evacuating and c.lifecycle.phase in ASKABLE
        ]
        for lo in lowers
    }
    counts = {lo.binding.id: len(by_lower[lo.binding.id]) for lo in lowers}
    # placed by initiates still below (a failover's connections offloaded again at the
    # RESUME): not in the table yet, so not movable, but on their NIC in a moment
    for entry in initiating(mux):
        if entry.lower.id in counts:
            counts[entry.lower.id] += 1
    # not onto a NIC whose copy of the connection's path hangs under another neighbor's copy
    # and will still be there when it is offloaded again (`_lingering`), nor one that kept
    # finding a copy of its path or neighbor corrupt (`VirtualObject.avoid`): plans it cannot
    # use (`mux._avoiding`); nor onto one its placement wish excludes (`_barred`)
    lingering = _lingering(mux, set(leaving))
    for entry in leaving:
        fits = [lo for lo in lowers if not _barred(lingering, entry, lo, mux.host_avoid)]
        if not fits:
            continue  # the policy places it
        low = min(fits, key=lambda lo: counts[lo.binding.id])
        mux.placement.moves[entry.key] = low
        counts[low.binding.id] += 1
    moving: list[MuxConnection] = []
    while (move := _next_move(lowers, by_lower, counts, lingering, mux.host_avoid)) is not None:
        high, i, low = move
        entry = by_lower[high.binding.id].pop(i)
        mux.placement.moves[entry.key] = low
        counts[high.binding.id] -= 1
        counts[low.binding.id] += 1
        moving.append(entry)
    # none left to move (every one barred where the load is lighter): nothing is asked up,
    # and the team is not PAUSEd for nothing (`_evacuate`)
    _evacuate(mux, moving)


def _next_move(
    lowers: list[Lower],
    by_lower: dict[int, list[MuxConnection]],
    counts: dict[int, int],
    lingering: set[tuple[int, int]],
    host_avoid: frozenset[str],
) -> tuple[Lower, int, Lower] | None:
    """The next move, (NIC from, index in its `by_lower` list, NIC to): a connection from the
    busiest NIC that has one to give onto the idlest it may go to, two or more apart; None
    when the NICs differ by one at most or no connection may go where the load is lighter.

    The busiest NIC's connections may all be barred from the idlest (a `host_event` withholds
    it from them all, they are pinned): stopping there left a third NIC as idle untouched."""
    busiest = sorted(lowers, key=lambda lo: -counts[lo.binding.id])
    idlest = sorted(lowers, key=lambda lo: counts[lo.binding.id])
    for high in busiest:
        for low in idlest:
            if counts[high.binding.id] - counts[low.binding.id] <= 1:
                break  # nor any NIC after it, busier
            movable = [
                i
                for i, c in enumerate(by_lower[high.binding.id])
                if not _barred(lingering, c, low, host_avoid)
            ]
            if movable:
                return high, movable[-1], low
    return None


def _barred(
    lingering: set[tuple[int, int]], entry: MuxConnection, lower: Lower, host_avoid: frozenset[str]
) -> bool:
    """Whether a plan onto `lower` would be dropped when `entry` is offloaded again
    (`Placement.choose`, `mux._avoiding`): its path's copy there will still hang under
    another neighbor's copy (`lingering`, from `_lingering`), or that NIC kept finding a copy
    of its path or neighbor corrupt, which keeps the object's connections off it for the
    rest of its life (`VirtualObject.avoid`, `MuxIm._corrupt_again`).

    Or the host's placement wish excludes `lower` [EMU]: a NIC the host withholds
    (`host_avoid`), which its re-offload excludes again (spec §3.6.1, §6.2: the host offloads
    nothing to it while its reason holds), or one other than the NIC the application pinned
    the connection to. A pinned connection is not moved at all: the pin is the application's
    choice, and a rebalance is the MUX's own (spec §5.5), not a NIC's failure
    (docs/architecture.md, "A pin and the host's reasons reach the placement"); a failover
    still moves it.

    The pin is the connection's own, from the host's offload of it (`entry.wish`). The NICs
    withheld are not read from there: the wish on a connection's trace is as old as its
    offload, and a reason the host took up since (a `host_event` on nic0 uploads nic0's
    connections, and leaves the others' wishes without nic0) or cleared since would be
    missed. The host's reasons hold per NIC, for every connection alike (`host_reasons`):
    `MuxIm.host_avoid`, as the NIC's indications told the MUX at each reason's start and
    clear (`MuxIm.lower_withheld`), else as the newest offload's wish said."""
    path = entry.path
    avoid = path.avoid | path.parent.avoid if path.parent is not None else path.avoid
    if (path.id, lower.binding.id) in lingering or lower.binding.id in avoid:
        return True
    pin = entry.wish[0] if entry.wish is not None else None
    fit = fit_of((pin, host_avoid))
    return fit is not None and not fit(lower)


def _lingering(mux: MuxIm, leaving: set[MuxConnection]) -> set[tuple[int, int]]:
    """(path id, binding id) for each NIC where a copy of the path, or of its neighbor, takes
    no new connection and will still be there when the connections asked up are offloaded
    again, at the RESUME: a path copy that hangs under a copy of a neighbor other than the
    one the layer above has the path under (`mux._misplaced`: a stray copy its NIC could not
    move back, `relink._undone`, or one a move left on a failed NIC), or a path or neighbor
    copy that missed an update (`mux._missed`: a failed NIC offloaded it with the values
    from before, once back, spec §5.5, §3.4 (a)).

    A connection is never linked under such a copy (`mux._avoiding`): a plan onto its NIC is
    popped and dropped at the re-offload (`Placement.choose`), and the policy places the
    connection, while the rebalance counted it there. The copy goes with the last connection
    on it (a neighbor's, with the last on any path under it there), in the same terminate
    (`MuxIm._terminate_unused`), OFFLOADED or INVALIDATED alike (spec §3.5: an invalidated
    object is still terminated): those `leaving` (asked up, coming back) are all up before
    the RESUME, and it goes with them; a plan there stands, and is used, with a fresh copy.

    So does one that a query, update or invalidate below it holds back until it completes
    (spec §3.1, §9 item 7), and one being terminated: the RESUME waits for both
    (`_uploading`).

    It lingers when another connection keeps it that the RESUME does not wait for (found
    corrupt, living on until the layer above terminates it again, spec §3.7; one the layer
    above is terminating on its own, or its NIC asked up; one whose initiate is in flight,
    asked up only once it completes, `relink._undone`); when it was found corrupt itself
    (FAILED, waiting for its next terminate, `MuxIm._corrupt_again`); and when its NIC,
    failed, holds its offload until its RESUME (OFFLOADING)."""
    from .mux import _copies_above  # mux imports this module

    stray = {
        (vobj.id, binding_id): inst
        for vobj in mux._vobjs()
        for binding_id, inst in vobj.instances.items()
        if _shunned(vobj, inst)
    }
    if not stray:
        return set()
    lasting = {
        key
        for key, inst in stray.items()
        if inst.lifecycle.phase in (Phase.OFFLOADING, Phase.FAILED)
    }
    # one whose initiate is in flight keeps it too: asked up once the initiate completes
    # (`offloaded_late`), which the RESUME does not wait for
    for c in [*mux.connections(), *initiating(mux)]:
        if c in leaving:
            continue
        for inst in _copies_above(c):
            key = (inst.vobj.id, c.lower.id)
            if key in stray:
                lasting.add(key)
    if not lasting:
        return set()
    # per path: its own copy there lasts, or its neighbor's (`mux._missed` walks up to it)
    return {
        (path.id, lo.binding.id)
        for path in mux._vobjs()
        if path.parent is not None
        for lo in mux.lower_list()
        if (path.id, lo.binding.id) in lasting or (path.parent.id, lo.binding.id) in lasting
    }


def _returning(mux: MuxIm, lower: Lower) -> bool:
    """Whether `lower` is back in service but for its capabilities, still being read."""
    return (
        lower.caps is None
        and not (lower.paused or lower.failed or lower.taken_out)
        and any(asked is lower for asked in mux.own_queries.values())
    )


def forget_plans(mux: MuxIm, gone: Lower | None = None) -> None:
    """Drop the rebalance's plans (`Placement.moves`) not used yet: all of them, or with
    `gone` those for that NIC. A plan is popped when its connection is offloaded again, at
    the RESUME that ends the evacuation (spec §5.5); one the host closes instead is never
    used, and the MUX cannot tell which one that is. So the plans go when they no longer
    say anything: at the next rebalance (which plans from the load as it is then), and when
    the MUX carries nothing any more (`MuxIm.idle`): an offload after that goes where the
    policy puts it. Without it the table grew with every rebalance, and a later connection
    reusing a 4-tuple went where an old plan said. A NIC that fails or is taken out takes
    only the plans for it (they cannot be used: their connections go where the policy puts
    them); the others still even the load out, whatever other NIC fails or comes back."""
    if gone is None:
        mux.placement.moves.clear()
        return
    for key in [k for k, lo in mux.placement.moves.items() if lo is gone]:
        del mux.placement.moves[key]


def strays(mux: MuxIm, entries: list[MuxConnection]) -> None:
    """The connections on a path copy its NIC could not move back after a failed next-hop
    change (`relink._undone`): the copy hangs under that NIC's copy of a neighbor the layer
    above does not have the path under, and goes only with them. The MUX moves them for its
    own reasons, as in a failover: PAUSE above, ask them up, RESUME once they are up (spec
    §3.8: an IM may raise PAUSE itself; §5.5). The host offers again at RESUME what it was
    asked up while paused; asked with no PAUSE, they stayed with the host for good, yet
    counted among those on their way up (`MuxIm.evacuating`), each given a plan by a
    rebalance that was never used. Offloaded again, they are placed by the policy, not on
    that NIC while the stray copy lives (`mux._misplaced`), or where a rebalance planned."""
    if entries:  # none: nothing changed above, no RESUME is owed (`_evacuate`)
        _evacuate(mux, entries)


def _evacuate(mux: MuxIm, entries: list[MuxConnection]) -> None:
    """PAUSE above, and ask for the upload of `entries`; RESUME once they are all up (or at
    once when there are none: what the MUX offers changed all the same)."""
    if not entries:
        _offer_changed(mux)
        return
    if not mux.paused_above:
        mux.paused_above = True
        mux.ndis.NdisMIndicateStatusEx(mux, S.NDIS_STATUS_OFFLOAD_PAUSE, _traces(mux))
    mux.retrieve_all(entries)
    evacuated(mux)


def evacuated(mux: MuxIm) -> None:
    """After each terminate: once nothing asked up is left below, RESUME above (spec §5.5).

    A connection whose terminate is back from its NIC but held by the MUX for a neighbor copy
    (`MuxCall.held`: another neighbor's path copy under it, or a failed NIC that holds its
    offload until its RESUME) is not waited for: its upload is done below, and the terminate
    completes above only once that copy has gone (spec §9 item 8), which may be never when
    the NIC never returns. PAUSE stops only new offloads (spec §5.5) and is the MUX's own
    (spec §3.8); the host may offload other objects while a terminate is in flight (spec
    §3.1), and offloads none of that terminate's until it completes. Held paused instead,
    the layer above offloaded nothing more until that NIC came back, for ever if it did not.
    A connection of such a terminate found corrupt waits for the host's further terminate,
    which comes only after the completion (spec §3.7 step 4): it holds the pause no longer
    either. One its NIC found corrupt is on its way up until that NIC's `HardwareFailure`
    request and abort, which follow the completion (steps 2-3), have gone up
    (`MuxIm._relay_event`): the RESUME after them."""
    if mux.paused_above and not _uploading(mux):
        mux.paused_above = False
        _resume_above(mux)


def _uploading(mux: MuxIm) -> bool:
    """Whether a connection asked up is still on its way up below: not yet in a terminate, or
    in one whose part on its NIC is still out; not one of a terminate the MUX holds only for
    its neighbor copies (`MuxIm.evacuating_held`, a subset of `evacuating`).

    Or a copy no new connection may be linked under (`_shunned`: a path copy that hangs
    under another neighbor's copy, `mux._misplaced`, a stray its NIC could not move back; a
    path or neighbor copy that missed an update, or a path copy under a neighbor copy that
    did, `mux._missed`) is being terminated: the connections on it were uploaded in
    terminates of their own, and it goes once the last is back. The connections asked up
    come back at the RESUME, and a plan onto that NIC (`rebalance`, `_lingering`) is of use
    only once the copy has gone: offloaded again while it is still there, a connection
    cannot be linked under it (`mux._avoiding`), and goes where the policy puts it. So too
    such a copy no connection hangs on any more that a query, update or invalidate below it
    holds back: it is terminated once that completes (spec §3.1, §9 item 7,
    `MuxIm._relayed_call_done`)."""
    if len(mux.evacuating) > len(mux.evacuating_held):
        return True
    return any(
        (
            inst.lifecycle.phase is Phase.TERMINATING
            or (not inst.refs and inst.pending_ops > 0 and inst.lifecycle.phase is not Phase.FAILED)
        )
        and _shunned(vobj, inst)
        for vobj in mux._vobjs()
        for inst in vobj.instances.values()
    )


def _shunned(vobj: VirtualObject, inst: Instance) -> bool:
    """Whether no new connection may be linked under `inst`, `vobj`'s copy on its NIC, for as
    long as it lives (`mux._avoiding`): a path copy under another neighbor's copy
    (`mux._misplaced`), or a path or neighbor copy that missed an update, or a path copy
    whose neighbor's copy there did (`mux._missed`, which walks up to the neighbor). A plan
    onto its NIC is of use only once it has gone.

    A path copy that did not miss the update itself (an ARP update names the neighbor
    alone) keeps the missed neighbor copy above it for as long as it lives (spec §3.1, §9
    item 10): held back by a query or update below it once its last connection is up, it
    holds the RESUME as the neighbor copy would (`_uploading`)."""
    from .mux import _misplaced, _missed  # mux imports this module

    return _missed(vobj, inst.lower) or (vobj.parent is not None and _misplaced(vobj, inst.lower))


def _offer_changed(mux: MuxIm) -> None:
    """RESUME above when what the MUX offers is not what the layer above last read: a NIC left
    or came back (spec §5.5: the host reads the capabilities again at RESUME)."""
    if not mux.paused_above and mux.offered is not None and capabilities(mux) != mux.offered:
        _resume_above(mux)


def _resume_above(mux: MuxIm) -> None:
    mux.ndis.NdisMIndicateStatusEx(mux, S.NDIS_STATUS_OFFLOAD_RESUME, _traces(mux))


def _traces(mux: MuxIm) -> list[Any]:
    """The traces of every connection the MUX carries: a PAUSE or RESUME is the whole
    adapter's, and each connection above hears it (the layers above relay it with theirs),
    so each shows it from where it starts."""
    return [e.upper.trace for e in mux.connections() if e.upper.trace is not None]
