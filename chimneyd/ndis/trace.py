"""Per-connection hop traces and per-layer gauges and counters (design §7).

A `HopTrace` is a bounded ring of hop records for one connection. Records are plain tuples so a
hop costs one append; they become maps only when read (`trace.get`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .status import status_name

# (first seq, t_ns, layer, call, handle, context, nbl id or ids of a chain, status, event)
HopRecord = tuple[int, int, str, str, int, int, int | tuple[int, ...], int, str | None]
NO_STATUS = -1


class HopTrace:
    """The bounded hop buffer of one connection."""

    __slots__ = ("clock", "conn_id", "depth", "hops", "packed", "seq")

    def __init__(self, conn_id: int, depth: int, clock: Callable[[], int]) -> None:
        self.conn_id = conn_id
        # a list trimmed by hand: an empty deque costs ~700 bytes per connection
        self.hops: list[HopRecord] = []
        self.depth = depth
        self.seq = 0
        self.clock = clock
        self.packed: bytes | None = None  # the hops before `freeze`, once the connection closed

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
        self.seq = seq if nbl.__class__ is int else seq + len(nbl) - 1  # type: ignore[arg-type]
        hops = self.hops
        hops.append((seq, self.clock(), layer, call, handle, context, nbl, status, event))
        if len(hops) > self.depth:
            del hops[0]

    def freeze(self) -> None:
        """Pack the hops of a closed connection into one bytes object. `trace.get` still reads
        them; but hundreds of closed traces kept as thousands of small tuples, scattered among
        everything freed with their connections, would keep the allocator's arenas (and RSS)
        at the soak's peak long after the connections are gone."""
        if self.hops:
            self.packed = msgpack.packb(self._records(), use_bin_type=True)
            self.hops = []

    def _records(self) -> list[Any]:
        if self.packed is None:
            return self.hops
        old: list[Any] = msgpack.unpackb(self.packed, use_list=True)
        return (old + self.hops)[-self.depth :]

    def as_maps(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first; `limit` keeps the newest `limit` hops (rpc-contract `trace.get`)."""
        out = []
        for seq, t_ns, layer, call, handle, context, nbls, status, event in self._records():
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

    def count_status(self, call: str, status: int) -> None:
        """Count a call by its status; the name is made only when stats are read."""
        key = (call, status)
        self.by_status[key] = self.by_status.get(key, 0) + 1

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
