"""A terminate or initiate completion that lacks a block the host sent down (a layer below put
a let-go handle's block in its place, or dropped it: spec §9 item 8) breaks the contract. The
host settles what it lacks so that nothing waits for an answer that will not come (spec §6.3
[EMU]):

- a connection missing from its terminate's completion is lost below: the host cannot know its
  state there (what was acknowledged, what was received), so it cannot carry the byte stream
  on. It lets go of its handle, takes the connection back as reset (the peer gets an RST
  through the socket, as after corrupt hardware, spec §3.7), tells the application
  (`TcpIndicateAbort`, `path: "lost"`), and answers its upload; its close answers, the tables
  drain. A neighbor or path missing from its terminate's completion is let go as terminated.
- a connection or object missing from its initiate's completion is judged by its handle's
  `MiniportOffloadContext` cell, which the layer below fills only for a block it offloaded (spec
  §1.5, §3.2.4): filled, it is offloaded (nothing comes back in the block of an offloaded
  connection, so nothing is lost) and goes up later as any other; empty, it is not offloaded,
  and a connection is then lost as above (the state and data it handed down were to come back
  in the block).

Before, such a connection stayed TERMINATING or OFFLOADING for good (its requests failed by the
engine, its `tcp.close` never answered, the host's tables never drained), and such an object
OFFLOADING."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire
from tests.unit.test_host_let_go_completions import _drained, _offloaded


def _drop(rig: HostRig, root: OffloadBlock, handle: NdisOffloadHandle | None) -> None:
    """Put a let-go handle in place of `handle` in the completion `root`."""
    assert handle is not None
    block = next(b for b in walk(root) if b.offload_handle is handle)
    block.offload_handle = NdisOffloadHandle(rig.host.name, None)


def _aborts(rig: HostRig, conn: int) -> list[dict[str, object]]:
    return [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]


@pytest.mark.parametrize("missing", [0, 2])
def test_a_connection_missing_from_its_terminate_completion_is_reset_and_freed(
    missing: int,
) -> None:
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 3)
    lost = conns[missing]
    wire = host.tcbs[lost].wire
    read = Reply()
    host.app_recv(lost, 10, False, read)
    uploads = [Reply() for _ in conns]
    for conn, reply in zip(conns, uploads, strict=True):
        host.app_upload(conn, reply)
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[lost].handle)
    with pytest.raises(SettledThenRaised, match="no block of it") as raised:
        rig.release(held)
    rig.run()
    assert raised.value.conns == frozenset({lost})  # what the host could not answer: the engine's
    for conn, reply in zip(conns, uploads, strict=True):
        assert reply.done and reply.error is None, (conn, reply)
        assert host.tcbs[conn].lifecycle.phase is Phase.IDLE, conn
    tcb = host.tcbs[lost]
    assert tcb.reset and tcb.handle is None
    assert wire.reset_sent  # the peer hears the connection is gone
    assert _aborts(rig, lost) == [{"path": "lost"}], rig.events
    assert read.done and read.error is not None, read
    assert "lost below" in str(read.error)
    # a write on it fails as on any reset connection
    sent = rig.call(host.app_send, lost, b"x")
    assert sent.done and sent.error is not None, sent
    for i, conn in enumerate(conns):
        if i != missing:
            assert not host.tcbs[conn].reset, conn
    _drained(rig, conns)


def test_a_neighbor_and_path_missing_from_their_terminate_completion_are_let_go() -> None:
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    neighbor = path.parent
    upload = Reply()
    host.app_upload(conn, upload)
    # the connection's terminate, then its path's and neighbor's in a call of their own
    rig.scheduler.queue.append(rig.hold_below("ProtocolTerminateOffloadComplete"))
    rig.scheduler.run_one()
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    assert upload.done and upload.error is None, upload
    _drop(rig, held[2][1], path.handle)
    _drop(rig, held[2][1], neighbor.handle)
    with pytest.raises(SettledThenRaised):
        rig.release(held)
    rig.run()
    assert upload.done and upload.error is None, upload
    assert not host.tcbs[conn].reset  # its own block came back: taken back alive
    assert path.lifecycle.phase is Phase.IDLE and path.handle is None
    assert neighbor.lifecycle.phase is Phase.IDLE and neighbor.handle is None
    _drained(rig, [conn])


def _offloading(rig: HostRig, n: int) -> tuple[list[int], list[Reply]]:
    conns = []
    for _ in range(n):
        conn, wire = rig.open(remote=("127.0.0.1", 80))
        wire.auto_ack = True
        conns.append(conn)
    offloads = [Reply() for _ in conns]
    for conn, reply in zip(conns, offloads, strict=True):
        rig.host.app_offload(conn, None, reply)
    return conns, offloads


def test_a_connection_missing_from_its_initiate_completion_that_the_nic_took_is_offloaded() -> None:
    """Its handle's context cell is filled: the layer below offloaded it. It is offloaded,
    carries data, and goes up and closes as any other."""
    rig = HostRig()
    host = rig.host
    conns, offloads = _offloading(rig, 2)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conns[0]].handle)
    with pytest.raises(SettledThenRaised, match="without the blocks of connections"):
        rig.release(held)
    rig.run()
    for conn, reply in zip(conns, offloads, strict=True):
        assert reply.done and reply.error is None, (conn, reply)
        assert host.tcbs[conn].state == "offloaded", conn
    sent = rig.call(host.app_send, conns[0], b"hello")
    assert sent.done and sent.error is None, sent
    upload = rig.call(host.app_upload, conns[0])
    assert upload.value == {"state": "host"}, upload
    assert not host.tcbs[conns[0]].reset
    _drained(rig, conns)


def test_a_connection_missing_from_its_initiate_completion_that_the_nic_refused_is_reset() -> None:
    """Its handle's context cell is empty: not offloaded below, and what it handed down was to
    come back in the block that did not: the host resets it."""
    rig = HostRig()
    host = rig.host
    conns, offloads = _offloading(rig, 1)
    (conn,) = conns
    wire = host.tcbs[conn].wire
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised, match="without the blocks of connections") as raised:
        rig.release(held)
    rig.run()
    assert raised.value.conns == frozenset({conn})
    assert offloads[0].done and offloads[0].error is not None, offloads[0]
    tcb = host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.IDLE and tcb.reset and tcb.handle is None
    assert wire.reset_sent
    assert _aborts(rig, conn) == [{"path": "lost"}], rig.events
    read = rig.call(host.app_recv, conn, 10, False)
    assert read.done and read.error is not None, read
    _drained(rig, conns)


@pytest.mark.parametrize("kind", ["path", "neighbor"])
@pytest.mark.parametrize("refused", [False, True])
def test_an_object_missing_from_its_initiate_completion(kind: str, refused: bool) -> None:
    """Judged by its handle's context cell too: offloaded (the connection under it carries on
    offloaded, and everything goes at its close), or not offloaded (nor is the connection,
    whose failed block came back: it stays in the host, alive)."""
    rig = HostRig()
    host = rig.host
    conns, offloads = _offloading(rig, 1)
    (conn,) = conns
    if refused:  # the target fails the object's block (and so its dependents')
        fail_next(rig.target, f"MiniportInitiateOffload[{kind}]", S.NDIS_STATUS_FAILURE)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None
    obj = path if kind == "path" else path.parent
    assert obj.handle is not None
    assert (obj.handle.miniport_offload_context is None) is refused  # the cell the host reads
    _drop(rig, held[2][1], obj.handle)
    with pytest.raises(SettledThenRaised):
        rig.release(held)
    rig.run()
    assert offloads[0].done, offloads[0]
    assert obj.lifecycle.phase is not Phase.OFFLOADING, obj
    tcb = host.tcbs[conn]
    assert not tcb.reset
    if refused:
        assert offloads[0].error is not None and tcb.state == "host", (offloads[0], tcb.state)
        assert obj.handle is None
    else:
        assert offloads[0].error is None and tcb.state == "offloaded", (offloads[0], tcb.state)
        assert obj.lifecycle.phase is Phase.OFFLOADED
    _drained(rig, conns)


def _move(rig: HostRig, conn: int) -> Reply:
    """A next-hop change of the connection's path (spec §3.4 (b)), not run."""
    reply = Reply()
    rig.host.app_update_object(conn, "path", {"NextHop": b"\x02" * 6}, reply)
    return reply


