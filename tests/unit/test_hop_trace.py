"""A connection's hop trace reads the same before and after it is packed at close."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from chimneyd.ndis.trace import HopTrace

hop = st.tuples(
    st.sampled_from(["tcpip", "im0", "nic0"]),
    st.sampled_from(["NdisOffloadTcpSend", "MiniportTcpOffloadSend", "NdisTcpOffloadEventHandler"]),
    st.integers(0, 2**31),
    st.integers(0, 2**31),
    st.one_of(st.integers(0, 2**40), st.lists(st.integers(1, 2**40), min_size=1, max_size=4)),
    st.sampled_from([-1, 0, 0xC0000001, 0xC0000287]),
    st.sampled_from([None, "TcpIndicateDisconnect"]),
)


def replay(trace: HopTrace, hops: list[tuple]) -> None:  # type: ignore[type-arg]
    for layer, call, handle, context, nbl, status, event in hops:
        trace.record(
            layer,
            call,
            handle,
            context,
            tuple(nbl) if isinstance(nbl, list) else nbl,
            status,
            event,
        )


@given(st.lists(hop, max_size=40), st.lists(hop, max_size=10), st.integers(1, 30))
def test_freeze_keeps_what_trace_get_reads(
    before: list[tuple],
    after: list[tuple],
    depth: int,  # type: ignore[type-arg]
) -> None:
    clock = itertools.count(1_700_000_000_000_000_000)
    frozen = HopTrace(7, depth, lambda: next(clock))
    clock2 = itertools.count(1_700_000_000_000_000_000)
    plain = HopTrace(7, depth, lambda: next(clock2))
    replay(frozen, before)
    replay(plain, before)
    frozen.freeze()
    assert frozen.hops == [] or not before
    assert frozen.as_maps() == plain.as_maps()
    # hops recorded after the close (late completions) still show, within the depth
    replay(frozen, after)
    replay(plain, after)
    assert frozen.as_maps() == plain.as_maps()
    assert frozen.as_maps(3) == plain.as_maps(3)
