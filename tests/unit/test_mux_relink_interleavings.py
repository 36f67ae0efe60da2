"""Property: on a team of three NICs, random interleavings of next-hop changes (a path moved
back and forth between two neighbors, spec §3.4 (b)), connections offloaded under the path
and uploaded, and NICs failing their part (an update, a copy of a neighbor, a terminate that
finds the state corrupt, spec §3.7) keep the MUX consistent with its NICs: every update
completes all SUCCESS or all FAILURE, each NIC's connections hang under the neighbor the layer
above has their path under (but for copies on their way out), the spec §9 invariant checker
finds nothing, and once everything is terminated every table is empty."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import (
    OffloadBlock,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
    walk,
)
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.stack import Stack

NICS = 3
NIC = st.integers(0, NICS - 1)
ACTIONS = st.one_of(
    st.tuples(st.just("connect"), st.none()),
    st.tuples(st.just("move"), st.none()),
    st.tuples(st.just("move_and_connect"), st.none()),  # a connection overtaking the move
    st.tuples(st.just("upload"), st.integers(0, 7)),
    st.tuples(st.just("fail_update"), NIC),
    st.tuples(st.just("fail_neighbor_copy"), NIC),
    st.tuples(st.just("fail_terminate"), NIC),
    st.tuples(st.just("wait"), st.none()),  # the MUX's wait before a corrupt copy's terminate
    st.tuples(st.just("fail_nic"), NIC),  # UPLOAD_ALL (spec §5.5); again: it recovers
    st.tuples(st.just("move_and_upload"), st.integers(0, 7)),  # a terminate overtaking it
    # an invalidate of the path overtaking the move; the path takes no update or
    # connection after it (spec §3.1), only its terminate at the end
    st.tuples(st.just("move_and_invalidate"), st.none()),
)
OK = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE


class Host:
    """What the layer above does: one path, under one of two neighbors; it uploads what a
    NIC asks up (spec §5.2), and terminates a connection again after a corrupt one (§3.7)."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        top = st.top
        n1 = top.neighbor_block()
        path = n1.add_dependent(top.path_block())
        top.initiate(n1)
        n2 = top.neighbor_block()
        top.initiate(n2)
        st.run()
        assert n1.offload_handle and n2.offload_handle and path.offload_handle
        self.neighbors = [n1.offload_handle, n2.offload_handle]
        self.parent = 0  # which neighbor the path is under, as the layer above has it
        self.path = path.offload_handle
        self.live: list[NdisOffloadHandle] = []
        self.invalidated = False  # the path: no update, no new connection under it now
        self.seen = 0  # events handled

    def connect_root(self) -> tuple[OffloadBlock, OffloadBlock]:
        top = self.st.top
        root = new_neighbor_block(self.neighbors[self.parent])
        path = root.add_dependent(new_path_block(self.path))
        tcp = path.add_dependent(top.tcp_block(self.st.wires.open()))
        return root, tcp

    def connected(self, tcp: OffloadBlock) -> None:
        assert tcp.status in (OK, FAILURE, S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES), tcp.status
        if tcp.status == OK:
            assert tcp.offload_handle is not None
            self.live.append(tcp.offload_handle)

    def move_root(self) -> OffloadBlock:
        root = new_neighbor_block(self.neighbors[1 - self.parent])
        root.add_dependent(new_path_block(self.path))
        return root

    def moved(self, root: OffloadBlock) -> None:
        statuses = [b.status for b in walk(root)]
        assert statuses in ([OK, OK], [FAILURE, FAILURE]), statuses
        if statuses[0] == OK:
            self.parent = 1 - self.parent

    def upload_root(self, handle: NdisOffloadHandle) -> tuple[OffloadBlock, OffloadBlock]:
        root = new_neighbor_block(None)
        tcp = root.add_dependent(new_path_block(None)).add_dependent(new_tcp_block(handle))
        tcp.delegated = TcpOffloadStateDelegated()
        return root, tcp

    def uploaded(self, handle: NdisOffloadHandle, tcp: OffloadBlock) -> None:
        assert tcp.status in (OK, FAILURE), tcp.status
        if tcp.status == OK and handle in self.live:
            self.live.remove(handle)

    def upload(self, handle: NdisOffloadHandle) -> None:
        root, tcp = self.upload_root(handle)
        self.st.top.terminate(root)
        self.st.run()
        self.uploaded(handle, tcp)

    def react(self) -> None:
        """Upload what was asked up since last time, until nothing more is."""
        for _ in range(10):
            events = self.st.top.events[self.seen :]
            self.seen = len(self.st.top.events)
            asked = [e.handle for e in events if e.handle in self.live]
            if not asked:
                return
            for handle in dict.fromkeys(asked):
                if handle in self.live:
                    self.upload(handle)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(ACTIONS, min_size=1, max_size=30))
