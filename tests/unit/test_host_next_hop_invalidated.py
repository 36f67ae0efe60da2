"""A next-hop change (spec §3.4 (b)) of a path whose neighbor is invalidated (§3.5).

§3.4's procedure starts with "the host may invalidate the old neighbor" and then updates to
move the paths: moving a path away from an invalidated neighbor is the procedure itself. The
update names the new neighbor (its root) and the path (its dependent), never the old
neighbor, so §9 item 7 (an INVALIDATED object receives no update) does not forbid it; the
path is not invalidated by its neighbor's invalidate. The host moves it: its connections go
up all the same (the target asks them up, `InvalidState`, §3.5), and a later offload of the
path goes under the new neighbor. A path that is itself invalidated, or a "move" to the
invalidated neighbor it is under, is still refused."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_failures import _rig

HOP = bytes.fromhex("02000000002b")


@pytest.mark.parametrize("layers", ["nic", "im", "team"])
def test_a_path_moves_away_from_its_invalidated_neighbor(layers: str) -> None:
    rig = _rig(layers)
    host = rig.host
    conn, _ = rig.open(remote=("127.0.0.1", 80))
    other, _ = rig.open(remote=("127.0.0.2", 80))  # another path under the same neighbor
    for c in (conn, other):
        rig.offload(c)
    tcb = host.tcbs[conn]
    assert tcb.path is not None and tcb.path.parent is not None
    old, path_key = tcb.path.parent, tcb.path.key
    invalidated, moved = Reply(), Reply()
    host.app_invalidate(conn, "neighbor", invalidated)  # step 1 (spec §3.4)
    assert old.lifecycle.phase is Phase.INVALIDATED
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)  # steps 2 and 3
    rig.run()
    assert invalidated.done and invalidated.error is None, invalidated
    assert moved.done and moved.error is None, moved
    # the invalidate sent every connection under the old neighbor up (spec §3.5), and the
    # old neighbor went once nothing hung under it (step 4)
    assert [host.tcbs[c].state for c in (conn, other)] == ["host", "host"]
    assert old.handle is None and host.objects.get(old.key) is not old
    assert host.next_hop_of(path_key) == HOP
    rig.offload(conn)
    again = host.tcbs[conn].path
    assert again is not None and again.parent is not None and again.parent.key[2] == HOP
    for c in (conn, other):
        rig.call(host.app_close, c)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_an_invalidated_path_takes_no_move() -> None:
    """The update would name the invalidated path (spec §9 item 7)."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    path = host.tcbs[conn].path
    assert path is not None
    invalidated, moved = Reply(), Reply()
    host.app_invalidate(conn, "path", invalidated)
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "INVALID_STATE" and "its path is invalidated" in str(moved.error)
    rig.run()
    assert invalidated.done and invalidated.error is None, invalidated
    assert host.next_hop_of(path.key) == bytes(6)
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []


def test_no_move_to_the_invalidated_neighbor_the_path_is_under() -> None:
    """Nothing would move, and the path's new values (if any) would be an update of a path
    under an invalidated neighbor, which the host refuses (spec §3.5)."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open()
    rig.offload(conn)
    invalidated, moved = Reply(), Reply()
    host.app_invalidate(conn, "neighbor", invalidated)
    host.app_update_object(conn, "path", {"NextHop": bytes(6)}, moved)
    assert moved.done and moved.error is not None, moved
    assert moved.error.symbol == "INVALID_STATE" and "neighbor is invalidated" in str(moved.error)
    rig.run()
    rig.call(host.app_close, conn)
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
