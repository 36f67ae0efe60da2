"""The invariant checker on IM drivers (spec §9 item 9, and item 8 "at every layer"), with no
sockets: pass-through IMs that each break one rule of spec §1.5, §1.6, §4.8 or §5.6, between
stub edges; the unbroken pass-through is the legal sequence."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.passthrough import ImCallEntry, ImOffloadEntry, PassthroughIm
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import OFFLOADED_STATUSES
from chimneyd.ndis.status import NdisStatus as S
from tests.unit.invariants_rig import Ctx, Rig


def test_two_faithful_ims_are_not_flagged() -> None:
    rig = Rig(2)
    conn = rig.offload(buffered=b"abc")
    (nbl,) = rig.send(conn, b"payload")
    rig.complete("Send", [nbl])
    ind = rig.indicate(conn, b"abcdef")
    rig.answer(ind)
    rig.give_back(ind)
    query = rig.down("Query", rig.tree(None, None, conn.handle))
    assert isinstance(query.im_reserved, ImCallEntry)  # the target leaves it alone
    rig.up("Query", query)
    back = rig.terminate(conn, rcv_nxt=1003, buffered=b"", with_objects=True)
    assert back.im_reserved is None
    assert rig.violations == []
    assert rig.drained() == []


def test_buffered_data_handed_back_at_terminate_returns_through_every_layer() -> None:
    rig = Rig(2)
    conn = rig.offload()
    root = rig.terminate(conn, rcv_nxt=1004, buffered=b"left", with_objects=True)
    tcp = next(b for b in walk(root) if b.offload_handle is conn.handle)
    assert tcp.delegated is not None and tcp.delegated.BufferedData is not None
    rig.give_back(tcp.delegated.BufferedData)
    assert rig.violations == []
    assert rig.drained() == []


# -- handles never leak across layers ------------------------------------------------------------
class LeakyIm(PassthroughIm):
    """Writes the lower layer's context, not its own offload entry, into the upper slot."""

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._unmirror(lower_root)
        for up, low in call.pairs:
            if up.status in OFFLOADED_STATUSES and id(up) in call.new_entries:
                assert up.miniport_offload_context is not None
                assert low.miniport_offload_context is not None
                up.miniport_offload_context.miniport_offload_context = (
                    low.miniport_offload_context.miniport_offload_context
                )
        self.ndis.NdisMInitiateOffloadComplete(self, call.upper_root)


class SelfHandleIm(PassthroughIm):
    """Writes its own lower handle, not its offload entry, into the upper slot."""

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._unmirror(lower_root)
        for up, _ in call.pairs:
            entry = call.new_entries.get(id(up))
            if entry is not None and up.status in OFFLOADED_STATUSES:
                assert up.miniport_offload_context is not None
                up.miniport_offload_context.miniport_offload_context = entry.handle
        self.ndis.NdisMInitiateOffloadComplete(self, call.upper_root)


def test_an_im_passing_up_the_lower_context_is_flagged() -> None:
    rig = Rig([LeakyIm])
    rig.offload()
    assert rig.flagged("§9 item 9")


def test_an_im_writing_a_handle_as_its_context_is_flagged() -> None:
    rig = Rig([SelfHandleIm])
    rig.offload()
    assert rig.flagged("§9 item 9")


