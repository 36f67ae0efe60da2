"""Offload-target (and teaming MUX) behaviour the invariant checker flags, each pinned by a
focused socket-free test: the protocol stub over the real target over `MemoryWire`s
(`chimneyd.testing`).
"""

from __future__ import annotations

from typing import Any

from chimneyd.ndis.blocks import walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import MemoryWire, OffloadTree, Stack
from chimneyd.testing.factories import fail_next, loopback_target_stack, teamed_target_stack


def _offloaded(**options: object) -> tuple[Stack, MemoryWire, OffloadTree, NdisOffloadHandle]:
    st = loopback_target_stack(**options)  # type: ignore[arg-type]
    wire = st.wires.open()
    tree = st.top.connection_tree([wire])
    st.top.initiate(tree.root)
    st.run()
    return st, wire, tree, tree.tcp[0]


def _hold_the_indication(st: Stack) -> tuple[Any, ...]:
    """Deliver until the target's receive indication is the next delivery, and take it out of
    the queue: the host is slow to take it, so what the test makes the host do now reaches the
    target while its indication is in flight (as with a busy host in the runtime). Put it back
    with `_release`."""
    queue = st.scheduler.queue
    while queue and getattr(queue[0][1], "__name__", "") != "ProtocolTcpOffloadReceiveIndicate":
        st.scheduler.run_one()
    assert queue, "no receive indication"
    return queue.popleft()


def _release(st: Stack, held: tuple[Any, ...]) -> None:
    st.scheduler.queue.append(held)
    st.run()


def test_terminate_waits_for_the_indication_before_completing_receives() -> None:
    st, wire, tree, handle = _offloaded()
    wire.peer_send(b"hello")
    held = _hold_the_indication(st)
    st.top.receive(handle, 16)  # posted while the indication is in flight: the target queues it
    st.top.terminate(st.top.reference_tree(tree, state="delegated"))
    st.run()
    _release(st, held)
    assert st.checker.violations == []


def test_peer_reset_waits_for_the_indication_and_keeps_what_was_consumed() -> None:
    st, wire, tree, handle = _offloaded()
    wire.peer_send(b"hello")
    held = _hold_the_indication(st)
    st.top.receive(handle, 16)
    wire.peer_reset()
    st.run()
    _release(st, held)
    st.top.terminate(st.top.reference_tree(tree, state="delegated"))
    st.run()
    assert st.checker.violations == []


def test_a_receive_refused_while_the_indication_is_up_waits_for_it() -> None:
    st, wire, tree, handle = _offloaded()
    wire.peer_send(b"hello")
    held = _hold_the_indication(st)
    wire.peer_reset()
    st.run()
    (late,) = st.top.receive(handle, 16)  # after the RST: refused, but not over the indication
    st.run()
    assert late.status == S.NDIS_STATUS_PENDING
    _release(st, held)
    assert late.status == S.NDIS_STATUS_REQUEST_ABORTED
    st.top.terminate(st.top.reference_tree(tree, state="delegated"))
    st.run()
    assert st.checker.violations == []


def test_a_linker_whose_dependents_all_failed_fails_its_parent_too() -> None:
    st, _, tree, _ = _offloaded(max_connections=1)
    # a second connection under the same neighbor and path: the NIC is full (TCP_ENTRIES)
    root = st.top.neighbor_block(tree.neighbor)
    root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(st.wires.open())
    )
    st.top.initiate(root)
    st.run()
    n, p, t = walk(root)
    assert t.status == S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES
    assert p.status == S.NDIS_STATUS_FAILURE  # a linker whose dependents all failed
    assert n.status == S.NDIS_STATUS_FAILURE  # and so is the linker above it
    assert st.checker.violations == []


def test_a_placeholder_always_succeeds() -> None:
    st = loopback_target_stack()
    root = st.top.neighbor_block()
    root.offload_handle = None  # a placeholder: no neighbor object at this level
    root.add_dependent(st.top.path_block()).add_dependent(st.top.tcp_block(st.wires.open()))
    st.top.initiate(root)
    st.run()
    assert [b.status for b in walk(root)] == [S.NDIS_STATUS_SUCCESS, *[S.NDIS_STATUS_FAILURE] * 2]
    assert st.checker.violations == []


