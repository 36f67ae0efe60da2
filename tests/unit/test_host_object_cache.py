"""The host's cache of what `tcp.update` gave a neighbor or path (`HostStack.updated_objects`,
spec §3.4: ARP / ICMP learned those values, not the offload, so a later offload of the same
object carries them). A real host's neighbor and path caches outlive one offload of an object
but are bounded: a client that updates ever new paths must not grow the host's memory, and
the drain check must know the cache is one (bounded), not a table left behind."""

from __future__ import annotations

from chimneyd.testing.hostrig import HostRig

CAP = 8


def _path_conn(rig: HostRig, i: int) -> int:
    """A new offloaded connection to its own remote address: its own path object."""
    conn, _ = rig.open(remote=(f"127.0.{i // 200}.{i % 200 + 1}", 80))
    rig.offload(conn)
    return conn


def _mtu(i: int) -> int:
    return 1000 + i


def test_many_updated_paths_leave_a_bounded_cache() -> None:
    """Forty paths, each updated then left by its only connection: the host keeps the values
    of the newest `CAP` of them (least recently used go first), and a new connection to one of
    those is offloaded with them."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    for i in range(40):
        conn = _path_conn(rig, i)
        reply = rig.call(host.app_update_object, conn, "path", {"PathMtu": _mtu(i)})
        assert reply.done and reply.error is None, reply
        assert rig.call(host.app_close, conn).value is True
        assert len(host.updated_objects) <= CAP, len(host.updated_objects)
    assert not host.objects, "every path went with its connection"
    # the newest is remembered, the oldest forgotten
    newest = _path_conn(rig, 39)
    assert host.tcbs[newest].path.cached.PathMtu == _mtu(39)
    oldest = _path_conn(rig, 0)
    assert host.tcbs[oldest].path.cached.PathMtu != _mtu(0)
    for conn in (newest, oldest):
        rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_an_object_still_offloaded_keeps_its_entry() -> None:
    """The cache drops only what no offloaded object uses: a path whose connection lives keeps
    its values however many others are updated after it (the entry is what `tcp.info` shows
    and what its next offload carries), and the cache is back under its bound once it goes."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    kept = _path_conn(rig, 0)
    assert rig.call(host.app_update_object, kept, "path", {"PathMtu": _mtu(0)}).error is None
    key = host.tcbs[kept].path.key
    for i in range(1, 3 * CAP):
        conn = _path_conn(rig, i)
        assert rig.call(host.app_update_object, conn, "path", {"PathMtu": _mtu(i)}).error is None
        rig.call(host.app_close, conn)
    assert key in host.updated_objects
    assert len(host.updated_objects) <= CAP + 1, "CAP of paths left, and the one held"
    rig.call(host.app_upload, kept)
    again = rig.call(host.app_offload, kept, None)
    assert again.error is None, again
    assert host.tcbs[kept].path.cached.PathMtu == _mtu(0)
    rig.call(host.app_close, kept)
    assert len(host.updated_objects) <= CAP
    assert not any(host.leftovers().values()), host.leftovers()


def test_the_host_names_its_tables_for_the_drain_check() -> None:
    """`leftovers()` (read by the engine's shutdown report and the conformance drain check)
    names the host's own tables, all empty once every connection closed; the update cache is
    not one of them (it is bounded, and outlives connections by design), but its bound is."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    conn = _path_conn(rig, 0)
    assert rig.call(host.app_update_object, conn, "path", {"PathMtu": 1400}).error is None
    left = host.leftovers()
    assert {"objects", "pending_initiates", "initiates_blocked", "pending_terminates"} <= set(left)
    assert left["objects"] == 2  # the path and its neighbor, while the connection is offloaded
    rig.call(host.app_close, conn)
    assert len(host.updated_objects) == 1, "the path's values outlive its connection"
    assert not any(host.leftovers().values()), host.leftovers()


def test_objects_still_held_do_not_push_the_others_out() -> None:
    """The cap counts the entries of objects no connection holds: more updated paths held
    than `CAP` do not make the host forget the values of those left within it."""
    rig = HostRig(host_options={"object_cache_cap": CAP})
    host = rig.host
    for i in range(CAP):  # CAP paths updated, then left
        conn = _path_conn(rig, i)
        assert rig.call(host.app_update_object, conn, "path", {"PathMtu": _mtu(i)}).error is None
        rig.call(host.app_close, conn)
    held = []
    for i in range(CAP, 3 * CAP):  # twice as many updated and still held
        conn = _path_conn(rig, i)
        assert rig.call(host.app_update_object, conn, "path", {"PathMtu": _mtu(i)}).error is None
        held.append(conn)
    assert len(host.updated_objects) == 3 * CAP
    again = _path_conn(rig, 0)
    assert host.tcbs[again].path.cached.PathMtu == _mtu(0), "forgotten though within the cap"
    for conn in [*held, again]:
        rig.call(host.app_close, conn)
    assert len(host.updated_objects) == CAP
    assert not any(host.leftovers().values()), host.leftovers()