class LoopingIm(PassthroughIm):
    """Relays its first send with the upper layer's handle instead of its own."""

    looped = False

    def MiniportTcpOffloadSend(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        if not self.looped:
            self.looped = True
            self.ndis.NdisOffloadTcpSend(self, entry.upper, head)
            return
        super().MiniportTcpOffloadSend(entry, head)


def test_an_im_relaying_with_another_layers_handle_is_flagged() -> None:
    rig = Rig([LoopingIm])
    conn = rig.offload()
    rig.send(conn, b"x")
    assert rig.flagged("§9 item 9")


# -- ImReserved and SourceHandle restored ---------------------------------------------------------
class ForgetfulIm(PassthroughIm):
    """Leaves its call entry in the upper block's ImReserved."""

    def _unmirror(self, lower_root: OffloadBlock) -> ImCallEntry:
        call = super()._unmirror(lower_root)
        call.upper_root.im_reserved = call
        return call


def test_an_im_not_restoring_im_reserved_is_flagged() -> None:
    rig = Rig([ForgetfulIm])
    rig.offload()
    assert any("ImReserved" in v for v in rig.flagged("§9 item 9"))


def test_a_target_touching_im_reserved_is_flagged() -> None:
    rig = Rig(1)
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    assert isinstance(low.im_reserved, ImCallEntry)
    saved = low.im_reserved
    low.im_reserved = "scribbled"
    for block in walk(low):
        block.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_state_complete(rig.nic, "NdisMQueryOffloadStateComplete", low)
    low.im_reserved = saved
    assert any("ImReserved" in v for v in rig.flagged("§9 item 9"))


def test_a_block_source_handle_changed_is_flagged() -> None:
    rig = Rig(1)
    conn = rig.offload()
    low = rig.down("Query", rig.tree(None, None, conn.handle))
    dep = low.dependent_block_list
    assert dep is not None
    dep.source_handle = "scribbled"
    for block in walk(low):
        block.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_state_complete(rig.nic, "NdisMQueryOffloadStateComplete", low)
    assert any("SourceHandle" in v for v in rig.flagged("§9 item 9"))


# -- NBL pointers unchanged ---------------------------------------------------------------------
class CopyingIm(PassthroughIm):
    """Sends a copy of each send NBL down instead of the NBL it got."""

    def MiniportTcpOffloadSend(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        copy = NetBufferList.for_data(b"".join(head.views()))
        copy.trace = head.trace
        self.ndis.NdisOffloadTcpSend(self, entry.handle, copy)


def test_an_im_sending_another_nbl_down_is_flagged() -> None:
    rig = Rig([CopyingIm])
    conn = rig.offload()
    rig.send(conn, b"x")
    assert rig.flagged("§9 item 9")


class ReindicatingIm(PassthroughIm):
    """Indicates a copy of the NBL it was indicated."""

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: S
    ) -> None:
        entry: ImOffloadEntry = handle.owner
        copy = NetBufferList.for_data(b"".join(nbl.views()))
        self.ndis.NdisTcpOffloadReceiveHandler(self, entry.upper, copy, status)


def test_an_im_indicating_another_nbl_up_is_flagged() -> None:
    rig = Rig([ReindicatingIm])
    conn = rig.offload()
    rig.indicate(conn, b"data")
    assert rig.flagged("§9 item 9")


class RelabellingIm(PassthroughIm):
    """Turns a refused indication into an accepted one on its way down."""

    def ReceiveIndicateReturned(self, nbl: NetBufferList, status: S, bytes_consumed: int) -> None:
        super().ReceiveIndicateReturned(nbl, S.NDIS_STATUS_SUCCESS, nbl.data_length)


def test_an_im_changing_an_indications_return_is_flagged() -> None:
    rig = Rig([RelabellingIm])
    conn = rig.offload()
    ind = rig.indicate(conn, b"data")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    assert rig.flagged("§9 item 9")


def test_returning_a_refused_indication_is_flagged() -> None:
    rig = Rig(1)
    conn = rig.offload()
    ind = rig.indicate(conn, b"data")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    rig.checker.on_receive_return(rig.binding, ind)
    assert rig.flagged("§6.3")


def test_returning_an_indication_twice_is_flagged() -> None:
    rig = Rig(1)
    conn = rig.offload()
    ind = rig.indicate(conn, b"data")
    rig.answer(ind)
    rig.give_back(ind)
    assert rig.violations == []
    rig.checker.on_receive_return(rig.binding, ind)
    assert rig.flagged("§6.3")


# -- the handle dead at every layer ----------------------------------------------------------------
class HastyIm(PassthroughIm):
    """Completes a terminate upward at once, leaving its own object offloaded below."""

    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        for block in walk(root):
            block.status = S.NDIS_STATUS_SUCCESS
            cell: Any = block.miniport_offload_context
            if cell is not None:
                entry: ImOffloadEntry = cell.miniport_offload_context
                self.table_remove(entry.id)
        self.ndis.NdisMTerminateOffloadComplete(self, root)


def test_an_im_completing_a_terminate_before_its_own_is_flagged() -> None:
    rig = Rig([HastyIm])
    conn = rig.offload()
    tree = rig.tree(None, None, conn.handle)
    rig.ndis.NdisTerminateOffload(rig.host, rig.binding, tree)
    rig.run()
    assert rig.flagged("§9 item 8")


def test_a_state_call_naming_another_layers_handle_is_flagged() -> None:
    rig = Rig(1)
    conn = rig.offload()
    # the IM's lower binding, with the host's handle in the tree
    rig.checker.on_state_down(
        rig.bindings[1], "NdisQueryOffloadState", rig.tree(None, None, conn.handle)
    )
    assert any("names handle" in v for v in rig.flagged("§9 item 9"))


def test_io_after_the_context_slot_changed_is_flagged() -> None:
    rig = Rig(0)
    conn = rig.offload()
    conn.handle.miniport_offload_context = Ctx()  # someone wrote the slot after the initiate
    rig.send(conn, b"x")
    assert any("context is not the one" in v for v in rig.flagged("§9 item 9"))
