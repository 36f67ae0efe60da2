"""Judging faults by what they did: each injection must show the outcome the spec requires on
the connection it hit, with data verified after it; and every stretch a connection spent out of
offload must be explained by a fault (named) or by the soak's own planned uploads.

Inputs are plain records (the workers' and the coordinator's), times on one monotonic clock
(CLOCK_MONOTONIC is shared by the processes of one machine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .faults import FAULT_KINDS, INITIATE_CALL, MOVES, OUTAGES, TERMINATE_CALL
from .limits import (
    BUG_EPISODE_S,
    REBALANCE_SLACK_SHARE,
    RESUME_GRACE_S,
    SEND_FAILURE_UPLOAD_S,
    STALL_CLOCK_SLACK_S,
)
from .probe_faults import judge_probed

Record = dict[str, Any]
EXAMPLES = 5


class Window:
    """When a target failure had its layer down: from just before fault.inject until a little
    after fault.clear returned (the host hears RESUME through the layers), or, where that was
    later, a little after the NICs carried their connections again (`t_back`: under load the
    host hears RESUME seconds after the clear, and refuses offloads until then)."""

    def __init__(self, rec: Record) -> None:
        self.layer = str(rec.get("params", {}).get("layer", ""))
        self.start = float(rec.get("t0", 0.0))
        cleared = rec.get("t_clear1")
        self.clear = float(rec["t_clear0"]) if rec.get("t_clear0") is not None else float("inf")
        self.end = float(cleared) + RESUME_GRACE_S if cleared is not None else float("inf")
        if cleared is not None and rec.get("t_back") is not None:
            self.end = max(self.end, float(rec["t_back"]) + RESUME_GRACE_S)
        # until when the NIC was leaving service: fault.inject's answer, or the re-offload of
        # the last connection it took up (`_judge_outage`); from then on until the clear it
        # was out, and a MUX planned without it (`_overlaps`)
        self.leaving_until = float(rec.get("t1") or self.start)

    def covers(self, t0: float, t1: float | None = None) -> bool:
        return self.start <= t0 and (t1 if t1 is not None else t0) <= self.end

    def covers_refusals(self, ep: Record) -> bool:
        """A refusal episode (spec §5.5: OFFLOAD_PAUSE while the target is failed): its first
        refusal answered after the failure began, and its last refused request sent before
        the window closed. The daemon decided between a request's sending and its answer, and
        under load an answer comes seconds after; the answer's time alone would put a
        refusal made during the outage after it."""
        last_sent = ep["t_last_sent"] if "t_last_sent" in ep else ep["t_last"]
        return self.start <= float(ep["t_first"]) and float(last_sent) <= self.end


def _entry(kind: str) -> Record:
    return {"kind": kind, "injected": 0, "failed_to_inject": 0, "problems": []}


def problem(e: Record, text: str, *records: Record) -> None:
    """Add a problem to a fault entry (the first few kept as examples, all counted). The
    `records` the soak kept of what it saw (the fault's, the outcome's) go with an example,
    under `problem_records` in the --json report: a failed run must say more than a
    connection number, as its daemon may be gone by the time anyone looks."""
    if len(e["problems"]) < EXAMPLES:
        e["problems"].append(text)
        if records:
            seen = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
            e.setdefault("problem_records", []).append({"problem": text, "records": seen})
    e["problem_count"] = e.get("problem_count", 0) + 1


def not_judged(e: Record, text: str, *records: Record) -> None:
    """Add to a fault entry a check the soak could not make: its own probe could not run (no
    room for it on the NIC). No fault of the daemon's, so the run does not fail on it; the
    report says so, with the records, as it does a problem (`not_judged`, and the report's
    own list)."""
    if len(e.setdefault("not_judged", [])) < EXAMPLES:
        e["not_judged"].append(text)
        if records:
            seen = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
            e.setdefault("not_judged_records", []).append({"not_judged": text, "records": seen})
    e["not_judged_count"] = e.get("not_judged_count", 0) + 1


def judge(
    layer_records: Sequence[Record],
    conn_records: Sequence[Record],
    obs: dict[str, list[Record]],
) -> tuple[list[Record], Record]:
    """Returns one entry per fault kind (`ok`, `problems`, what was seen) and the host-mode
    account (refusals, unrequested uploads, host mode at close: explained or not)."""
    by_kind: dict[str, Record] = {}
    for rec in [*layer_records, *conn_records]:
        e = by_kind.setdefault(rec["kind"], _entry(rec["kind"]))
        if rec.get("injected"):
            e["injected"] += 1
        elif rec.get("not_judged"):
            # not injected as its probe could not run: no fault of the daemon's
            e["not_injected"] = e.get("not_injected", 0) + 1
            not_judged(e, f"not injected: {rec['not_judged']}", rec)
        else:
            e["failed_to_inject"] += 1
            problem(e, f"not injected: {rec.get('error', '?')}")
    # one whose slot a layer's bug closed (a send answered INTERNAL) is over: the data on its
    # reopened slot is the bug's outcome, judged with it
    bugged = {a.get("conn") for a in obs.get("bug_answers", []) if a.get("holed")}
    for rec in conn_records:
        if rec.get("injected"):
            _judge_conn_fault(by_kind[rec["kind"]], rec, bugged)
    host = _host_mode_account()
    outages = [r for r in layer_records if r["kind"] in OUTAGES and r.get("injected")]
    windows = [Window(r) for r in outages]
    probed = judge_probed(by_kind, layer_records, obs)  # delay, invalidate, host_event, nic_up
    # connections a reset fault aborted: one the RST reached between its upload and its
    # re-offload is over, and is not offloaded again (it is reopened as a new connection)
    reset = {
        r.get("conn")
        for r in conn_records
        if r["kind"] in ("peer_reset", "daemon_reset") and r.get("injected") and r.get("abort_seen")
    }
    # a NIC's outage first: every connection on its NIC is its own to ask up, and a rebalance
    # of the team in the same window counts those as leaving (docs/faults.md `rebalance`); the
    # rebalance then takes what is left
    uploaded: list[list[Record]] = [[] for _ in outages]
    for i in sorted(range(len(outages)), key=lambda i: outages[i]["kind"] in MOVES):
        rec, w = outages[i], windows[i]
        uploaded[i] = _judge_outage(by_kind[rec["kind"]], rec, w, obs, reset, bugged)
    _judge_fail_next(by_kind, layer_records, obs, windows, host)
    _judge_raise_next(by_kind, layer_records, obs, host)
    for rec, w, ups in zip(outages, windows, uploaded, strict=True):
        if rec["kind"] in MOVES:
            # the shards where a NIC outage ran while it did (ALL_SHARDS: one in every shard)
            crossed = {
                _shard_of(o)
                for o, o_w in zip(outages, windows, strict=True)
                if o["kind"] not in MOVES
                and _overlaps(o_w, rec)
                and _shares_a_shard(_shard_of(o), _shard_of(rec))
            }
            withheld, crossed_by_events = _host_events_over(rec, layer_records)
            _rebalance_evened(by_kind[rec["kind"]], rec, ups, crossed | crossed_by_events, withheld)
        else:
            _outage_moved_its_connections(by_kind[rec["kind"]], rec, w, len(ups), obs)
            # then each connection (after the summary: a NIC that uploaded none is said first)
            _each_left_its_nic(by_kind[rec["kind"]], rec, w, ups, obs)
    _account_leftovers(obs, [*windows, *probed], host)
    for e in by_kind.values():
        e["ok"] = not e["problems"]
    order = list(FAULT_KINDS)
    return sorted(by_kind.values(), key=lambda e: order.index(e["kind"])), host


# -- connection faults ---------------------------------------------------------------------------
_READ_BEFORE_OWN_RST = "the daemon had read before its own RST"


def _judge_conn_fault(e: Record, rec: Record, bugged: set[Any]) -> None:
    kind, conn = rec["kind"], rec.get("conn")
    # a layer's bug closed the slot before the data after the fault came (the planted bug
    # lands on whatever call comes next, this connection's too): that data is owed on the
    # reopened slot, as the bug's outcome; what the fault showed before still counts
    closed = conn in bugged and not rec.get("done", False)
    e.setdefault("connections", []).append(conn)
    e["verified_after"] = e.get("verified_after", 0) + rec.get("verified_after", 0)
    done = rec.get("done", False)
    if kind in ("peer_reset", "daemon_reset"):
        e["abort_seen"] = e.get("abort_seen", 0) + int(bool(rec.get("abort_seen")))
        if not rec.get("abort_seen"):
            problem(e, f"conn {conn}: no TcpIndicateAbort", rec)
        # its slot ordered it with its last echo read by the daemon and not by us: the check
        # below of what the daemon held at the RST has a case only when it held some
        held = int(rec.get("held_at_reset") or 0)
        e["resets_with_bytes_held"] = e.get("resets_with_bytes_held", 0) + int(held > 0)
        e["bytes_held_at_reset"] = e.get("bytes_held_at_reset", 0) + held
        if not held:
            problem(
                e,
                f"conn {conn}: no byte held at the daemon when the reset was ordered: nothing "
                "to check came back",
                rec,
            )
        e["reopened"] = e.get("reopened", 0) + int(rec.get("new_conn") is not None)
        if not done:
            problem(e, f"conn {conn}: the reopened slot carried no verified data", rec)
        lost = rec.get("lost_before_reset", 0)
        if lost:
            e["lost_before_reset"] = e.get("lost_before_reset", 0) + lost
            before = "echoed before the RST" if kind == "peer_reset" else _READ_BEFORE_OWN_RST
            problem(e, f"conn {conn}: {lost} byte(s) {before} never came back", rec)
        if kind == "daemon_reset" and rec.get("abort_seen"):
            read = rec.get("delivered")
            if read is None:
                problem(e, f"conn {conn}: tcp.info did not say what the daemon had read", rec)
                return
            # what was still in the socket when the daemon reset it goes with it: excused
            e["read_before_rst"] = e.get("read_before_rst", 0) + read
        if kind == "peer_reset":
            delivered = rec.get("delivered")
            if delivered is None:
                problem(e, f"conn {conn}: the peer did not say what it had delivered", rec)
                return
            # what the RST cut off (acknowledged by the peer's kernel, never echoed) is excused
            e["echoed_before_rst"] = e.get("echoed_before_rst", 0) + delivered
            cut = max(0, rec.get("sent_at_close", delivered) - delivered)
            e["cut_off_by_rst"] = e.get("cut_off_by_rst", 0) + cut
        return
    if kind == "stall_peer":
        _judge_stall_hold(e, rec)
        # what the bug's send left unechoed is the bug's (`lost`), never a damaged byte
        if rec.get("integrity_errors") or (rec.get("lost") and not closed):
            problem(e, f"conn {conn}: damaged after the stall", rec)
        if closed:
            e["closed_by_a_bug"] = e.get("closed_by_a_bug", 0) + 1
        elif not done:
            problem(e, f"conn {conn}: no byte verified after the stall ended", rec)
        return
    # retrieve
    e["event_seen"] = e.get("event_seen", 0) + int(bool(rec.get("event_seen")))
    e["uploaded"] = e.get("uploaded", 0) + int(bool(rec.get("uploaded")))
    e["reoffloaded"] = e.get("reoffloaded", 0) + int(rec.get("reoffloaded_t") is not None)
    if not rec.get("event_seen") and rec.get("overtaken"):
        # the target failure's own outcome (uploaded, offloaded again) covers the rest
        e["overtaken_by_target_failure"] = e.get("overtaken_by_target_failure", 0) + 1
        if closed:
            e["closed_by_a_bug"] = e.get("closed_by_a_bug", 0) + 1
        elif not done:
            problem(e, f"conn {conn}: no byte verified after the retrieve", rec)
    elif not rec.get("event_seen"):
        problem(e, f"conn {conn}: no TcpIndicateRetrieve", rec)
    elif not rec.get("uploaded") and rec.get("mandatory", True):
        problem(e, f"conn {conn}: a mandatory retrieve was not uploaded", rec)
    elif closed:
        e["closed_by_a_bug"] = e.get("closed_by_a_bug", 0) + 1
    elif rec.get("uploaded") and rec.get("reoffloaded_t") is None:
        problem(e, f"conn {conn}: not offloaded again after the retrieve", rec)
    elif not done:
        problem(e, f"conn {conn}: no byte verified after the retrieve", rec)


def _judge_stall_hold(e: Record, rec: Record) -> None:
    """The stall's own outcome: the round trip its connection began right after it was injected
    came back no earlier than its end (the daemon read nothing from the socket meanwhile)."""
    conn, end = rec.get("conn"), rec.get("stall_end")
    t0, t1 = rec.get("trip_t0"), rec.get("trip_t1")
    if end is None or t0 is None or t0 >= end:
        problem(e, f"conn {conn}: no round trip began during the stall: its hold was not seen", rec)
    elif t1 is None:
        problem(e, f"conn {conn}: the round trip begun during the stall never came back", rec)
    elif t1 < end - STALL_CLOCK_SLACK_S:
        early = (end - t1) * 1000
        problem(
            e,
            f"conn {conn}: a round trip begun during the stall came back {early:.0f} ms before "
            "its end: the stall held nothing",
            rec,
        )
    else:
        e["held"] = e.get("held", 0) + 1


# -- a NIC out: target failure, nic_down --------------------------------------------------------
def _judge_outage(
    e: Record,
    rec: Record,
    w: Window,
    obs: dict[str, list[Record]],
    reset: set[Any],
    bugged: set[Any],
) -> list[Record]:
    """Returns the uploads of the connections the outage asked up."""
    layer = w.layer
    if not rec.get("cleared"):
        problem(e, f"{layer}: fault.clear failed: {rec.get('clear_error', '?')}")
    left = rec.get("offloaded_at_end")
    if rec["kind"] not in MOVES:  # a rebalance takes no NIC out: the MUX's counts say it
        e["offloaded_before"] = e.get("offloaded_before", 0) + (rec.get("offloaded_before") or 0)
    if left:
        problem(e, f"{layer}: {left} connection(s) still offloaded on it at the end of the outage")
    elif "offloaded_at_end" in rec and left is None:
        # no count from the daemon (stack.info, stack.stats): what it left on the NIC is unknown
        problem(e, f"{layer}: could not judge: the daemon did not say what is offloaded on it")
    for when in ("nics_before", "nics_at_end"):
        if rec.get(when) is not None:
            e.setdefault(when, []).append(rec[when])
    # uploaded by the NIC's UPLOAD_ALL, or asked up one by one by a teaming MUX above it
    # (UploadRequested, spec §5.2) while the connection was on that NIC
    # judged by when the connection was asked up: with thousands to upload, the last uploads
    # may complete after the NIC is back
    # an outage put into one shard (/shard=K) acts on that shard's connections only: another
    # shard's, asked up meanwhile by an outage of the same layer there, are that one's
    shard = str(rec.get("params", {}).get("shard", ""))

    def in_shard(u: Record) -> bool:
        return not shard or u.get("shard") is None or str(u["shard"]) == shard

    # each upload is one outage's, of the NIC it came from: two outages whose windows overlap
    # (one's last uploads late, the next already in) would otherwise both count another
    # NIC's, and a NIC that uploaded none of its connections pass on the other's uploads
    # (a record without `came_from`, from an older soak, is taken by its window alone)
    uploads = [
        u
        for u in obs.get("upload_all", [])
        if not u.get("explained_by")
        and w.covers(u.get("asked") or u["t"])
        and layer in (u.get("came_from") or [layer])
        and in_shard(u)
    ]
    uploads += [
        u
        for u in obs.get("unrequested", [])
        if not u.get("explained_by")
        and u.get("reason") == "UploadRequested"
        and w.covers(u.get("asked") or u["t"])
        and layer in (u.get("came_from") or [])
        and in_shard(u)
    ]
    for u in uploads:
        u["explained_by"] = rec["kind"]
    if uploads:
        # the MUX places each by its policy when it is offloaded again: until then the counts
        # of its NICs in service still move by the outage
        w.leaving_until = max(
            w.leaving_until, max(float(u.get("reoffloaded_t") or u["t"]) for u in uploads)
        )
        # offloads stay paused until the last of them is up (spec §5.5: PAUSE, the uploads,
        # RESUME): refusals until then are this outage's
        w.end = max(w.end, max(u["t"] for u in uploads) + RESUME_GRACE_S)
    e["connections_uploaded"] = e.get("connections_uploaded", 0) + len(uploads)
    again = 0
    for u in uploads:
        t = u.get("reoffloaded_t")
        if u["conn"] in bugged and not u.get("done"):
            e["closed_by_a_bug"] = e.get("closed_by_a_bug", 0) + 1
        elif t is None and u["conn"] in reset:
            e["reset_before_reoffload"] = e.get("reset_before_reoffload", 0) + 1
        elif t is None:
            over = "its move" if rec["kind"] in MOVES else f"{layer} recovered"
            problem(e, f"conn {u['conn']}: not offloaded again after {over}", u)
        elif rec["kind"] not in MOVES and t < w.clear and layer in (u.get("path") or [layer]):
            # (a rebalance fails nothing: the MUX may offload a moved connection again before
            # fault.inject's answer reaches us, on a daemon of shards often)
            problem(e, f"conn {u['conn']}: offloaded on {layer} while it was failed", u)
        elif not u.get("done"):
            problem(e, f"conn {u['conn']}: no byte verified after its re-offload", u)
        else:
            again += 1
    e["reoffloaded"] = e.get("reoffloaded", 0) + again
    e["verified_after"] = e.get("verified_after", 0) + sum(
        u.get("verified_after", 0) for u in uploads
    )
    _reoffload_times(e, rec, [u["reoffloaded_t"] for u in uploads if u.get("reoffloaded_t")])
    return uploads


def _each_left_its_nic(
    e: Record, rec: Record, w: Window, uploads: list[Record], obs: dict[str, list[Record]]
) -> None:
    """Every connection on the NIC when it went out (the soak's own `placements`: on it
    before the injection, still there at it) left it: uploaded by the outage, or ended first
    (our close, a reset), or uploaded for a reason of its own (our planned upload, a
    `retrieve`) already under way; none may stay on a failed NIC (spec §5.5: UPLOAD_ALL asks
    for every connection; a MUX taking a NIC out asks for each of them). The daemon's count
    before (`offloaded_before`, stack.info) is a number only; these name the connections.
    Counted per outcome: `on_nic_before`, `closed_first`, `reset_first`, `left_otherwise`."""
    placements = obs.get("placements")
    if placements is None:  # records of an older soak
        return
    shard = _shard_of(rec)

    def in_shard(p: Record) -> bool:  # as `_judge_outage`: an outage in one shard acts there
        return shard == ALL_SHARDS or p.get("shard") is None or str(p["shard"]) == shard

    start = w.start
    on = [
        p
        for p in placements
        if p.get("nic") == w.layer and float(p["on"]) < start <= float(p["off"]) and in_shard(p)
    ]
    if not on:
        return
    up = {u["conn"] for u in uploads}
    counts = {"on_nic_before": len(on), "closed_first": 0, "reset_first": 0, "left_otherwise": 0}
    for p in on:
        why = str(p.get("why", ""))
        if p["conn"] in up:
            continue
        # it left while the NIC was out (or its uploads under way): a stretch on it that
        # lasted past the window is a connection the outage left where it was
        gone = float(p["off"]) <= w.end
        if gone and why == "closing":
            counts["closed_first"] += 1
        elif gone and why == "aborted":
            counts["reset_first"] += 1
        elif gone and why.startswith("host:"):
            counts["left_otherwise"] += 1  # its upload was another's: a retrieve, our own
        else:
            problem(
                e,
                f"conn {p['conn']}: on {w.layer} when it went out, not uploaded by the outage "
                f"({why or '?'} {float(p['off']) - start:.2f} s after it)",
                p,
            )
    for key, n in counts.items():
        if n or key == "on_nic_before":
            e[key] = e.get(key, 0) + n


def _reoffload_times(e: Record, rec: Record, times: list[float]) -> None:
    """How soon the outage's connections were offloaded again, first and last, in seconds:
    after the fault went in (a MUX moves them while the NIC is out; for a rebalance, after
    it was asked), and, for those offloaded
    after it, after `fault.clear` returned (the host re-offloads at RESUME). One `first-last`
    per outage, `;`-separated."""
    # a MUX moves connections on the order, often before its answer is back: from the asking
    since = rec.get("t0") if rec["kind"] in MOVES else rec.get("t1")
    spans: list[tuple[str, Any, list[float]]] = [("reoffloaded_after_fault_s", since, times)]
    cleared = rec.get("t_clear1")
    if cleared is not None and rec.get("t_clear0") is not None and rec["kind"] not in MOVES:
        after = [t for t in times if t >= float(rec["t_clear0"])]
        spans.append(("reoffloaded_after_clear_s", cleared, after))
    for key, since, ts in spans:
        if since is None or not ts:
            continue
        span = f"{min(ts) - float(since):.2f}-{max(ts) - float(since):.2f}"
        _append(e, key, span)


def _overlaps(w: Window, rec: Record) -> bool:
    """A NIC outage's window `w` changed the NICs in service while a rebalance `rec` ran (from
    its asking until the soak saw its moves done, `t_back`, and read the NICs' counts after
    it): its NIC left service (from the fault until its last connection was offloaded again,
    where the MUX's policy placed it) or came back (from the clear until the host heard
    RESUME) in that time. An outage whose NIC was out all along changed nothing the MUX
    planned on: the MUX's counts are of its NICs in service, and the rebalance answers for
    them (docs/faults.md `rebalance`)."""
    start = float(rec.get("t0", 0.0))
    end = float(rec.get("t_back") or rec.get("t1") or start)
    leaving = w.start <= end and start <= w.leaving_until
    returning = w.clear <= end and start <= w.end
    return leaving or returning


#: The shard of a fault put into every shard of the daemon (no `/shard=K`).
ALL_SHARDS = "*"


def _shard_of(rec: Record) -> str:
    """The shard a layer fault went into (`/shard=K`), or ALL_SHARDS."""
    shard = rec.get("params", {}).get("shard")
    return ALL_SHARDS if shard is None or str(shard) == "" else str(shard)


def _shares_a_shard(a: str, b: str) -> bool:
    """Two layer faults acted in at least one shard together: each shard's MUX and NICs are
    its own, so an outage in one shard changes nothing another shard's MUX plans on."""
    return ALL_SHARDS in (a, b) or a == b


