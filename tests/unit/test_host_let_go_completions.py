"""A completion from below that names a handle the host has let go (its terminate completed:
spec §9 item 8 says nothing may come for it any more) breaks the contract, and the host says so
with a `ChimneyProtocolError` — but only once it has settled everything else the completion
carries, as `offload.complete` does (`test_host_terminate_waits_held_initiate`): a terminate's
other connections come back and their uploads are answered, a query, update or invalidate is
answered, and the stack drains to zero. Before, the terminate completion raised at the first
such block (and left the rest TERMINATING for good, their uploads and closes unanswered), and
the state-operation completions took the stray block for the request's own."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chimneyd.drivers.host.stack import HostStack
from chimneyd.ndis.blocks import OffloadBlock, new_neighbor_block, new_tcp_block
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply


def _stray(host: HostStack, kind: str) -> OffloadBlock:
    """A completed block of a handle the host has let go (its owner gone)."""
    handle = NdisOffloadHandle(host.name, None)
    block = new_neighbor_block(handle) if kind == "neighbor" else new_tcp_block(handle)
    block.status = S.NDIS_STATUS_SUCCESS
    return block


def _with_stray(root: OffloadBlock, stray: OffloadBlock, where: str) -> OffloadBlock:
    """`root`'s tree with `stray` in it: before the root (a sibling the new root), after it,
    or among the root's dependents."""
    if where == "before":
        stray.next_block = root
        return stray
    if where == "after":
        stray.next_block = root.next_block
        root.next_block = stray
        return root
    root.add_dependent(stray)
    return root


def _release_with_stray(rig: HostRig, call: str, kind: str, where: str) -> None:
    """Hold the host's completion `call`, put a stray block in its tree, deliver it: the host
    raises, naming the let-go handle, and everything else settles."""
    layer, fn, (binding, root) = rig.hold_below(call)
    tree = _with_stray(root, _stray(rig.host, kind), where)
    with pytest.raises(ChimneyProtocolError, match="let go"):
        rig.release((layer, fn, (binding, tree)))
    rig.run()


def _drained(rig: HostRig, conns: list[int]) -> None:
    host = rig.host
    for conn in conns:
        reply = rig.call(host.app_close, conn)
        assert reply.done and reply.error is None, reply
    rig.run()
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
    for name, s in rig.ndis.stats().items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert s[gauge] == 0, f"{name}.{gauge} = {s[gauge]}"
    assert not rig.contexts()


def _offloaded(rig: HostRig, n: int) -> list[int]:
    conns = []
    for _ in range(n):
        conn, wire = rig.open(remote=("127.0.0.1", 80))
        wire.auto_ack = True
        rig.offload(conn)
        conns.append(conn)
    return conns


@pytest.mark.parametrize("where", ["before", "after", "dependent"])
def test_a_terminate_completion_naming_a_handle_let_go_still_settles_the_rest(
    where: str,
) -> None:
    """Three connections uploaded in one terminate tree, a stray block in its completion: the
    three are uploaded and answered, their path and neighbor go with the last close."""
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 3)
    uploads = [Reply() for _ in conns]
    for conn, reply in zip(conns, uploads, strict=True):
        host.app_upload(conn, reply)
    _release_with_stray(rig, "ProtocolTerminateOffloadComplete", "tcp", where)
    for conn, reply in zip(conns, uploads, strict=True):
        assert reply.done and reply.error is None, (conn, reply)
        assert host.tcbs[conn].lifecycle.phase is Phase.IDLE
    _drained(rig, conns)


Ask = Callable[[HostStack, int, Reply], None]


def _query(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_query(conn, reply)


def _update(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_update(conn, {"TtlOrHopLimit": 99}, reply)


def _update_path(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_update_object(conn, "path", {"PathMtu": 1400}, reply)


def _move_path(host: HostStack, conn: int, reply: Reply) -> None:
    # a next-hop change (spec §3.4 (b)): the second one moves the path back
    tcb = host.tcbs[conn]
    back = tcb.path is not None and tcb.path.moving
    host.app_update_object(conn, "path", {"NextHop": bytes(6) if back else b"\x02" * 6}, reply)


def _invalidate_path(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_invalidate(conn, "path", reply)


def _invalidate_tcp(host: HostStack, conn: int, reply: Reply) -> None:
    host.app_invalidate(conn, "tcp", reply)


STATE_OPS: dict[str, tuple[Ask, str]] = {
    "query": (_query, "ProtocolQueryOffloadComplete"),
    "update": (_update, "ProtocolUpdateOffloadComplete"),
    "update-path": (_update_path, "ProtocolUpdateOffloadComplete"),
    "move-path": (_move_path, "ProtocolUpdateOffloadComplete"),
    "invalidate-tcp": (_invalidate_tcp, "ProtocolInvalidateOffloadComplete"),
    "invalidate-path": (_invalidate_path, "ProtocolInvalidateOffloadComplete"),
}


@pytest.mark.parametrize("where", ["before", "after", "dependent"])
@pytest.mark.parametrize("op", sorted(STATE_OPS))
def test_a_state_operation_completion_naming_a_handle_let_go_still_settles_it(
    op: str, where: str
) -> None:
    """A query, update or invalidate completes with a stray block besides the request's own:
    the request is answered from its own block, SUCCESS as the layer below said, and what
    waited behind it (a second request, the connection's close) goes on; the stack drains."""
    ask, call = STATE_OPS[op]
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 2)
    first, behind = Reply(), Reply()
    ask(host, conns[0], first)
    # waits behind the first: a second update of an object (spec §3.1), or the query's and
    # invalidate's connection work the host defers while one is below
    ask(host, conns[0], behind)
    _release_with_stray(rig, call, "tcp" if op in ("query", "update") else "neighbor", where)
    assert first.done and first.error is None, first
    assert behind.done, behind
    if op.startswith("invalidate"):
        # the target asks the invalidated connections up (spec §3.5): answered and uploaded
        rig.run()
    _drained(rig, conns)
