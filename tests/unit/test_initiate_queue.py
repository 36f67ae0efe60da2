"""An offload asked is queued until the host issues the initiate that carries it (spec §3.9:
IDLE until then): meanwhile the connection is the host's and its traffic goes on; initiates
carry at most `TREE_CONNECTIONS` connections each; a queued connection whose path is being
offloaded in an earlier tree waits beside the queue, looked at again once that path settles."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host import offload
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire


def _tcp_blocks(root: OffloadBlock) -> list[OffloadBlock]:
    return [b for b in walk(root) if b.kind is BlockKind.TCP]


def _initiates(rig: HostRig) -> list[OffloadBlock]:
    return [d.args[0] for d in rig.scheduler.delivered(rig.target, "MiniportInitiateOffload")]


def test_a_queued_connection_sends_through_the_host_and_hands_the_rest_down() -> None:
    """A send while the offload waits goes out from the host at once; what the peer has not
    acknowledged when the initiate goes is handed down with it, and the send completes once,
    when acknowledged (spec §3.2.5)."""
    rig = HostRig()
    conn, wire = rig.open(auto_ack=False)
    tcb = rig.host.tcbs[conn]
    offloaded, sent = Reply(), Reply()
    rig.host.app_offload(conn, None, offloaded)
    assert tcb.initiate_queued and tcb.lifecycle.phase is Phase.IDLE
    rig.host.app_send(conn, b"while queued", sent)
    assert bytes(wire.peer_received) == b"while queued"  # the host wrote it, not held
    rig.run()
    (root,) = _initiates(rig)
    (block,) = _tcp_blocks(root)
    assert block.net_buffer_list_chain is not None  # the unacknowledged send went down
    assert offloaded.done and offloaded.error is None and tcb.state == "offloaded"
    assert not sent.done
    wire.ack()
    rig.run()
    assert sent.done and sent.value == len(b"while queued") and sent.error is None
    assert bytes(wire.peer_received) == b"while queued"  # sent once
    assert rig.problems() == []


def test_initiates_carry_at_most_tree_connections_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven offloads asked at once, three per tree: the first tree offloads the path and
    neighbor, the later ones link their connections under them (spec §2.3 linker blocks)."""
    monkeypatch.setattr(offload, "TREE_CONNECTIONS", 3)
    rig = HostRig()
    conns = [rig.open()[0] for _ in range(7)]
    replies = [Reply() for _ in conns]
    for conn, reply in zip(conns, replies, strict=True):
        rig.host.app_offload(conn, None, reply)
    rig.run()
    trees = _initiates(rig)
    assert [len(_tcp_blocks(t)) for t in trees] == [3, 3, 1]
    # a block with state is a new offload; a linker carries none (spec §2.3)
    new_paths = [[b for b in walk(t) if b.kind is BlockKind.PATH and b.delegated] for t in trees]
    assert [len(p) for p in new_paths] == [1, 0, 0]  # later trees: linkers only
    assert all(r.done and r.error is None for r in replies)
    assert {rig.host.tcbs[c].state for c in conns} == {"offloaded"}
    assert rig.problems() == []


class _CountedWire(MemoryWire):
    """A MemoryWire that counts how often its `closed` is read: the host reads it each time
    it looks at a queued connection (a count both builds keep: the wire is not compiled)."""

    @property  # type: ignore[override]
    def closed(self) -> bool:
        self.__dict__["looks"] = self.__dict__.get("looks", 0) + 1
        return bool(self.__dict__["_closed"])

    @closed.setter
    def closed(self, value: bool) -> None:
        self.__dict__["_closed"] = value


def test_connections_waiting_for_a_path_are_not_looked_at_per_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the first tree offloads the path, the rest wait for it: drains in between (the
    other connections' traffic) do not look at them again, one by one."""
    monkeypatch.setattr(offload, "TREE_CONNECTIONS", 2)
    rig = HostRig()
    opened = [rig.open() for _ in range(6)]
    conns = [c for c, _ in opened]
    wires = [w for _, w in opened]
    for wire in wires:
        closed = wire.__dict__.pop("closed")
        wire.__class__ = _CountedWire
        wire.closed = closed
    for conn in conns:
        rig.host.app_offload(conn, None, Reply())
    rig.host.after_batch()  # the first tree takes two
    rig.host.after_batch()  # the rest find the path offloading: they wait for it
    looked = [w.__dict__.get("looks", 0) for w in wires]
    for _ in range(5):
        rig.host.after_batch()  # more drains while the first tree is in flight
    assert [w.__dict__.get("looks", 0) for w in wires] == looked  # none looked at again
    rig.run()
    assert [len(_tcp_blocks(t)) for t in _initiates(rig)] == [2, 2, 2]
    assert {rig.host.tcbs[c].state for c in conns} == {"offloaded"}
    assert rig.problems() == []


def test_requests_after_a_queued_offload_wait_for_it() -> None:
    """An upload asked after the offload is answered after it, as before the queue; the
    connection ends uploaded (the requests' order is kept)."""
    rig = HostRig()
    conn, _ = rig.open()
    offloaded, uploaded = Reply(), Reply()
    rig.host.app_offload(conn, None, offloaded)
    rig.host.app_upload(conn, uploaded)
    assert not uploaded.done
    rig.run()
    assert offloaded.done and offloaded.error is None
    assert uploaded.done and uploaded.error is None
    assert rig.host.tcbs[conn].state == "host"
    assert rig.event_names(conn).count("offloaded") == 1
    assert rig.problems() == []


def test_a_connection_reset_while_queued_is_not_offloaded() -> None:
    """The peer resets it before its turn: its offload is refused and no initiate carries it."""
    rig = HostRig()
    conn, wire = rig.open()
    offloaded = Reply()
    rig.host.app_offload(conn, None, offloaded)
    wire.peer_reset()
    rig.run()
    assert offloaded.done and offloaded.error is not None
    assert offloaded.error.symbol == "INVALID_STATE"
    assert _initiates(rig) == []
    assert not rig.host.tcbs[conn].initiate_queued
    assert rig.problems() == []