def _host_events_over(rec: Record, layer_records: Sequence[Record]) -> tuple[set[str], set[str]]:
    """The host_events a rebalance `rec` ran beside, in a shard it acted in: the NICs one
    withheld all through it (`withheld`: the MUX plans nothing onto a NIC the host withholds,
    docs/faults.md `rebalance`, so that NIC is not in its counts), and the shards where one
    began or was cleared while it ran (`crossed`: the NICs the host let the MUX use changed
    under it, and it is judged on its own moves only, as for a NIC outage)."""
    start = float(rec.get("t0", 0.0))
    end = float(rec.get("t_back") or rec.get("t1") or start)
    withheld: set[str] = set()
    crossed: set[str] = set()
    for ev in layer_records:
        if ev["kind"] != "host_event" or not ev.get("injected"):
            continue
        if not _shares_a_shard(_shard_of(ev), _shard_of(rec)):
            continue
        ev_start = float(ev.get("t0", 0.0))
        ev_end = float(ev["t_clear1"]) if ev.get("t_clear1") is not None else float("inf")
        if ev_end < start or ev_start > end:
            continue  # over before it began, or begun after it
        if ev_start < start and ev_end > end:
            withheld.add(str(ev.get("params", {}).get("layer", "")))
        else:
            crossed.add(_shard_of(ev))
    return withheld, crossed


