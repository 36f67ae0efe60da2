"""A hop record packs its 64-bit fields in native form, not standard-size `q`/`Q`.

`struct` packs a standard-size ("<") `q`/`Q`, and a native `q`/`Q` too, of an int past 2**30
through `_PyLong_AsByteArray` (some 400 instructions under callgrind); a native `l`/`L` reads
the int's digits in place. Every record's time and a pair record's names are such ints, and a
verified echo round records 8-9 pairs (README, "Benchmarks"). The record stays 36 bytes
narrow: the 64-bit fields come first, so native alignment adds no padding.
"""

from __future__ import annotations

import struct

from chimneyd.ndis import trace
from chimneyd.ndis.trace import HopTrace, pair_code

LP64 = struct.calcsize("@l") == 8


def test_records_pack_their_64_bit_fields_as_native_longs() -> None:
    for rec in (trace._NARROW, trace._WIDE):
        assert rec.format.startswith("@"), f"{rec.format!r}: standard sizes pack q/Q slowly"
        if LP64:
            assert not set(rec.format) & {"q", "Q"}, f"{rec.format!r}: q/Q, not l/L"
    assert trace._NARROW.size == 36, "the narrow record grew (padding?)"
    assert trace._WIDE.size == 56


def test_a_record_at_the_narrow_limits_reads_back_exact() -> None:
    clock_ns = 2**62 + 12345
    t = HopTrace(1, 8, lambda: clock_ns)
    code = pair_code("L1", "NdisOffloadTcpSend", "L2", "MiniportTcpOffloadSend")
    t.record_pair(code, 2**32 - 1, 2**32 - 2, 2**31 - 1, 2**32 - 1)
    assert t.rec is trace._NARROW
    first, second = t._records()
    assert first == (
        1,
        clock_ns,
        "L1",
        "NdisOffloadTcpSend",
        2**32 - 1,
        0,
        2**31 - 1,
        2**32 - 1,
        None,
    )
    assert second == (
        2,
        clock_ns,
        "L2",
        "MiniportTcpOffloadSend",
        0,
        2**32 - 2,
        2**31 - 1,
        2**32 - 1,
        None,
    )
    t.record("L1", "Event", 2**32, 0, (5, 6), event="x")  # past 32 bits: the records widen
    assert t.rec is trace._WIDE
    assert t._records()[:2] == [first, second]
    assert t._records()[2][:4] == (3, clock_ns, "L1", "Event")