@pytest.mark.parametrize("refused", [False, True])
def test_a_next_hop_changes_new_neighbor_missing_from_its_initiate_completion(
    refused: bool,
) -> None:
    """Step 2 of a next-hop change offloads the new neighbor alone; its completion lacks the
    neighbor's block. Judged by its context cell: offloaded, the move goes on (step 3) and
    succeeds; not, the move fails with nothing moved. Before, the neighbor stayed OFFLOADING
    and the move went on as if it had failed: a neighbor the NIC held was never let go."""
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    if refused:
        fail_next(rig.target, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    moved = _move(rig, conn)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    (new,) = [o for o in host.all_objects() if o.lifecycle.phase is Phase.OFFLOADING]
    _drop(rig, held[2][1], new.handle)
    with pytest.raises(SettledThenRaised):
        rig.release(held)
    rig.run()
    assert moved.done, moved
    assert (moved.error is not None) is refused, moved
    assert new.lifecycle.phase is (Phase.IDLE if refused else Phase.OFFLOADED), new
    assert host.tcbs[conn].state == "offloaded"
    _drained(rig, [conn])


@pytest.mark.parametrize("moved_below", [True, False])
@pytest.mark.parametrize("dropped", ["path", "neighbor", "both"])
def test_a_next_hop_change_missing_blocks_keeps_the_new_neighbor_until_the_path_is_gone(
    dropped: str, moved_below: bool
) -> None:
    """Step 3 of a next-hop change (the update moving the path under the new neighbor) comes
    back without the path's block, the neighbor's, or both: the host cannot tell whether the
    layers below moved the path. It settles the move as failed (the path's connections go up,
    the path with them, spec §3.4) and keeps the new neighbor until the path's terminate has
    completed, so that whichever neighbor the path hangs under below, no neighbor is
    terminated with it still under it (spec §3.1). Before, the host terminated the new
    neighbor at once: the NIC, which had moved the path, raised (a neighbor terminated with a
    dependent), and a second change waiting behind was never answered."""
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 2)
    if not moved_below:
        fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    first = _move(rig, conns[0])
    behind = Reply()  # a second change waits behind the first (spec §3.1)
    host.app_update_object(conns[0], "path", {"NextHop": bytes(6)}, behind)
    held = rig.hold_below("ProtocolUpdateOffloadComplete")
    path = host.tcbs[conns[0]].path
    assert path is not None and path.moving
    new = next(o for o in host.all_objects() if o.block_kind == "neighbor" and o is not path.parent)
    if dropped in ("path", "both"):
        _drop(rig, held[2][1], path.handle)
    if dropped in ("neighbor", "both"):
        _drop(rig, held[2][1], new.handle)
    with pytest.raises(SettledThenRaised, match="without the block of"):
        rig.release(held)
    rig.run()
    assert first.done and first.error is not None, first
    assert behind.done, behind
    for conn in conns:
        assert host.tcbs[conn].state == "host", conn
    assert path.lifecycle.phase is Phase.IDLE and new.lifecycle.phase is Phase.IDLE
    _drained(rig, conns)


