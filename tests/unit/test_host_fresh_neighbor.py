"""Once the host has sent a neighbor's or path's terminate, that object is leaving: a new
connection needing its key goes under a fresh object at once, while the old one's terminate
completes whenever it does [EMU: the spec is silent; "no request is ever left unanswered"].

Under a teaming MUX a neighbor's terminate may be held back for ever: the MUX holds a copy
whose initiate a failed NIC queues until its RESUME (spec §5.5), and the terminate completes
above only once that copy has gone (spec §9 item 8). Waiting for it, an offload to that
neighbor's next hop was never answered while the NIC stayed out."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.host.tcb import HostObject
from chimneyd.drivers.target.contexts import NeighborContext
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_interleavings import _check_drained, _teamed_rig
from tests.unit.test_mux_crossing_moves import _recover_and_close
from tests.unit.test_mux_held_pause import _two_nics_back

#: the path of the crossing moves that went back under neighbor A, whose terminate nic2 holds
UNDER_A = ("127.0.0.1", 80)
ADDRESS = ("127.0.0.1", 80)


def test_a_new_connection_does_not_wait_for_a_neighbor_terminate_a_failed_nic_holds() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    # A's connections went up in a call of their own (`terminate.flush_terminates`); the
    # terminate of A and its path, after them, is the one nic2 holds
    assert not [c for c in conns if host.tcbs[c].state == "uploading"]
    (old_path,) = [
        o
        for o in host.leaving.values()
        if o.block_kind == "path" and o.key[2] == bytes(map(int, UNDER_A[0].split(".")))
    ]
    assert old_path.parent is not None
    old_neighbor = old_path.parent
    assert old_path.lifecycle.phase is Phase.TERMINATING
    assert old_neighbor.lifecycle.phase is Phase.TERMINATING
    conn, wire = rig.open(remote=UNDER_A)
    wire.auto_ack = True
    conns.append(conn)
    reply = Reply()
    replies.append(reply)
    host.app_offload(conn, None, reply)
    rig.run()
    assert reply.done and reply.error is None, (reply, host.describe()["objects"])
    tcb = host.tcbs[conn]
    assert tcb.state == "offloaded"
    # under fresh objects with the same keys; the old ones still on their way out
    assert tcb.path is not None and tcb.path is not old_path and tcb.path.key == old_path.key
    assert tcb.path.parent is not old_neighbor and tcb.path.parent is not None
    assert tcb.path.parent.key == old_neighbor.key
    assert old_neighbor.lifecycle.phase is Phase.TERMINATING
    assert len(mux.held_terminates) == 1, mux.leftovers()
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)  # nic2 back at last: everything drains


def _hold_next(rig: HostRig, call: str) -> Any:
    """Deliver, with the host's end-of-drain batch whenever nothing is queued, until `call`
    is next; take it out of the queue (`rig.release` puts it back). A terminate is the next
    that names a path or neighbor of the host's: the host terminates connections in a call
    of their own first (`terminate.flush_terminates`), and that one is delivered."""
    queue = rig.scheduler.queue
    while True:
        if not queue:
            rig.host.after_batch()
            assert queue, f"no {call} came"
        if getattr(queue[0][1], "__name__", "") == call and (
            call != "MiniportTerminateOffload" or _names_an_object(queue[0][2][-1])
        ):
            return queue.popleft()
        rig.scheduler.run_one()


def _names_an_object(root: OffloadBlock) -> bool:
    return any(
        b.offload_handle is not None and isinstance(b.offload_handle.owner, HostObject)
        for b in walk(root)
    )


def _rig(layout: str) -> HostRig:
    if layout == "team":
        rig, _ = _teamed_rig()
        return rig
    return HostRig(im=layout == "im")


def _neighbors_below(rig: HostRig) -> list[Any]:
    """The neighbor contexts nic0 holds (every connection of these tests is placed there)."""
    return [ctx for ctx in rig.targets["nic0"].table if isinstance(ctx, NeighborContext)]


@pytest.mark.parametrize("layout", ["nic", "im", "team"])
def test_an_offload_while_its_objects_are_terminated_goes_under_fresh_ones(layout: str) -> None:
    """A connection closes: it goes up in a terminate of its own, then its path and neighbor
    in a later one (`terminate.flush_terminates`), which is held below. A new connection
    between the same two addresses is offloaded meanwhile under a fresh path and neighbor of
    the same keys (and DlDestinationAddress): every layer holds both, by handle (a teaming
    MUX both entries; its old copies on the NIC went with the connection's terminate, as
    nothing of its own hung under them there, `MuxIm._terminate_unused`). The old ones go
    once their terminate completes; the fresh ones stay."""
    rig = _rig(layout)
    host = rig.host
    nic = "nic0" if layout == "team" else None
    first, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(first, nic)
    old_path = host.tcbs[first].path
    assert old_path is not None and old_path.parent is not None
    old_neighbor = old_path.parent
    closing = Reply()
    host.app_close(first, closing)
    held = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    assert closing.done and closing.error is None, closing
    assert old_path.lifecycle.phase is Phase.TERMINATING
    assert old_neighbor.lifecycle.phase is Phase.TERMINATING
    second, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    offloaded = rig.call(host.app_offload, second, nic)
    assert offloaded.done and offloaded.error is None, (offloaded, host.describe()["objects"])
    tcb = host.tcbs[second]
    path = tcb.path
    assert path is not None and path is not old_path and path.key == old_path.key
    neighbor = path.parent
    assert neighbor is not None and neighbor is not old_neighbor
    assert neighbor.key == old_neighbor.key
    assert host.objects == {path.key: path, neighbor.key: neighbor}
    # the host shows both; below, two neighbors of the one next hop, each its own handle
    shown = [(o["kind"], o["phase"]) for o in host.describe()["objects"]]
    assert sorted(shown) == [
        ("neighbor", "OFFLOADED"),
        ("neighbor", "TERMINATING"),
        ("path", "OFFLOADED"),
        ("path", "TERMINATING"),
    ]
    below = _neighbors_below(rig)
    assert len(below) == (1 if layout == "team" else 2)
    assert {ctx.cached.DlDestinationAddress for ctx in below} == {old_neighbor.key[2]}
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert host.tcbs[second].state == "offloaded"
    assert host.objects == {path.key: path, neighbor.key: neighbor} and not host.leaving
    assert old_neighbor.handle is None and neighbor.handle is not None
    assert [ctx.cached.DlDestinationAddress for ctx in _neighbors_below(rig)] == [neighbor.key[2]]
    # the fresh objects carry the connection as before: up, and offloaded again under them
    assert rig.call(host.app_upload, second).error is None
    rig.offload(second, nic)
    assert rig.call(host.app_close, second).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
    _check_drained(rig)


def test_a_connection_waiting_for_a_failed_neighbor_goes_under_a_fresh_one_once_it_is_leaving() -> (
    None
):
    """A failed neighbor update (spec §3.4): the host uploads the neighbor's connections and
    terminates it once they are back, in a call of its own (`terminate.flush_terminates`). A
    connection offloaded meanwhile waits (nothing goes under a failed object) — until that
    terminate is sent, not until it completes: then it goes under a fresh neighbor, the old
    one's terminate still below."""
    rig = HostRig()
    host = rig.host
    first, _ = rig.open(remote=ADDRESS)
    rig.offload(first)
    old_neighbor = host.tcbs[first].path.parent
    assert old_neighbor is not None
    # a second connection's offload is held at the NIC: it holds the neighbor once failed
    second, _ = rig.open(remote=ADDRESS)
    offloading = Reply()
    host.app_offload(second, None, offloading)
    initiate = _hold_next(rig, "MiniportInitiateOffload")
    rig.run()
    fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    update = rig.call(
        host.app_update_object, first, "neighbor", {"DlDestinationAddress": b"\x02" * 6}
    )
    assert update.done and update.error is not None, update
    assert old_neighbor.lifecycle.phase is Phase.FAILED
    third, _ = rig.open(remote=ADDRESS)
    later = Reply()
    host.app_offload(third, None, later)
    rig.run()
    assert not later.done, "went under the neighbor whose update failed"
    assert host.describe()["waiting"] == [third]
    # the second's offload completes; the host uploads it, then the neighbor: that one held
    rig.scheduler.queue.append(initiate)
    terminate = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    assert old_neighbor.lifecycle.phase is Phase.TERMINATING
    assert later.done and later.error is None, (later, host.describe())
    assert host.tcbs[third].state == "offloaded"
    fresh = host.tcbs[third].path.parent
    assert fresh is not None and fresh is not old_neighbor and fresh.key == old_neighbor.key
    rig.release(terminate)
    assert offloading.done and host.tcbs[second].state == "host"
    assert old_neighbor.handle is None and not host.leaving
    for conn in (first, second, third):
        assert rig.call(host.app_close, conn).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
    _check_drained(rig)


