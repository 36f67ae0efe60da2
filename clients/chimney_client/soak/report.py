"""The report and its verdict: plain functions of plain data, tested without sockets."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .conn import TIMED_STATES
from .limits import LAYER_GAUGES, OP_TIMEOUT_S, RSS_GROWTH_ALLOWED
from .outcomes import nic_counts, problem


def percentiles(samples: Sequence[float], points: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Nearest-rank percentiles `{"p50": .., "p99": ..}`; zeros when there are no samples."""
    if not samples:
        return {f"p{p:g}": 0.0 for p in points}
    ordered = sorted(samples)
    out = {}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p:g}"] = round(ordered[rank - 1], 3)
    return out


def gauges_left(stats: dict[str, Any] | None, idle: dict[str, Any] | None = None) -> dict[str, Any]:
    """Non-zero gauges of a `stack.stats` map: per layer, plus `connections`, and the daemon's
    task count if above its `idle` value (`stack.stats` before the soak). Empty: drained."""
    if not stats:
        return {"stats": "unavailable"}
    left: dict[str, Any] = {}
    tasks, idle_tasks = stats.get("tasks"), (idle or {}).get("tasks")
    if tasks is not None and idle_tasks is not None and tasks > idle_tasks:
        left["tasks"] = {"now": tasks, "idle": idle_tasks}
    for name, layer in (stats.get("layers") or {}).items():
        bad = {k: layer.get(k, 0) for k in LAYER_GAUGES if layer.get(k, 0)}
        if bad:
            left[name] = bad
    if stats.get("connections", 0):
        left["connections"] = stats["connections"]
    engine = stats.get("engine") or {}
    for key in ("wires", "ack_waiting", "pending_requests", "queued_send_bytes"):
        if engine.get(key):
            left[f"engine.{key}"] = engine[key]
    inbox = {k: v for k, v in (engine.get("inbox") or {}).items() if v}
    if inbox:
        left["engine.inbox"] = inbox
    return left


#: Integer counters every worker keeps; summed across workers.
COUNTER_FIELDS = (
    "opened",
    "open_now",
    "offloaded_now",
    "closed",
    "ops",
    "bytes_sent",
    "bytes_verified",
    "integrity_errors",
    "errors",
    "limit_refusals",
    "limit_refusals_at_reopen",
    "connect_failures",
    "offload_refused_at_connect",
    "uploads_planned",
    "reoffloads_planned",
    "send_failures",
    "send_resends",
    "internal_answers",
    "reopened_after_bug",
    "aborts_seen",
    "aborts_while_closing",
    "reopened_after_reset",
    "lost_before_reset",
    "unexpected_aborts",
    "nic_uploads",
    "retrieve_uploads",
    "unrequested_uploads",
    "reoffloads",
    "reoffload_refused",
    "churn_closes",
    "recv_timeouts",
    "stuck_ops",
    "unverified_on_close",
    "host_at_close",
    "state_disagreements",
)


def merge_counters(parts: Sequence[dict[str, int]]) -> dict[str, int]:
    total = dict.fromkeys(COUNTER_FIELDS, 0)
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total


def state_times(state_s: dict[str, float], by_cause: dict[str, float]) -> dict[str, Any]:
    """Connection-seconds per state, each state's share, and host time by its cause."""
    total = sum(state_s.get(s, 0.0) for s in TIMED_STATES)
    return {
        "seconds": {s: round(state_s.get(s, 0.0), 2) for s in TIMED_STATES},
        "share": {s: round(state_s.get(s, 0.0) / total, 4) if total else 0.0 for s in TIMED_STATES},
        "host_by_cause": {k: round(v, 2) for k, v in sorted(by_cause.items())},
    }


def _max_latency(sample: Sequence[float], slowest: dict[str, Any] | None) -> float:
    """Every send's maximum, where the workers kept it; else the sample's."""
    if slowest:
        return float(slowest["ms"])
    return round(max(sample), 3) if sample else 0.0