def _rebalance_evened(
    e: Record,
    rec: Record,
    moves: list[Record],
    crossed: set[str] | None = None,
    withheld: set[str] | None = None,
) -> None:
    """A rebalance moved connections where its MUX's NICs in service were uneven, none where
    they were even, and left them even: within one, or REBALANCE_SLACK_SHARE of their
    connections (some opened and closed while it ran). On a daemon of shards each shard's MUX
    evens its own NICs: judged shard by shard (`mux_shards_*`), as two shards each one apart
    can sum to two.

    `crossed`: the shards where a NIC outage ran while it did (ALL_SHARDS: one in every
    shard). The MUX planned on the NICs as it knew them, and what the outage asked up is
    placed by the MUX's policy (or planned by a rebalance that came after it): neither the
    counts after nor which upload was whose are the rebalance's alone there, so only its
    moves' own outcome (offloaded again, data after) is judged, and it is counted
    (`crossed_by_an_outage`). On a daemon of shards, the MUXes of the shards no outage
    crossed are still judged on their counts, each on its own moves (`crossed_shards`)."""
    crossed = crossed or set()
    withheld = withheld or set()
    moved = len(moves)
    layer = rec.get("params", {}).get("layer", "?")
    before, after = rec.get("mux_before"), rec.get("mux_after")
    if not before or not after:
        problem(e, f"{layer}: stack.info gave no connections per NIC for the MUX")
        return
    e.setdefault("mux_before", []).append(before)
    e.setdefault("mux_after", []).append(after)
    if withheld:  # NICs the host withheld all through: not the MUX's to fill (_host_events_over)
        _append(e, "withheld_by_a_host_event", ",".join(sorted(withheld)))

    def usable(counts: dict[str, int]) -> dict[str, int]:
        return {nic: n for nic, n in counts.items() if nic not in withheld}

    before, after = usable(before), usable(after)
    shards_before, shards_after = rec.get("mux_shards_before"), rec.get("mux_shards_after")
    views: list[tuple[str, str | None, dict[str, int], dict[str, int]]] = []
    if shards_before and shards_after and len(shards_before) == len(shards_after):
        views = [
            (f" in shard {k}", str(k), usable(b), usable(a))
            for k, (b, a) in enumerate(zip(shards_before, shards_after, strict=True))
            if b and a
        ]
    if views:  # shown beside the sums: what each shard's MUX had, and has
        shown = " | ".join(
            f"{where.strip()}: {nic_counts(b)} -> {nic_counts(a)}" for where, _, b, a in views
        )
        _append(e, "mux_per_shard", shown)
    if crossed:
        e["crossed_by_an_outage"] = e.get("crossed_by_an_outage", 0) + 1
        if ALL_SHARDS in crossed or not views:  # every shard it acted in, or one daemon
            return
        e["crossed_shards"] = ",".join(sorted(crossed))
        views = [v for v in views if v[1] not in crossed]
        if not views:
            return
        # each shard's MUX on its own moves: a connection's upload says its shard
        moved_in = {k: sum(1 for u in moves if str(u.get("shard")) == k) for _, k, _, _ in views}
        if any(u.get("shard") is None for u in moves):
            moved_in = {}  # records that do not say: the moves of all shards
    else:
        moved_in = {}
    views = views or [("", None, before, after)]  # one daemon, or no shard said: the sum
    spreads = [(where, k, _spread(b), _spread(a), a) for where, k, b, a in views]
    uneven = [(where, k, sb) for where, k, sb, _, _ in spreads if sb > 1]
    moved_there = sum(moved_in.values()) if moved_in else moved
    idle = [(where, sb) for where, k, sb in uneven if not moved_in.get(str(k), moved)]
    if idle:
        where, spread = idle[0]
        problem(e, f"{layer}{where}: moved nothing while its NICs were {spread} apart")
    elif not uneven and moved_there:
        problem(e, f"{layer}: moved {moved_there} connection(s) of NICs already even")
    for where, _, _, spread_after, a in spreads:
        slack = max(1, int(REBALANCE_SLACK_SHARE * sum(a.values())))
        if spread_after > slack:
            problem(
                e, f"{layer}{where}: its NICs still {spread_after} apart after it (at most {slack})"
            )


def _append(e: Record, key: str, text: str) -> None:
    """One more fault's `text` in a `;`-separated field of the outcome."""
    e[key] = f"{e[key]}; {text}" if key in e else text


def nic_counts(lowers: dict[str, int]) -> str:
    """Connections per NIC as the report shows them: `nic0 100 nic1 100`."""
    return " ".join(f"{nic} {n}" for nic, n in lowers.items())


def _spread(lowers: dict[str, int]) -> int:
    return max(lowers.values()) - min(lowers.values()) if lowers else 0


def _outage_moved_its_connections(
    e: Record, rec: Record, w: Window, uploaded: int, obs: dict[str, list[Record]]
) -> None:
    """The NIC's connections left it: uploaded (UPLOAD_ALL), or reset because a terminate's
    bug failed the upload as lost hardware state (spec §6.3, §3.7; judged with the bug)."""
    if not rec.get("offloaded_before") or uploaded:
        return
    resets = [
        a
        for a in obs.get("aborts", [])
        if a.get("explained_by") == "raise_next" and w.covers(a["t"])
    ]
    if resets:
        e["reset_by_a_bug"] = e.get("reset_by_a_bug", 0) + len(resets)
        return
    problem(e, f"{w.layer}: {rec['offloaded_before']} offloaded, none uploaded (UPLOAD_ALL)")


