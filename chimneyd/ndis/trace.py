"""Per-connection hop traces and per-layer gauges and counters (design §7).

A `HopTrace` is a bounded ring of hop records for one connection, kept as fixed-size binary
records in one `bytearray`: at ten thousand connections the tuples and integers of the last
few dozen hops each were a quarter of the daemon's memory. A hop costs one `struct.pack` and
one append; records become tuples, then maps, only when read (`trace.get`). Layer, call and
event names are stored as indexes into one table of the names seen; an NBL chain's ids are
kept apart, by the record's sequence number. Records are narrow (36 bytes: the ids, the
sequence number and the 32-bit NDIS_STATUS in four bytes each) until a value does not fit;
the trace then widens every record it holds to eight bytes a field, so nothing is ever cut.

Someone watching a connection live (the web view) calls `watch(fn)`: from then on each record
is also handed to `fn`. An unwatched trace pays one test of `watcher` per record. (It once
swapped its class instead, which a compiled build cannot do, for no measurable gain.)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgpack

from chimneyd.compiled import mypyc_attr

from .status import status_name

# (first seq, t_ns, layer, call, handle, context, nbl id or ids of a chain, status, event)
HopRecord = tuple[int, int, str, str, int, int, int | tuple[int, ...], int, str | None]
NO_STATUS: Final = -1

# one record: t_ns, names (layer | call << 16 | event << 32, and HAS_STATUS), seq, status
# (0 without HAS_STATUS), handle, context, and the NBL id (CHAIN: the ids of a chain are in
# `chains` under the record's seq). An idle offloaded connection holds 8 records: the narrow
# form saves 160 bytes of each of ten thousand such connections.
# narrow, 36 bytes: seq, handle and context below 2**32, the NBL id below 2**31, and the
# NDIS_STATUS (a ULONG); wide, 56 bytes: a trace with any value past those. Fields in the
# order t_ns, names, seq, status, handle, context, nbl, in native form ("@", the 64-bit ones
# first, so no padding): struct packs a standard-size ("<") `q`/`Q`, and a native `q`/`Q`,
# through `_PyLong_AsByteArray`, some 400 instructions for an int past 2**30 (t_ns and a
# pair's names always are); a native `l`/`L` reads its digits in place
_I64, _U64 = ("l", "L") if struct.calcsize("@l") == 8 else ("q", "Q")
_NARROW: Final = struct.Struct(f"@{_I64}{_U64}IIIIi")
_WIDE: Final = struct.Struct(f"@{_I64 * 7}")
_NARROW_SIZE: Final = _NARROW.size
#: the oldest narrow record of a ring, as a slice made once (not one per record dropped)
_OLDEST: Final = slice(None, _NARROW_SIZE)
_SEQ: Final = 2  # the record's field that holds its seq
CHAIN: Final = -1
HAS_STATUS: Final = 1 << 48
# a record of two hops: NDIS's call by one layer and the handler it runs in the next, made by
# one broker call at one instant (`HopTrace.record_pair`). The low 32 bits of the names field
# index `_PAIRS` instead of naming one layer and call: a busy connection records half as many
# records, and each read still shows both hops, numbered as if recorded one by one.
PAIR: Final = 1 << 49

# the names records point to; index 0 is "no name" (a hop that is not an event)
_NAMES: Final[list[str | None]] = [None]
_INDEX: Final[dict[str | None, int]] = {None: 0}


# pair code & ~PAIR -> (names of the first hop, names of the second, the second has the handle)
_PAIRS: Final[list[tuple[int, int, bool]]] = []
_PAIR_INDEX: Final[dict[tuple[str, str, str, str, bool], int]] = {}


def pair_code(
    layer_a: str, call_a: str, layer_b: str, call_b: str, handle_both: bool = False
) -> int:
    """The code `record_pair` takes for the hop `call_a` in `layer_a` followed by `call_b` in
    `layer_b`. The first hop shows the record's handle; the second its context, or the same
    handle with `handle_both`."""
    key = (layer_a, call_a, layer_b, call_b, handle_both)
    code = _PAIR_INDEX.get(key)
    if code is None:
        first, second = _ix(layer_a) | _ix(call_a) << 16, _ix(layer_b) | _ix(call_b) << 16
        code = _PAIR_INDEX[key] = len(_PAIRS) | PAIR
        _PAIRS.append((first, second, handle_both))
    return code


def _ix(name: str | None) -> int:
    i = _INDEX.get(name)
    if i is None:
        if len(_NAMES) > 0xFFFF:
            raise ValueError("more than 65535 distinct layer, call and event names")
        i = _INDEX[name] = len(_NAMES)
        _NAMES.append(name)
    return i


@mypyc_attr(allow_interpreted_subclasses=True)
class HopTrace:
    """The bounded hop buffer of one connection."""

    __slots__ = (
        "buf",
        "chains",
        "clock",
        "conn_id",
        "depth",
        "packed",
        "rec",
        "seq",
        "watcher",
    )

    def __init__(self, conn_id: int, depth: int, clock: Callable[[], int]) -> None:
        self.conn_id = conn_id
        self.buf = bytearray()  # the records, oldest first; trimmed from the front
        self.rec = _NARROW  # the records' form: narrow until a value needs the wide one
        self.chains: dict[int, tuple[int, ...]] | None = None  # seq -> NBL ids of a chain
        self.depth = depth
        self.seq = 0
        self.clock = clock
        self.packed: bytes | None = None  # the hops before the last `freeze`
        self.watcher: Callable[[HopRecord], None] | None = None  # set only while watched

    def record(
        self,
        layer: str,
        call: str,
        handle: int = 0,
        context: int = 0,
        nbl: int | tuple[int, ...] = 0,
        status: int = -1,
        event: str | None = None,
    ) -> None:
        """One call. A call carrying an NBL chain is one record listing the ids; it reads back
        as one hop per NBL, with consecutive `seq` numbers."""
        seq = self.seq + 1
        if type(nbl) is int:
            self.seq = seq
        else:
            self.seq = seq + len(nbl) - 1  # type: ignore[arg-type]
            nbl = self._chain(seq, nbl)  # type: ignore[arg-type]
        index = _INDEX
        names = (index.get(layer) or _ix(layer)) | (index.get(call) or _ix(call)) << 16
        if event is not None:
            names |= (index.get(event) or _ix(event)) << 32
        if status != NO_STATUS:
            self._put(seq, names | HAS_STATUS, status, handle, context, nbl)
        else:
            self._put(seq, names, 0, handle, context, nbl)

    def record_pair(
        self,
        code: int,
        handle: int = 0,
        context: int = 0,
        nbl: int | tuple[int, ...] = 0,
        status: int = -1,
    ) -> None:
        """Two calls in one record (`pair_code`): the first with `handle`, the second with
        `context`; both carry `nbl` and `status`. They read back as two hops."""
        seq = self.seq + 1
        # the NBL id and the clock's reading go to `pack` as the objects they arrive as: typed
        # `int`, the compiled build unboxes each and boxes it again for `pack`, a new int object
        # (an allocation and a free) for each, twice a record (tests/unit/test_compiled_io_reads)
        ids: object = nbl
        if type(nbl) is int:
            self.seq = seq + 1
        else:
            self.seq = seq + 2 * len(nbl) - 1  # type: ignore[arg-type]
            ids = self._chain(seq, nbl)  # type: ignore[arg-type]
        if status != NO_STATUS:
            code |= HAS_STATUS
        else:
            status = 0
        # `_put` written out: 8-9 pairs are recorded per verified echo round, and a narrow
        # record of an unwatched trace, the common case, needs none of its other branches
        if self.watcher is None and self.rec is _NARROW:
            clock: Callable[[], object] = self.clock
            try:
                packed = _NARROW.pack(clock(), code, seq, status, handle, context, ids)
            except struct.error:
                pass
            else:
                buf = self.buf
                buf += packed
                if len(buf) > self.depth * _NARROW_SIZE:
                    # a busy connection's ring is full: every record drops the oldest, here
                    # without a call unless a chain's ids must go with it
                    if self.chains:
                        self._trim()
                    else:
                        del buf[_OLDEST]  # O(1): a bytearray keeps an offset to its start
                return
        self._put(seq, code, status, handle, context, ids)  # type: ignore[arg-type]

    def _trim(self) -> None:
        """Drop the oldest record of a full ring."""
        rec, buf = self.rec, self.buf
        if self.chains:
            self.chains.pop(rec.unpack_from(buf)[_SEQ], None)
        del buf[: rec.size]  # O(1): a bytearray keeps an offset to its first byte

    def _chain(self, seq: int, ids: tuple[int, ...]) -> int:
        chains = self.chains
        if chains is None:
            chains = self.chains = {}
        chains[seq] = ids
        return CHAIN

    def _put(self, seq: int, names: int, status: int, handle: int, context: int, nbl: int) -> None:
        t_ns = self.clock()
        rec = self.rec
        try:
            packed = rec.pack(t_ns, names, seq, status, handle, context, nbl)
        except struct.error:
            rec = self._widen()
            packed = rec.pack(t_ns, names, seq, status, handle, context, nbl)
        buf = self.buf
        buf += packed
        if len(buf) > self.depth * rec.size:
            self._trim()
        watcher = self.watcher
        if watcher is not None:
            for hop in self._decode(len(self.buf) - self.rec.size):
                watcher(hop)

    def _widen(self) -> struct.Struct:
        """A value does not fit a narrow record: hold every record in the wide form."""
        self.buf = bytearray(b"".join(_WIDE.pack(*r) for r in _NARROW.iter_unpack(self.buf)))
        self.rec = _WIDE
        return _WIDE

    def watch(self, watcher: Callable[[HopRecord], None]) -> None:
        """Hand every record from now on to `watcher` too (one watcher; a new one replaces it)."""
        self.watcher = watcher

    def unwatch(self) -> None:
        self.watcher = None

    def freeze(self) -> None:
        """Pack the hops held so far into one bytes object (with those packed before, up to
        `depth`): a closed connection's, or an offloaded one's once the offload is done. Hops
        recorded later go to the ring as before; `trace.get` reads all of them the same. A
        connection so keeps no buffer sized for its busiest moment while it sits idle."""
        if self.buf:
            self.packed = _pack(self._records())
            self.buf = bytearray()
            self.chains = None

    def held(self) -> int:
        """Records held unpacked (a pair record holds two hops)."""
        return len(self.buf) // self.rec.size

    def _records(self) -> list[HopRecord]:
        # the newest `depth` calls: a pair record holds two, so the ring may hold more
        live = self._decode(0)
        if self.packed is None:
            return live[-self.depth :]
        return (_unpack(self.packed) + live)[-self.depth :]

    def _decode(self, start: int) -> list[HopRecord]:
        names, chains = _NAMES, self.chains
        out: list[HopRecord] = []
        for t_ns, ix, seq, status, handle, context, nbl in self.rec.iter_unpack(
            memoryview(self.buf)[start:]
        ):
            ids = chains[seq] if nbl == CHAIN and chains is not None else nbl
            st = status if ix & HAS_STATUS else NO_STATUS
            if ix & PAIR:
                first, second, handle_both = _PAIRS[ix & 0xFFFFFFFF]
                out.append(
                    (seq, t_ns, names[first & 0xFFFF], names[first >> 16], handle, 0, ids, st, None)
                )
                seq += len(ids) if isinstance(ids, tuple) else 1
                layer, call = names[second & 0xFFFF], names[second >> 16]
                if handle_both:
                    out.append((seq, t_ns, layer, call, handle, 0, ids, st, None))
                else:
                    out.append((seq, t_ns, layer, call, 0, context, ids, st, None))
                continue
            layer, call = names[ix & 0xFFFF], names[ix >> 16 & 0xFFFF]
            out.append((seq, t_ns, layer, call, handle, context, ids, st, names[ix >> 32 & 0xFFFF]))
        return out

    def as_maps(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; `limit` keeps the newest `limit` hops (rpc-contract `trace.get`)."""
        return record_maps(self._records(), limit)