def test_a_half_closed_connection_missing_from_its_terminate_completion_is_reset() -> None:
    """In FIN_WAIT_2 (the host's FIN acknowledged, the peer's still to come), lost below: reset
    as any other, no FIN_WAIT_2 timer left for it, and the stack drains."""
    rig = HostRig()
    host = rig.host
    (conn,) = _offloaded(rig, 1)
    wire = host.tcbs[conn].wire
    assert isinstance(wire, MemoryWire)
    wire.auto_ack = False  # the FIN acknowledged only when `half_close` says
    rig.half_close(conn, wire)
    upload = Reply()
    host.app_upload(conn, upload)
    held = rig.hold_below("ProtocolTerminateOffloadComplete")
    _drop(rig, held[2][1], host.tcbs[conn].handle)
    with pytest.raises(SettledThenRaised, match="no block of it"):
        rig.release(held)
    rig.run()
    assert upload.done and upload.error is None, upload
    assert host.tcbs[conn].reset and wire.reset_sent
    assert _aborts(rig, conn) == [{"path": "lost"}], rig.events
    assert not rig.fin_wait_2_timers()
    _drained(rig, [conn])


def test_a_connection_whose_cell_is_filled_under_a_path_that_failed_is_lost() -> None:
    """A layer below that breaks two rules at once: it fails the path's block, yet fills the
    cell of the connection under it and leaves that connection's block out. The cell alone
    would take the connection as offloaded under a path the host holds as not offloaded (its
    close would then terminate the neighbor while the path is still under it below). A
    connection is offloaded only under an offloaded path: this one is lost below."""
    rig = HostRig()
    host = rig.host
    conns, offloads = _offloading(rig, 1)
    (conn,) = conns
    fail_next(rig.target, "MiniportInitiateOffload[path]", S.NDIS_STATUS_FAILURE)
    held = rig.hold_below("ProtocolInitiateOffloadComplete")
    tcb = host.tcbs[conn]
    assert tcb.handle is not None and tcb.path is not None
    tcb.handle.miniport_offload_context = tcb.path.handle  # any filled cell: the second breach
    _drop(rig, held[2][1], tcb.handle)
    with pytest.raises(SettledThenRaised, match="without the blocks of connections") as raised:
        rig.release(held)
    rig.run()
    assert raised.value.conns == frozenset({conn})
    assert offloads[0].done and offloads[0].error is not None, offloads[0]
    assert tcb.state != "offloaded" and tcb.reset, tcb.state
    assert _aborts(rig, conn) == [{"path": "lost"}], rig.events
    _drained(rig, conns)
