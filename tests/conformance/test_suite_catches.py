"""Layer kinds that break a rule of the spec, and the conformance suite catching them.

Each `test_suite_rejects_*` builds a deliberately broken layer kind and asserts that
`check_layer_kind` reports a failure. Next to each, `test_*_breaks_the_rule` shows that the kind
really does break the rule, in a short scenario of its own — so a rejection is not a false
positive.

The mutants change one thing each, through the NDIS handlers (or a private table) only.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import OffloadTarget
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.oid import NdisOidRequest, Oid
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType
from chimneyd.testing.conformance import (
    LayerKindNonconformance,
    check_layer_kind,
    layer_kind_checks,
)
from chimneyd.testing.conformance._drive import lower_contexts, offload
from chimneyd.testing.factories import (
    loopback_target_stack,
    mux_stack,
    passthrough_stack,
    teamed_target_stack,
)
from chimneyd.testing.stack import Stack

S = NdisStatus
E = TcpOffloadEventType


# =================================================================================================
# broken targets
# =================================================================================================
class TargetReversesSendCompletions(OffloadTarget):
    """Completes the sends one acknowledgement covers in reverse order (spec §4.1 strict FIFO,
    §9 item 2). The suite never lets one acknowledgement complete two send NBLs of a connection
    at the bottom, so the order inside a completion is never exercised there."""

    def complete_sends(self, c: Any, nbls: list[NetBufferList]) -> None:
        super().complete_sends(c, list(reversed(nbls)))


class TargetReversesReceiveCompletions(OffloadTarget):
    """Completes the posted receives one segment fills in reverse order (spec §4.2, §9 item 2)."""

    def complete_receives(self, c: Any, nbls: list[NetBufferList]) -> None:
        super().complete_receives(c, list(reversed(nbls)))


class TargetSwallowsOidRequests(OffloadTarget):
    """Takes OID requests — the capability query, the parameters set — and never completes
    them (spec §1.3, §8). The middle role checks an IM relays them; the bottom role never
    sends the target one."""

    def MiniportOidRequest(self, request: Any) -> None:
        pass


class TargetIgnoresParameters(OffloadTarget):
    """Completes the parameters set SUCCESS and keeps its defaults (spec §8: the target must
    honour TcpPushTicks among others): a push timer of the default 500 ms, not the 50 ms set."""

    def MiniportOidRequest(self, request: Any) -> None:
        if request.set:
            request.status = S.NDIS_STATUS_SUCCESS
            self.ndis.NdisMOidRequestComplete(self, request)
        else:
            super().MiniportOidRequest(request)


class TargetLeavesABacklogTimer(OffloadTarget):
    """At terminate, arms a timer that raises TcpIndicateSendBacklogChange and never cancels
    it: the event goes up half a second after the terminate completion (spec §3.6.4, §9 item 8).
    The suite never moves the clock, so no timer a kind leaves armed ever fires."""

    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        uppers = [
            cell.miniport_offload_context.upper
            for block in walk(root)
            if block.kind is BlockKind.TCP
            and (cell := block.miniport_offload_context) is not None
            and cell.miniport_offload_context is not None
        ]
        super().MiniportTerminateOffload(root)
        for upper in uppers:
            self.timers.call_later(
                0.5,
                self.ndis.NdisTcpOffloadEventHandler,
                self,
                upper,
                E.TcpIndicateSendBacklogChange,
                65536,
            )


class TargetNeverForgetsIndicatedNbls(OffloadTarget):
    """Counts a returned NBL off its gauge but keeps it in its `indicated` table: after every
    NBL came back it still believes they are out (spec §4.3: it may not unload while any is),
    and it would no longer notice an NBL returned twice (spec §6.3)."""

    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        keep = {n.id: n for n in iter_chain(head)}
        super().MiniportTcpOffloadReceiveReturn(head)
        self.indicated.update(keep)


class TargetRstLeavesDisconnectPending(OffloadTarget):
    """On the peer's RST completes sends and receives REQUEST_ABORTED but leaves a pending
    graceful disconnect to the terminate (spec §5.1: sends, posted receives *and disconnects*
    complete REQUEST_ABORTED). No bottom check has a disconnect pending when the RST comes."""

    def WireReset(self, c: Any, reason: str) -> None:
        pending, c.disconnect_nbl = c.disconnect_nbl, None
        super().WireReset(c, reason)
        c.disconnect_nbl = pending


class TargetIgnoresCachedUpdates(OffloadTarget):
    """Answers an update SUCCESS and keeps the connection's old cached variables (spec §3.4:
    copy them into the offloaded objects); a query of them returns the old values (§3.3). The
    bottom check of update looks at the statuses only."""

    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        kept = [
            (ctx, ctx.cached)
            for block in walk(root)
            if block.kind is BlockKind.TCP
            and (cell := block.miniport_offload_context) is not None
            and (ctx := cell.miniport_offload_context) is not None
        ]
        super().MiniportUpdateOffload(root)
        for ctx, cached in kept:
            ctx.cached = cached


# =================================================================================================
# broken IMs and MUXes
# =================================================================================================
class ImDefersReceiveIndications(PassthroughIm):
    """Relays receive indications one turn late and events at once: a TcpIndicateDisconnect
    overtakes the data indicated before it, so the host hears of the peer's FIN before the
    bytes in front of it (spec §5.1, §5.6: relayed with all other arguments unchanged, in
    order). No middle check indicates data and then an event on one connection and looks at
    the order they reach the top."""

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        self.ndis.post(self, super().ProtocolTcpOffloadReceiveIndicate, (handle, nbl, status))


class ImDefersEvents(PassthroughIm):
    """Relays events one turn late: an event the layer below raised before completing a
    terminate reaches the top after that terminate completion (spec §9 item 8). No middle check
    has the layer below indicate an event while a terminate is in flight."""

    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        self.ndis.post(self, super().ProtocolTcpOffloadEvent, (handle, event_type, info))


class ImNeverForgetsIndications(PassthroughIm):
    """Keeps every relayed indication in its `indications` table after it returned: the table
    only grows, and a later receive this IM must fail waits for an indication long gone
    (`fail_unserved_receive`)."""

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        entry = self.indications.get(nbl.id)
        super().ReceiveIndicateReturned(nbl, status, bytes_consumed)
        if entry is not None:
            self.indications[nbl.id] = entry


class MuxNeverForgetsReturns(MuxIm):
    """Keeps the NIC of every returned NBL in `returns_to`: the table only grows."""

    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        keep = {n.id: self.returns_to[n.id] for n in iter_chain(head) if n.id in self.returns_to}
        super().MiniportTcpOffloadReceiveReturn(head)
        self.returns_to.update(keep)


# =================================================================================================
# the suite rejects them
# =================================================================================================
def _cases(kinds: list[tuple[str, Any]]) -> list[Any]:
    return [pytest.param(make, id=name) for name, make in kinds]


ORDER_AND_LIFECYCLE: list[tuple[str, Any]] = [
    (
        "target-reverses-send-completions",
        functools.partial(loopback_target_stack, cls=TargetReversesSendCompletions),
    ),
    (
        "target-reverses-receive-completions",
        functools.partial(loopback_target_stack, cls=TargetReversesReceiveCompletions),
    ),
    (
        "target-swallows-oid-requests",
        functools.partial(loopback_target_stack, cls=TargetSwallowsOidRequests),
    ),
    (
        "target-ignores-parameters",
        functools.partial(loopback_target_stack, cls=TargetIgnoresParameters),
    ),
    (
        "target-leaves-a-backlog-timer",
        functools.partial(loopback_target_stack, cls=TargetLeavesABacklogTimer),
    ),
    (
        "target-rst-leaves-disconnect-pending",
        functools.partial(loopback_target_stack, cls=TargetRstLeavesDisconnectPending),
    ),
    (
        "target-ignores-cached-updates",
        functools.partial(loopback_target_stack, cls=TargetIgnoresCachedUpdates),
    ),
    (
        "im-defers-receive-indications",
        functools.partial(passthrough_stack, cls=ImDefersReceiveIndications),
    ),
    ("im-defers-events", functools.partial(passthrough_stack, cls=ImDefersEvents)),
]
TABLES_THAT_NEVER_DRAIN: list[tuple[str, Any]] = [
    (
        "target-never-forgets-indicated-nbls",
        functools.partial(loopback_target_stack, cls=TargetNeverForgetsIndicatedNbls),
    ),
    (
        "im-never-forgets-indications",
        functools.partial(passthrough_stack, cls=ImNeverForgetsIndications),
    ),
    ("mux-never-forgets-returns", functools.partial(mux_stack, cls=MuxNeverForgetsReturns)),
    (
        "teamed-mux-never-forgets-returns",
        functools.partial(teamed_target_stack, cls=MuxNeverForgetsReturns),
    ),
]


@pytest.mark.parametrize("make", _cases(ORDER_AND_LIFECYCLE))
def test_suite_rejects_kind_breaking_order_or_lifecycle(make: Any) -> None:
    with pytest.raises(LayerKindNonconformance):
        check_layer_kind(make)


@pytest.mark.parametrize("make", _cases(TABLES_THAT_NEVER_DRAIN))
def test_suite_rejects_kind_whose_table_never_drains(make: Any) -> None:
    with pytest.raises(LayerKindNonconformance):
        check_layer_kind(make)


# =================================================================================================
# … and each of them does break its rule (these pass)
# =================================================================================================
def _one_target_connection(cls: type[OffloadTarget]) -> tuple[Stack, Any, NdisOffloadHandle]:
    st = loopback_target_stack(cls=cls)
    w = st.wires.open()
    tree = st.top.connection_tree([w])
    offload(st, tree)
    return st, w, tree.tcp[0]


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetReversesSendCompletions, True)]
)
def test_reversed_send_completions_break_the_rule(cls: type[OffloadTarget], broken: bool) -> None:
    st, w, h = _one_target_connection(cls)
    s1, s2 = st.top.send(h, b"a" * 10, b"b" * 10)
    st.run()
    w.ack()  # one acknowledgement covers both
    st.run()
    assert (st.top.completed("send") == [s2, s1]) is broken
    assert any("before" in v and "§9 item 2" in v for v in st.checker.violations) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetReversesReceiveCompletions, True)]
)
def test_reversed_receive_completions_break_the_rule(
    cls: type[OffloadTarget], broken: bool
) -> None:
    st, w, h = _one_target_connection(cls)
    r1, r2 = st.top.receive(h, 4, 4)
    st.run()
    w.peer_send(b"12345678")  # fills both
    st.run()
    assert (st.top.completed("receive") == [r2, r1]) is broken
    assert any("before" in v and "§9 item 2" in v for v in st.checker.violations) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetSwallowsOidRequests, True)]
)
def test_swallowed_oid_requests_break_the_rule(cls: type[OffloadTarget], broken: bool) -> None:
    st = loopback_target_stack(cls=cls)
    st.top.oid(NdisOidRequest(Oid.OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG))
    st.run()
    assert (len(st.top.oid_completions) == 0) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetLeavesABacklogTimer, True)]
)
def test_a_timer_left_armed_breaks_the_rule(cls: type[OffloadTarget], broken: bool) -> None:
    (check,) = [c for c in layer_kind_checks("bottom") if c.name == "target_send_completes_on_ack"]
    st = loopback_target_stack(cls=cls)
    check.body(st)
    st.run()
    assert not st.drain_problems()  # what the suite sees: drained
    try:
        st.advance(1.0)  # what it does not do: let time pass after the last terminate
    except Exception:  # the broker refuses an event on a dead handle
        assert broken
        return
    assert any("after its terminate" in v for v in st.audit.violations) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(PassthroughIm, False), (ImDefersReceiveIndications, True)]
)
def test_deferred_indications_break_the_rule(cls: type[PassthroughIm], broken: bool) -> None:
    st = passthrough_stack(cls=cls)
    tree = st.top.connection_tree([None])
    ctx = lower_contexts(st, offload(st, tree), tree.root)[tree.tcp[0].id]
    assert st.bottom is not None
    st.bottom.indicate_receive(ctx, b"the last bytes before the FIN")
    st.bottom.indicate_event(ctx, E.TcpIndicateDisconnect)
    st.run()
    up = [
        d.handler
        for d in st.scheduler.log
        if d.layer is st.top
        and d.handler in ("ProtocolTcpOffloadEvent", "ProtocolTcpOffloadReceiveIndicate")
    ]
    assert (up == ["ProtocolTcpOffloadEvent", "ProtocolTcpOffloadReceiveIndicate"]) is broken


@pytest.mark.parametrize(("cls", "broken"), [(PassthroughIm, False), (ImDefersEvents, True)])
def test_deferred_events_break_the_rule(cls: type[PassthroughIm], broken: bool) -> None:
    st = passthrough_stack(cls=cls)
    tree = st.top.connection_tree([None])
    ctx = lower_contexts(st, offload(st, tree), tree.root)[tree.tcp[0].id]
    assert st.bottom is not None
    st.top.terminate(st.top.reference_tree(tree, None, True, True, state="delegated"))
    st.run()
    (request,) = st.bottom.pending_state("Terminate")
    # the layer below may indicate until its terminate completion (spec §3.6.3, §9 item 8)
    st.bottom.indicate_event(ctx, E.TcpIndicateSendBacklogChange, 65536)
    st.bottom.complete_state(request)
    try:
        st.run()
    except Exception:  # the broker refuses an event on a dead handle
        assert broken
        return
    assert any("after its terminate" in v for v in st.audit.violations) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetRstLeavesDisconnectPending, True)]
)
def test_a_disconnect_left_pending_by_a_reset_breaks_the_rule(
    cls: type[OffloadTarget], broken: bool
) -> None:
    st, w, h = _one_target_connection(cls)
    d = st.top.disconnect(h)  # graceful: FIN sent, not acknowledged
    st.run()
    w.peer_reset()
    st.run()
    got = st.top.completion_of(d)
    assert (got is None or got.status != S.NDIS_STATUS_REQUEST_ABORTED) is broken


@pytest.mark.parametrize(
    ("cls", "broken"), [(OffloadTarget, False), (TargetIgnoresCachedUpdates, True)]
)
def test_an_update_not_applied_breaks_the_rule(cls: type[OffloadTarget], broken: bool) -> None:
    from chimneyd.ndis.blocks import TcpOffloadStateCached
    from chimneyd.testing.conformance._drive import state_op
    from chimneyd.testing.records import OffloadTree

    st = loopback_target_stack(cls=cls)
    w = st.wires.open()
    tree: OffloadTree = st.top.connection_tree([w])
    offload(st, tree)
    update = st.top.reference_tree(tree, state="cached")
    for block in walk(update):
        if block.kind is BlockKind.TCP:
            block.cached = TcpOffloadStateCached(InitialRcvWnd=32768, RcvIndicationSize=77)
    state_op(st, "Update", update)
    query = st.top.reference_tree(tree)
    for block in walk(query):
        if block.kind is BlockKind.TCP:
            block.cached = TcpOffloadStateCached()
    state_op(st, "Query", query)
    (tcp,) = [b for b in walk(query) if b.kind is BlockKind.TCP]
    assert (tcp.cached.RcvIndicationSize != 77) is broken


def _tables(layer: Any) -> int:
    return sum(
        len(getattr(layer, name, ()) or ()) for name in ("indicated", "indications", "returns_to")
    )


@pytest.mark.parametrize(
    ("make", "broken"),
    [
        (loopback_target_stack, False),
        (functools.partial(loopback_target_stack, cls=TargetNeverForgetsIndicatedNbls), True),
        (passthrough_stack, False),
        (functools.partial(passthrough_stack, cls=ImNeverForgetsIndications), True),
        (mux_stack, False),
        (functools.partial(mux_stack, cls=MuxNeverForgetsReturns), True),
    ],
)
def test_tables_left_behind_after_a_drain(make: Any, broken: bool) -> None:
    st: Stack = make()
    (check,) = [c for c in layer_kind_checks(st.role) if c.name.endswith("drain_to_zero")]
    check.body(st)
    st.run()
    assert not st.drain_problems()  # what the suite sees: drained
    assert (sum(_tables(layer) for layer in st.under_test) > 0) is broken


@pytest.mark.parametrize(
    ("make", "tables"),
    [
        (loopback_target_stack, {"indicated", "deferred_terminates", "paused_initiates"}),
        (passthrough_stack, {"call_entries", "sends_below", "indications", "owed_receives"}),
        (mux_stack, {"call_entries", "indications", "deferred", "returns_to", "vobj_table"}),
    ],
)
def test_each_real_kind_names_its_tables(make: Any, tables: set[str]) -> None:
    """The drain check reads `leftovers()`: each real kind names its private tables there, and
    they are empty on a fresh stack once its bindings settled (a MUX asks its NIC for its
    capabilities when bound)."""
    st: Stack = make()
    st.run()
    (layer, *_) = st.under_test
    left = layer.leftovers()
    assert tables <= set(left), sorted(tables - set(left))
    assert not any(left.values()), left
