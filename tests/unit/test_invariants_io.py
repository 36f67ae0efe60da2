"""The invariant checker on I/O (spec §9 items 1 to 4), with no sockets: each check is fed the
violation it exists for, next to the legal sequence it must leave alone. Paths with and without
a pass-through IM, since every layer is checked."""

from __future__ import annotations

import pytest

from chimneyd.ndis.nbl import NetBufferList, link_chain
from chimneyd.ndis.status import NdisStatus as S
from tests.unit.invariants_rig import Rig


@pytest.fixture(params=[0, 1], ids=["host-nic", "host-im-nic"])
def rig(request: pytest.FixtureRequest) -> Rig:
    return Rig(request.param)


# -- legal sequences ---------------------------------------------------------------------------
def test_a_clean_session_is_not_flagged(rig: Rig) -> None:
    conn = rig.offload(buffered=b"early")
    a, b = rig.send(conn, b"hello", b"world")
    rig.complete("Send", [a], S.NDIS_STATUS_SUCCESS)
    rig.complete("Send", [b], S.NDIS_STATUS_SUCCESS)
    (req,) = rig.post(conn, 8)
    rig.fill(req, b"early")  # buffered data first (§3.2.7), here into a posted request
    ind = rig.indicate(conn, b"abcdef")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 2)
    ind2 = rig.indicate(conn, b"cdef")  # the refused rest comes next
    rig.answer(ind2)
    rig.give_back(ind2)
    disc = rig.disconnect(conn)
    rig.complete("Disconnect", [disc])
    # 5 + 6 bytes delivered while offloaded, 5 of them handed down at initiate
    rig.terminate(conn, rcv_nxt=1000 + 6, with_objects=True)
    assert rig.violations == []
    assert rig.drained() == []


def test_a_partial_send_then_failures_is_legal(rig: Rig) -> None:
    conn = rig.offload()
    nbls = rig.send(conn, b"a" * 10, b"b" * 10, b"c" * 10)
    rig.complete("Send", nbls, S.NDIS_STATUS_UPLOAD_IN_PROGRESS, [10, 4, 0])
    assert rig.violations == []


# -- item 1: one completion per NBL, by the matching function ---------------------------------
def test_completing_twice_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"x")
    rig.complete("Send", [nbl])
    rig.checker.on_io_complete(rig.nic, "NdisTcpOffloadSendComplete", [nbl])
    assert rig.flagged("§9 item 1")


def test_completing_a_send_as_a_receive_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"x")
    nbl.status = S.NDIS_STATUS_SUCCESS
    rig.checker.on_io_complete(rig.nic, "NdisTcpOffloadReceiveComplete", [nbl])
    assert rig.flagged("§9 item 1")


def test_posting_an_nbl_still_outstanding_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"x")
    nbl.next = None
    rig.ndis.NdisOffloadTcpSend(rig.host, conn.handle, nbl)
    assert rig.flagged("§9 item 1")


# -- item 2: completion order ----------------------------------------------------------------
def test_sends_completed_out_of_order_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    _, b = rig.send(conn, b"a", b"b")
    rig.complete("Send", [b])
    assert rig.flagged("§9 item 2")


def test_receives_completed_out_of_order_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    _, b = rig.post(conn, 4, 4)
    rig.fill(b, b"data")
    assert rig.flagged("§9 item 2")


def test_disconnect_before_earlier_sends_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.send(conn, b"a")
    disc = rig.disconnect(conn)
    rig.complete("Disconnect", [disc])
    assert rig.flagged("§9 item 2")


def test_a_refused_disconnect_at_terminate_before_sends_handed_back_is_legal(rig: Rig) -> None:
    # the terminate completes the disconnect with the status it was refused with, then hands
    # back the send before it (spec §3.6.3)
    conn = rig.offload()
    a, b = rig.send(conn, b"a", b"b")
    disc = rig.disconnect(conn)

    def during() -> None:
        rig.complete("Send", [a])
        rig.complete("Disconnect", [disc], S.NDIS_STATUS_FAILURE)

    rig.terminate(conn, returned=[b], during=during)
    assert rig.violations == []


