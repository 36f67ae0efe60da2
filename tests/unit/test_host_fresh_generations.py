"""Objects leaving beside fresh ones of their key (`HostStack.leaving`, [EMU]): what the host
does with each while an old terminate is held below — an invalidate asked through the new
connection (spec §3.5), a NIC's UPLOAD_ALL and RESUME (spec §5.5), and a fresh object itself
terminated, and replaced, while the first is still leaving (spec §3.1, §9 items 8, 10)."""

from __future__ import annotations

from typing import Any

from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fresh_neighbor import (
    ADDRESS,
    UNDER_A,
    _hold_next,
    _neighbors_below,
)
from tests.unit.test_host_next_hop_order import HOP
from tests.unit.test_mux_crossing_moves import _recover_and_close
from tests.unit.test_mux_held_pause import _two_nics_back

#: a new link-layer address for a neighbor update (spec §3.4 (a))
ARP = bytes.fromhex("020000000077")


def _closed_and_held(rig: HostRig) -> tuple[int, Reply, Any, Any]:
    """A connection offloaded and closed, the terminate of its path and neighbor held below:
    its close reply (answered: the connection went up in a call of its own first,
    `terminate.flush_terminates`), its path and the held delivery."""
    host = rig.host
    conn, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(conn)
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    closing = Reply()
    host.app_close(conn, closing)
    held = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    assert closing.done and closing.error is None, closing
    assert path.lifecycle.phase is Phase.TERMINATING
    return conn, closing, path, held


def _fresh(rig: HostRig) -> tuple[int, Any]:
    conn, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(conn)
    path = rig.host.tcbs[conn].path
    assert path is not None and path.parent is not None
    return conn, path


def _drained(rig: HostRig) -> None:
    host = rig.host
    assert not any(host.leftovers().values()), host.leftovers()
    assert not host.objects and not host.leaving
    assert not _neighbors_below(rig)
    assert rig.problems() == []


def test_an_invalidate_through_the_new_connection_is_of_the_fresh_neighbor() -> None:
    rig = HostRig()
    host = rig.host
    _, closing, old_path, held = _closed_and_held(rig)
    old_neighbor = old_path.parent
    conn, path = _fresh(rig)
    neighbor = path.parent
    assert neighbor is not old_neighbor
    invalidated = rig.call(host.app_invalidate, conn, "neighbor")
    assert invalidated.done and invalidated.error is None, invalidated
    # the target asked the new connection up (InvalidState): it and the fresh objects went
    assert host.tcbs[conn].state == "host"
    assert neighbor.handle is None and path.handle is None
    assert old_neighbor.lifecycle.phase is Phase.TERMINATING  # untouched, still below
    assert old_path.lifecycle.phase is Phase.TERMINATING
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert rig.call(host.app_close, conn).error is None
    _drained(rig)


def test_an_update_through_the_new_connection_is_of_the_fresh_neighbor_and_kept_by_key() -> None:
    """The update reaches the fresh neighbor only (the old one's copy below keeps its values
    till it goes), and the host's cache by key keeps it for a later offload (spec §3.4)."""
    rig = HostRig()
    host = rig.host
    _, closing, old_path, held = _closed_and_held(rig)
    old_neighbor = old_path.parent
    conn, path = _fresh(rig)
    update = rig.call(host.app_update_object, conn, "neighbor", {"DlDestinationAddress": ARP})
    assert update.done and update.error is None, update
    assert path.parent.cached.DlDestinationAddress == ARP
    assert old_neighbor.cached.DlDestinationAddress != ARP
    below = sorted(ctx.cached.DlDestinationAddress for ctx in _neighbors_below(rig))
    assert below == sorted([ARP, old_neighbor.key[2]])
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert [ctx.cached.DlDestinationAddress for ctx in _neighbors_below(rig)] == [ARP]
    assert rig.call(host.app_upload, conn).error is None
    rig.offload(conn)
    assert host.tcbs[conn].path.parent.cached.DlDestinationAddress == ARP
    assert rig.call(host.app_close, conn).error is None
    _drained(rig)


def test_upload_all_and_resume_while_an_old_neighbor_is_leaving() -> None:
    """UPLOAD_ALL takes the new connection up, its fresh objects with it; the RESUME offloads
    it again under a third generation (the second is leaving too, or gone); the old terminate
    completes whenever it does and touches none of them."""
    rig = HostRig()
    host = rig.host
    _, closing, old_path, held = _closed_and_held(rig)
    conn, path = _fresh(rig)
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_UPLOAD_ALL, [])
    rig.run()
    assert host.tcbs[conn].state == "host"
    assert path.handle is None and path.parent.handle is None
    assert old_path.lifecycle.phase is Phase.TERMINATING
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    rig.run()
    assert host.tcbs[conn].state == "offloaded"
    again = host.tcbs[conn].path
    assert again is not None and again is not path and again is not old_path
    assert again.parent is not None and again.parent.lifecycle.phase is Phase.OFFLOADED
    assert old_path.lifecycle.phase is Phase.TERMINATING
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert host.tcbs[conn].path is again and again.lifecycle.phase is Phase.OFFLOADED
    assert host.objects == {again.key: again, again.parent.key: again.parent}
    assert not host.leaving
    assert rig.call(host.app_close, conn).error is None
    _drained(rig)


