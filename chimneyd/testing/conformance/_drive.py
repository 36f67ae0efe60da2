"""Driving a stack in either role: state operations from the top, completed below by the
miniport stub in the middle role, and the expectations several checks share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from chimneyd.ndis.blocks import OffloadBlock, TcpOffloadStateDelegated, walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import (
    INITIATE_BLOCK_STATUSES,
    OFFLOADED_STATUSES,
    STATE_OP_BLOCK_STATUSES,
    NdisStatus,
)

from ..miniport_stub import MiniportStub, StateRequest, Statuses, StubContext
from ..records import COMPLETION_KIND, OffloadTree, StateCompletion
from ..stack import Stack
from ._suite import SUCCESS, S, expect, expect_same


# ================================================================================================
# driving a stack in either role
# ================================================================================================
def bottom_stub(st: Stack) -> MiniportStub:
    assert st.bottom is not None
    return st.bottom


def state_op(
    st: Stack,
    op: str,
    root: OffloadBlock,
    statuses: Statuses = None,
    fill: Callable[[OffloadBlock, StubContext], None] | None = None,
) -> StateCompletion:
    """Issue `op` from the top and see it completed once, with the same root. In the middle
    role the miniport stub completes it (with `statuses`, `fill`), and the top must see nothing
    before it does (spec §3.8: completion only after the lower completion)."""
    top = st.top
    before = len(top.state_completions)
    getattr(top, op.lower())(root)
    st.run()
    if st.bottom is not None:
        pending = st.bottom.pending_state()
        expect(
            len(pending) == 1 and pending[0].op == op,
            f"{op}: the layer below was given {[r.op for r in pending]} instead of one {op}",
        )
        expect(
            len(top.state_completions) == before,
            f"{op} completed to the top before the layer below completed it (spec §3.8)",
        )
        st.bottom.complete_state(pending[0], statuses, fill)
        st.run()
    done = top.state_completions[before:]
    expect(len(done) == 1, f"{op}: {len(done)} completions reached the top, expected one")
    expect(
        done[0].op == op and done[0].root is root,
        f"{op}: the completion carried {done[0].op} of another root (spec §3.1 item 6)",
    )
    legal = INITIATE_BLOCK_STATUSES if op == "Initiate" else STATE_OP_BLOCK_STATUSES
    bad = [s for s in done[0].statuses if s not in legal]
    expect(not bad, f"{op}: illegal block statuses {bad} (spec §3.1 item 5)")
    return done[0]


def offload(st: Stack, tree: OffloadTree, statuses: Statuses = None) -> StateRequest | None:
    """Initiate `tree`; with no `statuses` every block must be offloaded. Returns the request
    the layer below saw (middle role)."""
    requests = len(st.bottom.state_requests) if st.bottom is not None else 0
    done = state_op(st, "Initiate", tree.root, statuses)
    if statuses is None:
        not_ok = [S(s).name for s in done.statuses if s not in OFFLOADED_STATUSES]
        expect(not not_ok, f"initiate of a plain tree failed: {not_ok}")
    return st.bottom.state_requests[requests] if st.bottom is not None else None


def upload(
    st: Stack,
    tree: OffloadTree,
    tcp: Iterable[NdisOffloadHandle] | None = None,
    objects: bool = True,
    fill: Callable[[OffloadBlock, StubContext], None] | None = None,
) -> StateCompletion:
    """Terminate TCP connections of `tree` (default all), with its path and neighbor unless
    `objects` is False, asking for delegated state back; every block must succeed."""
    root = st.top.reference_tree(tree, tcp, objects, objects, state="delegated")
    done = state_op(st, "Terminate", root, fill=fill)
    bad = [S(s).name for s in done.statuses if s != SUCCESS]
    expect(not bad, f"terminate failed: {bad}")
    for block in walk(root):
        h = block.offload_handle
        expect(h is None or h.dead, f"handle {h!r} still live after its terminate (spec §3.9)")
    return done


def lower_contexts(
    st: Stack, request: StateRequest | None, root: OffloadBlock
) -> dict[int, StubContext]:
    """Top handle id -> the miniport stub's context for the same object, by tree position."""
    assert request is not None
    expect_same_shape(root, request.root, "initiate")
    out: dict[int, StubContext] = {}
    for up, low in zip(walk(root), walk(request.root), strict=True):
        ctx = bottom_stub(st).context_of(low)
        if up.offload_handle is not None and ctx is not None:
            out[up.offload_handle.id] = ctx
    return out


