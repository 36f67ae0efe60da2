"""Guards on what holds a rebalance's plans and the PAUSE, each one a part of the MUX no
other test breaks when it goes (`failover._lingering`, `MuxIm._relay_event`).

- A stray path copy (one a failed next-hop change left under another neighbor's copy,
  `relink._undone`) that its NIC keeps finding corrupt in the MUX's own terminates waits,
  FAILED, for the next try (`MuxIm._corrupt_again`): it is still there when the connections
  asked up are offloaded again, and a rebalance plans none of that path onto its NIC. The
  plan would be dropped at the re-offload (`mux._avoiding`) while the rebalance counted it
  there.
- A connection asked up whose NIC indicates an abort (the peer reset it) before the layer
  above has uploaded it is still on its way up: only an abort that ends a terminate its NIC
  found corrupt (spec §3.7 steps 1-3) takes it off the connections the RESUME waits for."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import CORRUPT_RETRY_FIRST
from chimneyd.drivers.target import events
from chimneyd.ndis.blocks import new_neighbor_block
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from chimneyd.testing.factories import fail_next
from tests.unit.mux_rig import mux_of, nic_of
from tests.unit.test_mux_rebalance_plans import _drain, _entry, _team, _terminate
from tests.unit.test_mux_rebalance_strays import _three_with_strays

RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def test_no_plan_onto_a_stray_copy_waiting_for_its_next_terminate() -> None:
    """c0 and c2, on nic0's stray copy of the path, are uploaded; nic0 finds the MUX's
    terminate of the copy corrupt twice, and the copy waits, FAILED, for the next try. The
    team is paused no more. nic1 carries c1 and c3 of that path, nic0 nothing: the rebalance
    moves neither (they could not go under nic0's copy), and asks nothing up."""
    st, tree, n2 = _three_with_strays(4)
    c0, c1, c2, c3 = tree.tcp
    mux = mux_of(st)
    nic0 = nic_of(st, 0)
    assert _entry(c0).lower.lower is nic0
    path = _entry(c0).path
    stray = path.instances[_entry(c0).lower.id]
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE, count=2, skip=2)
    top = st.top
    # both below at once: neither takes the copy along, the MUX's own terminate does
    top.terminate(top.reference_tree(tree, [c2], state="delegated"))
    top.terminate(top.reference_tree(tree, [c0], state="delegated"))
    st.run()
    for handle in (c0, c2):
        tree.tcp.remove(handle)
    assert not nic0.fail_next, "the stray copy's terminates were not failed"
    assert stray.lifecycle.phase is Phase.FAILED and stray.retry is not None
    assert stray in path.instances.values()
    assert not mux.paused_above
    assert [s for _, s in st.top.status_indications][-1] == RESUME
    asked = len(st.top.events)
    mux.rebalance()
    assert mux.placement.moves == {}, {k: lo.name for k, lo in mux.placement.moves.items()}
    assert not mux.paused_above
    assert st.top.events[asked:] == []
    assert [_entry(h).lower.lower.name for h in (c1, c3)] == ["nic1", "nic1"]
    st.advance(CORRUPT_RETRY_FIRST)  # the next try: the copy goes
    st.run()
    assert stray not in path.instances.values()
    top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))


def test_a_peer_abort_does_not_end_an_upload_the_pause_waits_for() -> None:
    """c1, on nic1, is asked up as nic1 is taken out; before the layer above uploads it,
    nic1 indicates its abort (the peer reset it). The team stays paused until c1's
    terminate completes, and the RESUME follows that."""
    st, mux, tree = _team("round-robin", 2)
    c0, c1 = tree.tcp
    nic1 = nic_of(st, 1)
    assert _entry(c1).lower.lower is nic1
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert mux.paused_above
    (ctx,) = nic1.connections()
    events.indicate(nic1, ctx, TcpOffloadEventType.TcpIndicateAbort, 0)
    st.run()
    assert st.top.events[-1].event_type is TcpOffloadEventType.TcpIndicateAbort
    assert mux.paused_above, "RESUME before the upload of the connection asked up"
    _terminate(st, tree, [c1])
    assert not mux.paused_above
    assert [s for _, s in st.top.status_indications][-1] == RESUME
    _drain(st, tree, [c0])


def test_no_plan_onto_a_nic_the_path_avoids() -> None:
    """As above, and the copy goes at the next try. nic0 found the path's copy corrupt twice
    in a row: no connection of that path goes there for the rest of the path's life
    (`MuxIm._corrupt_again`, `mux._avoiding`). nic0 carries nothing, nic1 c1 and c3: the
    rebalance moves neither, as a plan onto nic0 would be dropped when the connection is
    offloaded again, and the policy would put it back on nic1, asked up for nothing."""
    st, tree, n2 = _three_with_strays(4)
    c0, c1, c2, c3 = tree.tcp
    mux = mux_of(st)
    nic0 = nic_of(st, 0)
    path = _entry(c0).path
    stray = path.instances[_entry(c0).lower.id]
    fail_next(nic0, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE, count=2, skip=2)
    top = st.top
    top.terminate(top.reference_tree(tree, [c2], state="delegated"))
    top.terminate(top.reference_tree(tree, [c0], state="delegated"))
    st.run()
    for handle in (c0, c2):
        tree.tcp.remove(handle)
    st.advance(CORRUPT_RETRY_FIRST)  # the next try: the copy goes
    st.run()
    assert stray not in path.instances.values()
    assert _entry(c0).lower.id in path.avoid
    assert not mux.paused_above
    asked = len(top.events)
    mux.rebalance()
    assert mux.placement.moves == {}, {k: lo.name for k, lo in mux.placement.moves.items()}
    assert not mux.paused_above
    assert top.events[asked:] == []
    assert [_entry(h).lower.lower.name for h in (c1, c3)] == ["nic1", "nic1"]
    top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))