def test_a_fresh_neighbor_terminated_and_replaced_while_the_first_is_leaving() -> None:
    """Two generations leaving at once beside a third: each goes when its own terminate
    completes, in whatever order, and only that one."""
    rig = HostRig()
    host = rig.host
    _, _, first_path, first_held = _closed_and_held(rig)
    _, _, second_path, second_held = _closed_and_held(rig)
    assert second_path is not first_path and second_path.parent is not first_path.parent
    assert len(host.leaving) == 2  # the first one's path and neighbor
    conn, path = _fresh(rig)
    assert path is not second_path and path.parent is not second_path.parent
    assert len(host.leaving) == 4 and len(host.describe()["objects"]) == 6
    assert len(_neighbors_below(rig)) == 3
    rig.release(second_held)  # the second generation goes first
    assert second_path.handle is None and second_path.parent.handle is None
    assert first_path.lifecycle.phase is Phase.TERMINATING
    assert set(map(id, host.leaving.values())) == {id(first_path), id(first_path.parent)}
    rig.release(first_held)
    assert first_path.handle is None and first_path.parent.handle is None
    assert not host.leaving
    assert host.objects == {path.key: path, path.parent.key: path.parent}
    assert host.tcbs[conn].state == "offloaded" and len(_neighbors_below(rig)) == 1
    assert rig.call(host.app_close, conn).error is None
    _drained(rig)


def test_a_failed_terminate_of_a_leaving_neighbor_alone_leaves_the_fresh_one_be() -> None:
    """A→B, then back to A while A's terminate (step 4 of the first move, the neighbor alone)
    is below: the path goes under a fresh A. The old A's terminate fails (corrupt, spec
    §3.7): the host terminates it again, alone, and the fresh A keeps the path."""
    rig = HostRig()
    host = rig.host
    conn, _ = rig.open(remote=ADDRESS)
    rig.offload(conn)
    old = host.tcbs[conn].path.parent
    moved = Reply()
    host.app_update_object(conn, "path", {"NextHop": HOP}, moved)
    held = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    assert moved.done and moved.error is None, moved
    assert old.lifecycle.phase is Phase.TERMINATING
    back = rig.call(host.app_update_object, conn, "path", {"NextHop": bytes(6)})
    assert back.done and back.error is None, back
    path = host.tcbs[conn].path
    fresh = path.parent
    assert fresh is not old and fresh.key == old.key
    fail_next(rig.target, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    rig.release(held)
    assert not rig.target.fail_next, "the terminate was not failed"
    assert old.handle is None and not host.leaving
    assert host.tcbs[conn].path is path and path.parent is fresh
    assert fresh.lifecycle.phase is Phase.OFFLOADED and host.objects[fresh.key] is fresh
    assert host.tcbs[conn].state == "offloaded"
    assert [ctx.cached.DlDestinationAddress for ctx in _neighbors_below(rig)] == [bytes(6)]
    assert rig.call(host.app_close, conn).error is None
    _drained(rig)


def test_a_nic_failure_while_a_fresh_neighbor_sits_beside_one_a_failed_nic_holds() -> None:
    """The crossing moves' team, nic2 out for good holding A's terminate; a new connection to
    A goes under a fresh A. nic0 and nic1 fail too (the team asks everything up, spec §5.5)
    and come back: the fresh objects go and come again, the old A's terminate still held, and
    once nic2 is back everything drains."""
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    conn, wire = rig.open(remote=UNDER_A)
    wire.auto_ack = True
    conns.append(conn)
    reply = Reply()
    replies.append(reply)
    host.app_offload(conn, None, reply)
    rig.run()
    assert reply.done and reply.error is None, reply
    fresh = host.tcbs[conn].path
    assert fresh is not None and len(host.leaving) == 2
    old = list(host.leaving.values())
    for name in ("nic0", "nic1"):
        rig.targets[name].fail_adapter()
        rig.run()
    assert host.tcbs[conn].state == "host" and fresh.handle is None
    assert list(host.leaving.values()) == old and not host.objects
    rig.targets["nic0"].recover_adapter()
    rig.run()
    assert host.tcbs[conn].state == "offloaded"
    again = host.tcbs[conn].path
    assert again is not None and again is not fresh and again.key == fresh.key
    assert list(host.leaving.values()) == old
    assert all(o.lifecycle.phase is Phase.TERMINATING for o in old)
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)