def build_report(
    *,
    settings: dict[str, Any],
    counters: dict[str, int],
    latencies_ms: Sequence[float],
    slowest_send: dict[str, Any] | None = None,
    integrity_details: Sequence[dict[str, Any]],
    error_details: dict[str, dict[str, Any]],
    faults: list[dict[str, Any]],
    host_mode: dict[str, Any],
    states: dict[str, Any],
    stats_before: dict[str, Any] | None,
    stats_after: dict[str, Any] | None,
    timing: dict[str, float],
    rss_kb: dict[str, int | None],
    daemon: dict[str, Any],
    shards: dict[str, Any] | None = None,
    connections: dict[str, Any],
    interrupted: bool = False,
    stopped_early: str | None = None,
    allow_rss_growth: bool = False,
    fail_not_judged: bool = False,
    rss_measured: bool = True,
    allow_fd_cap: bool = False,
) -> dict[str, Any]:
    """The `--json` report; `ok` and `failures` say whether the soak passed and why not."""
    active_s = max(timing.get("active_s", 0.0), 1e-9)
    left = gauges_left(stats_after, stats_before)
    engine_after = (stats_after or {}).get("engine") or {}
    if stats_after is not None:
        bugs_counted(faults, engine_after)
    before, after = rss_kb.get("before"), rss_kb.get("after")
    report: dict[str, Any] = {
        "interrupted": interrupted,
        "stopped_early": stopped_early,
        "connections": connections.get("held", 0),
        "connections_detail": connections,
        "bytes_sent": counters.get("bytes_sent", 0),
        "bytes_verified": counters.get("bytes_verified", 0),
        "integrity_errors": counters.get("integrity_errors", 0),
        "integrity_error_details": list(integrity_details),
        "errors": counters.get("errors", 0),
        "error_details": error_details,
        "ops": counters.get("ops", 0),
        "ops_per_s": round(counters.get("ops", 0) / active_s, 1),
        "throughput_mb_s": round(counters.get("bytes_verified", 0) / active_s / 1e6, 2),
        "latency_ms": {
            **percentiles(latencies_ms),
            "max": _max_latency(latencies_ms, slowest_send),
            "samples": len(latencies_ms),
            "slowest": slowest_send,
        },
        "faults": faults,
        # checks the soak could not make (its own probe could not run): no failure, said
        "not_judged": [f"{f['kind']}: {t}" for f in faults for t in f.get("not_judged", [])],
        # all of them: each fault's list keeps the first few (outcomes.EXAMPLES)
        "not_judged_count": sum(int(f.get("not_judged_count", 0)) for f in faults),
        "host_mode": host_mode,
        "states": states,
        "counters": counters,
        "stats_before": stats_before,
        "stats_after": stats_after,
        "drained": not left,
        "left_over": left,
        "rss_kb": {
            **rss_kb,
            "after_over_before": round(after / before, 3) if before and after else None,
            "within_10pct": (after <= before * RSS_GROWTH_ALLOWED) if before and after else None,
            "judged": not allow_rss_growth,
            "measured": rss_measured,
        },
        "shards": judge_shards(shards),
        "daemon": daemon,
        # the daemon's spec §9 checker: None when it runs without it (or gave no stats)
        "invariant_violations": engine_after.get("invariant_violations"),
        # how much of the run it heard: NBL completions checked from stats_before to after
        "invariant_checked_nbls": checked_during(stats_before, stats_after),
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "settings": {
            **settings,
            "allow_rss_growth": allow_rss_growth,
            "allow_fd_cap": allow_fd_cap,
            "fail_not_judged": fail_not_judged,
        },
    }
    report["failures"] = verdict(report)
    report["ok"] = not report["failures"]
    # --fail-not-judged: a run that found nothing wrong but left checks not judged fails
    # with an exit status of its own (NOT_JUDGED_EXIT), not `ok` false: the daemon did no wrong
    report["not_judged_fail"] = bool(
        fail_not_judged and report["ok"] and report["not_judged_count"]
    )
    return report