def expect_same_shape(upper: OffloadBlock, lower: OffloadBlock, what: str) -> None:
    ups, lows = list(walk(upper)), list(walk(lower))
    expect(
        [(b.header_type, b.offload_handle is None) for b in ups]
        == [(b.header_type, b.ndis_offload_handle is None) for b in lows],
        f"{what}: the tree given below has another shape than the one given above (spec §1.6)",
    )


def expect_state_passed_down(upper: OffloadBlock, lower: OffloadBlock, op: str) -> None:
    for up, low in zip(walk(upper), walk(lower), strict=True):
        for part in ("const", "cached", "delegated"):
            expect(
                getattr(up, part) == getattr(low, part),
                f"{op}: the {part} state of a {up.kind.value} block changed on the way down "
                f"(spec §1.6)",
            )
        expect_same(
            list(iter_chain(low.net_buffer_list_chain)),
            list(iter_chain(up.net_buffer_list_chain)),
            f"{op}: NetBufferListChain passed down",
        )


def completed_before(st: Stack, nbl: NetBufferList, handler: str, handle: Any) -> None:
    """The completion of `nbl` reached the top before the delivery `handler(…, handle)` did."""
    log = st.scheduler.log
    i = next(
        (
            d.seq
            for d in log
            if d.layer is st.top and d.handler in COMPLETION_KIND and carries(d.args[1], nbl)
        ),
        None,
    )
    j = next(
        (
            d.seq
            for d in log
            if d.layer is st.top and d.handler == handler and names(d.args[1], handle)
        ),
        None,
    )
    expect(i is not None, f"NBL {nbl.id} never completed to the top")
    expect(j is not None, f"{handler} never reached the top")
    assert i is not None and j is not None
    expect(i < j, f"NBL {nbl.id} completed after {handler} (spec §3.6.3)")


def carries(head: Any, nbl: NetBufferList) -> bool:
    return isinstance(head, NetBufferList) and any(n is nbl for n in iter_chain(head))


def names(root: Any, handle: Any) -> bool:
    return isinstance(root, OffloadBlock) and any(b.offload_handle is handle for b in walk(root))


def completion(st: Stack, nbl: NetBufferList) -> tuple[NdisStatus, int]:
    c = st.top.completion_of(nbl)
    expect(c is not None, f"NBL {nbl.id} never completed to the top")
    assert c is not None
    return c.status, c.bytes_transferred


def marker(ctx: StubContext) -> int:
    return (0x5EED0000 + ctx.id) & 0xFFFFFFFF


def fill_markers(block: OffloadBlock, ctx: StubContext) -> None:
    if isinstance(block.delegated, TcpOffloadStateDelegated):
        block.delegated.RcvNxt = marker(ctx)
        block.delegated.SndUna = marker(ctx) ^ 0xFFFF


def completed_first(st: Stack, first: NetBufferList, then: NetBufferList) -> None:
    seqs: dict[int, int] = {}
    for d in st.scheduler.log:
        if d.layer is st.top and d.handler in COMPLETION_KIND:
            for n in iter_chain(d.args[1]):
                seqs.setdefault(id(n), d.seq)
    expect(
        seqs.get(id(first), 1 << 62) < seqs.get(id(then), -1),
        f"NBL {then.id} completed before NBL {first.id} posted ahead of it (spec §4.5, §9 item 2)",
    )
