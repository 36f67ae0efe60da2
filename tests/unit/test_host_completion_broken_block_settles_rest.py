"""A completion from below whose block for one connection breaks the contract in a way the host
finds only while taking that connection back (its send state handed back not lining up with
what was sent, spec §3.6.3) is one broken block among healthy ones: the host settles every
other block of the completion, as it does for a block naming a handle it let go
(`test_host_let_go_completions`), and then raises naming the connection it could not take back
(`SettledThenRaised.conns`), so that the engine fails that connection's requests and no other.
Before, the terminate completion raised at that block: every later connection of the tree was
left TERMINATING for good, its upload and close unanswered, and the engine failed the requests
of every connection the tree named with INTERNAL (a healthy one's waiting read too)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply


def _offloaded(rig: HostRig, n: int) -> list[int]:
    conns = []
    for _ in range(n):
        conn, wire = rig.open(remote=("127.0.0.1", 80))
        wire.auto_ack = True
        rig.offload(conn)
        conns.append(conn)
    return conns


def _break_upload_of(rig: HostRig, root: OffloadBlock, conn: int) -> None:
    """Make the block of `conn` hand back a SndUna 10 bytes before anything it sent: the host
    would lose track of sent bytes taking it back (`terminate._uploaded` raises)."""
    tcb = rig.host.tcbs[conn]
    block = next(b for b in walk(root) if b.offload_handle is tcb.handle)
    block.delegated.SndUna = seq(tcb.wire.isn, -10)


@pytest.mark.parametrize("broken", [0, 1, 2])
def test_a_terminate_completion_with_one_broken_upload_settles_the_others(broken: int) -> None:
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 3)
    uploads = [Reply() for _ in conns]
    for conn, reply in zip(conns, uploads, strict=True):
        host.app_upload(conn, reply)
    layer, fn, (binding, root) = rig.hold_below("ProtocolTerminateOffloadComplete")
    _break_upload_of(rig, root, conns[broken])
    with pytest.raises(SettledThenRaised, match="lost track") as raised:
        rig.release((layer, fn, (binding, root)))
    rig.run()
    # the connection the host could not take back is named: the engine fails its requests
    assert raised.value.conns == frozenset({conns[broken]})
    for i, (conn, reply) in enumerate(zip(conns, uploads, strict=True)):
        assert host.tcbs[conn].lifecycle.phase is Phase.IDLE, conn
        if i != broken:
            assert reply.done and reply.error is None, (conn, reply)
    # every connection closes, the broken one too, and the stack drains
    for conn in conns:
        reply = rig.call(host.app_close, conn)
        assert reply.done and reply.error is None, (conn, reply)
    rig.run()
    assert rig.scheduler.queue == type(rig.scheduler.queue)()
    assert not any(host.leftovers().values()), host.leftovers()
    for name, s in rig.ndis.stats().items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert s[gauge] == 0, f"{name}.{gauge} = {s[gauge]}"
    assert not rig.contexts()


@pytest.mark.parametrize("missing", [0, 2])
def test_a_terminate_completion_without_a_connections_block_names_that_connection(
    missing: int,
) -> None:
    """A layer below put a let-go handle's block in place of a connection's own (spec §9 item
    8): the host cannot tell whether the layers below still carry that connection, and no
    upload of it will come. The others come back; the error names it, so that the engine
    fails what the host cannot answer rather than leave it unanswered. Before, the error was a
    `LetGoHandles` naming no connection: the engine failed nothing, and the upload waited
    for ever. (The host takes the connection itself as lost below and resets it:
    `test_host_completion_lost_below`.)"""
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 3)
    uploads = [Reply() for _ in conns]
    for conn, reply in zip(conns, uploads, strict=True):
        host.app_upload(conn, reply)
    layer, fn, (binding, root) = rig.hold_below("ProtocolTerminateOffloadComplete")
    own = rig.host.tcbs[conns[missing]].handle
    block = next(b for b in walk(root) if b.offload_handle is own)
    block.offload_handle = NdisOffloadHandle(host.name, None)  # let go: its owner gone
    with pytest.raises(SettledThenRaised, match="no block of it") as raised:
        rig.release((layer, fn, (binding, root)))
    rig.run()
    assert raised.value.conns == frozenset({conns[missing]})
    for i, (conn, reply) in enumerate(zip(conns, uploads, strict=True)):
        if i != missing:
            assert reply.done and reply.error is None, (conn, reply)
            assert host.tcbs[conn].lifecycle.phase is Phase.IDLE, conn


def test_an_initiate_completion_without_a_connections_block_names_that_connection() -> None:
    """The same for an initiate: a layer below put a let-go handle's block in place of a
    connection's own. No answer for it will come; the host goes by its handle's context cell,
    which the target filled: offloaded, and answered, so the error names no connection the
    engine must fail requests of (one whose cell is empty is lost and named:
    `test_host_completion_lost_below`). Before, a `LetGoHandles` naming no connection: nothing
    answered the offload. The other connection of the tree is offloaded and answered."""
    rig = HostRig()
    host = rig.host
    conns = []
    for _ in range(2):
        conn, wire = rig.open(remote=("127.0.0.1", 80))
        wire.auto_ack = True
        conns.append(conn)
    offloads = [Reply() for _ in conns]
    for conn, reply in zip(conns, offloads, strict=True):
        host.app_offload(conn, None, reply)
    layer, fn, (binding, root) = rig.hold_below("ProtocolInitiateOffloadComplete")
    own = host.tcbs[conns[0]].handle
    block = next(b for b in walk(root) if b.offload_handle is own)
    block.offload_handle = NdisOffloadHandle(host.name, None)  # let go: its owner gone
    with pytest.raises(SettledThenRaised, match="without the blocks of connections") as raised:
        rig.release((layer, fn, (binding, root)))
    rig.run()
    assert raised.value.conns == frozenset()
    for conn, reply in zip(conns, offloads, strict=True):
        assert reply.done and reply.error is None, reply
        assert host.tcbs[conn].state == "offloaded"
