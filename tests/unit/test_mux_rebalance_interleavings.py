"""Property: on a team of three NICs (active-standby, so that only a rebalance spreads the
connections), random interleavings of NICs failing and coming back (UPLOAD_ALL, RESUME, spec
§5.5), NICs taken out and put back, and rebalances asked at any point — also right after a
NIC comes back, while the layer above is still taking its connections up — with the layer
above uploading what it is asked to and offloading it again: once every NIC is back and a
last rebalance is done, the NICs carry the same number of connections give or take one
(docs/faults.md `rebalance`); the §9 checker finds nothing, and every table drains."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import mux_of, nic_of

NICS = 3
CONNECTIONS = 7
NIC = st.integers(0, NICS - 1)
ACTIONS = st.one_of(
    st.tuples(st.just("fail_nic"), NIC),  # again: it recovers
    st.tuples(st.just("recover_then_rebalance"), NIC),  # before its connections went up
    st.tuples(st.just("nic_down"), NIC),  # again: it is put back
    st.tuples(st.just("rebalance"), st.none()),
    st.tuples(st.just("settle"), st.none()),  # the layer above takes up what it is asked to
)
OK = S.NDIS_STATUS_SUCCESS


class Above:
    """The layer above: its connections under one path, offloaded or in the host."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.tree: OffloadTree = st.top.connection_tree(
            [st.wires.open() for _ in range(CONNECTIONS)]
        )
        st.top.initiate(self.tree.root)
        st.run()
        self.live: list[NdisOffloadHandle] = list(self.tree.tcp)
        self.in_host: list[int] = []  # wires (by old handle id) whose offload was refused
        self.seen = 0

    def offload(self, wire_of: int) -> None:
        top = self.st.top
        tree = self.tree
        assert tree.neighbor is not None
        root = top.neighbor_block(tree.neighbor)
        path = root.add_dependent(top.path_block(tree.paths[0]))
        block = path.add_dependent(top.tcp_block(tree.wires[wire_of]))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = tree.wires[wire_of]
        top.initiate(root)
        self.st.run()
        if block.status == OK:
            self.live.append(block.offload_handle)
        else:
            self.in_host.append(block.offload_handle.id)

    def settle(self, offload_again: bool = True) -> None:
        """Upload what was asked up, and offload it again, until nothing more is asked."""
        top = self.st.top
        for _ in range(20):
            events = top.events[self.seen :]
            self.seen = len(top.events)
            asked = list(dict.fromkeys(e.handle for e in events if e.handle in self.live))
            if asked:
                top.terminate(top.reference_tree(self.tree, asked, state="delegated"))
                self.st.run()
                for handle in asked:
                    self.live.remove(handle)
                    self.in_host.append(handle.id)
            if offload_again:
                waiting, self.in_host = self.in_host, []
                for wire_of in waiting:
                    self.offload(wire_of)
            if not asked and not self.in_host:
                return


def _assert_even(mux: MuxIm) -> None:
    per_nic = {lo.name: lo.connections for lo in mux.lower_list()}
    assert sum(per_nic.values()) == CONNECTIONS, per_nic
    assert max(per_nic.values()) - min(per_nic.values()) <= 1, per_nic


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=1, max_size=20))
def test_a_last_rebalance_evens_the_team_out_whatever_came_before(
    actions: list[tuple[str, int | None]],
) -> None:
    st = teamed_target_stack(nics=NICS, policy="active-standby")
    mux = mux_of(st)
    above = Above(st)
    failed: set[int] = set()
    down: set[int] = set()
    for action, arg in actions:
        if action in ("fail_nic", "recover_then_rebalance"):
            assert arg is not None
            nic = nic_of(st, arg)
            rebalanced = False
            if arg in failed:
                failed.discard(arg)
                nic.recover_adapter()
                if action == "recover_then_rebalance":
                    st.run()  # the MUX has its RESUME (asked before, the NIC is not back)
                    mux.rebalance()
                    # connections the layer above carries itself (their offload refused while
                    # every NIC was out) are the rebalance's to place only once offloaded
                    rebalanced = not above.in_host
            elif action == "fail_nic":
                failed.add(arg)
                nic.fail_adapter()
            st.run()
            if rebalanced and not failed and not down:
                # every NIC in service: what that rebalance planned evens the team out once
                # the layer above has offloaded again what it was asked up
                above.settle()
                _assert_even(mux)
        elif action == "nic_down":
            assert arg is not None
            binding = mux.lower_list()[arg].binding
            if arg in down:
                down.discard(arg)
                mux.lower_up(binding)
            else:
                down.add(arg)
                mux.lower_down(binding)
            st.run()
        elif action == "rebalance":
            mux.rebalance()
            st.run()
        else:
            above.settle()
        assert st.checker.violations == []
    for i in failed:
        nic_of(st, i).recover_adapter()
        st.run()
    for i in down:
        mux.lower_up(mux.lower_list()[i].binding)
        st.run()
    above.settle()
    mux.rebalance()
    st.run()
    above.settle()
    _assert_even(mux)
    # the end: everything goes
    for handle in list(above.live):
        st.top.terminate(st.top.reference_tree(above.tree, [handle], state="delegated"))
        st.run()
    root = new_neighbor_block(None)
    root.add_dependent(new_path_block(above.tree.paths[0]))
    st.top.terminate(root)
    st.run()
    assert above.tree.neighbor is not None
    st.top.terminate(new_neighbor_block(above.tree.neighbor))
    st.run()
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.drain_problems() == []
