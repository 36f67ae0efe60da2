"""The conformance suite catches each class of bug a layer can have: deliberately broken IMs
and targets must fail the checks named for their bug (and the correct kinds pass them, see
test_layer_kinds.py). Each mutant breaks one rule through the NDIS handlers only."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import PassthroughIm
from chimneyd.drivers.target import OffloadTarget
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.broker import Binding, Layer
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpDisconnectFlags,
    TcpOffloadEventType,
)
from chimneyd.testing.conformance import LayerKindNonconformance, check_layer_kind
from chimneyd.testing.factories import (
    loopback_target_stack,
    make_passthrough,
    mux_stack,
    passthrough_stack,
    teamed_target_stack,
)
from chimneyd.testing.stack import Stack, middle_stack

S = NdisStatus


# -- broken IMs ------------------------------------------------------------------------------------
class SwapsSendNbl(PassthroughIm):
    """Relays a copy of each send NBL down and completes the original up (spec §4.0, §4.8)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.originals: dict[int, NetBufferList] = {}

    def MiniportTcpOffloadSend(self, entry: Any, head: NetBufferList) -> None:
        copies = []
        for nbl in iter_chain(head):
            copy = NetBufferList.for_data(b"".join(nbl.views()))
            copy.trace = nbl.trace
            self.originals[copy.id] = nbl
            copies.append(copy)
        chain = link_chain(copies)
        assert chain is not None
        super().MiniportTcpOffloadSend(entry, chain)

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        originals = []
        for copy in iter_chain(head):
            nbl = self.originals.pop(copy.id)
            nbl.status = copy.status
            nbl.tcp_offload_bytes_transferred = copy.tcp_offload_bytes_transferred
            nbl.advance(copy.tcp_offload_bytes_transferred)
            originals.append(nbl)
        chain = link_chain(originals)
        assert chain is not None
        super().ProtocolTcpOffloadSendComplete(binding, chain)


class DropsLastReceiveCompletion(PassthroughIm):
    """Loses the last NBL of every receive completion that carries more than one."""

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        nbls = list(iter_chain(head))
        chain = link_chain(nbls[:-1] if len(nbls) > 1 else nbls)
        assert chain is not None
        super().ProtocolTcpOffloadReceiveComplete(binding, chain)


class ReversesSendCompletions(PassthroughIm):
    """Completes the NBLs of each send completion in reverse order (spec §4.1 FIFO)."""

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        chain = link_chain(reversed(list(iter_chain(head))))
        assert chain is not None
        super().ProtocolTcpOffloadSendComplete(binding, chain)


class RewritesUploadStatus(PassthroughIm):
    """Turns UPLOAD_IN_PROGRESS send completions into REQUEST_ABORTED (spec §4.1)."""

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            if nbl.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS:
                nbl.status = S.NDIS_STATUS_REQUEST_ABORTED
        super().ProtocolTcpOffloadSendComplete(binding, head)


class ForcesGracefulDisconnect(PassthroughIm):
    """Relays every disconnect as graceful, whatever the flags (spec §4.5, §4.8)."""

    def MiniportTcpOffloadDisconnect(self, entry: Any, nbl: NetBufferList, flags: int) -> None:
        super().MiniportTcpOffloadDisconnect(
            entry, nbl, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
        )


class LeaksEntryOnTerminate(PassthroughIm):
    """Never frees an IM offload entry from its handle table (spec §9 item 8)."""

    def table_remove(self, object_id: int) -> Any:
        return self.table.get(object_id)


class _RemembersUpperTrees(PassthroughIm):
    """Keeps the upper trees of initiates in flight, in order (for the mutants below)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upper_roots: list[OffloadBlock] = []

    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        self.upper_roots.append(root)
        super().MiniportInitiateOffload(root)


class PassesLowerContextUp(_RemembersUpperTrees):
    """Writes the lower layer's context into the upper slot instead of its own (spec §1.5)."""

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        upper_root = self.upper_roots.pop(0)
        super().ProtocolInitiateOffloadComplete(binding, lower_root)
        for up, low in zip(walk(upper_root), walk(lower_root), strict=True):
            cell, mine = up.miniport_offload_context, low.offload_handle
            if cell is not None and mine is not None and up.status in OFFLOADED_STATUSES:
                cell.miniport_offload_context = mine.miniport_offload_context