# -- fail_next and its presets -------------------------------------------------------------------
def _unused(r: Record, hits_key: str) -> str:
    """A fail_next (`hits_key` "failed") or raise_next ("raised") still armed when the run
    ended: how much of it was used, of what, where. Its layer did not get that many such
    calls while it was armed: e.g. a NIC a MUX above sent no more offloads to."""
    p = r.get("params") or {}
    call, layer = p.get("call", "calls"), p.get("layer", "its layer")
    count = int(p.get("count", 1)) * int(r.get("shards", 1))
    hits = r.get(hits_key)  # None: a daemon from before fault.list `used` does not say
    if hits is None:
        what = f"set for {count} {call} in {layer}"
    else:
        n = len(hits) + int(r.get(f"{hits_key}_dropped", 0))
        what = f"{n} of the {count} {call} it was set for in {layer} {hits_key}"
    skip = int(p.get("skip", 0))  # calls it lets through first: those do not use it up
    past = f" past the {skip} it lets through" if skip else ""
    return (
        f"fault {r.get('fault_id')} never used up: {what}"
        f" ({layer} did not get that many such calls{past} while the fault was armed)"
    )


_EFFECT_OBS = {
    "send_failure": "send_failures",
    "send_upload": "unrequested",
    "offload_refusal": "refusals",
}


