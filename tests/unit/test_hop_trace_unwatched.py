"""`record_pair` on an unwatched trace (its written-out fast path) records what two `record`
calls do: the same hops, seq numbers and ids, narrow or widened, trimmed to the depth with the
ids of the chains it drops forgotten."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chimneyd.ndis.trace import HopTrace, pair_code

pair = st.tuples(
    st.sampled_from(
        [
            ("tcpip", "NdisOffloadTcpSend", "im0", "MiniportTcpOffloadSend"),
            ("nic0", "NdisTcpOffloadSendComplete", "im0", "ProtocolTcpOffloadSendComplete"),
        ]
    ),
    st.booleans(),  # handle on both hops
    st.integers(0, 2**31),
    # past 32 bits now and then: the record widens mid-run
    st.one_of(st.integers(0, 2**31), st.integers(2**32, 2**40)),
    st.one_of(st.integers(0, 2**30), st.lists(st.integers(1, 2**40), min_size=1, max_size=4)),
    st.sampled_from([-1, 0, 0xC0000001]),
)


@given(st.lists(pair, max_size=60), st.integers(1, 20), st.booleans())
def test_an_unwatched_pair_record_reads_back_as_two_hops(
    steps: list[tuple],  # type: ignore[type-arg]
    depth: int,
    freeze: bool,
) -> None:
    paired = HopTrace(7, depth, lambda: 5)
    plain = HopTrace(7, depth, lambda: 5)
    for (la, ca, lb, cb), both, handle, context, nbl, status in steps:
        ids = tuple(nbl) if isinstance(nbl, list) else nbl
        paired.record_pair(pair_code(la, ca, lb, cb, both), handle, context, ids, status)
        plain.record(la, ca, handle, 0, ids, status)
        plain.record(lb, cb, handle if both else 0, 0 if both else context, ids, status)
    # the ring holds at most `depth` records: a chain's ids leave with the record naming them
    assert paired.held() <= depth
    assert len(paired.chains or {}) <= paired.held()
    if freeze:
        paired.freeze()
        plain.freeze()
    assert paired.as_maps() == plain.as_maps()
