"""A teaming MUX's own copies of a path and neighbor on a NIC whose terminate found their
hardware state corrupt (spec §3.7): only a terminate is left for them, so no new connection
goes under them, and they are still terminated once their last dependent there has left.
An initiate the MUX holds (for such copies, or for a NIC's capabilities) may be overtaken by
an invalidate of its path: its connection is asked up all the same (spec §3.5)."""

from __future__ import annotations

import pytest

from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack

_INVALID_STATE = (TcpOffloadEventType.TcpIndicateRetrieve, int(TcpUploadReason.InvalidState))


def _new_connection(st: Stack, tree: OffloadTree) -> tuple[OffloadBlock, NdisOffloadHandle]:
    """An initiate of one new connection under `tree`'s path and neighbor (linkers)."""
    root = st.top.neighbor_block(tree.neighbor)
    block = root.add_dependent(st.top.path_block(tree.paths[0])).add_dependent(
        st.top.tcp_block(st.wires.open())
    )
    assert block.offload_handle is not None
    return root, block.offload_handle


def _asked_up(st: Stack, handle: NdisOffloadHandle) -> list[tuple[TcpOffloadEventType, int]]:
    return [(e.event_type, e.info) for e in st.top.events if e.handle is handle]


def test_a_new_connection_waits_for_the_corrupt_copies_on_its_nic_to_be_terminated() -> None:
    """Two connections under one path, round robin: one on each NIC. The layer above uploads
    the one on nic0; the MUX adds its copies of the path and neighbor there to that terminate,
    and nic0 finds them corrupt: they are FAILED, as is the connection. A new connection
    under the same path, placed on nic0, must not be linked under them: it waits until the
    layer above has terminated the failed connection again (spec §3.7 step 4), which takes
    the copies with it, and is then placed again (round robin's turn has moved on: nic1).
    The copies are gone, and every table drains at the end (spec §9 item 10)."""
    st = teamed_target_stack(nics=2)
    mux, nic0, _nic1 = st.under_test
    tree = st.top.connection_tree([st.wires.open(), st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    first, second = tree.tcp
    assert first.miniport_offload_context.lower.lower.name == "nic0"
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    corrupt = [i for v in mux.vobj_table.values() for i in v.instances.values()]
    corrupt = [i for i in corrupt if i.lower.name == "nic0"]
    assert corrupt and all(i.lifecycle.phase is Phase.FAILED for i in corrupt)

    # a new connection under the path (still offloaded above): nic0's turn
    root, third = _new_connection(st, tree)
    (block,) = [b for b in walk(root) if b.offload_handle is third]
    done = len(st.top.state_completions)
    st.top.initiate(root)
    st.run()
    under_corrupt = [c for c in nic0.connections() if c.path.lifecycle.phase is Phase.FAILED]
    assert [c.upper for c in under_corrupt] == [first.miniport_offload_context.handle], (
        "a new connection was linked under a path whose hardware state is corrupt"
    )
    assert len(st.top.state_completions) == done  # it waits for them to go

    # spec §3.7 step 4: the layer above terminates the failed connection again
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert [c.op for c in st.top.state_completions[done:]] == ["Terminate", "Initiate"]
    assert block.status == S.NDIS_STATUS_SUCCESS
    now = [i for v in mux.vobj_table.values() for i in v.instances.values()]
    assert not set(corrupt) & set(now)  # terminated: gone from the MUX
    assert all(i.lifecycle.phase is Phase.IDLE for i in corrupt)
    # the retry goes where the policy says now (round robin: nic1); wherever, not under them
    placed = third.miniport_offload_context
    assert placed is not None and placed.path.instances[placed.lower.id].refs
    assert placed.path.instances[placed.lower.id].lifecycle.phase is Phase.OFFLOADED

    # everything goes: the tables drain
    st.top.terminate(st.top.reference_tree(tree, [second, third], state="delegated"))
    st.run()
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_on_a_single_nic_the_new_connection_goes_under_fresh_copies_invalidated_as_above() -> None:
    """One NIC: the new connection can only go to the NIC whose copies are corrupt. It waits;
    meanwhile the layer above invalidates the path (its copy there is FAILED: the invalidate
    does not reach it, spec §3.7). Once the failed connection and the corrupt copies are
    terminated, the connection goes under fresh copies of the path and neighbor, and since
    the path is invalidated above, the MUX invalidates its fresh copy, so the NIC asks the
    connection up (spec §3.5, `InvalidState`) instead of carrying it under a stale path."""
    st = teamed_target_stack(nics=1)
    mux, _nic0 = st.under_test
    tree = st.top.connection_tree([st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    (first,) = tree.tcp
    fail_next(_nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))
    st.run()
    (path,) = [v for v in mux.vobj_table.values() if v.parent is not None]
    corrupt = path.instances[mux.lower_list()[0].binding.id]
    assert corrupt.lifecycle.phase is Phase.FAILED

    root, second = _new_connection(st, tree)
    st.top.initiate(root)
    st.run()
    assert second.miniport_offload_context is None and mux.deferred  # it waits
    done = len(st.top.state_completions)
    st.top.invalidate(st.top.reference_tree(tree, [], with_path=True))
    st.run()
    assert [(c.op, c.statuses[1]) for c in st.top.state_completions[done:]] == [
        ("Invalidate", S.NDIS_STATUS_SUCCESS)
    ]
    st.top.terminate(st.top.reference_tree(tree, [first], state="delegated"))  # §3.7 step 4
    st.run()
    placed = second.miniport_offload_context
    assert placed is not None, "the new connection was never offloaded"
    fresh = path.instances[placed.lower.id]
    assert fresh is not corrupt and corrupt.lifecycle.phase is Phase.IDLE
    assert _asked_up(st, second) == [_INVALID_STATE]

    st.top.terminate(st.top.reference_tree(tree, [second], state="delegated"))
    st.run()
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


@pytest.mark.parametrize(
    ("policy", "nic"),
    [("active-standby", "nic0"), ("round-robin", "nic1")],
)
def test_an_invalidate_overtaking_an_initiate_waiting_for_a_nics_capabilities(
    policy: str, nic: str
) -> None:
    """nic1 fails and recovers (spec §5.5): at its RESUME the MUX asks it for its
    capabilities again, and holds every initiate until it has answered. The layer above
    initiates a connection under an offloaded path, then invalidates that path; the
    invalidate goes by the waiting initiate. Wherever the connection is then placed, under
    the invalidated copy on nic0 (which the NIC sees) or a fresh copy on nic1 (which the MUX
    invalidates, `_invalidate_copies`), its NIC asks it up (spec §3.5)."""
    st = teamed_target_stack(nics=2, policy=policy)
    mux, _nic0, nic1 = st.under_test
    tree = st.top.connection_tree([st.wires.open()])  # on nic0; nic1 carries nothing
    st.top.initiate(tree.root)
    st.run()
    (first,) = tree.tcp
    nic1.fail_adapter()
    st.run()
    nic1.recover_adapter()
    queue = st.scheduler.queue
    while True:  # hold nic1's answer to the MUX's capability query
        assert queue, "the MUX never asked nic1 for its capabilities"
        layer, fn, _ = queue[0]
        if layer is nic1 and getattr(fn, "__name__", "") == "MiniportOidRequest":
            held = queue.popleft()
            break
        st.scheduler.run_one()
    st.run()
    assert mux.own_queries

    root, second = _new_connection(st, tree)
    st.top.initiate(root)
    st.run()
    assert second.miniport_offload_context is None and mux.deferred  # it waits
    st.top.invalidate(st.top.reference_tree(tree, [], with_path=True))
    st.run()
    assert _asked_up(st, first) == [_INVALID_STATE]
    queue.appendleft(held)  # nic1 answers
    st.run()
    placed = second.miniport_offload_context
    assert placed is not None, "the new connection was never offloaded"
    assert placed.lower.lower.name == nic
    assert _asked_up(st, second) == [_INVALID_STATE]

    st.top.terminate(st.top.reference_tree(tree, [first, second], state="delegated"))
    st.run()
    st.top.terminate(st.top.reference_tree(tree, [], with_path=True, with_neighbor=True))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []
