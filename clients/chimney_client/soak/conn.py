"""One soak connection: its stream position, its state as the events tell it, and the outcomes
it still owes (records of faults and uploads waiting for data verified after them)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..stream import PatternStream, Verifier

#: States whose time is accounted (`closing` and `aborted` end the accounting).
TIMED_STATES = ("offloaded", "host", "uploading")


class SlotBroken(Exception):
    """The connection cannot go on (aborted, stuck, refused); the slot closes and reopens it."""


class Conn:
    """One open connection of a slot."""

    __slots__ = (
        "abort",
        "aborted",
        "bugs",
        "busy",
        "churn",
        "cid",
        "expect_abort",
        "faults",
        "holed",
        "host_cause",
        "integrity_errors",
        "local_port",
        "lost",
        "nap",
        "needs_offload",
        "next_offload_try",
        "own_upload",
        "path",
        "peer",
        "refusal",
        "reset_order",
        "retrieve_mandatory",
        "retrieve_reason",
        "retrieve_t",
        "seed",
        "sending",
        "sent",
        "since",
        "slot",
        "stall_order",
        "state",
        "stream",
        "upload_at",
        "uploads",
        "verified",
        "verifier",
        "watch",
    )

    def __init__(self, cid: int, seed: int, slot: int, peer: int, now: float) -> None:
        self.cid = cid
        self.seed = seed
        self.slot = slot
        self.peer = peer  # index of the echo peer it goes to
        self.local_port = 0  # the daemon side's port: the peer knows the connection by it
        self.path: list[str] = []
        # set while the slot thinks between round trips: an RST, an offload again by the host
        # (at RESUME, after a NIC came back) or the stop ends the pause at once, whatever the
        # think time
        self.stream = PatternStream(seed)
        self.verifier = Verifier(seed)
        self.sent = 0  # bytes the peer acknowledged (tcp.send)
        self.verified = 0  # bytes received back and checked
        self.state = "host"  # offloaded | host | uploading | closing | aborted
        self.since = now
        self.host_cause = "connect"
        self.aborted = False
        self.abort: dict[str, Any] | None = None  # the reset no fault aimed at (obs "aborts")
        self.expect_abort = False  # a fault aimed at it must abort it
        self.own_upload = False  # an upload the soak asked for (planned, or tcp.close's)
        self.needs_offload = False
        # "uploaded" events applied: an offload answer that comes after one of them is stale
        self.uploads = 0
        self.next_offload_try = 0.0
        self.refusal: dict[str, Any] | None = None  # the offload-refusal episode under way
        self.retrieve_reason: str | None = None
        self.retrieve_mandatory = True
        self.retrieve_t = 0.0  # when the last TcpIndicateRetrieve came
        self.upload_at: float | None = None
        self.churn = False
        self.busy = False
        self.sending = False
        self.lost = False
        self.integrity_errors = 0
        self.faults: list[dict[str, Any]] = []  # connection faults aimed at it
        # INTERNAL answers on it (a layer raised, spec §6.3), and whether one came from a send
        # handler: its stream may then have a hole, so the slot is closed and reopened
        self.bugs: list[dict[str, Any]] = []
        self.holed = False
        # a stall its slot is to inject between two round trips: (record, params, answer)
        self.stall_order: tuple[dict[str, Any], dict[str, str], asyncio.Future[None]] | None = None
        # a reset (peer_reset, daemon_reset) its slot is to order with bytes held at the
        # daemon: (record, params, answer)
        self.reset_order: tuple[dict[str, Any], dict[str, str], asyncio.Future[None]] | None = None
        self.nap: asyncio.Future[None] | None = None  # the think pause under way, to cut short
        self.watch: list[dict[str, Any]] = []  # records waiting for data verified after them

    @property
    def offloaded(self) -> bool:
        return self.state == "offloaded"

    def wants_more(self) -> bool:
        """Does an outcome still need traffic on this connection (a re-offload, or bytes
        verified after a fault)? The soak keeps it going that long after the hold."""
        if self.aborted:
            return False
        return self.needs_offload or any(not outcome_done(r) for r in self.watch)


def outcome_done(rec: dict[str, Any]) -> bool:
    """A watched record is done once bytes were verified past its `verify_from` mark on the
    connection it watches (`_vconn`); the mark is None until the outcome's point is reached."""
    mark = rec.get("verify_from")
    conn: Conn | None = rec.get("_vconn")
    return mark is not None and conn is not None and conn.verified > mark


def watch(conn: Conn, rec: dict[str, Any], mark: int | None) -> None:
    """Have `conn` owe data verified after `rec` (from `mark` on; None: from a later point)."""
    rec["_vconn"] = conn
    rec["verify_from"] = mark
    conn.watch.append(rec)


def finish(rec: dict[str, Any]) -> None:
    """Turn a watched record into plain data for the report (`verified_after`, `done`)."""
    conn: Conn | None = rec.pop("_vconn", None)
    owner: Conn | None = rec.pop("_conn", None)
    if owner is not None:
        rec["conn_aborted"] = owner.aborted
    mark = rec.get("verify_from")
    after = conn.verified - mark if conn is not None and mark is not None else 0
    rec["verified_after"] = max(0, after)
    rec["done"] = after > 0