def test_a_send_completed_after_the_disconnect_at_terminate_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    a, b = rig.send(conn, b"a", b"b")
    disc = rig.disconnect(conn)

    def during() -> None:
        rig.complete("Send", [a])
        rig.complete("Disconnect", [disc], S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
        rig.complete("Send", [b])  # acknowledged meanwhile, but the disconnect went first

    rig.terminate(conn, during=during)
    assert rig.flagged("§9 item 2")


# -- item 3: bytes transferred, partial sends, failures ------------------------------------------
def test_bytes_transferred_must_equal_the_nb_advance(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"abcdef")
    nbl.status = S.NDIS_STATUS_SUCCESS
    nbl.tcp_offload_bytes_transferred = 6
    nbl.advance(4)  # advanced by 4, reports 6
    rig.ndis.NdisTcpOffloadSendComplete(rig.nic, nbl)
    rig.run()
    assert rig.flagged("§9 item 3")


def test_success_with_bytes_unacknowledged_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (nbl,) = rig.send(conn, b"abcdef")
    rig.complete("Send", [nbl], S.NDIS_STATUS_SUCCESS, [3])
    assert rig.flagged("§9 item 3")


def test_two_partial_sends_in_one_completion_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    nbls = rig.send(conn, b"a" * 10, b"b" * 10)
    rig.complete("Send", nbls, S.NDIS_STATUS_REQUEST_ABORTED, [4, 4])
    assert rig.flagged("§9 item 3")


def test_a_send_succeeding_after_a_failed_one_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    a, b = rig.send(conn, b"a" * 10, b"b" * 10)
    rig.complete("Send", [a], S.NDIS_STATUS_REQUEST_ABORTED, [10])  # acked, yet failed
    rig.complete("Send", [b], S.NDIS_STATUS_SUCCESS)  # a later completion: still §9 item 3
    assert any("succeeded after a failed one" in v for v in rig.flagged("§9 item 3"))


def test_bytes_acknowledged_after_a_gap_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    nbls = rig.send(conn, b"a" * 10, b"b" * 10)
    rig.complete("Send", nbls, S.NDIS_STATUS_UPLOAD_IN_PROGRESS, [0, 10])
    assert rig.flagged("§9 item 3")


# -- item 4: receive completions and indications, in sequence -------------------------------------
def test_receive_completion_during_an_indication_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    (req,) = rig.post(conn, 8)
    ind = rig.indicate(conn, b"abc")  # not returned yet
    rig.complete("Receive", [req], S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    assert rig.flagged("§9 item 4")
    rig.answer(ind)


def test_two_indications_at_once_are_flagged(rig: Rig) -> None:
    conn = rig.offload()
    rig.indicate(conn, b"abc")
    rig.indicate(conn, b"def")
    assert rig.flagged("§9 item 4")


def test_data_after_a_request_not_filled_in_one_completion_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    a, b = rig.post(conn, 8, 8)
    a.first_net_buffer.copy_in(0, memoryview(b"abc"))  # type: ignore[union-attr]
    b.first_net_buffer.copy_in(0, memoryview(b"def"))  # type: ignore[union-attr]
    rig.complete("Receive", [a, b], S.NDIS_STATUS_SUCCESS, [3, 3])
    assert rig.flagged("§9 item 4")


def test_new_data_before_buffered_data_is_flagged(rig: Rig) -> None:
    conn = rig.offload(buffered=b"old bytes")
    ind = rig.indicate(conn, b"new bytes")
    rig.answer(ind)
    assert rig.flagged("§9 item 4")


def test_buffered_data_first_through_an_indication_is_legal(rig: Rig) -> None:
    conn = rig.offload(buffered=b"old bytes")
    ind = rig.indicate(conn, b"old bytes and new")
    rig.answer(ind)
    assert rig.violations == []


def test_other_data_after_a_refusal_is_flagged(rig: Rig) -> None:
    conn = rig.offload()
    ind = rig.indicate(conn, b"0123456789")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 4)
    (req,) = rig.post(conn, 6)
    rig.fill(req, b"zzzzzz")  # "456789" is owed first (§4.3, §4.4)
    assert rig.flagged("§9 item 4")


def test_refused_data_into_a_posted_request_is_legal(rig: Rig) -> None:
    conn = rig.offload()
    ind = rig.indicate(conn, b"0123456789")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    (req,) = rig.post(conn, 16)
    rig.fill(req, b"0123456789")
    assert rig.violations == []


def test_bytes_lost_across_the_offload_are_flagged(rig: Rig) -> None:
    conn = rig.offload(rcv_nxt=5000)
    ind = rig.indicate(conn, b"abcd")
    rig.answer(ind)
    rig.give_back(ind)
    # the NIC received 10 bytes but delivered 4 and hands back none
    rig.terminate(conn, rcv_nxt=5010)
    assert rig.flagged("§9 item 4")


def test_undelivered_bytes_handed_back_at_terminate_are_legal(rig: Rig) -> None:
    conn = rig.offload(rcv_nxt=5000, buffered=b"xy")
    ind = rig.indicate(conn, b"xyabcd")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, 3)
    # received 10 new bytes: 6 indicated (2 of them the buffered), 3 taken; 9 go back
    rig.terminate(conn, rcv_nxt=5010, buffered=b"bcd" + b"efghij")
    assert rig.violations == []


def test_owed_bytes_missing_from_the_terminate_are_flagged(rig: Rig) -> None:
    conn = rig.offload(rcv_nxt=5000)
    ind = rig.indicate(conn, b"abcdef")
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    rig.terminate(conn, rcv_nxt=5006, buffered=b"zzzzzz")
    assert rig.flagged("§9 item 4")


def test_a_chain_mixing_two_connections_is_ordered_per_connection(rig: Rig) -> None:
    one, two = rig.offload(), rig.offload()
    (a,) = rig.send(one, b"a")
    (b,) = rig.send(two, b"b")
    for nbl in (a, b):
        nbl.status = S.NDIS_STATUS_SUCCESS
        nbl.tcp_offload_bytes_transferred = 1
        nbl.advance(1)
    rig.ndis.NdisTcpOffloadSendComplete(rig.nic, link_chain([b, a]))
    rig.run()
    assert rig.violations == []


def test_the_initiate_send_chain_is_not_io_during_offloading(rig: Rig) -> None:
    sends = [NetBufferList.for_data(b"unacked"), NetBufferList.for_data(b"unsent")]
    conn = rig.offload(sends=sends)
    for nbl in sends:
        nbl.trace = conn.handle.trace
    rig.complete("Send", sends)
    assert rig.violations == []


def test_streams_can_be_left_out_for_a_miniport_double_that_makes_up_its_bytes() -> None:
    rig = Rig(1)
    rig.checker.check_streams = False
    conn = rig.offload(buffered=b"old bytes")
    ind = rig.indicate(conn, b"new bytes")  # not the buffered data
    rig.answer(ind, S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    (req,) = rig.post(conn, 8)
    rig.complete("Receive", [req], S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    rig.terminate(conn, rcv_nxt=0x1234)  # made-up delegated state
    assert rig.violations == []
