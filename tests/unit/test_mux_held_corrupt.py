"""A neighbor copy that a terminate from above holds back (`MuxCall.held`) found corrupt by
its NIC when the MUX terminates it at last (spec §3.7). The terminate above then completes
failed for that neighbor, which lives on for the host's further terminate (step 4), and the
MUX terminates the copy again; nothing stays held, paused or in a table.

Two kinds of held copies: one with another neighbor's path copy still under it on its NIC (a
next-hop change left it there, `relink`), terminated with that path copy once its connections
have gone; and one a failed NIC holds the offload of until its RESUME (spec §5.5),
terminated as unused once offloaded. A query or invalidate from above never reaches a held
copy: its neighbor is being terminated above (spec §3.1)."""

from __future__ import annotations

from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
)
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from tests.unit.mux_rig import assert_all_drained, mux_of, nic_of
from tests.unit.test_mux_crossing_moves import _cross, _recover_and_close

OK = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE


def test_a_held_copy_with_a_stray_path_under_it_found_corrupt() -> None:
    """Path P of neighbor N1 moved to N2 while nic1 had failed: nic1's copy of P stays under
    its copy of N1. The terminate of N1 (with its other path, on nic2) holds that N1 copy
    back; once P's last connection on nic1 has gone, the MUX terminates P's copy and N1's
    there, and nic1 finds them corrupt. N1's terminate completes failed for N1 (its path
    terminated), and the host's further terminate of N1 completes it."""
    st = teamed_target_stack(nics=3, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    tree = top.connection_tree([st.wires.open() for _ in range(5)])  # nic0 1 2 0 1: path P
    top.initiate(tree.root)
    st.run()
    root = top.neighbor_block(tree.neighbor)  # a second path of N1: nic2
    p3 = root.add_dependent(top.path_block())
    tcp3 = p3.add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)
    st.run()
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert n2.offload_handle is not None
    assert p3.offload_handle is not None and tcp3.offload_handle is not None
    on_nic1 = [tree.tcp[1], tree.tcp[4]]
    nic1.fail_adapter()  # its connections are asked up; its copy of P stays under N1's
    st.run()
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    st.run()
    assert top.state_completions[-1].statuses == [OK, OK]
    top.terminate(top.reference_tree(tree, on_nic1[:1], state="delegated"))
    st.run()
    old = new_neighbor_block(tree.neighbor)  # with its other path and connection (nic2)
    block = old.add_dependent(new_path_block(p3.offload_handle))
    block.add_dependent(new_tcp_block(tcp3.offload_handle)).delegated = TcpOffloadStateDelegated()
    done = len(top.state_completions)
    top.terminate(old)  # nic2's part goes now; N1's copy on nic1 is held back
    st.run()
    held = [i for call in mux.held_terminates for i in call.held]
    assert [(i.lower.name, str(i.vobj)) for i in held] == [("nic1", str(held[0].vobj))]
    assert held[0].vobj.parent is None and len(top.state_completions) == done
    # the terminate of P's last connection on nic1 takes P's copy and N1's there with it (the
    # MUX's: nothing else depends on them), and nic1 finds them all corrupt (spec §3.7)
    fail_next(nic1, "MiniportTerminateOffload", FAILURE)
    last = top.reference_tree(tree, on_nic1[1:], state="delegated")
    top.terminate(last)
    st.run()
    assert not nic1.fail_next, "the held copy's terminate was not failed"
    assert held[0].corrupt == 1 and held[0].lifecycle.phase is Phase.FAILED
    assert not mux.held_terminates and not mux.held_by, mux.leftovers()
    completed = {id(c.root): c.statuses for c in top.state_completions[done:]}
    # N1 fails (its copy on nic1 lost its state, spec §3.7); its own path and connection went
    assert completed.get(id(old)) == [FAILURE, OK, OK], completed
    assert completed.get(id(last)) == [OK, OK, FAILURE], completed  # the connection: corrupt
    assert not mux.paused_above
    # the host's further terminates (step 4): N1's waits for P's copy under its copy on nic1
    # (dependents first, spec §3.1), which goes with the connection's
    again = new_neighbor_block(tree.neighbor)
    top.terminate(again)
    st.run()
    assert id(again) not in {id(c.root) for c in top.state_completions}
    top.terminate(top.reference_tree(tree, on_nic1[1:], state="delegated"))
    st.run()
    assert top.state_completions[-1].root is again, mux.leftovers()
    assert top.state_completions[-1].statuses == [OK]
    assert not mux.held_terminates and not mux.held_by, mux.leftovers()
    nic1.recover_adapter()
    st.run()
    rest = [h for h in tree.tcp if h not in on_nic1]
    top.terminate(top.reference_tree(tree, rest, with_path=True, state="delegated"))
    st.run()
    top.terminate(new_neighbor_block(n2.offload_handle))
    st.run()
    assert_all_drained(st)


def test_a_copy_a_failed_nic_held_found_corrupt_at_its_return() -> None:
    """The crossing moves (test_mux_crossing_moves): neighbor A's terminate holds back A's
    copy that nic2, failed, holds the offload of. At nic2's RESUME the copy is offloaded and
    the MUX terminates it as unused; nic2 finds it corrupt. A's terminate completes failed,
    the MUX terminates the copy again at once, and the host's further terminate of A
    completes it (spec §3.7)."""
    rig, mux, conns, replies = _cross()
    held = [i for call in mux.held_terminates for i in call.held]
    assert [(i.lower.name, i.lifecycle.phase) for i in held] == [("nic2", Phase.OFFLOADING)]
    copy = held[0]
    for name in ("nic0", "nic1"):
        rig.targets[name].recover_adapter()
        rig.run()
    nic2 = rig.targets["nic2"]
    fail_next(nic2, "MiniportTerminateOffload", FAILURE)  # its first: the copy's
    nic2.recover_adapter()
    rig.run()
    assert not nic2.fail_next, "the held copy's terminate was not failed"
    assert copy.corrupt == 1 and copy.vobj.instances == {}, copy
    # failed once (the copy corrupt), then terminated by the host's further terminate
    assert copy.vobj.lifecycle.phase is Phase.TERMINATED, copy.vobj
    assert not mux.held_terminates and not mux.held_by and not mux.deferred, mux.leftovers()
    assert not mux.paused_above
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)