#: The exit status of a run that found nothing wrong but left checks of the soak's own probes
#: not judged, with --fail-not-judged: not 1 (a daemon that did wrong), so that CI can tell
#: the two apart (e.g. run again on a NIC with room to spare); 3 as `make bench --strict`'s
#: "nothing broke, but the run did not reach the bar asked".
NOT_JUDGED_EXIT = 3


def exit_status(report: dict[str, Any]) -> int:
    """`chimney-soak`'s exit status for `report`: 130 interrupted, 1 failed, 3 passed with
    checks not judged under --fail-not-judged (`not_judged_fail`), else 0."""
    if report.get("interrupted"):
        return 130
    if not report["ok"]:
        return 1
    return NOT_JUDGED_EXIT if report.get("not_judged_fail") else 0


def checked_during(before: dict[str, Any] | None, after: dict[str, Any] | None) -> int | None:
    """NBL completions the daemon's invariant checker checked between the two `stack.stats`
    (all of them when the first has no count); None when the last has none (checker off, or a
    daemon that does not count)."""
    end = ((after or {}).get("engine") or {}).get("invariant_checked_nbls")
    if not isinstance(end, int):
        return None
    start = ((before or {}).get("engine") or {}).get("invariant_checked_nbls")
    return end - start if isinstance(start, int) else end


def bugs_counted(faults: list[dict[str, Any]], engine: dict[str, Any]) -> None:
    """Each bug a raise_next fault planted is one layer error in the daemon and, with the
    checker on, one invariant violation (spec §6.3): fewer means a bug went uncounted (more is
    the verdict's, as any layer error no fault planted)."""
    for f in faults:
        if f["kind"] != "raise_next":
            continue
        planted = f.get("planted", 0)
        errors, violations = engine.get("layer_errors") or 0, engine.get("invariant_violations")
        f["layer_errors_counted"] = errors
        if errors < planted:
            problem(f, f"{planted} bug(s) planted, the daemon counted {errors} layer error(s)")
        if violations is not None and violations < planted:
            problem(f, f"{planted} bug(s) planted, the checker counted {violations} violation(s)")
        f["ok"] = not f["problems"]


def judge_shards(shards: dict[str, Any] | None) -> dict[str, Any] | None:
    """Each shard's RSS after the drain against its own plateau (a daemon of shards passes
    only when every shard does)."""
    if shards is None:
        return None
    for rss in shards.get("rss_kb", {}).values():
        before, after = rss.get("before"), rss.get("after")
        rss["after_over_before"] = round(after / before, 3) if before and after else None
        rss["within_10pct"] = after <= before * RSS_GROWTH_ALLOWED if before and after else None
    return shards


def planted_bugs(report: dict[str, Any]) -> int:
    """The bugs the run's `raise_next` faults planted: each counts one layer error and, with
    the checker on, one invariant violation in the daemon (spec §6.3)."""
    return sum(f.get("planted", 0) for f in report.get("faults", ()) if f["kind"] == "raise_next")