def test_next_hop_changes_among_failures_keep_the_team_consistent(
    actions: list[tuple[str, int | None]],
) -> None:
    st = teamed_target_stack(nics=NICS, policy="round-robin")
    nics = st.under_test[1:]
    host = Host(st)
    failed: set[int] = set()
    for action, arg in actions:
        if host.invalidated and action in ("connect", "move", "move_and_connect"):
            continue
        if host.invalidated and action in ("move_and_upload", "move_and_invalidate"):
            action = "upload"
        if action == "connect":
            root, tcp = host.connect_root()
            st.top.initiate(root)
            st.run()
            host.connected(tcp)
        elif action == "move":
            root = host.move_root()
            st.top.update(root)
            st.run()
            host.moved(root)
        elif action == "move_and_connect":
            move = host.move_root()
            st.top.update(move)
            root, tcp = host.connect_root()  # built before the move completes
            st.top.initiate(root)
            st.run()
            host.moved(move)
            host.connected(tcp)
        elif action == "move_and_upload":
            move = host.move_root()
            st.top.update(move)
            if host.live:
                assert arg is not None
                handle = host.live[arg % len(host.live)]
                root, tcp = host.upload_root(handle)
                st.top.terminate(root)
            st.run()
            host.moved(move)
            if host.live:
                host.uploaded(handle, tcp)
        elif action == "move_and_invalidate":
            move = host.move_root()
            st.top.update(move)
            root = new_neighbor_block(None)
            root.add_dependent(new_path_block(host.path))
            st.top.invalidate(root)
            st.run()
            host.moved(move)
            assert [b.status for b in walk(root)] == [OK, OK]
            host.invalidated = True
        elif action == "upload":
            if host.live:
                assert arg is not None
                host.upload(host.live[arg % len(host.live)])
        elif action == "fail_update":
            assert arg is not None
            fail_next(nics[arg], "MiniportUpdateOffload", FAILURE)
        elif action == "fail_neighbor_copy":
            assert arg is not None
            fail_next(nics[arg], "MiniportInitiateOffload[neighbor]", FAILURE)
        elif action == "fail_terminate":
            assert arg is not None
            fail_next(nics[arg], "MiniportTerminateOffload", FAILURE)
        elif action == "fail_nic":
            assert arg is not None
            if arg in failed:
                failed.discard(arg)
                nics[arg].recover_adapter()
            else:
                failed.add(arg)
                nics[arg].fail_adapter()
            st.run()
        else:
            st.advance(mux_module.CORRUPT_RETRY_MAX)
        host.react()
        assert st.checker.violations == []
        # each NIC's live connections hang, on that NIC, under the copy the MUX counts them
        # on (`Instance.under`): the MUX and its NICs agree on where every copy is
        # and a copy that is not on its way out (corrupt) hangs under a copy of the neighbor
        # the layer above has the path under: a failed move left nothing moved
        want = host.neighbors[host.parent]
        for nic in nics:
            for c in nic.connections():
                copy = c.path.upper.owner
                assert c.path.neighbor.upper.owner is copy.under
                if copy.lifecycle.phase is Phase.OFFLOADED and not host.invalidated:
                    assert copy.under.vobj.upper is want

    wind_down(st, host, failed)


def wind_down(st: Stack, host: Host, failed: set[int], down: set[int] | None = None) -> None:
    """The end of a run: no more faults, every NIC back in service, and everything goes,
    connections first (spec §3.1); then the MUX and every layer hold nothing."""
    mux = st.under_test[0]
    nics = st.under_test[1:]
    for nic in nics:
        nic.fail_next.clear()
    for i in failed:
        nics[i].recover_adapter()
        st.run()
    for i in down or ():
        mux.lower_up(mux.lower_list()[i].binding)
        st.run()
    for _ in range(3):
        for handle in list(host.live):
            host.upload(handle)
        host.react()
    assert host.live == []
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)
    done = len(st.top.state_completions)
    root = new_neighbor_block(None)
    root.add_dependent(new_path_block(host.path))
    st.top.terminate(root)
    st.run()
    for handle in host.neighbors:
        st.top.terminate(new_neighbor_block(handle))
        st.run()
    assert [c.statuses for c in st.top.state_completions[done:]] == [[OK, OK], [OK], [OK]]
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []
