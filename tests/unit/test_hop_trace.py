"""A connection's hop trace reads the same before and after it is packed at close."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from chimneyd.ndis.status import status_name
from chimneyd.ndis.trace import HopTrace, pair_code

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
    assert frozen.held() == 0
    assert frozen.as_maps() == plain.as_maps()
    # hops recorded after the close (late completions) still show, within the depth
    replay(frozen, after)
    replay(plain, after)
    assert frozen.as_maps() == plain.as_maps()
    assert frozen.as_maps(3) == plain.as_maps(3)


@given(st.lists(hop, min_size=1, max_size=40), st.integers(1, 30))
def test_every_value_reads_back_as_recorded(hops: list[tuple], depth: int) -> None:  # type: ignore[type-arg]
    """Ids past 32 bits, statuses, chains: `trace.get` shows what was recorded, whether the
    records stayed narrow or were widened on the way (the newest `depth` calls are kept)."""
    t0 = 1_700_000_000_000_000_000
    clock = itertools.count(t0)
    trace = HopTrace(7, depth, lambda: next(clock))
    replay(trace, hops)
    want: list[dict[str, object]] = []
    seq = 0
    for i, (layer, call, handle, context, nbl, status, event) in enumerate(hops):
        for one in nbl if isinstance(nbl, list) else [nbl]:
            seq += 1
            if i < len(hops) - depth:
                continue
            hop: dict[str, object] = {"seq": seq, "t_ns": t0 + i, "layer": layer, "call": call}
            hop["handle"] = handle or None
            hop["context"] = context or None
            hop["nbl"] = one or None
            hop["status"] = status_name(status) if status != -1 else None
            if event is not None:
                hop["event"] = event
            want.append(hop)
    assert trace.as_maps() == want


def test_a_wide_value_widens_the_records_already_held() -> None:
    clock = itertools.count(1)
    trace = HopTrace(7, 64, lambda: next(clock))
    trace.record("tcpip", "NdisInitiateOffload", 52, 0, 0, 0xC0000001)
    trace.record("nic0", "MiniportTcpOffloadSend", 0, 2**40, (3, 2**33))
    trace.record("im0", "ProtocolTcpOffloadEvent", 2**31, event="TcpIndicateDisconnect")
    got = [(h["seq"], h["handle"], h["context"], h["nbl"], h["status"]) for h in trace.as_maps()]
    assert got == [
        (1, 52, None, None, status_name(0xC0000001)),
        (2, None, 2**40, 3, None),
        (3, None, 2**40, 2**33, None),
        (4, 2**31, None, None, None),
    ]
    assert trace.held() == 3


pair = st.tuples(
    st.sampled_from([("tcpip", "NdisOffloadTcpSend", "im0", "MiniportTcpOffloadSend")]),
    st.booleans(),  # handle on both hops
    st.integers(0, 2**31),
    st.integers(0, 2**40),
    st.one_of(st.integers(0, 2**40), st.lists(st.integers(1, 2**40), min_size=1, max_size=4)),
    st.sampled_from([-1, 0, 0xC0000001]),
)


@given(
    st.lists(
        st.one_of(hop.map(lambda h: ("one", h)), pair.map(lambda p: ("pair", p))), max_size=40
    ),
    st.integers(1, 30),
    st.booleans(),
)
def test_a_pair_record_reads_back_as_its_two_hops(
    steps: list[tuple],  # type: ignore[type-arg]
    depth: int,
    freeze: bool,
) -> None:
    """`record_pair` is two `record` calls in one record: the same hops, seq numbers and ids
    (the newest `depth` of them), read live, packed, or handed to a watcher."""
    paired = HopTrace(7, depth, lambda: 5)
    plain = HopTrace(7, depth, lambda: 5)
    watched: list[tuple] = []  # type: ignore[type-arg]
    paired.watch(watched.append)
    want_watched: list[tuple] = []  # type: ignore[type-arg]
    plain.watch(want_watched.append)
    for kind, step in steps:
        if kind == "one":
            replay(paired, [step])
            replay(plain, [step])
            continue
        (la, ca, lb, cb), both, handle, context, nbl, status = step
        ids = tuple(nbl) if isinstance(nbl, list) else nbl
        paired.record_pair(pair_code(la, ca, lb, cb, both), handle, context, ids, status)
        plain.record(la, ca, handle, 0, ids, status)
        plain.record(lb, cb, handle if both else 0, 0 if both else context, ids, status)
    if freeze:
        paired.freeze()
        plain.freeze()
    assert paired.as_maps() == plain.as_maps()
    assert watched == want_watched
