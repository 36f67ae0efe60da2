"""`NetBufferList.advance` writes `NdisAdvanceNetBufferDataStart` out, and `iter_chain` walks a
chain of one NBL as a tuple: for every NBL shape and advance, and every chain, each must do
exactly what the general path does (spec §2.4: the data window over the MDL chain)."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chimneyd.ndis.nbl import (
    Mdl,
    NdisAdvanceNetBufferDataStart,
    NetBuffer,
    NetBufferList,
    _walk,
    iter_chain,
)


def reference_advance(nbl: NetBufferList, nbytes: int) -> None:
    """`advance` as it was: `NdisAdvanceNetBufferDataStart` on each NB, front first."""
    nb = nbl.first_net_buffer
    while nbytes > 0 and nb is not None:
        k = min(nbytes, nb.data_length)
        NdisAdvanceNetBufferDataStart(nb, k)
        nbytes -= k
        nb = nb.next
    if nbytes:
        raise ValueError("advanced past the end of the NET_BUFFER_LIST")


# an NB: the sizes of its MDLs (an empty MDL too), its DataOffset and how much of the rest it
# describes; an NBL: one or more such NBs
nb_shapes = st.tuples(
    st.lists(st.integers(0, 9), min_size=1, max_size=4), st.integers(0, 40), st.integers(0, 40)
)
nbl_shapes = st.lists(nb_shapes, min_size=1, max_size=3)


def build(shape: list[tuple[list[int], int, int]]) -> NetBufferList:
    nbs = []
    fill = 0
    for sizes, offset, length in shape:
        head: Mdl | None = None
        for size in reversed(sizes):
            head = Mdl(memoryview(bytearray(range(fill, fill + size))), head)
            fill += size
        total = sum(sizes)
        offset = min(offset, total)
        nbs.append(NetBuffer(head, min(length, total - offset), offset))
    for a, b in itertools.pairwise(nbs):
        a.next = b
    return NetBufferList(nbs[0])


def state(nbl: NetBufferList) -> list[tuple[Any, ...]]:
    """Everything `advance` may change, and what the window then reads."""
    out = []
    nb = nbl.first_net_buffer
    while nb is not None:
        mdls = []
        mdl = nb.mdl_chain
        while mdl is not None:
            mdls.append(mdl)
            mdl = mdl.next
        where = mdls.index(nb.current_mdl) if nb.current_mdl is not None else None
        window = b"".join(bytes(v) for v in nb.views())
        out.append((nb.data_offset, nb.data_length, where, nb.current_mdl_offset, window))
        nb = nb.next
    return out


def outcome(advance: Any, nbl: NetBufferList, steps: list[int]) -> list[Any]:
    seen: list[Any] = []
    for n in steps:
        try:
            advance(nbl, n)
            seen.append(("ok", state(nbl)))
        except ValueError as exc:
            seen.append(("error", str(exc), state(nbl)))
    return seen


@settings(max_examples=1500, deadline=None)
@given(shape=nbl_shapes, steps=st.lists(st.integers(-2, 50), min_size=1, max_size=4))
def test_advance_does_what_the_ndis_call_per_net_buffer_does(
    shape: list[tuple[list[int], int, int]], steps: list[int]
) -> None:
    assert outcome(NetBufferList.advance, build(shape), steps) == outcome(
        reference_advance, build(shape), steps
    )


def test_advance_past_the_end_fails_as_before() -> None:
    nbl = NetBufferList.for_data(b"abcdef")
    nbl.advance(4)
    assert bytes(nbl.views()[0]) == b"ef"
    try:
        nbl.advance(3)
    except ValueError as exc:
        assert str(exc) == "advanced past the end of the NET_BUFFER_LIST"
    else:
        raise AssertionError("advancing past the end must fail")


@given(n=st.integers(0, 5))
def test_iter_chain_yields_the_walk(n: int) -> None:
    nbls = [NetBufferList.for_data(b"x") for _ in range(n)]
    for a, b in itertools.pairwise(nbls):
        a.next = b
    head = nbls[0] if nbls else None
    assert list(iter_chain(head)) == list(_walk(head)) == nbls


def test_iter_chain_of_one_is_safe_against_relinking() -> None:
    """The NBL yielded may be linked onto another chain while it is walked: the walk stops
    after it, as the generator did (its `Next` was read before it was yielded)."""
    head, other = NetBufferList.for_data(b"a"), NetBufferList.for_data(b"b")
    seen = []
    for nbl in iter_chain(head):
        seen.append(nbl)
        nbl.next = other
    assert seen == [head]
