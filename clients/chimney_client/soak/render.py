"""The report for humans (a rich table) and the live progress line."""

from __future__ import annotations

import json
from typing import Any

from .report import NOT_JUDGED_EXIT, fault_brief, planted_bugs


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _states(report: dict[str, Any]) -> str:
    st = report.get("states") or {}
    share, secs = st.get("share", {}), st.get("seconds", {})
    total = sum(secs.values()) or 1.0
    causes = ", ".join(
        f"{cause} {_pct(s / total)}" for cause, s in (st.get("host_by_cause") or {}).items() if s
    )
    return (
        f"offloaded {_pct(share.get('offloaded', 0))}, host {_pct(share.get('host', 0))}"
        + (f" ({causes})" if causes else "")
        + f", uploading {_pct(share.get('uploading', 0))} of {total:,.0f} connection-seconds"
    )


def _host_mode(report: dict[str, Any]) -> str:
    h = report.get("host_mode") or {}
    ex = h.get("explained", {})
    text = (
        f"{h.get('refusal_episodes', 0)} refused offload(s) ({h.get('refused_at_connect', 0)} at "
        f"connect; explained by target_failure {ex.get('target_failure', 0)}, refuse_offload "
        f"{ex.get('refuse_offload', 0)}, raise_next {ex.get('raise_next', 0)}), "
        f"{h.get('host_at_close', 0)} closed in host mode, "
        f"{h.get('state_disagreements', 0)} state disagreement(s) with tcp.info"
    )
    if h.get("unexplained"):
        text += f"; UNEXPLAINED {h['unexplained']}: " + "; ".join(h["unexplained_examples"])
    return text


def _per(counts: dict[str, int]) -> str:
    return ", ".join(f"#{k} {v:,}" for k, v in counts.items()) or "?"


#: What the verdict says of a run --fail-not-judged fails for its checks not judged alone.
_FAILS_NOT_JUDGED = f" (--fail-not-judged: exit {NOT_JUDGED_EXIT})"


def not_judged_verdict(report: dict[str, Any]) -> str:
    """The verdict of a run that found nothing wrong and left checks not judged, in one line
    (`--quiet`'s, on stderr): PASS, or NOT JUDGED under --fail-not-judged, with each check."""
    unjudged = report["not_judged"]
    count = report.get("not_judged_count", len(unjudged))
    verdict = f"NOT JUDGED{_FAILS_NOT_JUDGED}:" if report.get("not_judged_fail") else "PASS with"
    return f"{verdict} {count} check(s) of the soak's own probes not judged: " + "; ".join(unjudged)