def _judge_fail_next(
    by_kind: dict[str, Record],
    layer_records: Sequence[Record],
    obs: dict[str, list[Record]],
    windows: list[Window],
    host: Record,
) -> None:
    """As many outcomes of each effect as the faults of that effect used up, each with data
    after it, and each on a connection the daemon says one of them failed a call of
    (fault.list `used`, `failed`); a daemon that does not say leaves them matched by time and
    status alone.

    One kind may have faults of two effects (a fail_next with UPLOAD_IN_PROGRESS and one
    without): each effect is judged on its own, and the kind's figures are the sum over its
    effects, with each effect's expected and observed beside them (`by_effect`)."""
    # per kind, each effect's: expected, observed, verified after, connections it failed
    groups: dict[str, list[tuple[str, int, int, int, set[Any] | None]]] = {}
    for effect, obs_name in _EFFECT_OBS.items():
        faults = [r for r in layer_records if r.get("effect") == effect and r.get("injected")]
        if not faults:
            continue
        entries = {by_kind[r["kind"]]["kind"]: by_kind[r["kind"]] for r in faults}
        expected = 0
        for r in faults:
            e = by_kind[r["kind"]]
            if r.get("consumed"):
                # its count in each shard it went into
                expected += int(r["params"].get("count", 1)) * int(r.get("shards", 1))
            else:
                problem(e, _unused(r, "failed"))
        start = min(float(r["t0"]) for r in faults)
        statuses = {r["params"].get("status") for r in faults}
        # the calls the daemon says they failed, by connection (None: it did not say)
        left = _hit_counts(faults, "failed")
        served = None if left is None else set(left)
        first = next(iter(entries.values()))
        # the earliest matching outcomes, up to what the faults caused; any more are left for
        # the account of what no fault explains
        seen: list[Record] = []
        observed = 0
        if effect == "offload_refusal" and left is not None:
            # the soak's own probe connections (probe_faults `probe_conns`) it refused: the
            # coordinator saw those refusals itself and offered its probe again (a fault the
            # soak put in fails no probe); no worker's connection owes an outcome for them
            ours = {c for r in layer_records for c in r.get("probe_conns") or ()}
            probed = sum(n for c, n in left.items() if c in ours)
            left.update({c: 0 for c in ours if c in left})
            observed += probed
            if probed:
                first["probe_refusals"] = first.get("probe_refusals", 0) + probed
        when = "t_first" if effect == "offload_refusal" else "t"
        ordered = sorted(obs.get(obs_name, []), key=lambda o: float(o[when]))
        # refusals get a second pass where the daemon says which connections these faults
        # refused: an episode the target failure seems to explain on such a connection is
        # theirs after all when no other of its episodes was (a refusal at connect has no
        # status, and the next one, while the NIC is failed, says OFFLOAD_PAUSE)
        second = ordered if effect == "offload_refusal" and left is not None else []
        for lenient, o in [(False, o) for o in ordered] + [(True, o) for o in second]:
            if observed >= expected:
                break
            if o.get("explained_by") or float(o[when]) < start:
                continue
            if left is not None and not left.get(o.get("conn")):
                continue  # the same outcome on a connection these faults failed nothing of
            if effect == "send_failure":
                if o.get("conn_aborted") and not o.get("resent"):
                    continue  # the RST of a reset, not this fault
                if o.get("status") not in statuses:
                    continue
            if effect == "send_upload" and not o.get("sending"):
                continue
            if (
                effect == "offload_refusal"
                and not lenient
                and o.get("status") not in statuses
                and any(w.covers_refusals(o) for w in windows)
            ):
                continue  # a refusal while the target was failed (OFFLOAD_PAUSE): not this fault
            o["explained_by"] = effect
            seen.append(o)
            attempts = int(o.get("attempts", 1))
            if left is not None:
                # no more of its attempts than the daemon says these faults failed of it
                took = min(attempts, left[o["conn"]])
                left[o["conn"]] -= took
                if attempts > took:
                    _refusals_beyond(first, o, attempts - took, windows)
                attempts = took
            observed += attempts
        if effect == "send_failure" and left is not None:
            masked = _masked_by_a_bug(obs, left, start)
            observed += len(masked)
            if masked:
                first["masked_by_a_bug"] = len(masked)
        # (a refusal continued for another reason: what was verified after the episode after)
        chains = [_episodes(o, obs[obs_name]) if effect == "offload_refusal" else [o] for o in seen]
        after = sum(c[-1].get("verified_after", 0) for c in chains)
        for kind, e in entries.items():
            # the daemon said which (`served`): the outcomes were matched by them
            groups.setdefault(kind, []).append((effect, expected, observed, after, served))
            for key in ("expected", "observed", "verified_after"):
                e.setdefault(key, 0)  # set below, after every effect: first in the report
        if observed != expected:
            problem(first, f"{expected} {effect.replace('_', ' ')}(s) caused, {observed} seen")
            unseen = sorted(c for c, n in (left or {}).items() if n)
            if unseen:
                shown = ", ".join(map(str, unseen[:EXAMPLES]))
                problem(first, f"conn {shown}: the daemon says a call of it failed, no outcome")
        for o, chain in zip(seen, chains, strict=True):
            if effect == "send_failure" and not o.get("resent"):
                problem(first, f"conn {o['conn']}: the failed bytes were never resent", o)
                continue
            if not (chain[-1].get("done") and not chain[-1].get("continued")):
                problem(first, f"conn {o['conn']}: no byte verified after it", *chain)
        if effect == "send_failure":
            uploads = _uploads_after_send_failures(seen, obs)
            for e in entries.values():
                e["uploaded"] = len(uploads)
            for u in uploads:
                if not u.get("done"):
                    problem(first, f"conn {u['conn']}: no byte verified after its upload", u)
        if effect == "offload_refusal":
            host["explained"]["refuse_offload"] = len(seen)
    for kind, effects in groups.items():
        e = by_kind[kind]
        e["expected"] = sum(g[1] for g in effects)
        e["observed"] = sum(g[2] for g in effects)
        e["verified_after"] = sum(g[3] for g in effects)
        said = [g[4] for g in effects if g[4] is not None]
        if said:  # a connection two of them failed a call of is one
            e["connections_failed"] = len(set().union(*said))
        if len(effects) > 1:
            e["by_effect"] = "; ".join(
                f"{effect.replace('_', ' ')} {seen} of {caused}"
                for effect, caused, seen, _, _ in effects
            )


def _episodes(ep: Record, refusals: list[Record]) -> list[Record]:
    """A refusal episode and, while one is `continued` (its connection refused again for
    another reason: a new episode), the next episode of that connection: the soak follows the
    last to its re-offload, and its outcome is the first's (`state.refused`)."""
    chain = [ep]
    while ep.get("continued"):
        later = [
            e
            for e in refusals
            if e["conn"] == ep["conn"]
            and not any(e is f for f in chain)
            and e["t_first"] >= ep["t_last"]
        ]
        if not later:
            break
        ep = min(later, key=lambda e: float(e["t_first"]))
        chain.append(ep)
    return chain


def _refusals_beyond(e: Record, ep: Record, extra: int, windows: list[Window]) -> None:
    """A refusal episode on a connection a fault failed, with `extra` more refusals than the
    daemon says the faults failed of it: a refusal at connect merges with the refused
    re-offloads after it. They are a NIC outage's if its window covers the episode's first
    request (refused by the outage, the host refusing until it hears RESUME, later than the
    clear under load, and the re-offload by the fault) or its last (refused by the fault at
    connect, then by the outage), else no fault's."""
    first = float(ep["t_first_sent"] if "t_first_sent" in ep else ep["t_first"])
    last = float(ep["t_last_sent"] if "t_last_sent" in ep else ep["t_last"])
    if any(w.start <= first <= w.end or w.start <= last <= w.end for w in windows):
        e["refusals_of_an_outage"] = e.get("refusals_of_an_outage", 0) + extra
        return
    problem(
        e, f"conn {ep['conn']}: {extra} refusal(s) more than the daemon says a fault failed", ep
    )


def _masked_by_a_bug(obs: dict[str, list[Record]], left: dict[Any, int], start: float) -> list[Any]:
    """Connections the daemon says a fail_next failed a send of, where no send failure was
    seen but a bug's INTERNAL answered a send: a layer that raises answers every request
    waiting on the connections it served (spec §6.3), the failed send among them, before its
    completion reaches the client. Counted once per connection; the bug's hit is judged with
    it (data after it)."""
    out = []
    for conn, n in left.items():
        if n and any(
            a.get("conn") == conn
            and a.get("request") == "send"
            and a.get("error") == "PlantedBug"
            and float(a["t"]) >= start
            for a in obs.get("bug_answers", [])
        ):
            left[conn] -= 1
            out.append(conn)
    return out


def _uploads_after_send_failures(seen: list[Record], obs: dict[str, list[Record]]) -> list[Record]:
    """A NIC that failed a send fails every later one and asks for the connection's upload
    (`TcpIndicateRetrieve` UploadRequested, spec §4.1, §3.6.4): that upload, on the same
    connection close in time, is the failure's, not an unexplained one."""
    out: list[Record] = []
    for o in seen:
        for u in obs.get("unrequested", []):
            if (
                u["conn"] == o["conn"]
                and not u.get("explained_by")
                and u.get("reason") == "UploadRequested"
                and abs(float(u["t"]) - float(o["t"])) <= SEND_FAILURE_UPLOAD_S
            ):
                u["explained_by"] = "send_failure"
                out.append(u)
                break
    return out


