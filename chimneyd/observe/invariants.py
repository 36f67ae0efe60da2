"""The invariant checker: spec §9, asserted as calls go through the broker.

It hangs off `Ndis.observer` and sees every I/O call going down, every completion coming up,
every indication and every state-operation completion. Cheap enough to leave on in tests and
soaks: a few dict operations per NBL. Violations are collected (and optionally raised).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.broker import Layer
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import (
    INITIATE_BLOCK_STATUSES,
    STATE_OP_BLOCK_STATUSES,
    NdisStatus,
)

_KIND = {
    "MiniportTcpOffloadSend": "send",
    "NdisTcpOffloadSendComplete": "send",
    "MiniportTcpOffloadReceive": "receive",
    "NdisTcpOffloadReceiveComplete": "receive",
    "MiniportTcpOffloadDisconnect": "disconnect",
    "NdisTcpOffloadDisconnectComplete": "disconnect",
    "MiniportTcpOffloadForward": "forward",
    "NdisTcpOffloadForwardComplete": "forward",
}


class InvariantViolation(AssertionError):
    pass


def _conn(nbl: NetBufferList) -> int:
    trace = nbl.trace
    return trace.conn_id if trace is not None else 0


class InvariantChecker:
    """Implements `ndis.broker.BrokerObserver`."""

    def __init__(self, raise_on_violation: bool = False) -> None:
        self.raise_on_violation = raise_on_violation
        self.violations: list[str] = []
        self.checked = 0
        # (layer, conn, kind) -> NBL ids in posting order, not yet completed
        self.fifo: dict[tuple[str, int, str], deque[int]] = {}
        self.seq: dict[int, int] = {}  # NBL id -> posting sequence (for disconnect ordering)
        self._n = 0
        self.initiated: set[int] = set()  # handle ids whose initiate completion went up

    def violation(self, what: str) -> None:
        self.violations.append(what)
        if self.raise_on_violation:
            raise InvariantViolation(what)

    # -- I/O -----------------------------------------------------------------------------------
    def on_io_down(
        self, lower: Layer, call: str, handle: NdisOffloadHandle, nbls: list[NetBufferList]
    ) -> None:
        kind = _KIND[call]
        if handle.ndis_reserved is not None and handle.id not in self.initiated and kind != "send":
            self.violation(
                f"{call} to {lower.name} on handle {handle.id} before its initiate completed (§9.7)"
            )
        for nbl in nbls:
            key = (lower.name, _conn(nbl), kind)
            self.fifo.setdefault(key, deque()).append(nbl.id)
            self._n += 1
            self.seq[nbl.id] = self._n

    def on_io_returned(self, layer: Layer, nbls: list[NetBufferList]) -> None:
        """Send NBLs handed back by a terminate or a failed initiate instead of completed."""
        for nbl in nbls:
            self.seq.pop(nbl.id, None)
            key = (layer.name, _conn(nbl), "send")
            q = self.fifo.get(key)
            if q and nbl.id in q:
                q.remove(nbl.id)
                if not q:
                    del self.fifo[key]

    def on_io_complete(self, layer: Layer, call: str, nbls: list[NetBufferList]) -> None:
        kind = _KIND[call]
        partial = 0
        failed_seen: dict[int, bool] = {}
        for nbl in nbls:
            self.checked += 1
            conn = _conn(nbl)
            key = (layer.name, conn, kind)
            q = self.fifo.get(key)
            if not q or nbl.id not in q:
                self.violation(
                    f"{layer.name} completed {kind} NBL {nbl.id} it was not given, or twice (§9.1)"
                )
                continue
            if kind in ("send", "receive") and q[0] != nbl.id:
                self.violation(
                    f"{layer.name} completed {kind} NBL {nbl.id} before NBL {q[0]} (§9.2)"
                )
            q.remove(nbl.id)
            if not q:
                del self.fifo[key]
            if kind == "disconnect":
                sends = self.fifo.get((layer.name, conn, "send"))
                posted = self.seq.get(nbl.id, 0)
                if sends and any(self.seq.get(i, 0) < posted for i in sends):
                    self.violation(
                        f"{layer.name} completed a disconnect before earlier sends (§9.2)"
                    )
            self.seq.pop(nbl.id, None)
            if nbl.status == NdisStatus.NDIS_STATUS_PENDING:
                self.violation(f"{layer.name} completed NBL {nbl.id} with PENDING (§9.1)")
            if kind == "send":
                ok = nbl.status == NdisStatus.NDIS_STATUS_SUCCESS
                if ok and failed_seen.get(conn):
                    self.violation(
                        f"{layer.name}: send NBL {nbl.id} succeeded after a failed one (§9.3)"
                    )
                if not ok:
                    failed_seen[conn] = True
                    if nbl.tcp_offload_bytes_transferred:
                        partial += 1
        if partial > 1:
            self.violation(f"{layer.name}: {partial} partial send NBLs in one completion (§9.3)")

    # -- indications and state operations ----------------------------------------------------------
    def on_indication(self, layer: Layer, call: str, handle: NdisOffloadHandle) -> None:
        if handle.id not in self.initiated:
            self.violation(
                f"{layer.name}: {call} on handle {handle.id} before its initiate completed (§9.5)"
            )

    def on_state_complete(self, layer: Layer, call: str, root: OffloadBlock) -> None:
        legal = (
            INITIATE_BLOCK_STATUSES
            if call == "NdisMInitiateOffloadComplete"
            else STATE_OP_BLOCK_STATUSES
        )
        for block in walk(root):
            if block.status not in legal:
                self.violation(
                    f"{layer.name}: {call} with illegal block status {block.status:#x} (§9.6)"
                )
            handle = block.offload_handle
            if handle is None:
                continue
            if call == "NdisMInitiateOffloadComplete":
                if block.status in (
                    NdisStatus.NDIS_STATUS_SUCCESS,
                    NdisStatus.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS,
                ):
                    self.initiated.add(handle.id)
            elif (
                call == "NdisMTerminateOffloadComplete"
                and block.status == NdisStatus.NDIS_STATUS_SUCCESS
            ):
                self.initiated.discard(handle.id)
                for key in [
                    k for k in self.fifo if k[1] == (handle.trace.conn_id if handle.trace else -1)
                ]:
                    if key[0] == layer.name and key[2] != "send":
                        self.violation(
                            f"{layer.name}: terminate completed with {key[2]} I/O outstanding (§3.6.3)"
                        )

    # -- drain -----------------------------------------------------------------------------------
    def check_drained(self, stats: dict[str, dict[str, Any]]) -> list[str]:
        """After every connection is closed: every table and count back to zero (§9.8, §9.10)."""
        problems = []
        for name, st in stats.items():
            for gauge in ("offloads_active", "handles", "outstanding_nbls"):
                if st[gauge]:
                    problems.append(f"{name}.{gauge} = {st[gauge]} after drain")
        if self.fifo:
            problems.append(f"{len(self.fifo)} I/O queues still hold NBLs: {list(self.fifo)[:5]}")
        if self.seq:  # an NBL posted down and never completed nor handed back
            problems.append(
                f"{len(self.seq)} NBLs still have a posting sequence: {list(self.seq)[:5]}"
            )
        if self.initiated:
            problems.append(
                f"{len(self.initiated)} handles still initiated: {list(self.initiated)[:5]}"
            )
        return problems
