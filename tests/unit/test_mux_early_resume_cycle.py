"""A teaming MUX's pause above after the RESUME it indicates while a terminate it holds for a
failed NIC's neighbor copy is still out (`failover.evacuated`): the layer above offloads again
(spec §5.5: PAUSE stops only new offloads), and a connection it offloads then, asked up by a
later failure, pauses the MUX again; the RESUME for that one comes only once its terminate has
completed, though the held terminate is still out. The layer above sees PAUSE and RESUME
alternate (no second PAUSE, no RESUME before the uploads), and the held terminate completes
only when its copy has gone (spec §9 item 8)."""

from __future__ import annotations

from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
)
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from tests.unit.mux_rig import assert_all_drained, mux_of, nic_of, two_nics_and_a_spare_neighbor

OK = S.NDIS_STATUS_SUCCESS
PAUSE = S.NDIS_STATUS_OFFLOAD_PAUSE
RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def test_a_connection_offloaded_after_the_early_resume_pauses_the_mux_again() -> None:
    st, tree, n2 = two_nics_and_a_spare_neighbor()  # tcp[0] on nic0, tcp[1] on nic1
    top = st.top
    mux = mux_of(st)
    nic0, nic1 = nic_of(st, 0), nic_of(st, 1)
    assert n2.offload_handle is not None and tree.neighbor is not None
    # path P moves to N2 as nic0 fails: nic0 holds the offload of its copy of N2 until its
    # RESUME (`relink.lower_failed`); P's connection there is asked up (PAUSE above)
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    nic0.fail_adapter()
    st.run()
    assert top.state_completions[-1].statuses == [OK, OK]
    # N2 with P and both connections: nic0's copy of N2 held back, the rest uploaded now
    term = new_neighbor_block(n2.offload_handle)
    path = term.add_dependent(new_path_block(tree.paths[0]))
    for handle in tree.tcp:
        path.add_dependent(new_tcp_block(handle)).delegated = TcpOffloadStateDelegated()
    done = len(top.state_completions)
    top.terminate(term)
    st.run()
    assert len(top.state_completions) == done and len(mux.held_terminates) == 1
    assert [s for _, s in top.status_indications] == [PAUSE, RESUME]  # the early RESUME
    # the layer above offloads again: a new path and connection under N1, on nic1
    root = top.neighbor_block(tree.neighbor)
    p2 = root.add_dependent(top.path_block())
    tcp = p2.add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)
    st.run()
    assert top.state_completions[-1].statuses == [OK, OK, OK]
    assert p2.offload_handle is not None and tcp.offload_handle is not None
    asked = len(top.events)
    nic1.fail_adapter()  # the MUX asks it up: PAUSE again, after the RESUME
    st.run()
    assert [(e.handle, e.event_type) for e in top.events[asked:]] == [
        (tcp.offload_handle, TcpOffloadEventType.TcpIndicateRetrieve)
    ]
    assert [s for _, s in top.status_indications] == [PAUSE, RESUME, PAUSE]
    assert mux.paused_above
    up = new_neighbor_block(tree.neighbor)  # N1 goes too: P has moved to N2
    up.add_dependent(new_path_block(p2.offload_handle)).add_dependent(
        new_tcp_block(tcp.offload_handle)
    ).delegated = TcpOffloadStateDelegated()
    top.terminate(up)
    st.run()
    assert top.state_completions[-1].root is up
    assert top.state_completions[-1].statuses == [OK, OK, OK]
    # its upload done, the MUX RESUMEs, the held terminate still out (nic0 not back)
    assert [s for _, s in top.status_indications] == [PAUSE, RESUME, PAUSE, RESUME]
    assert not mux.paused_above and len(mux.held_terminates) == 1
    # tcp[0], asked up when nic0 failed, in the held terminate: the pause does not wait for it
    assert len(mux.evacuating) == len(mux.evacuating_held) == 1
    nic0.recover_adapter()  # it offloads the held copy; the MUX terminates it as unused
    nic1.recover_adapter()
    st.run()
    held = [c for c in top.state_completions[done:] if c.root is term]
    assert [c.statuses for c in held] == [[OK] * 4]
    statuses = [s for _, s in top.status_indications]
    # the NICs back: RESUMEs only (what the MUX offers changed), never a PAUSE twice running
    assert statuses[:4] == [PAUSE, RESUME, PAUSE, RESUME]
    assert set(statuses[4:]) <= {RESUME}, statuses
    assert not mux.evacuating and not mux.evacuating_held and not mux.held_terminates
    assert_all_drained(st)
