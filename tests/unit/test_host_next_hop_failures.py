"""A next-hop change (spec §3.4 (b)) whose new neighbor's block fails: "the host terminates
the objects that failed" (spec §3.4). The host treats that neighbor as it treats a neighbor
whose update failed (an ARP update, §3.4 (a)): failed, no new connection or move goes under
it, every connection depending on it goes up — those of the paths that hung under it before
the move too, not only the moving path's — and it goes with the last of them (§3.1: its
dependents first). A later offload of those paths goes under a fresh neighbor of the same
next hop."""

from __future__ import annotations

import pytest

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.drivers.target.contexts import NeighborContext
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, make_target
from chimneyd.testing.hostrig import HostRig

HOP = bytes.fromhex("02000000002b")


def _rig(layers: str) -> HostRig:
    """host → nic0, host → IM → nic0, or host → team0 (a round-robin MUX) → nic0, nic1."""
    if layers != "team":
        return HostRig(im=layers == "im")
    rig = HostRig(())
    timers = rig.clock.timers(rig.ndis.post)
    mux = MuxIm("team0", rig.ndis, timers, "round-robin")
    timers.bind(mux)
    rig.ndis.bind(rig.host, mux)
    for name in ("nic0", "nic1"):
        nic = make_target(rig.ndis, rig.clock.timers(rig.ndis.post), rig.wires.find, name)
        rig.targets[name] = nic
        rig.ndis.bind(mux, nic)
    rig.run()
    return rig


def _neighbor_contexts(rig: HostRig) -> list[NeighborContext]:
    return [c for t in rig.targets.values() for c in t.table if isinstance(c, NeighborContext)]


@pytest.mark.parametrize(
    ("layers", "nic", "call"),
    [
        ("nic", "nic0", "MiniportUpdateOffload"),
        ("im", "nic0", "MiniportUpdateOffload"),
        ("team", "nic1", "MiniportUpdateOffload"),
        # through the MUX, which offloads nic1's copy of the new neighbor inside the update
        ("team", "nic1", "MiniportInitiateOffload[neighbor]"),
    ],
)
def test_a_new_neighbor_whose_block_failed_goes_with_every_connection_under_it(
    layers: str, nic: str, call: str
) -> None:
    rig = _rig(layers)
    host = rig.host
    first, _ = rig.open(remote=("127.0.0.1", 80))  # round-robin: nic0 under a team
    second, _ = rig.open(remote=("127.0.0.2", 80))  # nic1
    for conn in (first, second):
        rig.offload(conn)
    assert rig.call(host.app_update_object, first, "path", {"NextHop": HOP}).error is None
    path = host.tcbs[first].path
    assert path is not None and path.parent is not None
    failing = path.parent  # HOP's neighbor, with the first path under it
    fail_next(rig.targets[nic], call, S.NDIS_STATUS_FAILURE)
    moved = rig.call(host.app_update_object, second, "path", {"NextHop": HOP})
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "NDIS_STATUS", moved
    assert host.tcbs[second].state == "host"
    # the neighbor failed: what hung under it went up, and it went with them
    assert host.tcbs[first].state == "host", "a connection stayed under the failed neighbor"
    assert failing.handle is None and host.objects.get(failing.key) is not failing
    assert not _neighbor_contexts(rig)
    # the paths go under a fresh neighbor of HOP when offloaded again (the route cache)
    for conn in (first, second):
        rig.offload(conn)
    again = host.tcbs[first].path
    assert again is not None and again.parent is not None
    assert again.parent.key[2] == HOP and again.parent is not failing
    for conn in (first, second):
        rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_no_connection_goes_under_the_failed_neighbor_while_it_goes() -> None:
    """A connection offloaded right after the failed move, on the path that hung under the
    new neighbor before, waits for that neighbor to be gone (spec §3.1) and goes under a
    fresh one."""
    rig = HostRig()
    host = rig.host
    first, _ = rig.open(remote=("127.0.0.1", 80))
    second, _ = rig.open(remote=("127.0.0.2", 80))
    for conn in (first, second):
        rig.offload(conn)
    assert rig.call(host.app_update_object, first, "path", {"NextHop": HOP}).error is None
    path = host.tcbs[first].path
    assert path is not None and path.parent is not None
    failing = path.parent
    fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    moved = rig.call(host.app_update_object, second, "path", {"NextHop": HOP})
    assert moved.error is not None, moved
    late, _ = rig.open(remote=("127.0.0.1", 80))
    rig.offload(late)
    tcb = host.tcbs[late]
    assert tcb.path is not None and tcb.path.parent is not None
    assert tcb.path.parent.key[2] == HOP and tcb.path.parent is not failing
    [ctx] = rig.contexts()
    assert ctx.path.neighbor.upper is tcb.path.parent.handle
    for conn in (first, second, late):
        rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True])
def test_a_new_neighbor_the_target_did_not_offload_is_no_failed_one(im: bool) -> None:
    """The host's own initiate of the new neighbor (step 2) comes back not offloaded: that
    neighbor never was the target's (spec §3.2.4, §3.9: back to IDLE, as any block an
    initiate did not offload), so nothing of it is terminated and nothing moved: the
    connection goes on offloaded under its neighbor, and a later move to that next hop
    offloads a fresh one."""
    rig = HostRig(im=im)
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    fail_next(rig.target, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    moved = rig.call(host.app_update_object, conn, "path", {"NextHop": HOP})
    assert moved.done and moved.error is not None, moved
    tcb = host.tcbs[conn]
    assert tcb.state == "offloaded"
    assert tcb.path is not None and tcb.path.parent is not None
    assert tcb.path.parent.key[2] == bytes(6)
    assert sorted(k[2] for k in host.objects if k[0] == "neighbor") == [bytes(6)]
    assert rig.call(host.app_update_object, conn, "path", {"NextHop": HOP}).error is None
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