def render_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    conns = report["connections_detail"]
    lat = report["latency_ms"]
    rss = report["rss_kb"]
    title = "chimney-soak"
    if report.get("interrupted"):
        title += " (INTERRUPTED: partial)"
    elif report.get("stopped_early"):
        title += f" (STOPPED EARLY: {report['stopped_early']})"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row(
        "connections",
        f"{report['connections']} held of {conns['requested']} asked; {conns['opened_total']} "
        f"opened in all; {conns['with_traffic']} carried traffic",
    )
    if conns.get("capped_by_fd_limit"):
        t.add_row("fd limit", str(conns["capped_by_fd_limit"]))
    if conns.get("limit_refusals"):
        reopens = conns.get("limit_refusals_at_reopen") or 0
        of_which = f" ({reopens} of them a slot's reopen)" if reopens else ""
        t.add_row(
            "LIMIT", f"{conns['limit_refusals']} connects refused by the daemon's limit{of_which}"
        )
    t.add_row("time", _times(report["timing_s"]))
    t.add_row("ops", f"{report['ops']:,} echo round trips, {report['ops_per_s']:,} ops/s")
    t.add_row(
        "tcp.send latency",
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['samples']:,} samples), max "
        f"{lat['max']} ms{_slowest(lat.get('slowest'))}",
    )
    t.add_row(
        "bytes",
        f"sent {_mb(report['bytes_sent'])}, verified {_mb(report['bytes_verified'])} "
        f"({report['throughput_mb_s']} MB/s)",
    )
    t.add_row("integrity errors", str(report["integrity_errors"]))
    details = report["error_details"]
    t.add_row(
        "errors",
        str(report["errors"])
        + (": " + ", ".join(f"{k} {v['count']}" for k, v in details.items()) if details else ""),
    )
    c = report["counters"]
    t.add_row(
        "mix",
        f"planned uploads {c['uploads_planned']} (re-offloaded {c['reoffloads_planned']}), "
        f"churn closes {c['churn_closes']}, re-offloads the soak asked for after faults "
        f"{c['reoffloads']} (a fault's `reoffloaded` also counts those the host made itself)",
    )
    t.add_row("time by state", _states(report))
    t.add_row("not offloaded", _host_mode(report))
    for f in report["faults"]:
        verdict = "ok" if f["ok"] else "NOT OK"
        if f.get("not_judged"):
            verdict += ", not all judged"  # the soak's own probe could not run: said, no failure
        t.add_row(f"fault {f['kind']}", f"{verdict}: {fault_brief(f)}")
    t.add_row(
        "drain",
        "every gauge back to 0"
        if report["drained"]
        else f"LEFT: {json.dumps(report['left_over'], sort_keys=True)}",
    )
    if rss.get("before") and rss.get("after"):
        t.add_row(
            "daemon RSS",
            f"before {rss['before'] / 1024:.1f} MB, peak {(rss.get('peak') or 0) / 1024:.1f} MB, "
            f"after drain {rss['after'] / 1024:.1f} MB "
            f"(x{rss.get('after_over_before')}, within 10%: {rss.get('within_10pct')}"
            f"{'' if rss.get('judged', True) else ', not judged'})",
        )
    elif rss.get("before"):
        t.add_row("daemon RSS", f"before {rss['before'] / 1024:.1f} MB; after: not measured")
    elif not rss.get("measured", True):
        peak = rss.get("peak")
        t.add_row(
            "daemon RSS",
            "before and after: not measured (--no-rss)"
            + (f"; peak {peak / 1024:.1f} MB" if peak else ""),
        )
    else:
        t.add_row("daemon RSS", "not measured (no daemon pid: give --daemon-pid with --rpc)")
    violations = report.get("invariant_violations")
    # the bugs raise_next planted each count one (spec §6.3): say so, or the reader of a
    # passing run wonders why violations did not fail it
    planted = planted_bugs(report)
    if violations is None:
        checked = "not checked: the daemon runs without --invariants"
    elif planted and violations == planted:
        checked = f"{violations} violation(s) of spec §9 (checker on): the bugs raise_next planted"
    elif planted:
        checked = f"{violations} violation(s) of spec §9 (checker on), " + (
            f"{planted} of them planted by raise_next"
            if violations > planted
            else f"fewer than the {planted} bugs raise_next planted"
        )
    else:
        checked = f"{violations} violation(s) of spec §9 (checker on)"
    heard = report.get("invariant_checked_nbls")
    if violations is not None and heard is not None:
        # a detached checker finds nothing too: what it checked says it heard the run
        checked += f"; {heard} NBL completion(s) checked during the run"
    t.add_row("invariants", checked)
    shards = report.get("shards")
    if shards:
        t.add_row(
            "shards",
            f"{shards['count']}: connections at hold {_per(shards['connections_at_hold'])}; RPC "
            f"clients {_per(shards['rpc_clients'])} ({shards['redials']} redial(s))",
        )
        for shard, each in shards.get("rss_kb", {}).items():
            if each.get("before") and each.get("after"):
                t.add_row(
                    f"shard {shard} RSS",
                    f"before {each['before'] / 1024:.1f} MB, peak {(each.get('peak') or 0) / 1024:.1f}"
                    f" MB, after drain {each['after'] / 1024:.1f} MB (x{each.get('after_over_before')},"
                    f" within 10%: {each.get('within_10pct')})",
                )
    d = report["daemon"]
    t.add_row(
        "daemon",
        f"{d['address']} "
        + (f"pid {d['pid']}" if d.get("pid") else "pid unknown")
        + (f", exit {d['exit_status']}" if d["spawned"] else "")
        + (f", CRASHED: {d['crash']}" if d["crashed"] else ""),
    )
    if d.get("logs"):
        t.add_row("logs", f"{d['logs']} ({_logs_of(d)})")
    unjudged = report.get("not_judged_count", len(report.get("not_judged") or []))
    said = f" ({unjudged} check(s) of the soak's own probes not judged: see the faults)"
    passed = "PASS" + (said if unjudged else "")
    if report.get("not_judged_fail"):
        passed = f"NOT JUDGED{_FAILS_NOT_JUDGED}: {unjudged} check(s) of the soak's own probes "
        passed += "not judged: see the faults"
    t.add_row("verdict", passed if report["ok"] else "FAIL: " + "; ".join(report["failures"]))
    console.print(t)
    if report["integrity_error_details"]:
        it = Table(title="integrity errors (first bad byte)", title_justify="left")
        cols = ("conn", "offset", "chunk_offset", "chunk_len", "seed", "worker", "state")
        for col in cols:
            it.add_column(col)
        for e in report["integrity_error_details"][:20]:
            it.add_row(*(str(e.get(col)) for col in cols))
        console.print(it)


