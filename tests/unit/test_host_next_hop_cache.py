"""The host's route cache (`HostStack.next_hops`, spec §3.4 (b)): where a next-hop change last
moved each path, so a later offload of the path, after it has gone, goes under the same
neighbor. Bounded as the update cache is (`test_host_object_cache.py`): at most
`object_cache_cap` paths the host no longer holds, least recently used first, the paths it
still holds not counted; once every connection has gone it is within its bound, which the
drain check (`leftovers`) reads. And a failed step 2 of a move is answered as the contract
says an NDIS failure is: `NDIS_STATUS`, naming the status."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig

CAP = 2
HOP = bytes.fromhex("02000000002b")


def _moved_conn(rig: HostRig, i: int) -> int:
    """A new offloaded connection to its own remote address (its own path), moved to HOP."""
    conn, _ = rig.open(remote=(f"127.0.0.{i + 1}", 80))
    rig.offload(conn)
    reply = rig.call(rig.host.app_update_object, conn, "path", {"NextHop": HOP})
    assert reply.done and reply.error is None, reply
    return conn


def _next_hop_of_new_conn(rig: HostRig, i: int) -> bytes:
    """The next hop of the neighbor a new connection on path `i` is offloaded under."""
    conn, _ = rig.open(remote=(f"127.0.0.{i + 1}", 80))
    rig.offload(conn)
    path = rig.host.tcbs[conn].path
    assert path is not None and path.parent is not None
    hop: bytes = path.parent.key[2]
    rig.call(rig.host.app_close, conn)
    return hop


def test_paths_moved_while_held_leave_a_bounded_route_cache() -> None:
    """More moved paths than `CAP` held at once, then left: once the last has gone the cache
    is within its bound (the drain check finds nothing), and the path left last, the most
    recently used, is the one remembered (least recently used first)."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    conns = [_moved_conn(rig, i) for i in range(CAP + 2)]
    for conn in conns[1:] + conns[:1]:  # path 0 left last
        assert rig.call(host.app_close, conn).value is True
    assert not host.objects
    assert not any(host.leftovers().values()), host.leftovers()
    assert len(host.next_hops) <= CAP
    assert _next_hop_of_new_conn(rig, 0) == HOP, "the path left last was forgotten"
    assert rig.problems() == []


def test_held_paths_do_not_push_a_left_path_s_route_out() -> None:
    """The bound counts the paths the host no longer holds: a path moved then left keeps its
    route however many moved paths are still held, and a new connection on it goes under the
    neighbor it was moved to."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    assert rig.call(host.app_close, _moved_conn(rig, 0)).value is True
    held = [_moved_conn(rig, i) for i in range(1, CAP + 2)]
    assert _next_hop_of_new_conn(rig, 0) == HOP, "forgotten though within the bound"
    for conn in held:
        rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_a_failed_new_neighbor_offload_names_its_status() -> None:
    """Step 2 of the move (the new neighbor's initiate) fails at the target: nothing moved,
    and the answer is the contract's NDIS_STATUS naming the status the target gave."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    fail_next(rig.target, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    reply = rig.call(host.app_update_object, conn, "path", {"NextHop": HOP})
    assert reply.done and reply.error is not None, reply
    assert reply.error.symbol == "NDIS_STATUS"
    assert "NDIS_STATUS_FAILURE" in str(reply.error), str(reply.error)
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    assert path.parent.key[2] == bytes(6), "nothing moved"
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
