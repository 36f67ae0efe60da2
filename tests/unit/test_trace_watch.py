"""Watching a hop trace live: the watcher hears every record from `watch` to `unwatch`, and
reads them back exactly as `trace.get` does."""

from __future__ import annotations

import itertools

from chimneyd.ndis.trace import HopRecord, HopTrace
from chimneyd.observe.web.live import record_maps


def _trace() -> HopTrace:
    clock = itertools.count(1000, 10)
    return HopTrace(7, 4, lambda: next(clock))


def test_an_unwatched_trace_has_no_watcher() -> None:
    t = _trace()
    t.record("tcpip", "NdisOffloadTcpSend", handle=3, nbl=9)
    assert t.watcher is None


def test_a_watcher_hears_every_record_until_unwatched() -> None:
    t = _trace()
    t.record("tcpip", "NdisOffloadTcpSend", handle=3, nbl=9)
    heard: list[HopRecord] = []
    t.watch(heard.append)
    assert t.watcher is not None
    t.record("im0", "MiniportTcpOffloadSend", context=5, nbl=(9, 10))
    t.record("nic0", "NdisTcpOffloadSendComplete", nbl=9, status=0)
    t.unwatch()
    assert t.watcher is None
    t.record("tcpip", "ProtocolTcpOffloadSendComplete", nbl=9, status=0)
    assert [r[3] for r in heard] == ["MiniportTcpOffloadSend", "NdisTcpOffloadSendComplete"]
    # the watcher's records read back exactly as trace.get reads them
    maps = record_maps(heard)
    assert maps == [h for h in t.as_maps() if h["seq"] in (2, 3, 4)]
    assert [(h["seq"], h["nbl"]) for h in maps] == [(2, 9), (3, 10), (4, 9)]
    assert maps[2]["status"] == "NDIS_STATUS_SUCCESS"


def test_records_keep_going_into_the_ring_while_watched() -> None:
    t = _trace()
    t.watch(lambda rec: None)
    for i in range(10):
        t.record("tcpip", "NdisOffloadTcpSend", nbl=i + 1)
    assert [h["nbl"] for h in t.as_maps()] == [7, 8, 9, 10]  # depth 4, as unwatched
