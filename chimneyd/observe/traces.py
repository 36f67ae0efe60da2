"""The hop traces of closed connections, kept for `trace.get` after the close (rpc-contract).

The newest `keep` closed traces stay readable. Each is packed when its connection closes; when
the engine is idle they are packed together into one object, since hundreds of small ones, made
all through a soak and kept after it, sit on as many heap pages that the idle trim then cannot
return (measured: a third of the RSS left after a 10k soak).
"""

from __future__ import annotations

from collections import OrderedDict

import msgpack

from chimneyd.ndis.trace import HopTrace

CLOSED_TRACES_KEPT = 256


class TraceArchive:
    __slots__ = ("archive", "keep", "recent")

    def __init__(self, keep: int = CLOSED_TRACES_KEPT) -> None:
        self.keep = keep
        self.recent: OrderedDict[int, HopTrace] = OrderedDict()
        self.archive: bytes | None = None  # closed traces packed together when idle

    def closed(self, conn_id: int, trace: HopTrace) -> None:
        """A connection closed: keep its trace (packed)."""
        trace.freeze()
        self.recent[conn_id] = trace
        while len(self.recent) > self.keep:
            self.recent.popitem(last=False)

    def get(self, conn_id: int, new_trace: HopTrace) -> HopTrace | None:
        """The kept trace of a closed connection; `new_trace` is filled from the archive."""
        trace = self.recent.get(conn_id)
        if trace is not None:
            return trace
        packed = self._archived().get(conn_id)
        if packed is None:
            return None
        new_trace.packed = packed
        return new_trace

    def _archived(self) -> dict[int, bytes]:
        if self.archive is None:
            return {}
        archived: dict[int, bytes] = msgpack.unpackb(self.archive, strict_map_key=False)
        return archived

    def pack(self) -> None:
        """Pack the recent traces and the archive into one object (the engine is idle)."""
        if not self.recent:
            return
        merged = self._archived()
        for conn_id, trace in self.recent.items():
            trace.freeze()  # hops recorded after the close (receive returns) go in too
            merged.pop(conn_id, None)
            if trace.packed is not None:
                merged[conn_id] = trace.packed
        kept = list(merged.items())[-self.keep :]
        self.archive = msgpack.packb(dict(kept)) if kept else None
        self.recent.clear()
