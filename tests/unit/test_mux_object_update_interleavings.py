"""Property: on a team of three NICs, random interleavings of ARP updates of a neighbor
(spec §3.4 (a)), connections offloaded under it (also right behind or ahead of an update),
uploads, NICs failing an update, NICs failing and coming back (UPLOAD_ALL, spec §5.5), taken
out and put back, rebalances and an invalidate of the path keep every NIC's copy of the
neighbor, under a connection that stays, at the values of the last update that succeeded; the
spec §9 invariant checker finds nothing, and once everything is terminated every table is
empty."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    OffloadBlock,
    new_neighbor_block,
    new_path_block,
    walk,
)
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.stack import Stack
from tests.unit.test_mux_relink_interleavings import Host, wind_down

NICS = 3
NIC = st.integers(0, NICS - 1)
ACTIONS = st.one_of(
    st.tuples(st.just("connect"), st.none()),
    st.tuples(st.just("arp"), st.none()),
    st.tuples(st.just("arp_then_connect"), st.none()),  # a connection behind the update
    st.tuples(st.just("connect_then_arp"), st.none()),  # an update behind a new copy
    st.tuples(st.just("upload"), st.integers(0, 7)),
    st.tuples(st.just("fail_update"), NIC),
    st.tuples(st.just("fail_nic"), NIC),  # again: it recovers
    st.tuples(st.just("nic_down"), NIC),  # again: it is put back
    st.tuples(st.just("rebalance"), st.none()),
    st.tuples(st.just("arp_then_fail_nic"), NIC),
    st.tuples(st.just("invalidate_path"), st.none()),
    st.tuples(st.just("arp_then_upload"), st.integers(0, 7)),  # a terminate behind the update
    st.tuples(st.just("arp_then_invalidate_path"), st.none()),
)
OK = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE


class ArpHost(Host):
    """`Host`, updating its first neighbor's MAC: the MAC the last successful update gave
    it, and after a failed one every connection uploaded (spec §3.4: the host terminates
    what failed)."""

    def __init__(self, st: Stack) -> None:
        super().__init__(st)
        self.mac: bytes | None = None
        self.sent = 0

    def arp_root(self) -> tuple[OffloadBlock, bytes]:
        self.sent += 1
        mac = b"\x02\x00\x00\x00" + self.sent.to_bytes(2, "big")
        root = self.st.top.neighbor_block(self.neighbors[0])
        root.cached = NeighborOffloadStateCached(DlDestinationAddress=mac)
        return root, mac

    def arped(self, root: OffloadBlock, mac: bytes) -> None:
        assert root.status in (OK, FAILURE), root.status
        if root.status == OK:
            self.mac = mac
            return
        for handle in list(self.live):
            self.upload(handle)


def _check(st: Stack, host: ArpHost, out: set[int]) -> None:
    assert st.checker.violations == []
    if host.mac is None or host.invalidated:
        return
    for i, nic in enumerate(st.under_test[1:]):
        if i in out:
            continue  # failed or taken out: its connections are on their way up
        for c in nic.connections():
            copy = c.path.neighbor.upper.owner  # the MUX's instance of the neighbor there
            if copy.lifecycle.phase is not Phase.OFFLOADED or copy.missed:
                continue  # on its way out (`MuxIm._missed`)
            assert c.path.neighbor.cached.DlDestinationAddress == host.mac, (
                f"{nic.name}'s copy of the neighbor has "
                f"{c.path.neighbor.cached.DlDestinationAddress.hex(':')}, "
                f"the last update {host.mac.hex(':')}"
            )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=1, max_size=30))
def test_arp_updates_among_moves_and_failures_reach_every_copy(
    actions: list[tuple[str, int | None]],
) -> None:
    st = teamed_target_stack(nics=NICS, policy="round-robin")
    nics = st.under_test[1:]
    mux = st.under_test[0]
    assert isinstance(mux, mux_module.MuxIm)
    host = ArpHost(st)
    failed: set[int] = set()
    down: set[int] = set()
    for action, arg in actions:
        if host.invalidated and action not in ("upload", "fail_nic", "nic_down", "rebalance"):
            continue
        if action == "connect":
            root, tcp = host.connect_root()
            st.top.initiate(root)
            st.run()
            host.connected(tcp)
        elif action == "arp_then_upload":
            root, mac = host.arp_root()
            st.top.update(root)
            if host.live:
                assert arg is not None
                handle = host.live[arg % len(host.live)]
                uroot, utcp = host.upload_root(handle)
                st.top.terminate(uroot)
            st.run()
            if host.live:
                host.uploaded(handle, utcp)
            host.arped(root, mac)
        elif action == "arp_then_invalidate_path":
            root, mac = host.arp_root()
            st.top.update(root)
            iroot = new_neighbor_block(None)
            iroot.add_dependent(new_path_block(host.path))
            st.top.invalidate(iroot)
            st.run()
            assert [b.status for b in walk(iroot)] == [OK, OK]
            host.invalidated = True
            host.arped(root, mac)
        elif action in ("arp", "arp_then_connect", "connect_then_arp", "arp_then_fail_nic"):
            if action == "connect_then_arp":
                croot, tcp = host.connect_root()
                st.top.initiate(croot)
            root, mac = host.arp_root()
            st.top.update(root)
            if action == "arp_then_connect":
                croot, tcp = host.connect_root()
                st.top.initiate(croot)
            if action == "arp_then_fail_nic":
                assert arg is not None
                if arg not in failed:
                    failed.add(arg)
                    nics[arg].fail_adapter()
            st.run()
            if action in ("arp_then_connect", "connect_then_arp"):
                host.connected(tcp)
            host.arped(root, mac)
        elif action == "upload":
            if host.live:
                assert arg is not None
                host.upload(host.live[arg % len(host.live)])
        elif action == "fail_update":
            assert arg is not None
            fail_next(nics[arg], "MiniportUpdateOffload", FAILURE)
        elif action == "fail_nic":
            assert arg is not None
            if arg in failed:
                failed.discard(arg)
                nics[arg].recover_adapter()
            else:
                failed.add(arg)
                nics[arg].fail_adapter()
            st.run()
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
        else:  # invalidate_path
            root = new_neighbor_block(None)
            root.add_dependent(new_path_block(host.path))
            st.top.invalidate(root)
            st.run()
            assert [b.status for b in walk(root)] == [OK, OK]
            host.invalidated = True
        host.react()
        _check(st, host, failed | down)

    wind_down(st, host, failed, down)