class WritesSlotOfFailedBlock(_RemembersUpperTrees):
    """Writes an upper slot for blocks that were not offloaded (spec §3.2.3)."""

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        upper_root = self.upper_roots.pop(0)
        super().ProtocolInitiateOffloadComplete(binding, lower_root)
        for up, low in zip(walk(upper_root), walk(lower_root), strict=True):
            cell = up.miniport_offload_context
            if cell is not None and cell.miniport_offload_context is None:
                cell.miniport_offload_context = low.offload_handle


class CompletesQueryEarly(PassthroughIm):
    """Answers a query at once with SUCCESS instead of waiting for the layer below (§3.8)."""

    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        super().MiniportQueryOffload(root)
        for block in walk(root):
            block.status = S.NDIS_STATUS_SUCCESS
        self.ndis.NdisMQueryOffloadStateComplete(self, root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        pass  # already answered


class HidesUpdateFailures(PassthroughIm):
    """Reports SUCCESS for blocks the layer below failed to update (spec §3.1 item 4, §3.4)."""

    def ProtocolUpdateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        for block in walk(lower_root):
            if block.status == S.NDIS_STATUS_FAILURE:
                block.status = S.NDIS_STATUS_SUCCESS
        super().ProtocolUpdateOffloadComplete(binding, lower_root)


class DropsTerminateChain(PassthroughIm):
    """Loses the send NBLs a terminate hands back (spec §3.6.3)."""

    def ProtocolTerminateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        for block in walk(lower_root):
            block.net_buffer_list_chain = None
        super().ProtocolTerminateOffloadComplete(binding, lower_root)


class IndicatesOnFirstHandle(PassthroughIm):
    """Relays every event on the first connection it ever saw an event for (spec §5.6)."""

    first: NdisOffloadHandle | None = None

    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        self.first = self.first or handle
        super().ProtocolTcpOffloadEvent(self.first, event_type, info)


class AnswersSuccessToEveryIndication(PassthroughIm):
    """Tells the indicating layer SUCCESS whatever the layer above answered (spec §4.8)."""

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        super().ReceiveIndicateReturned(nbl, S.NDIS_STATUS_SUCCESS, nbl.data_length)


class DropsResume(PassthroughIm):
    """Does not relay NDIS_STATUS_OFFLOAD_RESUME (spec §5.5)."""

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        if status != S.NDIS_STATUS_OFFLOAD_RESUME:
            super().ProtocolStatusEx(binding, status)


class KeepsTheNeighborAnswer(PassthroughIm):
    """Answers the NIC's reachability query itself, never asking the host (spec §5.4, §5.6)."""

    def ProtocolIndicateOffloadEvent(self, binding: Any, block: Any, code: Any) -> None:
        self.ndis.NdisReturnOffloadEventIndicate(self, block)


class SwallowsOidAnswers(PassthroughIm):
    """Passes OID requests down and never their answers up (spec §1.3)."""

    def ProtocolOidRequestComplete(self, binding: Any, request: Any) -> None:
        pass


IM_MUTANTS: list[tuple[type[PassthroughIm], set[str]]] = [
    (KeepsTheNeighborAnswer, {"oid_requests_and_offload_events_are_relayed"}),
    (SwallowsOidAnswers, {"oid_requests_and_offload_events_are_relayed"}),
    (SwapsSendNbl, {"io_calls_are_relayed_with_the_same_nbl"}),
    (
        DropsLastReceiveCompletion,
        {
            "io_calls_are_relayed_with_the_same_nbl",
            "completions_come_back_once_each_in_posting_order",
        },
    ),
    (ReversesSendCompletions, {"completions_come_back_once_each_in_posting_order"}),
    (RewritesUploadStatus, {"io_statuses_pass_through_unchanged"}),
    (ForcesGracefulDisconnect, {"io_calls_are_relayed_with_the_same_nbl"}),
    (LeaksEntryOnTerminate, {"drain_to_zero", "terminate_with_io_outstanding"}),
    (PassesLowerContextUp, {"handles_and_contexts_are_translated_at_each_layer"}),
    (WritesSlotOfFailedBlock, {"partial_initiate_writes_slots_only_for_offloaded_blocks"}),
    (CompletesQueryEarly, {"state_operations_complete_only_after_the_lower_completion"}),
    (HidesUpdateFailures, {"block_statuses_pass_through_unchanged"}),
    (DropsTerminateChain, {"terminate_with_io_outstanding"}),
    (IndicatesOnFirstHandle, {"handles_and_contexts_are_translated_at_each_layer"}),
    (AnswersSuccessToEveryIndication, {"indications_are_relayed_up_with_the_upper_handle"}),
    (DropsResume, {"status_indications_are_relayed_up"}),
]


@pytest.mark.parametrize(
    ("mutant", "must_fail"), IM_MUTANTS, ids=[m.__name__ for m, _ in IM_MUTANTS]
)
@pytest.mark.parametrize("depth", [1, 2], ids=["alone", "over-a-good-im"])
def test_suite_catches_broken_im(
    mutant: type[PassthroughIm], must_fail: set[str], depth: int
) -> None:
    # the broken IM at the top of the middle; with depth 2 a correct IM sits below it
    make_stack = functools.partial(_stack_with_top_im, mutant, depth)
    with pytest.raises(LayerKindNonconformance) as caught:
        check_layer_kind(make_stack)
    assert must_fail <= caught.value.failed, str(caught.value)


def _stack_with_top_im(mutant: type[PassthroughIm], depth: int) -> Stack:
    built = iter(range(depth))

    def make(stack: Stack, name: str) -> Layer:
        return make_passthrough(stack, name, mutant if next(built) == 0 else PassthroughIm)

    return middle_stack(make, depth)


def test_leaked_entry_is_reported_as_a_handle_gauge() -> None:
    with pytest.raises(LayerKindNonconformance) as caught:
        check_layer_kind(
            functools.partial(passthrough_stack, cls=LeaksEntryOnTerminate), only=["drain_to_zero"]
        )
    assert "im0.handles" in str(caught.value)


def test_context_leak_is_named_by_the_audit() -> None:
    with pytest.raises(LayerKindNonconformance) as caught:
        check_layer_kind(
            functools.partial(passthrough_stack, cls=PassesLowerContextUp),
            only=["handles_and_contexts_are_translated_at_each_layer"],
        )
    assert "context" in str(caught.value)


# -- broken MUXes ---------------------------------------------------------------------------------
class MuxIgnoresUploadAll(MuxIm):
    """Marks a NIC that asked for every upload as failed, but asks nobody above to upload
    (spec §5.5): its connections stay on a NIC that stopped carrying them."""

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        if status != S.NDIS_STATUS_UPLOAD_ALL:
            super().ProtocolStatusEx(binding, status)


class MuxClaimsFailedObjects(MuxIm):
    """Reports a new neighbor or path as offloaded even when every NIC failed it (spec §3.2.4)."""

    def _finish_initiate(self, call: Any) -> None:
        call.failed_new.clear()
        super()._finish_initiate(call)


class MuxKeepsUnusedInstances(MuxIm):
    """Never terminates a NIC's copy of a neighbor or path once its last connection there is
    gone (spec §2.3, §3.1): the NIC holds objects nobody uses."""

    def _terminate_unused(self, call: Any) -> None:
        pass

    def _release_unused(self) -> None:
        pass


class MuxReturnsToTheFirstNic(MuxIm):
    """Gives every indicated NBL back to its first NIC, whichever indicated it (spec §1.5,
    §4.3): the other NICs never get theirs back."""

    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        first = self.lower_list()[0]
        for nbl in iter_chain(head):
            self.returns_to[nbl.id] = first
        super().MiniportTcpOffloadReceiveReturn(head)


MUX_MUTANTS: list[tuple[type[MuxIm], set[str], Any]] = [
    (MuxIgnoresUploadAll, {"status_indications_are_relayed_up"}, mux_stack),
    (
        MuxClaimsFailedObjects,
        {"partial_initiate_writes_slots_only_for_offloaded_blocks"},
        mux_stack,
    ),
    (MuxKeepsUnusedInstances, {"drain_to_zero"}, mux_stack),
    (MuxKeepsUnusedInstances, {"target_drain_to_zero"}, teamed_target_stack),
    (MuxReturnsToTheFirstNic, {"target_drain_to_zero"}, teamed_target_stack),
]


@pytest.mark.parametrize(
    ("mutant", "must_fail", "make"),
    MUX_MUTANTS,
    ids=[f"{m.__name__}-{mk.__name__}" for m, _, mk in MUX_MUTANTS],
)
def test_suite_catches_broken_mux(mutant: type[MuxIm], must_fail: set[str], make: Any) -> None:
    with pytest.raises(LayerKindNonconformance) as caught:
        check_layer_kind(functools.partial(make, cls=mutant))
    assert must_fail <= caught.value.failed, str(caught.value)


# -- broken targets --------------------------------------------------------------------------------
class CompletesSendOnWrite(OffloadTarget):
    """Completes sends as soon as they are written, not when acknowledged (spec §4.1)."""

    def MiniportTcpOffloadSend(self, ctx: Any, head: NetBufferList) -> None:
        super().MiniportTcpOffloadSend(ctx, head)
        self.WireAcked(ctx, ctx.wire.bytes_written)


class IgnoresPostedReceives(OffloadTarget):
    """Takes posted receive requests and never completes them (spec §4.2, §9 item 1)."""

    def MiniportTcpOffloadReceive(self, ctx: Any, head: NetBufferList) -> None:
        pass


class TakesRefusedDataAsConsumed(OffloadTarget):
    """Treats every answer to a receive indication as SUCCESS: refused bytes are lost (§4.3)."""

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        super().ReceiveIndicateReturned(nbl, S.NDIS_STATUS_SUCCESS, nbl.data_length)


class IndicatesBeforeItsInitiateCompletes(OffloadTarget):
    """Delivers buffered data before its initiate completion (spec §3.2.7, §9 item 5)."""

    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        ndis, held = self.ndis, []

        class HoldCompletion:
            def __getattr__(self, name: str) -> Any:
                return getattr(ndis, name)

            def NdisMInitiateOffloadComplete(self, caller: Any, tree: OffloadBlock) -> None:
                held.append((caller, tree))

        self.ndis = HoldCompletion()  # type: ignore[assignment]
        try:
            super().MiniportInitiateOffload(root)
        finally:
            self.ndis = ndis
        for caller, tree in held:
            ndis.NdisMInitiateOffloadComplete(caller, tree)


class LosesPeerFin(OffloadTarget):
    """Never tells the host the peer closed (spec §5.1 TcpIndicateDisconnect)."""

    def WireEof(self, ctx: Any, offset: int) -> None:
        pass


class IgnoresAbortiveFlag(OffloadTarget):
    """Closes gracefully when asked to abort (spec §4.5)."""

    def MiniportTcpOffloadDisconnect(self, ctx: Any, nbl: NetBufferList, flags: int) -> None:
        super().MiniportTcpOffloadDisconnect(
            ctx, nbl, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
        )


TARGET_MUTANTS: list[tuple[type[OffloadTarget], set[str]]] = [
    (CompletesSendOnWrite, {"target_send_completes_on_ack"}),
    (IndicatesBeforeItsInitiateCompletes, {"target_indications_only_after_initiate_completion"}),
    (LosesPeerFin, {"target_peer_fin_and_reset"}),
    (IgnoresAbortiveFlag, {"target_disconnect"}),
    (IgnoresPostedReceives, {"target_receive_delivery", "target_terminate_with_io_outstanding"}),
    (TakesRefusedDataAsConsumed, {"target_receive_delivery"}),
]


@pytest.mark.parametrize(
    ("mutant", "must_fail"), TARGET_MUTANTS, ids=[m.__name__ for m, _ in TARGET_MUTANTS]
)
def test_suite_catches_broken_target(mutant: type[OffloadTarget], must_fail: set[str]) -> None:
    with pytest.raises(LayerKindNonconformance) as caught:
        check_layer_kind(functools.partial(loopback_target_stack, cls=mutant))
    assert must_fail <= caught.value.failed, str(caught.value)