@pytest.mark.parametrize("layout", ["nic", "im"])
def test_a_failed_terminate_of_leaving_objects_leaves_the_fresh_ones_be(layout: str) -> None:
    """The old objects' terminate fails at the NIC (corrupt hardware, spec §3.7) after a new
    connection went under fresh ones: their connection went up before, in a call of its own
    (`terminate.flush_terminates`), and is not touched; the host terminates the old path and
    neighbor again; the fresh ones, of the same keys, stay offloaded with their connection.
    Not through a teaming MUX: its copies on the NIC go with the connection's terminate
    (`MuxIm._terminate_unused`), and the objects' terminate never reaches the NIC."""
    rig = _rig(layout)
    host = rig.host
    nic = None
    first, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(first, nic)
    old_path = host.tcbs[first].path
    assert old_path is not None and old_path.parent is not None
    old_neighbor = old_path.parent
    closing = Reply()
    host.app_close(first, closing)
    held = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    second, wire = rig.open(remote=ADDRESS)
    wire.auto_ack = True
    rig.offload(second, nic)
    path = host.tcbs[second].path
    assert path is not None and path is not old_path and path.parent is not None
    neighbor = path.parent
    fail_next(rig.targets["nic0"], "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    rig.release(held)
    assert not rig.targets["nic0"].fail_next, "the terminate was not failed"
    assert closing.done and closing.error is None, closing
    assert rig.event_names(first)[-2:] == ["uploaded", "closed"]
    assert "TcpIndicateAbort" not in rig.event_names(first)
    assert old_path.handle is None and old_neighbor.handle is None and not host.leaving
    assert host.objects == {path.key: path, neighbor.key: neighbor}
    assert path.lifecycle.phase is Phase.OFFLOADED
    assert neighbor.lifecycle.phase is Phase.OFFLOADED
    assert host.tcbs[second].state == "offloaded"
    assert rig.call(host.app_close, second).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
    _check_drained(rig)


def test_a_fresh_neighbor_carries_what_an_update_gave_the_leaving_one() -> None:
    """The host's neighbor cache (spec §3.4) is by key: the fresh neighbor is offloaded with
    the values an update gave the one leaving, as a later offload of a gone one is."""
    rig = HostRig(host_options={"object_cache_cap": 0})
    host = rig.host
    mac = b"\x02\x00\x00\x00\x00\x7a"
    first, _ = rig.open(remote=ADDRESS)
    rig.offload(first)
    update = rig.call(host.app_update_object, first, "neighbor", {"DlDestinationAddress": mac})
    assert update.done and update.error is None, update
    closing = Reply()
    host.app_close(first, closing)
    held = _hold_next(rig, "MiniportTerminateOffload")
    rig.run()
    second, _ = rig.open(remote=ADDRESS)
    rig.offload(second)
    assert host.leaving, "the old neighbor is not leaving beside the fresh one"
    neighbor = host.tcbs[second].path.parent
    assert neighbor is not None and neighbor.cached is not None
    assert neighbor.cached.DlDestinationAddress == mac
    assert [ctx.cached.DlDestinationAddress for ctx in _neighbors_below(rig)] == [mac, mac]
    rig.release(held)
    assert closing.done and closing.error is None, closing
    assert rig.call(host.app_close, second).error is None
    assert not any(host.leftovers().values()), host.leftovers()
    assert rig.problems() == []