def record_maps(records: Iterable[HopRecord], limit: int | None = None) -> list[dict[str, Any]]:
    """Hop records as `trace.get` maps: one per NBL, oldest first; `limit` keeps the newest."""
    out = []
    for seq, t_ns, layer, call, handle, context, nbls, status, event in records:
        for i, nbl in enumerate(nbls if isinstance(nbls, (tuple, list)) else (nbls,)):
            hop: dict[str, Any] = {"seq": seq + i, "t_ns": t_ns, "layer": layer, "call": call}
            hop["handle"] = handle or None
            hop["context"] = context or None
            hop["nbl"] = nbl or None
            hop["status"] = status_name(status) if status != NO_STATUS else None
            if event is not None:
                hop["event"] = event  # the event type of an event indication
            out.append(hop)
    if limit is not None:
        out = out[-limit:] if limit > 0 else []
    return out


def _pack(records: list[HopRecord]) -> bytes:
    flat: list[Any] = []
    for seq, t_ns, layer, call, handle, context, nbl, status, event in records:
        flat += (seq, t_ns, _ix(layer), _ix(call), handle, context, nbl, status, _ix(event))
    return msgpack.packb(flat)  # type: ignore[no-any-return]


def _unpack(packed: bytes) -> list[HopRecord]:
    flat: tuple[Any, ...] = msgpack.unpackb(packed, use_list=False)
    names = _NAMES
    return [
        (r[0], r[1], names[r[2]], names[r[3]], r[4], r[5], r[6], r[7], names[r[8]])
        for r in (flat[i : i + 9] for i in range(0, len(flat), 9))
    ]


class LayerStats:
    """Gauges and counters of one layer, as `stack.stats` serves them."""

    __slots__ = (
        "by_status",
        "bytes_received",
        "bytes_sent",
        "calls",
        "handles",
        "offloads_active",
        "outstanding_nbls",
    )

    def __init__(self) -> None:
        self.offloads_active = 0
        self.handles = 0
        self.outstanding_nbls = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        # "Call/STATUS" -> count; a call without a status counts under the bare name.
        self.calls: dict[str, int] = {}
        self.by_status: dict[tuple[str, int], int] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.calls[key] = self.calls.get(key, 0) + n

    def count_status(self, call: str, status: int, n: int = 1) -> None:
        """Count `n` calls (NBLs) by their status; the name is made only when stats are read."""
        key = (call, status)
        self.by_status[key] = self.by_status.get(key, 0) + n

    def as_map(self) -> dict[str, Any]:
        return {
            "offloads_active": self.offloads_active,
            "handles": self.handles,
            "outstanding_nbls": self.outstanding_nbls,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "calls": dict(
                sorted(
                    [*self.calls.items()]
                    + [(f"{call}/{status_name(st)}", n) for (call, st), n in self.by_status.items()]
                )
            ),
        }