class ProgressLine:
    """One rich live line on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self.console = Console(stderr=True)
        self._live = Live(Text(""), console=self.console, refresh_per_second=4, transient=True)
        self._live.start()

    def update(self, line: str) -> None:
        self._live.update(self._text(line))

    def stop(self) -> None:
        self._live.stop()


#: The phases of a run in their order, as `timing_s` keys them and the `time` row names them:
#: spawning the daemon and peers, the warm-up (its connections, then the wait for the idle
#: daemon's trim and RSS plateau), ramp, hold, settle and close, the gauges' drain, the wait
#: for the daemon to give memory back, and the stop of workers, peers and daemon.
PHASES = (
    ("start_s", "start"),
    ("warm_up_s", "warm-up"),
    ("ramp_s", "ramp"),
    ("hold_s", "hold"),
    ("close_s", "settle+close"),
    ("drain_s", "drain"),
    ("memory_s", "memory"),
    ("stop_s", "stop"),
)


def _times(timing: dict[str, float]) -> str:
    """Each phase the run went through (a run cut short, or against a daemon it cannot
    measure, skips some), then the whole run's wall time."""
    shown = ", ".join(f"{name} {timing[key]} s" for key, name in PHASES if key in timing)
    total = timing.get("total_s")
    return shown + (f"; total {total} s" if total is not None else "")


def _logs_of(daemon: dict[str, Any]) -> str:
    """Whose output the log directory holds: only what the soak started (a --rpc daemon's
    log is wherever that daemon writes it)."""
    spawned = ["the spawned daemon's"] if daemon.get("spawned") else []
    if daemon.get("peers_spawned", True):  # reports from before the key: peers were ours
        spawned.append("the echo peers'")
    if not spawned:
        return "empty: the soak started no process"
    return " and ".join(spawned) + " output"


def _slowest(slowest: dict[str, Any] | None) -> str:
    """Where the slowest send was: its connection and when it was asked."""
    if not slowest:
        return ""
    into = slowest.get("asked_into_hold_s")
    if into is None:
        when = ""
    elif into >= 0:
        when = f", asked {into:.2f} s into the hold"
    else:
        when = f", asked {-into:.2f} s before the hold (in the ramp)"
    return f" (conn {slowest['conn']}{when})"