def verdict(report: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty: it passed): what it claims (N offloaded connections, every byte
    back, faults that did their job, a daemon that drained and gave its memory back) checked."""
    why: list[str] = []
    if report.get("interrupted"):
        why.append("interrupted before the end: a partial run")
    if report.get("stopped_early"):
        why.append(f"stopped early: {report['stopped_early']}")
    if report["integrity_errors"]:
        why.append(f"{report['integrity_errors']} integrity error(s)")
    # cut short before the daemon answered stack.stats: no drain to judge
    unavailable = report["left_over"] == {"stats": "unavailable"}
    if not report["drained"] and not (report.get("interrupted") and unavailable):
        why.append(f"state left after drain: {json.dumps(report['left_over'], sort_keys=True)}")
    daemon = report["daemon"]
    if daemon.get("crashed"):
        why.append(f"daemon crashed: {daemon.get('crash')}")
    if daemon.get("exit_status") not in (None, 0):
        why.append(f"daemon exit status {daemon['exit_status']}")
    engine = (report.get("stats_after") or {}).get("engine") or {}
    violations = report.get("invariant_violations")
    # a daemon we spawned runs with --invariants: no count means it was not checked. One given
    # by --rpc may run without the checker: the report says so, it is no failure
    if violations is None and daemon.get("spawned") and report.get("stats_after") is not None:
        why.append("the spawned daemon reports no invariant checker")
    why.extend(_checker_heard(report))
    # each bug a raise_next fault planted counts once in each (spec §6.3): exactly that many
    planted = planted_bugs(report)
    beyond = f" beyond the {planted} bug(s) raise_next planted" if planted else ""
    if violations is not None and violations > planted:
        why.append(f"{violations - planted} invariant violation(s) in the daemon{beyond}")
    layer_errors = engine.get("layer_errors") or 0
    if layer_errors > planted:
        why.append(f"{layer_errors - planted} layer error(s) in the daemon{beyond}")
    c = report["counters"]
    if c.get("unverified_on_close"):
        why.append(f"{c['unverified_on_close']} byte(s) sent but never echoed back")
    if c.get("stuck_ops"):
        why.append(f"{c['stuck_ops']} echo round trip(s) stuck past {OP_TIMEOUT_S:g} s")
    # resets a terminate's bug explains (spec §6.3) are that fault's outcome
    live = c.get("unexpected_aborts", 0) - sum(f.get("resets_on_live", 0) for f in report["faults"])
    closing = c.get("aborts_while_closing", 0) - sum(
        f.get("resets_while_closing", 0) for f in report["faults"]
    )
    host = report.get("host_mode") or {}
    named = host.get("resets_unexplained") or []
    which = f" (among them conn {', '.join(map(str, named))})" if named else ""
    if live > 0:
        why.append(f"{live} connection(s) aborted with no fault{which}")
    if closing > 0:
        why.append(f"{closing} connection(s) aborted during their close{which}")
    if host.get("unexplained"):
        why.append(
            f"{host['unexplained']} time(s) a connection was not offloaded (or failed) with no "
            f"fault to explain it: {'; '.join(host.get('unexplained_examples', []))}"
        )
    for fault in report["faults"]:
        if not fault.get("ok"):
            why.append(f"fault {fault['kind']} did not show its outcome: {fault_brief(fault)}")
    why.extend(_limits_verdict(report))
    if report["errors"] and not why:
        why.append(f"{report['errors']} error(s)")
    return why


def _checker_heard(report: dict[str, Any]) -> list[str]:
    """A checker that is on reports 0 violations whether it heard the run or was never called
    (detached from NDIS): over a run whose bytes came back, it must have checked something. A
    spawned daemon must say how much; a --rpc daemon is judged when it says."""
    if report.get("invariant_violations") is None or report.get("stats_after") is None:
        return []
    checked = report.get("invariant_checked_nbls")
    traffic = report.get("bytes_verified", 0)
    if checked is None and report["daemon"].get("spawned"):
        return ["the spawned daemon does not say how much its invariant checker checked"]
    if checked == 0 and traffic:
        return [
            f"the daemon's invariant checker checked no NBL completion over {traffic} byte(s) "
            "echoed: it heard none of the run, so its 0 violations say nothing"
        ]
    return []


def _limits_verdict(report: dict[str, Any]) -> list[str]:
    why: list[str] = []
    conns = report["connections_detail"]
    settings = report.get("settings", {})
    if not settings.get("allow_fd_cap"):
        if conns.get("capped_by_fd_limit"):
            why.append(f"{conns['capped_by_fd_limit']} (--allow-fd-cap to accept)")
        why.extend(_limit_refusals(conns))
    held, traffic = conns.get("held", 0), conns.get("with_traffic")
    cut_short = report.get("interrupted") or report.get("stopped_early")
    if traffic is not None and traffic < held and not cut_short:
        why.append(f"only {traffic} of {held} connections carried traffic")
    rss = report["rss_kb"]
    shards = (report.get("shards") or {}).get("rss_kb") or {}
    if shards and rss.get("judged", True):
        for shard, each in sorted(shards.items()):
            if each.get("within_10pct") is False:
                why.append(
                    f"shard {shard} RSS after the drain is x{each['after_over_before']} of its "
                    f"idle plateau (more than x{RSS_GROWTH_ALLOWED:g}; --allow-rss-growth to accept)"
                )
    elif rss.get("within_10pct") is False and rss.get("judged", True):
        why.append(
            f"daemon RSS after the drain is x{rss['after_over_before']} of its idle plateau "
            f"(more than x{RSS_GROWTH_ALLOWED:g}; --allow-rss-growth to accept)"
        )
    return why


def _limit_refusals(conns: dict[str, Any]) -> list[str]:
    """The daemon's LIMIT refusals, said as what they did: a slot's first connect refused
    leaves it unheld (fewer connections than asked); a reopen refused (after churn, a reset, a
    bug) leaves a slot held that then went without a connection. A report with no split (an
    older soak's) says them all as connects refused."""
    total = int(conns.get("limit_refusals") or 0)
    if not total:
        return []
    accept = "(--allow-fd-cap to accept)"
    if "limit_refusals_at_reopen" not in conns:
        return [f"{total} connect(s) refused by the daemon's LIMIT {accept}"]
    reopens = int(conns["limit_refusals_at_reopen"])
    why = []
    if total > reopens:
        held, asked = conns.get("held", 0), conns.get("requested", "?")
        why.append(
            f"{total - reopens} first connect(s) refused by the daemon's LIMIT: the run held "
            f"{held} connections of {asked} asked {accept}"
        )
    if reopens:
        why.append(
            f"{reopens} reopen(s) of a slot refused by the daemon's LIMIT (after churn, a "
            f"reset or a bug: the slot went on without a connection) {accept}"
        )
    return why


#: How the report names a fault's figures whose key alone says too little (the JSON keeps
#: the keys); any other key is shown with its underscores as spaces.
_FAULT_LABELS = {
    "nics_before": "connections per NIC before",
    "nics_at_end": "per NIC at its end",  # an outage's, or the wait for a rebalance
    "verified_after": "verified after",
    "reoffloaded_after_fault_s": "offloaded again after the injection",
    "reoffloaded_after_clear_s": "after the clear",
    "on_nic_before": "on its NIC at the injection",  # by the soak's events, not stack.info
    "closed_first": "closed before their upload",
    "reset_first": "reset before their upload",
    "left_otherwise": "uploaded for another reason",
    "mux_before": "MUX connections per NIC before",
    "mux_after": "after",
}


def _brief(key: str, value: Any) -> str:
    """One figure: connections per NIC one sample per outage (`nic0 100 nic1 100; nic0 150
    nic1 0`), bytes in MB, a span of seconds with its unit."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "; ".join(nic_counts(v) for v in value)
    if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
        return nic_counts(value)
    if key == "verified_after" and isinstance(value, int):
        return f"{value / 1e6:,.1f} MB"
    if key.endswith("_s"):
        return f"{value} s"
    return str(value)


def fault_brief(fault: dict[str, Any]) -> str:
    skip = {"kind", "ok", "connections", "problems", "problem_count", "problem_records"}
    skip |= {"not_judged", "not_judged_count", "not_judged_records"}
    text = ", ".join(
        f"{_FAULT_LABELS.get(k, k.replace('_', ' '))} {_brief(k, v)}"
        for k, v in fault.items()
        if k not in skip
    )
    if fault.get("problems"):
        more = fault.get("problem_count", 0) - len(fault["problems"])
        text += "; " + "; ".join(map(str, fault["problems"])) + (f" (+{more} more)" if more else "")
    if fault.get("not_judged"):
        more = fault.get("not_judged_count", 0) - len(fault["not_judged"])
        text += "; NOT JUDGED: " + "; ".join(map(str, fault["not_judged"]))
        text += f" (+{more} more)" if more else ""
    return text