def test_a_failed_send_fails_the_sends_after_it() -> None:
    st, wire, _, handle = _offloaded()
    fail_next(st.under_test[0], "MiniportTcpOffloadSend", S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    st.top.send(handle, b"lost")
    st.run()
    st.top.send(handle, b"after")
    st.run()
    wire.ack()
    st.run()
    assert bytes(wire.peer_received) == b""  # nothing after the hole
    assert st.checker.violations == []


def test_a_refused_send_completes_before_the_disconnect_after_it() -> None:
    """Sent, refused (held behind the unacknowledged one), then a disconnect refused too: when
    the first is acknowledged, the refused send completes before the disconnect (spec §4.5,
    §9 item 2)."""
    st, wire, _, handle = _offloaded()
    (sent,) = st.top.send(handle, b"unacknowledged")
    st.run()
    fail_next(st.under_test[0], "MiniportTcpOffloadSend", S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    (refused,) = st.top.send(handle, b"refused")
    fin = st.top.disconnect(handle)
    st.run()
    assert st.top.completed() == []  # both wait for the send before them
    wire.ack()
    st.run()
    assert st.top.completed() == [sent, refused, fin]
    assert fin.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    assert st.checker.violations == []


def test_a_refused_send_completes_before_a_disconnect_the_peers_rst_ends() -> None:
    """As above, and the peer resets the connection before the acknowledgement: the RST aborts
    the unacknowledged send, the refused one completes with its own status, then the
    disconnect (spec §4.5, §9 item 2)."""
    st, wire, _, handle = _offloaded()
    (sent,) = st.top.send(handle, b"unacknowledged")
    st.run()
    fail_next(st.under_test[0], "MiniportTcpOffloadSend", S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    (refused,) = st.top.send(handle, b"refused")
    fin = st.top.disconnect(handle)
    st.run()
    wire.peer_reset()
    st.run()
    assert st.top.completed() == [sent, refused, fin]
    assert (sent.status, refused.status, fin.status) == (
        S.NDIS_STATUS_REQUEST_ABORTED,
        S.NDIS_STATUS_UPLOAD_IN_PROGRESS,
        S.NDIS_STATUS_REQUEST_ABORTED,
    )
    assert st.checker.violations == []


def test_a_terminate_completes_a_disconnect_and_hands_the_sends_before_it_back() -> None:
    """A graceful disconnect waiting behind unacknowledged sends when the terminate comes: it
    completes UPLOAD_IN_PROGRESS, the sends go back in the terminate's chain, in order (spec
    §3.6.3, §6.2) — legal, though the sends were posted first."""
    st, _, tree, handle = _offloaded()
    sent = st.top.send(handle, b"one", b"two")
    fin = st.top.disconnect(handle)
    st.run()
    assert st.top.completed() == []
    st.top.terminate(st.top.reference_tree(tree, None, True, True, "delegated"))
    st.run()
    assert st.top.completed() == [fin] and fin.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    assert st.top.returned_sends == sent
    assert st.checker.violations == []


# -- the teaming MUX, a protocol edge to its NICs like the host ------------------------------------
def test_a_mux_keeps_a_nics_path_until_every_dependent_terminate_completed() -> None:
    """The MUX terminates its own copy of a path on a NIC only with or after the connections
    there (spec §3.1, §9 item 10): not while one of them is still being terminated in another
    tree, which the NIC completes later (its indication is in flight)."""
    st = teamed_target_stack(nics=1)
    one, two = st.wires.open(), st.wires.open()
    tree = st.top.connection_tree([one, two])  # one neighbor and one path for both
    st.top.initiate(tree.root)
    st.run()
    first, second = tree.tcp
    one.peer_send(b"hello")
    held = _hold_the_indication(st)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()  # the NIC holds this terminate until its indication returns
    st.top.terminate(st.top.reference_tree(tree, [second], state="delegated"))
    st.run()
    _release(st, held)
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    st.top.return_indications()
    st.run()
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_a_mux_terminating_an_object_waits_for_its_copy_still_going_on_a_nic() -> None:
    """A NIC refuses the connection the MUX placed on it: the MUX lets go of the copies of the
    path and neighbor it offloaded there for it. The layer above terminating that path and
    neighbor with their last connection (on the other NIC) while those copies' terminate is
    still in flight hears of it only once every copy is gone (spec §3.1; §9 item 8: the
    handle dead at every layer)."""
    st = teamed_target_stack(nics=2)
    _, nic0, nic1 = st.under_test
    fail_next(nic0, "MiniportInitiateOffload", S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES)
    tree = st.top.connection_tree([st.wires.open(), st.wires.open()])
    refused, kept = tree.tcp  # round robin: the first on nic0, the second on nic1
    st.top.initiate(tree.root)
    queue = st.scheduler.queue
    while True:  # run until the MUX terminates its copies on nic0: hold that terminate
        assert queue, "the MUX never let go of its copies on nic0"
        layer, fn, _ = queue[0]
        if layer is nic0 and getattr(fn, "__name__", "") == "MiniportTerminateOffload":
            held = queue.popleft()
            break
        st.scheduler.run_one()
    st.run()
    assert refused.miniport_offload_context is None and nic1.tcp_count == 1
    done = len(st.top.state_completions)
    st.top.terminate(
        st.top.reference_tree(tree, [kept], with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert len(st.top.state_completions) == done  # not while a copy lives on nic0
    _release(st, held)
    assert len(st.top.state_completions) == done + 1
    assert st.checker.violations == []
    assert st.drain_problems() == []
