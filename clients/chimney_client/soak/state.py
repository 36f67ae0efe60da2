"""A worker's bookkeeping: its configuration, counters, the state each connection is in (from
the daemon's events) and the time each spends offloaded, in host mode and uploading."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from ..aio import AsyncClient
from .channels import Channel
from .conn import TIMED_STATES, Conn, watch
from .limits import LATENCY_SAMPLES, SETTLE_S
from .parsing import PayloadDist
from .report import COUNTER_FIELDS


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    rpc: str
    token: str | None
    peers: tuple[tuple[str, int], ...]
    peer_controls: tuple[tuple[str, int] | None, ...]  # the soak's own peers have one
    slots: tuple[int, ...]  # global connection slot numbers this worker carries
    rate: float  # this worker's opens per second
    payload: PayloadDist
    think_ms: float
    upload_share: float
    churn: float  # share of connections closed and reopened per minute
    close: str
    conns_per_rpc: int
    ops_per_rpc: int
    seed: int
    shards: int = 1  # the daemon's shards: the worker spreads its RPC clients over them
    balance_shards: bool = True  # dial again a client that lands on a shard holding its share
    # the schedule has a NIC outage (target_failure, nic_down, ...): only then are the stretches
    # on a NIC (`placements`) worth keeping; a run without one keeps none
    nic_outages: bool = True
    # after the hold, how long a fault's outcome or a slot's first round trip may still take
    # (`--settle`)
    settle_s: float = SETTLE_S


class Rpc:
    """One RPC client and the connections it carries."""

    def __init__(self, client: AsyncClient, ops: int, shard: int | None = None) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(ops)
        self.shard = shard  # the daemon's shard it landed on (None: a daemon of one process)


#: What the worker observed that a fault must explain, by list name (see `WorkerState.obs`).
OBS_LISTS = (
    "upload_all",  # uploads by a target failure (TcpIndicateRetrieve NDIS_STATUS_UPLOAD_ALL)
    "unrequested",  # uploads with no retrieve and not asked for by the soak
    "send_failures",  # tcp.send answered with an NDIS status on a connection not aborted
    "refusals",  # offload attempts refused (episodes: first and last attempt)
    "host_at_close",  # connections closed while in host mode
    "disagreements",  # the soak's idea of a connection's state differs from tcp.info
    "bug_answers",  # requests answered INTERNAL: a layer raised (spec §6.3)
    "aborts",  # resets no connection fault aimed at (a terminate a layer raised on, spec §6.3)
    # each stretch a connection spent offloaded on one NIC, as the events told the soak: the
    # NIC, from when (`on`) until when (`off`) and why it ended (`why`: `closing`, `aborted`
    # or `host:<cause>`), so that an outage can be checked against the connections on its NIC
    "placements",
)

#: The states in which a connection is on a NIC (`uploading`: asked up, not yet terminated).
ON_A_NIC = ("offloaded", "uploading")

#: How long a closed stretch on a NIC is kept before it is judged against the NIC outages the
#: coordinator told of (`nic_outage`, sent as it takes a NIC's injection time `t0`): longer
#: than such a message can take to reach us (it goes before fault.inject is even asked, and
#: the ticker reads the inbox every COMMAND_POLL_S). One later than that is caught
#: (`placements_pruned`): the check of that outage could no longer be trusted.
PLACEMENT_GRACE_S = 10.0


class WorkerState:
    def __init__(self, cfg: WorkerConfig, out: Channel, inbox: Channel) -> None:
        self.cfg = cfg
        self.out = out
        self.inbox = inbox
        self.rng = random.Random(cfg.seed * 7919 + cfg.index)
        self.c = dict.fromkeys(COUNTER_FIELDS, 0)
        self.state_s = dict.fromkeys(TIMED_STATES, 0.0)
        self.host_s_by_cause: dict[str, float] = {}
        self.latencies: list[float] = []
        self.lat_seen = 0
        # the slowest tcp.send of all, not of the sample: ms, when it was asked (monotonic), conn
        self.slowest: tuple[float, float, int] = (0.0, 0.0, 0)
        self.integrity: list[dict[str, Any]] = []
        self.errors: dict[str, dict[str, Any]] = {}
        self.rpcs: list[Rpc] = []
        self.by_id: dict[int, Conn] = {}
        self.early: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.fault_records: list[dict[str, Any]] = []
        self.obs: dict[str, list[dict[str, Any]]] = {name: [] for name in OBS_LISTS}
        self.slot_ops: dict[int, int] = {}
        # the slots whose first connect was refused or failed (LIMIT, connect_failures): not
        # held; and those some connection of which had bytes echoed back and verified: a
        # reset's round trip, or a connection whose reopen failed, counts as much as any
        # (report "carried traffic")
        self.slots_unopened: set[int] = set()
        self.slots_opened: set[int] = set()  # some connect of theirs answered: held
        self.slots_carried: set[int] = set()
        self.first_opens = 0  # slots whose first tcp.connect was answered, either way
        self.rpc_shards: dict[int, int] = {}  # RPC clients per shard of the daemon
        self.redials = 0  # clients dialled again to even them out over the shards
        self.stopping = False
        self.fast_stop = False  # Ctrl-C or a broken daemon: no settling, no graceful closes
        self.stop_at = 0.0
        self.fast_at = 0.0
        self.serial = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.fault_tasks: set[asyncio.Task[None]] = set()
        self.rpc_by_cid: dict[int, Rpc] = {}
        # since when each connection on a NIC has been there (`placements`)
        self.on_since: dict[int, float] = {}
        # the NIC outages the coordinator told of (`told_outage`): injection time, NIC and
        # shard (None: every one). A closed stretch is kept only if one fell inside it on its
        # NIC and shard (outcomes `_each_left_its_nic` needs no other);
        # `placements[:placements_judged]` were judged so, the rest are too recent
        self.outages: list[tuple[float, str | None, int | None]] = []
        self.placements_judged = 0
        # the latest end of a stretch dropped, by its NIC and shard
        self.dropped_until: dict[tuple[str | None, int | None], float] = {}
        # the coordinator's stop came: every injection's notice was put before it (it waits
        # for its fault tasks first), so every stretch can be judged at once
        self.outages_all_told = False

    # -- bookkeeping ---------------------------------------------------------------------------
    def error(self, kind: str, detail: str, **where: Any) -> None:
        self.c["errors"] += 1
        e = self.errors.setdefault(kind, {"count": 0, "examples": []})
        e["count"] += 1
        if len(e["examples"]) < 5:
            e["examples"].append({"detail": detail, **where})

    def latency(self, ms: float, conn: int = 0) -> None:
        if ms > self.slowest[0]:
            self.slowest = (ms, time.monotonic() - ms / 1000.0, conn)
        self.lat_seen += 1
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(ms)
        else:
            j = self.rng.randrange(self.lat_seen)
            if j < LATENCY_SAMPLES:
                self.latencies[j] = ms

    def new_seed(self, slot: int) -> int:
        self.serial += 1
        return (self.cfg.seed << 40) ^ (slot << 16) ^ self.serial

    def rpc_of(self, conn: Conn) -> Rpc:
        return self.rpc_by_cid[conn.cid]

    # -- states and their time -----------------------------------------------------------------
    def move(self, conn: Conn, state: str, cause: str | None = None) -> None:
        """`conn` enters `state` now; the time it spent in the last one is accounted."""
        now = time.monotonic()
        self.placement(conn, state, cause, now)
        if conn.state in TIMED_STATES:
            dt = now - conn.since
            self.state_s[conn.state] += dt
            if conn.state == "host":
                self.host_s_by_cause[conn.host_cause] = (
                    self.host_s_by_cause.get(conn.host_cause, 0.0) + dt
                )
        conn.state, conn.since = state, now
        if cause is not None:
            conn.host_cause = cause

    def placement(self, conn: Conn, state: str, cause: str | None, now: float) -> None:
        """Keep the stretches `conn` spends on a NIC (`placements`): one ends as it leaves
        offload (uploaded, closing, aborted), one starts as it is offloaded again. A
        connection offloaded inside tcp.connect enters `offloaded` without a move: its stretch
        began at the connect (`since`). None are kept in a run with no NIC outage."""
        if not self.cfg.nic_outages:
            return
        cid = conn.cid
        if conn.state == "offloaded" and cid not in self.on_since:
            self.on_since[cid] = conn.since
        was_on, will_be_on = conn.state in ON_A_NIC, state in ON_A_NIC
        if was_on and not will_be_on:
            rec: dict[str, Any] = {
                "conn": cid,
                "nic": conn.path[-1] if conn.path else None,
                "on": self.on_since.pop(cid, conn.since),
                "off": now,
                "why": state if state != "host" else f"host:{cause or conn.host_cause}",
            }
            rpc = self.rpc_by_cid.get(cid)
            if rpc is not None and rpc.shard is not None:
                rec["shard"] = rpc.shard
            self.obs["placements"].append(rec)
        elif will_be_on and not was_on:
            self.on_since[cid] = now

    def told_outage(self, t0: float, nic: str | None = None, shard: int | None = None) -> None:
        """The coordinator injects a NIC outage at `t0` (monotonic, as ours) on `nic` (None:
        any) in `shard` (None: every shard): the stretches spanning it there are kept. One
        dropped already there might have spanned it (the notice came more than
        PLACEMENT_GRACE_S late): an error, not a silently weaker check."""
        self.outages.append((t0, nic, shard))
        late = [
            until
            for (p_nic, p_shard), until in self.dropped_until.items()
            if _same_nic(p_nic, p_shard, nic, shard) and t0 <= until
        ]
        if late:
            self.error(
                "placements_pruned",
                "a NIC outage was told after stretches on a NIC it may need were dropped",
                t0=t0,
                nic=nic,
                shard=shard,
                dropped_until=max(late),
                late_s=round(time.monotonic() - t0, 3),
            )

    def prune_placements(self, now: float) -> None:
        """Judge the stretches that closed more than PLACEMENT_GRACE_S ago (all of them once
        every outage is told): keep those an outage's injection fell in on their NIC and in
        their shard (`on < t0 <= off`, as outcomes `_each_left_its_nic` selects them), drop
        the rest. Stretches are appended as they close, so those still to judge are in the
        order of their ends."""
        recs = self.obs["placements"]
        horizon = float("inf") if self.outages_all_told else now - PLACEMENT_GRACE_S
        start = end = self.placements_judged
        while end < len(recs) and float(recs[end]["off"]) < horizon:
            end += 1
        if end == start:
            return
        kept = []
        for p in recs[start:end]:
            on, off, p_nic, p_shard = float(p["on"]), float(p["off"]), p.get("nic"), p.get("shard")
            if any(
                on < t0 <= off and _same_nic(p_nic, p_shard, nic, shard)
                for t0, nic, shard in self.outages
            ):
                kept.append(p)
            else:
                key = (p_nic, p_shard)
                self.dropped_until[key] = max(self.dropped_until.get(key, off), off)
        recs[start:end] = kept
        self.placements_judged = start + len(kept)

    def offload_answered(self, conn: Conn, uploads_before: int, result: Any) -> bool:
        """Our tcp.offload succeeded; False if the connection was uploaded again since (a
        notification is handled as it arrives, an answer when its awaiting task runs: an
        UPLOAD_ALL right after the offload can come first). The connection is in host mode
        then, and the host offloads it again at RESUME."""
        if conn.uploads != uploads_before:
            return False
        self.offloaded_again(conn, result.get("path") if isinstance(result, dict) else None)
        return True

    def offloaded_again(self, conn: Conn, path: list[str] | None) -> None:
        """A tcp.offload of ours succeeded: every record waiting for a re-offload starts
        waiting for data verified after it."""
        now = time.monotonic()
        self.move(conn, "offloaded")
        if path:
            conn.path = path
        conn.needs_offload = False
        for rec in conn.watch:
            if rec.get("needs_reoffload") and rec.get("reoffloaded_t") is None:
                rec["reoffloaded_t"] = now
                rec["path"] = conn.path
                rec["verify_from"] = conn.verified
        if conn.refusal is not None:
            conn.refusal["offloaded_t"] = now
            conn.refusal["verify_from"] = conn.verified
            conn.refusal = None
        # offloaded again by the host itself (at RESUME) while the slot thinks: data verified
        # after it is owed, so the next round trip comes now, not after the think time
        self.wake(conn)

    def refused(
        self,
        conn: Conn,
        at: str,
        status: str | None,
        sent: float | None = None,
        by: str | None = None,
    ) -> dict[str, Any] | None:
        """An offload of `conn` was refused: one more attempt in its refusal episode. `sent`:
        when the refused request went out (the daemon decided between then and now; under
        load its answer can come seconds after). `by`: the layer tcp.info's `offload_refused`
        names (docs/rpc.md), where known: which NIC's room a probe may have taken
        (probe_faults `_refused_for_the_probe`). Returns the episode if this attempt began
        it."""
        now = time.monotonic()
        ep = conn.refusal
        if ep is not None and None not in (status, ep["status"]) and status != ep["status"]:
            # refused for another reason now (e.g. a refuse_offload right after a target
            # failure): a new episode, so each reason is judged on its own
            ep["continued"] = True
            conn.watch = [r for r in conn.watch if r is not ep]
            ep = conn.refusal = None
        began = ep is None
        if ep is None:
            ep = {"conn": conn.cid, "at": at, "status": status, "t_first": now, "attempts": 0}
            if by is not None:
                ep["refused_by"] = by
            ep["t_first_sent"] = sent if sent is not None else now
            rpc = self.rpc_by_cid.get(conn.cid)
            if rpc is not None and rpc.shard is not None:
                ep["shard"] = rpc.shard  # where it was refused: a NIC's room is each shard's own
            conn.refusal = ep
            self.obs["refusals"].append(ep)
            watch(conn, ep, None)
        ep["t_last"] = now
        ep["t_last_sent"] = sent if sent is not None else now
        ep["attempts"] += 1
        ep["status"] = status or ep["status"]
        if conn.state in ("host", "offloaded", "uploading"):
            # OFFLOAD_PAUSE: the target is failed or paused, which is why it stays in host mode
            paused = status == "NDIS_STATUS_OFFLOAD_PAUSE"
            self.move(conn, "host", "target_failure" if paused else "refused_offload")
        return ep if began else None

    def upload_record(self, conn: Conn, name: str, **extra: Any) -> dict[str, Any]:
        rec = {"conn": conn.cid, "t": time.monotonic(), "needs_reoffload": True, **extra}
        rec["reoffloaded_t"] = None
        rpc = self.rpc_by_cid.get(conn.cid)
        if rpc is not None and rpc.shard is not None:
            rec["shard"] = rpc.shard  # where its connection lives: a fault in one shard acts there
        self.obs[name].append(rec)
        watch(conn, rec, None)
        return rec

    # -- events --------------------------------------------------------------------------------
    def on_event(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        conn = self.by_id.get(conn_id)
        if conn is None and event != "closed":
            # tcp.connect answers after its "offloaded" event: keep it for the registration
            self.early.setdefault(conn_id, []).append((event, info))
            return
        if conn is not None:
            self.apply_event(conn, event, info)

    @staticmethod
    def wake(conn: Conn) -> None:
        """End the connection's pause between round trips now: a fault, or an outcome that
        needs data verified after it, waits for its next round trip."""
        if conn.nap is not None and not conn.nap.done():
            conn.nap.set_result(None)

    def apply_event(self, conn: Conn, event: str, info: dict[str, Any]) -> None:
        if event == "offloaded":
            path = list(info.get("path") or conn.path)
            if conn.needs_offload and conn.state in ("host", "uploading"):
                # the host offloaded it again by itself (at RESUME after a failover, spec
                # §5.5): the same as our own tcp.offload succeeding
                self.offloaded_again(conn, path)
                return
            if conn.state in TIMED_STATES:
                self.move(conn, "offloaded")
            conn.path = path
        elif event == "TcpIndicateAbort":
            if not conn.aborted:
                conn.aborted = True
                self.wake(conn)  # its slot reopens now, not after its think time
                self.c["aborts_seen"] += 1
                for rec in conn.faults:
                    rec.setdefault("abort_t", time.monotonic())
                if conn.state in TIMED_STATES:
                    self.move(conn, "aborted")
                if not conn.expect_abort:
                    # nothing we did asked for it: only a layer's bug may explain it (a
                    # terminate it raised on fails as lost hardware state, spec §6.3, §3.7)
                    rec = {"conn": conn.cid, "t": time.monotonic(), "closing": conn.own_upload}
                    self.obs["aborts"].append(rec)
                    conn.abort = rec
                if conn.own_upload and not conn.expect_abort:
                    # our upload or close was under way (disconnect, FIN read, tcp.close)
                    self.c["aborts_while_closing"] += 1
        elif event == "TcpIndicateRetrieve":
            if conn.retrieve_reason == "NDIS_STATUS_UPLOAD_ALL":
                # a request after the NIC failed (the kernel's timeout, the FIN_WAIT_2 timer)
                # comes before the host's terminate: the upload is still the failure's
                return
            if conn.state == "closing":
                # our own close: the target asks an active closer up on entering TIME_WAIT
                # (spec §5.2), no fault's request; tcp.close's upload is ours
                return
            conn.retrieve_reason = str(info.get("reason", "?"))
            conn.retrieve_t = time.monotonic()
            conn.retrieve_mandatory = bool(info.get("mandatory", True))
            if conn.state == "offloaded":
                self.move(conn, "uploading")
            for rec in conn.faults:
                if rec["kind"] == "retrieve" and conn.retrieve_reason == "NDIS_STATUS_UPLOAD_ALL":
                    if not rec.get("event_seen"):
                        # a target failure asked it up first; the NIC asks nothing twice
                        # (spec §5.2), so the retrieve raises no event of its own. Data
                        # verified after the re-offload is still owed.
                        rec["overtaken"] = True
                        owes_reoffload(rec)
                elif rec["kind"] == "retrieve":
                    rec["event_seen"] = True
                    rec["mandatory"] = conn.retrieve_mandatory
                    if not conn.retrieve_mandatory and rec.get("verify_from") is None:
                        # an optional reason may be declined: then data after the event will do
                        rec["verify_from"] = conn.verified
        elif event == "uploaded":
            self.uploaded(conn, info)

    def uploaded(self, conn: Conn, info: dict[str, Any] | None = None) -> None:
        conn.uploads += 1
        if conn.aborted or conn.state in ("closing", "aborted"):
            return  # the host's terminate after an abort, or tcp.close's own upload
        reason, conn.retrieve_reason = conn.retrieve_reason, None
        if reason == "NDIS_STATUS_UPLOAD_ALL":
            self.c["nic_uploads"] += 1
            self.move(conn, "host", "target_failure")
            # `path` becomes where it is offloaded again; `came_from` keeps the NIC that failed
            # (an outage counts the uploads of its own NIC only: outcomes._judge_outage)
            self.upload_record(
                conn, "upload_all", path=conn.path, came_from=conn.path, asked=conn.retrieve_t
            )
        elif reason is not None:
            self.c["retrieve_uploads"] += 1
            asked = any(r["kind"] == "retrieve" for r in conn.faults)
            # a retrieve the soak did not aim here — a teaming MUX moving the connection
            # (rebalance, a NIC taken out: UploadRequested, spec §5.2), a NIC after a failed
            # send — is not the `retrieve` fault's: its host time is labelled apart
            self.move(conn, "host", "retrieve" if asked else "unrequested_retrieve")
            for rec in conn.faults:
                if rec["kind"] == "retrieve":
                    rec["uploaded"] = True
                    owes_reoffload(rec)
            if not asked:
                # a retrieve the soak did not ask for: judged like any unrequested upload
                self.upload_record(
                    conn,
                    "unrequested",
                    reason=reason,
                    sending=conn.sending,
                    came_from=conn.path,
                    asked=conn.retrieve_t,
                )
        elif conn.own_upload:
            self.move(conn, "host", "planned_upload")
            return  # the planned offload follows at once
        else:
            self.c["unrequested_uploads"] += 1
            self.move(conn, "host", "unrequested_upload")
            # the host's reason (`uploaded` `reason`: a host_event's name, spec §6.2) and the NIC
            # it left: what a host_event may explain (probe_faults)
            host_reason = (info or {}).get("reason")
            self.upload_record(
                conn,
                "unrequested",
                reason=None,
                sending=conn.sending,
                host_reason=host_reason,
                came_from=list(conn.path),
            )
        conn.needs_offload = True


def owes_reoffload(rec: dict[str, Any]) -> None:
    """`rec` now waits for its connection's re-offload, then for data verified after it."""
    rec["needs_reoffload"] = True
    rec["reoffloaded_t"] = None
    rec["verify_from"] = None


def _same_nic(p_nic: str | None, p_shard: int | None, nic: str | None, shard: int | None) -> bool:
    """Whether a stretch on `p_nic` in `p_shard` (None: a daemon of one process) is one an
    outage of `nic` in `shard` (None: any NIC, every shard) may judge (outcomes
    `_each_left_its_nic`: the NIC it names, in its shard)."""
    if nic is not None and p_nic != nic:
        return False
    return shard is None or p_shard is None or str(p_shard) == str(shard)