# -- raise_next: bugs planted in a layer --------------------------------------------------------
def _judge_raise_next(
    by_kind: dict[str, Record],
    layer_records: Sequence[Record],
    obs: dict[str, list[Record]],
    host: Record,
) -> None:
    """A planted bug shows as INTERNAL answers naming its layer and handler (spec §6.3), on
    the one connection it hit; answers are grouped into hits (one connection, close in time).
    The faults of one layer and call hit no more connections than the calls they made raise
    (the daemon's count of layer errors, checked in the verdict, says they all raised). Where
    no request waits, a bug shows otherwise: an initiate's inside tcp.connect as the offload
    refused at connect, a terminate's as the connection's reset (`_terminate_resets`). A bug
    may also show nothing: a receive request stays posted after a read was served from
    indicated bytes (spec §4.2), two bugs on one connection share its waiting requests, which
    the first answers, and a connection the soak was done with hears of nothing; a send a bug
    left unanswered is still caught, as a stuck round trip, and one answered otherwise as an
    unexplained failure or lost bytes. Each hit is followed by verified data (on the
    connection, or on its reopened slot), unless the soak was closing that connection. What
    no fault explains is left for the account of the unexplained."""
    faults = [r for r in layer_records if r["kind"] == "raise_next" and r.get("injected")]
    if not faults:
        return
    e = by_kind["raise_next"]
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in faults:
        if not r.get("consumed"):
            problem(e, _unused(r, "raised"))
        groups.setdefault((r["params"]["layer"], r["params"]["call"]), []).append(r)
    planted = answers_seen = 0
    every_hit: list[list[Record]] = []
    terminates: list[Terminates] = []
    served_by_any: set[Any] | None = None  # over the groups: one connection counts once
    for (layer, call), rs in groups.items():
        used = [r for r in rs if r.get("consumed")]
        uses = sum(int(r["params"].get("count", 1)) * int(r.get("shards", 1)) for r in used)
        planted += uses
        start = min(float(r["t0"]) for r in rs)
        served = _served(rs)
        mine = [
            a
            for a in obs.get("bug_answers", [])
            if not a.get("explained_by")
            and (a.get("layer"), a.get("call"), a.get("error")) == (layer, call, "PlantedBug")
            and float(a["t"]) >= start
        ]
        for a in mine:
            a["explained_by"] = "raise_next"
            if served is not None and a["conn"] not in served:
                problem(
                    e,
                    f"conn {a['conn']}: {a.get('request')} answered INTERNAL naming {layer} "
                    f"{call}, though the daemon says none of its bugs raised serving it",
                )
        hits = _hits(mine)
        answers_seen += len(mine)
        if served is not None:
            served_by_any = served if served_by_any is None else served_by_any | served
        elif len(hits) > uses:
            problem(
                e,
                f"{layer} {call}: {uses} call(s) made to raise by {len(used)} fault(s), "
                f"{len(hits)} connection hit(s) answered INTERNAL",
            )
        if call == INITIATE_CALL:
            # an initiate inside tcp.connect has no request of its own waiting: its bug shows
            # as the offload refused at connect (no status); those of the connections it was
            # serving, or (not known) as many as the calls the answers leave
            refused = _refused_at_connect(obs, start, served, uses - len(hits))
            e["refused_at_connect"] = e.get("refused_at_connect", 0) + len(refused)
            host["explained"]["raise_next"] += len(refused)
            hits += [[ep] for ep in refused]
        if call == TERMINATE_CALL:
            terminates.append((start, uses, hits, served))
        every_hit += hits
    if served_by_any is not None:
        e["connections_served"] = len(served_by_any)
    if terminates:
        every_hit += _terminate_resets(e, obs, terminates)
    after = 0
    hit_holed: dict[Any, float] = {}
    for hit in every_hit:
        first = hit[0]
        after += max(a.get("verified_after", 0) for a in hit)
        if _while_closing(hit):
            # the application had asked to end it: its close answered and the tables drained
            # are the outcome (the verdict checks both); no data is owed after it
            e["hits_while_closing"] = e.get("hits_while_closing", 0) + 1
            continue
        holed = any(a.get("new_conn") is not None or a.get("holed") for a in hit)
        if holed:
            hit_holed.setdefault(first["conn"], float(first["t"]))
        if not any(a.get("done") for a in hit):
            where = "its reopened slot" if holed else "it"
            what = {"t_first": "its offload refused at connect", "closing": "its reset"}
            why = next((w for k, w in what.items() if k in first), "its INTERNAL")
            problem(e, f"conn {first['conn']}: no byte verified on {where} after {why}", *hit)
    e["planted"], e["connections_hit"], e["internal_answers"] = (
        planted,
        len(every_hit),
        answers_seen,
    )
    e["verified_after"] = after
    # a layer fails the send it raised on as its kind fails a send, and asks for the upload
    # (spec §6.3, §4.1): that upload, on the same connection close in time, is the bug's
    for u in obs.get("unrequested", []):
        t = hit_holed.get(u["conn"])
        if (
            t is not None
            and not u.get("explained_by")
            and abs(float(u["t"]) - t) <= SEND_FAILURE_UPLOAD_S
        ):
            u["explained_by"] = "raise_next"


#: A group of terminate bugs: when the first was planted, the calls they made raise, their
#: hits by INTERNAL answer, and the connections they served (None: the daemon did not say).
Terminates = tuple[float, int, list[list[Record]], set[Any] | None]


def _served(rs: Sequence[Record]) -> set[Any] | None:
    """The connections the daemon says these raise_next faults' bugs hit (`_hit_counts`)."""
    counts = _hit_counts(rs, "raised")
    return None if counts is None else set(counts)


def _hit_counts(rs: Sequence[Record], key: str) -> dict[Any, int] | None:
    """The connections the daemon says these faults hit (fault.list `used`), each with the
    calls that hit it: under `raised`, those a raise_next's bugs were serving when they raised
    (what the engine failed for them, spec §6.3); under `failed`, those of the calls a
    fail_next failed. None when it did not say it all (a daemon from before it, or a list it
    cut short)."""
    out: dict[Any, int] = {}
    for r in rs:
        if key not in r or r.get(f"{key}_dropped"):
            return None
        for h in r[key]:
            conns = list(h.get("conns") or [])
            if int(h.get("conns_total", len(conns))) > len(conns):
                return None
            for c in conns:
                out[c] = out.get(c, 0) + 1
    return out


def _terminate_resets(
    e: Record, obs: dict[str, list[Record]], terminates: list[Terminates]
) -> list[list[Record]]:
    """A terminate a layer raised on fails as one that found the hardware state corrupt: the
    connection is reset (spec §6.3, §3.7); a terminate carries the block lists of as many
    connections as the host hands it at once. Its reset joins the hit whose INTERNAL answer
    named that connection; one with no request waiting (an abortive close's terminate, the
    host's own upload) names no layer, so it is a hit of its own if the daemon says a
    terminate's bug was serving that connection (or, where it does not say, as many as the
    calls they made raise leave). Resets no bug explains stay counted as unexpected (the
    verdict)."""
    start = min(t[0] for t in terminates)
    served: set[Any] | None = set()
    for *_, each in terminates:
        served = None if served is None or each is None else served | each
    room = sum(uses - len(hits) for _, uses, hits, _ in terminates)
    answered = {hit[0]["conn"]: hit for _, _, hits, _ in terminates for hit in hits}
    alone: list[list[Record]] = []
    for a in sorted(obs.get("aborts", []), key=lambda a: float(a["t"])):
        if a.get("explained_by") or float(a["t"]) < start:
            continue
        hit = answered.get(a["conn"])
        if hit is not None:
            hit.append(a)
        elif (a["conn"] in served) if served is not None else len(alone) < room:
            alone.append([a])
        else:
            continue
        a["explained_by"] = "raise_next"
        # as the worker counted it (the verdict takes these off): during its close or upload,
        # and (or) found when it came to close the connection
        for key, flag in (("resets_while_closing", "closing"), ("resets_on_live", "unexpected")):
            e[key] = e.get(key, 0) + int(bool(a.get(flag)))
    return alone


def _while_closing(hit: list[Record]) -> bool:
    """Did the bug go off while the soak was ending the connection (a close or disconnect
    answered INTERNAL, or a reset during the close; a planned upload's is not)?"""
    requests = {a.get("request") for a in hit if "request" in a}
    if "upload" in requests:
        return False
    return bool(requests & {"close", "disconnect"}) or any(a.get("closing") for a in hit)


def _refused_at_connect(
    obs: dict[str, list[Record]], start: float, served: set[Any] | None, most: int
) -> list[Record]:
    """The offloads refused at connect since `start` that no fault explained yet (tcp.connect
    says no status for them), now explained by an initiate's bug: those of the connections
    its bugs `served`, or where the daemon did not say, the first `most`."""
    eps = sorted(
        (
            ep
            for ep in obs.get("refusals", [])
            if not ep.get("explained_by")
            and ep.get("at") == "connect"
            and ep.get("status") is None
            and float(ep["t_first"]) >= start
            and (served is None or ep["conn"] in served)
        ),
        key=lambda ep: float(ep["t_first"]),
    )
    if served is None:
        eps = eps[: max(0, most)]
    for ep in eps:
        ep["explained_by"] = "raise_next"
    return eps


def _hits(answers: list[Record]) -> list[list[Record]]:
    """INTERNAL answers grouped by connection, a new group after a quiet gap: one bug answers
    every request waiting on its connection at once."""
    out: list[list[Record]] = []
    last: dict[Any, list[Record]] = {}
    for a in sorted(answers, key=lambda a: float(a["t"])):
        group = last.get(a["conn"])
        if group is not None and float(a["t"]) - float(group[-1]["t"]) <= BUG_EPISODE_S:
            group.append(a)
            continue
        last[a["conn"]] = [a]
        out.append(last[a["conn"]])
    return out


# -- whatever no fault explains ------------------------------------------------------------------
def _host_mode_account() -> Record:
    return {
        "refusal_episodes": 0,
        "refused_at_connect": 0,
        "explained": {"target_failure": 0, "refuse_offload": 0, "raise_next": 0},
        "unexplained": 0,
        "unexplained_examples": [],
        "not_offloaded_again": 0,
        "host_at_close": 0,
        "state_disagreements": 0,
        "resets_unexplained": [],
    }


def _unexplained(host: Record, what: str) -> None:
    host["unexplained"] += 1
    if len(host["unexplained_examples"]) < EXAMPLES:
        host["unexplained_examples"].append(what)


def _account_leftovers(obs: dict[str, list[Record]], windows: list[Window], host: Record) -> None:
    for ep in obs.get("refusals", []):
        host["refusal_episodes"] += 1
        host["refused_at_connect"] += int(ep.get("at") == "connect")
        if ep.get("explained_by"):
            continue
        # a host event's refusal (INVALID_STATE naming it) is a host_event's alone (probe_faults)
        if not ep.get("withheld") and any(w.covers_refusals(ep) for w in windows):
            host["explained"]["target_failure"] += 1
            if ep.get("offloaded_t") is None and not ep.get("continued"):
                host["not_offloaded_again"] += 1
                _unexplained(host, f"conn {ep['conn']}: never offloaded again after {ep['at']}")
            continue
        status = ep.get("status") or "no status"
        _unexplained(host, f"conn {ep['conn']}: offload refused at {ep['at']} ({status})")
    for u in obs.get("upload_all", []):
        # an outage took it if its NIC was the one out then (`_judge_outage`); a window of
        # another NIC's outage explains nothing of this one's
        if not u.get("explained_by"):
            _unexplained(host, f"conn {u['conn']}: uploaded by UPLOAD_ALL with no target failure")
    for u in obs.get("unrequested", []):
        if not u.get("explained_by"):
            why = u.get("reason") or "no retrieve"
            _unexplained(host, f"conn {u['conn']}: uploaded unasked ({why})")
    for f in obs.get("send_failures", []):
        if not f.get("explained_by") and not (f.get("conn_aborted") and not f.get("resent")):
            _unexplained(host, f"conn {f['conn']}: a send failed with {f.get('status')}")
    for h in obs.get("host_at_close", []):
        host["host_at_close"] += 1
        if not any(w.covers(h["t"]) for w in windows):
            _unexplained(host, f"conn {h['conn']}: closed in host mode ({h.get('cause')})")
    for a in obs.get("bug_answers", []):
        if not a.get("explained_by"):
            _unexplained(
                host, f"conn {a['conn']}: {a.get('request')} answered INTERNAL ({a.get('message')})"
            )
    # resets no bug explains fail the run on the worker's counts (the verdict); named here
    host["resets_unexplained"] = [
        a["conn"] for a in obs.get("aborts", []) if not a.get("explained_by")
    ][:EXAMPLES]
    for d in obs.get("disagreements", []):
        host["state_disagreements"] += 1
        _unexplained(host, f"conn {d['conn']}: soak says {d['soak']}, tcp.info {d['daemon']}")
