"""`chimney-soak`: many concurrent offloaded connections through chimneyd, verified byte by byte.

Shape of a run (one coordinator, K client workers, a daemon, P echo peers):

1. The coordinator starts the daemon and echo peers (`--spawn`) or uses a running daemon
   (`--rpc`), raises its open-file limit and caps the run when the limit would be hit.
2. Workers (in-process, or K processes on uvloop) ramp their share of the connections at
   `--rate`; each connection streams its own seeded pattern (`PatternStream`) to an echo peer and
   verifies every returned byte in order (`Verifier`). Connections are multiplexed over a few RPC
   clients, each with a bounded number of operations in flight (the daemon's per-client in-flight
   limit).
3. During the hold the coordinator runs the fault schedule: layer faults itself, connection faults
   through the worker that owns the connection (faults on a connection are owner-only).
4. Stop: every connection is closed, the daemon's gauges must drain to zero, a report is built.

The pure parts (size/duration/payload/fault parsers, percentiles, report building and the verdict)
are plain functions so they are tested without sockets (tests/soak/test_soak_units.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .aio import AsyncClient
from .errors import (
    ChimneyError,
    LimitError,
    NdisStatusError,
    RpcError,
    RpcTimeout,
)
from .protocol import parse_address
from .stream import PatternStream, Verifier

# ================================================================================================
# limits and defaults (every one named, with why)
# ================================================================================================
#: Connections carried by one RPC client; a few clients spread the daemon's per-client work.
DEFAULT_CONNS_PER_RPC = 500
#: Operations (echo round trips, opens, closes) in flight per RPC client. Each op has at most two
#: calls in flight (send and recv), which keeps us under the daemon's default 256 per client.
DEFAULT_OPS_PER_RPC = 100
#: Connections per spawned echo peer process: far below one process's ≈19.9k sockets and the
#: ≈14k-per-listening-port point where Linux's port search slows (perf-notes).
CONNS_PER_PEER = 4000
#: Sockets kept aside in the daemon for its RPC port, clients, log files.
FD_RESERVE = 200
#: Server-side wait of one `tcp.recv`; a timeout loses no data, so we simply ask again.
RECV_TIMEOUT_MS = 5000
#: Largest read asked for at once.
RECV_CHUNK = 256 * 1024
#: An echo round trip that takes longer than this is reported as stuck (connection, offset).
OP_TIMEOUT_S = 60.0
#: Client-side bound on any one call.
CALL_TIMEOUT_S = 120.0
#: Consecutive failed sends on one connection before it is declared broken.
MAX_SEND_FAILURES = 5
#: Re-offload attempts (after a NIC failure or retrieve) are spaced by at least this.
REOFFLOAD_RETRY_S = 0.5
# more than the daemon keeps traces of closed connections for (engine.CLOSED_TRACES_KEPT)
WARM_UP_CONNECTIONS = 300
# the daemon gives freed memory back once idle: sample after it did
IDLE_TRIM_WAIT_S = 4.0  # it trims 0.5 s and 3 s after its last close
#: Latency samples kept per worker (reservoir), enough for a stable p99.
LATENCY_SAMPLES = 50_000
#: Integrity and error details kept per worker (all are counted).
DETAILS_KEPT = 100
#: How often workers report progress and the coordinator refreshes its line (seconds).
PROGRESS_EVERY_S = 0.5
#: Default stall of a `stall` fault and default outage of a `nic_failure` fault.
DEFAULT_STALL_MS = 2000
DEFAULT_NIC_OUTAGE_S = 3.0
#: Time for spawned processes to say they are listening.
SPAWN_READY_S = 30.0

CLOSE_MODES = ("graceful", "abortive", "mixed")
LAYER_GAUGES = ("offloads_active", "handles", "outstanding_nbls")


# ================================================================================================
# pure parsing: sizes, durations, payload distributions, fault schedules
# ================================================================================================
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """`"64k"` → 65536, `"1.5m"`, `"512"`, `"4KiB"`; binary units; must be at least 1."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 512, 4k, 1.5m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from `"20s"`, `"500ms"`, `"1.5m"` or a bare number of seconds."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (examples: 20s, 500ms, 2m)")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value / 1000.0 if unit == "ms" else value * 60.0 if unit in ("m", "min") else value


@dataclass(frozen=True, slots=True)
class PayloadDist:
    """Sizes of the payloads sent per echo round trip.

    `range`: log-uniform between `values[0]` and `values[1]` (small and large sizes equally
    represented per octave); `choice`: one of `values`, uniformly; `fixed`: always `values[0]`.
    """

    kind: str
    values: tuple[int, ...]

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return rng.choice(self.values)
        lo, hi = self.values
        return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))

    @property
    def max_size(self) -> int:
        return max(self.values)

    def describe(self) -> str:
        if self.kind == "range":
            return f"{_fmt_size(self.values[0])}..{_fmt_size(self.values[1])} log-uniform"
        return ",".join(_fmt_size(v) for v in self.values)


def parse_payload(text: str) -> PayloadDist:
    """`"1k:64k"` (range), `"1k,4k,64k"` (choice) or `"16k"` (fixed)."""
    text = text.strip()
    if ":" in text:
        lo_s, _, hi_s = text.partition(":")
        lo, hi = parse_size(lo_s), parse_size(hi_s)
        if lo > hi:
            raise ValueError(f"payload range {text!r}: low end above high end")
        return PayloadDist("fixed", (lo,)) if lo == hi else PayloadDist("range", (lo, hi))
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty payload specification")
    sizes = tuple(parse_size(p) for p in parts)
    return PayloadDist("fixed", sizes) if len(sizes) == 1 else PayloadDist("choice", sizes)


def _fmt_size(n: int) -> str:
    for unit, div in (("m", 1024**2), ("k", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


#: Fault kinds: where they are injected and the keys they take (with defaults).
#: conn-level faults are injected by the worker that owns a randomly chosen live connection.
FAULT_KINDS: dict[str, dict[str, Any]] = {
    "peer_reset": {"scope": "conn", "keys": {}},
    "stall": {"scope": "conn", "keys": {"ms": str(DEFAULT_STALL_MS)}},
    "retrieve": {"scope": "conn", "keys": {"reason": ""}},
    "fail_send": {
        "scope": "layer",
        "keys": {"layer": "nic0", "status": "NDIS_STATUS_REQUEST_ABORTED", "n": "1"},
    },
    "upload_send": {
        "scope": "layer",
        "keys": {"layer": "im0", "status": "NDIS_STATUS_UPLOAD_IN_PROGRESS", "n": "1"},
    },
    "nic_failure": {"scope": "layer", "keys": {"layer": "nic0", "for": f"{DEFAULT_NIC_OUTAGE_S}s"}},
}

FAULT_HELP = """\
fault schedule (--faults): comma-separated items KIND[:COUNT][@TIME][/KEY=VALUE]...
  COUNT  injections of this kind (default 1); without @TIME they are spread evenly over the hold
  @TIME  all COUNT injections at TIME after the hold starts (20s, 500ms, 1.5m)
  kinds:
    peer_reset   the echo peer of a random live connection resets it (RST): the connection must
                 see TcpIndicateAbort / REQUEST_ABORTED; it is excluded from integrity and reopened
    stall        stall_peer on a random connection (/ms=2000): back-pressure; its data must still
                 arrive intact
    retrieve     the NIC asks to upload a random connection (/reason=...); it is re-offloaded
    fail_send    fail_next on MiniportTcpOffloadSend (/layer=nic0 /status=NDIS_STATUS_REQUEST_ABORTED
                 /n=1): the sender sees the NDIS status and resends the unacknowledged bytes
    upload_send  fail_next in the IM with UPLOAD_IN_PROGRESS (/layer=im0): the host resends after
                 the upload, the soak re-offloads the connection
    nic_failure  target_failure on /layer=nic0 for /for=3s, then fault.clear: every connection is
                 uploaded (PAUSE + UPLOAD_ALL) and re-offloaded after RESUME, losing no byte
  example: --faults peer_reset:5,stall:2/ms=3000,fail_send:3,nic_failure@20s/for=4s
"""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    count: int = 1
    at: float | None = None  # seconds after the hold starts; None: spread over the hold
    params: tuple[tuple[str, str], ...] = ()

    def param(self, key: str) -> str:
        return str(dict(self.params).get(key, FAULT_KINDS[self.kind]["keys"].get(key, "")))

    @property
    def scope(self) -> str:
        return str(FAULT_KINDS[self.kind]["scope"])


_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z_]+)(?::(?P<count>\d+))?(?:@(?P<at>[^/]+))?(?P<rest>(?:/.*)?)$"
)


def parse_faults(text: str | None) -> list[FaultSpec]:
    """Parse the `--faults` schedule (syntax in `FAULT_HELP`); raises ValueError naming the item."""
    if text is None or not text.strip():
        return []
    out: list[FaultSpec] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        m = _FAULT_RE.match(item)
        if m is None:
            raise ValueError(f"fault {item!r}: expected KIND[:COUNT][@TIME][/KEY=VALUE]...")
        kind = m.group("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"fault {item!r}: unknown kind {kind!r} (known: {', '.join(FAULT_KINDS)})"
            )
        count = int(m.group("count")) if m.group("count") is not None else 1
        if count < 1:
            raise ValueError(f"fault {item!r}: count must be at least 1")
        at = parse_duration(m.group("at")) if m.group("at") is not None else None
        params: list[tuple[str, str]] = []
        known = FAULT_KINDS[kind]["keys"]
        for kv in filter(None, m.group("rest").split("/")):
            key, eq, value = kv.partition("=")
            if not eq or not value:
                raise ValueError(f"fault {item!r}: expected /KEY=VALUE, got /{kv}")
            if key not in known:
                raise ValueError(
                    f"fault {item!r}: {kind} takes no key {key!r} (keys: {', '.join(known) or 'none'})"
                )
            if (key == "ms" or key == "n") and (not value.isdigit() or int(value) < 1):
                raise ValueError(f"fault {item!r}: {key} must be a positive integer")
            if key == "for":
                parse_duration(value)
            params.append((key, value))
        out.append(FaultSpec(kind, count, at, tuple(params)))
    return out


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    tag: int  # unique in the run
    t: float  # seconds after the hold starts
    spec: FaultSpec


def schedule_faults(specs: Sequence[FaultSpec], hold_s: float) -> list[ScheduledFault]:
    """Injection times: `@TIME` as given, else COUNT injections evenly inside the hold."""
    plan: list[tuple[float, FaultSpec]] = []
    for spec in specs:
        for i in range(spec.count):
            t = spec.at if spec.at is not None else hold_s * (i + 1) / (spec.count + 1)
            if t >= hold_s:
                raise ValueError(
                    f"fault {spec.kind}@{t:g}s is not inside the {hold_s:g} s hold (--duration)"
                )
            plan.append((t, spec))
    plan.sort(key=lambda p: p[0])
    return [ScheduledFault(i + 1, t, spec) for i, (t, spec) in enumerate(plan)]


# ================================================================================================
# pure reporting
# ================================================================================================
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
    for key in ("wires", "ack_waiting"):
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
    "connect_failures",
    "offload_refused_at_connect",
    "uploads_planned",
    "reoffloads_planned",
    "send_failures",
    "send_resends",
    "aborts_seen",
    "aborts_while_closing",
    "resets_observed",
    "reopened_after_reset",
    "unexpected_aborts",
    "nic_uploads",
    "retrieve_uploads",
    "other_uploads",
    "reoffloads",
    "reoffload_refused",
    "churn_closes",
    "recv_timeouts",
    "stuck_ops",
    "unverified_on_close",
    "host_at_close",
)


def merge_counters(parts: Sequence[dict[str, int]]) -> dict[str, int]:
    total = dict.fromkeys(COUNTER_FIELDS, 0)
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + int(value)
    return total


def summarize_faults(
    layer_records: Sequence[dict[str, Any]],
    conn_records: Sequence[dict[str, Any]],
    counters: dict[str, int],
) -> list[dict[str, Any]]:
    """One entry per fault kind: what was injected and what it did (`ok`: it did what it should
    and the connections it touched lost nothing)."""
    by_kind: dict[str, dict[str, Any]] = {}

    def entry(kind: str) -> dict[str, Any]:
        return by_kind.setdefault(kind, {"kind": kind, "injected": 0, "failed_to_inject": 0})

    for rec in [*layer_records, *conn_records]:
        e = entry(rec["kind"])
        if rec.get("injected"):
            e["injected"] += 1
        else:
            e["failed_to_inject"] += 1
            e.setdefault("inject_errors", []).append(rec.get("error", "?"))
    for rec in conn_records:
        e = by_kind[rec["kind"]]
        if not rec.get("injected"):
            continue
        if rec["kind"] == "peer_reset":
            e["abort_observed"] = e.get("abort_observed", 0) + int(bool(rec.get("observed")))
            e["reopened"] = e.get("reopened", 0) + int(bool(rec.get("reopened")))
        elif rec["kind"] == "stall":
            e["intact_after"] = e.get("intact_after", 0) + int(
                rec.get("integrity_errors", 0) == 0 and not rec.get("lost")
            )
            e["bytes_verified_after"] = e.get("bytes_verified_after", 0) + rec.get(
                "verified_after", 0
            )
        elif rec["kind"] == "retrieve":
            e["uploaded"] = e.get("uploaded", 0) + int(bool(rec.get("uploaded")))
            e["reoffloaded"] = e.get("reoffloaded", 0) + int(bool(rec.get("reoffloaded")))
        done = _FAULT_DONE.get(rec["kind"])
        if done is not None:  # cut short by the soak, unless it played out first
            e["superseded"] = e.get("superseded", 0) + int(
                bool(rec.get("superseded")) and not rec.get(done)
            )
        e.setdefault("connections", []).append(rec.get("conn"))
    if "fail_send" in by_kind:
        by_kind["fail_send"]["sends_failed"] = counters.get("send_failures", 0)
        by_kind["fail_send"]["resent"] = counters.get("send_resends", 0)
    if "upload_send" in by_kind:
        by_kind["upload_send"]["uploaded"] = counters.get("other_uploads", 0)
    if "nic_failure" in by_kind:
        by_kind["nic_failure"]["connections_uploaded"] = counters.get("nic_uploads", 0)
        by_kind["nic_failure"]["cleared"] = sum(
            1 for r in layer_records if r["kind"] == "nic_failure" and r.get("cleared")
        )
    for e in by_kind.values():
        e["ok"] = _fault_ok(e)
    return [by_kind[k] for k in FAULT_KINDS if k in by_kind]


# what a fault aimed at one connection must lead to, unless the soak closes that connection first
_FAULT_DONE = {"peer_reset": "reopened", "retrieve": "uploaded"}


def _fault_ok(e: dict[str, Any]) -> bool:
    if e["failed_to_inject"]:
        return False
    kind, n = e["kind"], e["injected"]
    if kind == "peer_reset":
        reopened = e.get("reopened", 0) + e.get("superseded", 0)
        return bool(e.get("abort_observed", 0) == n and reopened == n)
    if kind == "stall":
        return bool(e.get("intact_after", 0) == n)
    if kind == "retrieve":
        return bool(e.get("uploaded", 0) + e.get("superseded", 0) == n)
    if kind == "nic_failure":
        return bool(e.get("cleared", 0) == n)
    return True


def build_report(
    *,
    settings: dict[str, Any],
    counters: dict[str, int],
    latencies_ms: Sequence[float],
    integrity_details: Sequence[dict[str, Any]],
    error_details: dict[str, dict[str, Any]],
    faults: list[dict[str, Any]],
    stats_before: dict[str, Any] | None,
    stats_after: dict[str, Any] | None,
    timing: dict[str, float],
    rss_kb: dict[str, int | None],
    daemon: dict[str, Any],
    connections: dict[str, Any],
) -> dict[str, Any]:
    """The `--json` report; `ok` and `failures` say whether the soak passed and why not."""
    active_s = max(timing.get("active_s", 0.0), 1e-9)
    left = gauges_left(stats_after, stats_before)
    before, after = rss_kb.get("before"), rss_kb.get("after")
    report: dict[str, Any] = {
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
            "max": round(max(latencies_ms), 3) if latencies_ms else 0.0,
            "samples": len(latencies_ms),
        },
        "faults": faults,
        "counters": counters,
        "stats_before": stats_before,
        "stats_after": stats_after,
        "drained": not left,
        "left_over": left,
        "rss_kb": {
            **rss_kb,
            "after_over_before": round(after / before, 3) if before and after else None,
            "within_10pct": (after <= before * 1.10) if before and after else None,
        },
        "daemon": daemon,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "settings": settings,
    }
    report["failures"] = verdict(report)
    report["ok"] = not report["failures"]
    return report


def verdict(report: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty: it passed): integrity, leaks after drain, a daemon crash,
    invariant violations, lost bytes on surviving connections, faults that did not do their job."""
    why: list[str] = []
    if report["integrity_errors"]:
        why.append(f"{report['integrity_errors']} integrity error(s)")
    if not report["drained"]:
        why.append(f"state left after drain: {json.dumps(report['left_over'], sort_keys=True)}")
    daemon = report["daemon"]
    if daemon.get("crashed"):
        why.append(f"daemon crashed: {daemon.get('crash')}")
    if daemon.get("exit_status") not in (None, 0):
        why.append(f"daemon exit status {daemon['exit_status']}")
    engine = (report.get("stats_after") or {}).get("engine") or {}
    if engine.get("invariant_violations"):
        why.append(f"{engine['invariant_violations']} invariant violation(s) in the daemon")
    if engine.get("layer_errors"):
        why.append(f"{engine['layer_errors']} layer error(s) in the daemon")
    counters = report["counters"]
    if counters.get("unverified_on_close"):
        why.append(f"{counters['unverified_on_close']} byte(s) sent but never echoed back")
    if counters.get("stuck_ops"):
        why.append(f"{counters['stuck_ops']} echo round trip(s) stuck past {OP_TIMEOUT_S:g} s")
    if counters.get("unexpected_aborts"):
        why.append(f"{counters['unexpected_aborts']} connection(s) aborted with no fault")
    for fault in report["faults"]:
        if not fault.get("ok"):
            why.append(f"fault {fault['kind']} did not behave: {_fault_brief(fault)}")
    if report["errors"] and not why:
        why.append(f"{report['errors']} error(s)")
    return why


def _fault_brief(fault: dict[str, Any]) -> str:
    skip = {"kind", "ok", "connections", "inject_errors"}
    text = ", ".join(f"{k} {v}" for k, v in fault.items() if k not in skip)
    if fault.get("inject_errors"):
        text += f"; inject errors: {'; '.join(map(str, fault['inject_errors'][:3]))}"
    return text


# ================================================================================================
# the client side: one worker (in-process or its own process)
# ================================================================================================
class Channel(Protocol):
    def put(self, msg: dict[str, Any]) -> None: ...
    def drain(self) -> list[dict[str, Any]]: ...


class LocalChannel:
    """Between coroutines of one process."""

    def __init__(self) -> None:
        self._q: deque[dict[str, Any]] = deque()

    def put(self, msg: dict[str, Any]) -> None:
        self._q.append(msg)

    def drain(self) -> list[dict[str, Any]]:
        out = list(self._q)
        self._q.clear()
        return out


class ProcessChannel:
    """Between processes (a multiprocessing queue, polled without blocking)."""

    def __init__(self, q: Any) -> None:
        self._q = q

    def put(self, msg: dict[str, Any]) -> None:
        self._q.put(msg)

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except Exception:  # queue.Empty (or a closed queue at shutdown)
                return out


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    rpc: str
    token: str | None
    peers: tuple[tuple[str, int], ...]
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


def awaiting(coro: Any) -> list[str]:
    """The chain of coroutines `coro` is suspended in, outermost first (`function:line`)."""
    out = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            out.append(type(coro).__name__)
            break
        out.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


class SlotBroken(Exception):
    """The connection cannot go on (aborted, stuck, refused); the slot closes and reopens it."""


class Conn:
    """One open connection of a slot, with its stream position and what happened to it."""

    __slots__ = (
        "aborted",
        "busy",
        "churn",
        "cid",
        "faults",
        "integrity_errors",
        "lost",
        "needs_offload",
        "next_offload_try",
        "offloaded",
        "own_upload",
        "reset_expected",
        "retrieve_reason",
        "seed",
        "sent",
        "stream",
        "upload_at",
        "verified",
        "verifier",
    )

    def __init__(self, cid: int, seed: int) -> None:
        self.cid = cid
        self.seed = seed
        self.stream = PatternStream(seed)
        self.verifier = Verifier(seed)
        self.sent = 0  # bytes the peer acknowledged (tcp.send)
        self.verified = 0  # bytes received back and checked
        self.offloaded = False
        self.aborted = False
        self.reset_expected = False
        self.own_upload = False
        self.needs_offload = False
        self.next_offload_try = 0.0
        self.retrieve_reason: str | None = None
        self.upload_at: float | None = None
        self.churn = False
        self.busy = False
        self.lost = False
        self.integrity_errors = 0
        self.faults: list[dict[str, Any]] = []


class Rpc:
    """One RPC client and the connections it carries."""

    def __init__(self, client: AsyncClient, ops: int) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(ops)


class Worker:
    """Opens this worker's slots, runs echo round trips on each, injects connection faults when
    told to, closes everything on stop and reports."""

    def __init__(self, cfg: WorkerConfig, out: Channel, inbox: Channel) -> None:
        self.cfg = cfg
        self.out = out
        self.inbox = inbox
        self.rng = random.Random(cfg.seed * 7919 + cfg.index)
        self.c = dict.fromkeys(COUNTER_FIELDS, 0)
        self.latencies: list[float] = []
        self.lat_seen = 0
        self.integrity: list[dict[str, Any]] = []
        self.errors: dict[str, dict[str, Any]] = {}
        self.rpcs: list[Rpc] = []
        self.by_id: dict[int, Conn] = {}
        self.early: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.fault_records: list[dict[str, Any]] = []
        self.slot_ops: dict[int, int] = {}
        self.stopping = False
        self.serial = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.fault_tasks: set[asyncio.Task[None]] = set()
        self._rpc_by_cid: dict[int, Rpc] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def error(self, kind: str, detail: str, **where: Any) -> None:
        self.c["errors"] += 1
        e = self.errors.setdefault(kind, {"count": 0, "examples": []})
        e["count"] += 1
        if len(e["examples"]) < 5:
            e["examples"].append({"detail": detail, **where})

    def latency(self, ms: float) -> None:
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

    # -- events --------------------------------------------------------------------------------
    def on_event(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        conn = self.by_id.get(conn_id)
        if conn is None and event != "closed":
            # tcp.connect answers after its "offloaded" event: keep it for the registration
            self.early.setdefault(conn_id, []).append((event, info))
            return
        if conn is not None:
            self.apply_event(conn, event, info)

    def apply_event(self, conn: Conn, event: str, info: dict[str, Any]) -> None:
        if event == "offloaded":
            conn.offloaded = True
        elif event == "TcpIndicateAbort":
            if not conn.aborted:
                conn.aborted = True
                self.c["aborts_seen"] += 1
                if conn.own_upload and not conn.reset_expected:
                    # our close was under way (disconnect, FIN read, tcp.close): counted apart
                    self.c["aborts_while_closing"] += 1
        elif event == "TcpIndicateRetrieve":
            conn.retrieve_reason = str(info.get("reason", "?"))
        elif event == "uploaded":
            conn.offloaded = False
            if conn.own_upload or conn.aborted:
                return
            reason = conn.retrieve_reason
            conn.retrieve_reason = None
            if reason == "NDIS_STATUS_UPLOAD_ALL":
                self.c["nic_uploads"] += 1
            elif reason is not None:
                self.c["retrieve_uploads"] += 1
                for rec in conn.faults:
                    if rec["kind"] == "retrieve":
                        rec["uploaded"] = True
            else:
                self.c["other_uploads"] += 1
            conn.needs_offload = True

    # -- main ----------------------------------------------------------------------------------
    async def run(self) -> None:
        cfg = self.cfg
        nrpc = max(1, math.ceil(len(cfg.slots) / cfg.conns_per_rpc))
        try:
            for _ in range(nrpc):
                client = await AsyncClient.connect(
                    cfg.rpc, token=cfg.token, call_timeout=CALL_TIMEOUT_S
                )
                client.on_tcp_event(self.on_event)
                await client.events_subscribe("*")
                self.rpcs.append(Rpc(client, cfg.ops_per_rpc))
        except ChimneyError as exc:
            self.out.put({"type": "fatal", "w": cfg.index, "error": str(exc)})
            return
        self.out.put({"type": "ready", "w": cfg.index})
        ticker = asyncio.create_task(self.ticker())
        start = time.monotonic()
        for i, slot in enumerate(cfg.slots):
            due = start + i / cfg.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                break
            self.tasks.append(asyncio.create_task(self.run_slot(i, slot)))
            await asyncio.sleep(0)
        # wait until every slot has opened (or failed to)
        while not self.stopping and self.c["opened"] + self.c["connect_failures"] + self.c[
            "limit_refusals"
        ] < len(self.tasks):
            await asyncio.sleep(0.05)
        self.out.put({"type": "ramped", "w": cfg.index, "opened": self.c["opened"]})
        while not self.stopping:
            await asyncio.sleep(0.05)
        _done, pending = (
            await asyncio.wait(self.tasks, timeout=OP_TIMEOUT_S + 30)
            if self.tasks
            else (set(), set())
        )
        if pending:
            await self.report_stuck(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            # close what is still open, so the daemon's tables can drain
            for conn in list(self.by_id.values()):
                with contextlib.suppress(ChimneyError):
                    await self.rpc_of(conn).client.tcp_close(conn.cid)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for rpc in self.rpcs:
            await rpc.client.close()
        self.finish_fault_records()
        self.out.put(self.final())

    async def report_stuck(self, pending: set[asyncio.Task[None]]) -> None:
        """Say where each connection still busy at stop is waiting, and what the daemon says
        about it, before cancelling: a hang must be diagnosable from the report alone."""
        where: dict[str, int] = {}
        for task in pending:
            path = ">".join(awaiting(task.get_coro())[-4:])
            where[path] = where.get(path, 0) + 1
        busy = list(self.by_id.values())[:3]
        states = []
        for conn in busy:
            try:
                client = self.rpc_of(conn).client
                info = await asyncio.wait_for(client.tcp_info(conn.cid), 5.0)
                hops = await asyncio.wait_for(client.trace_get(conn.cid, 24), 5.0)
                info["last_hops"] = [
                    f"{h['layer']} {h['call']} {h.get('status') or ''}".strip() for h in hops
                ]
            except (TimeoutError, ChimneyError, KeyError) as exc:
                info = {"error": str(exc)}
            states.append({"conn": conn.cid, "sent": conn.sent, "verified": conn.verified, **info})
        self.error(
            "close_timeout",
            f"{len(pending)} connection(s) still busy at stop",
            waiting_in=where,
            busy=states,
        )

    def rpc_of(self, conn: Conn) -> Rpc:
        return self._rpc_by_cid[conn.cid]

    async def ticker(self) -> None:
        """Progress, commands from the coordinator, churn marks."""
        last_churn = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            for msg in self.inbox.drain():
                if msg["type"] == "stop":
                    self.stopping = True
                elif msg["type"] == "fault":
                    task = asyncio.create_task(self.conn_fault(msg))
                    self.fault_tasks.add(task)
                    task.add_done_callback(self.fault_tasks.discard)
            now = time.monotonic()
            if self.cfg.churn > 0 and now - last_churn >= 1.0:
                p = self.cfg.churn / 60.0 * (now - last_churn)
                for conn in self.by_id.values():
                    if self.rng.random() < p:
                        conn.churn = True
                last_churn = now
            self.c["open_now"] = len(self.by_id)
            self.c["offloaded_now"] = sum(1 for c in self.by_id.values() if c.offloaded)
            self.out.put({"type": "progress", "w": self.cfg.index, "c": dict(self.c)})
            await asyncio.sleep(PROGRESS_EVERY_S - 0.1)

    # -- one slot: open, echo round trips, reopen after resets/churn, close -----------------------
    async def run_slot(self, i: int, slot: int) -> None:
        cfg = self.cfg
        rpc = self.rpcs[i % len(self.rpcs)]
        peer = cfg.peers[slot % len(cfg.peers)]
        self.slot_ops[slot] = 0
        conn = await self.open(rpc, slot, peer)
        while conn is not None and not self.stopping:
            try:
                if conn.aborted or conn.churn:
                    raise SlotBroken("aborted" if conn.aborted else "churn")
                if conn.needs_offload and time.monotonic() >= conn.next_offload_try:
                    await self.reoffload(rpc, conn)
                await self.echo(rpc, conn)
                self.slot_ops[slot] += 1
                think = cfg.think_ms / 1000.0 * self.rng.uniform(0.5, 1.5)
                if think > 0:
                    await asyncio.sleep(think)
            except SlotBroken as why:
                conn = await self.replace(rpc, slot, peer, conn, str(why))
        if conn is not None:
            await self.close_conn(rpc, conn, final=True)

    async def open(self, rpc: Rpc, slot: int, peer: tuple[str, int]) -> Conn | None:
        for attempt in range(3):
            try:
                async with rpc.sem:
                    cid = await rpc.client.tcp_connect(peer[0], peer[1])
            except LimitError as exc:
                self.c["limit_refusals"] += 1
                self.error("limit", str(exc), slot=slot)
                return None
            except RpcError as exc:
                if attempt == 2:
                    self.c["connect_failures"] += 1
                    self.error("connect", str(exc), slot=slot, peer=f"{peer[0]}:{peer[1]}")
                    return None
                await asyncio.sleep(0.5)
                continue
            except ChimneyError as exc:
                self.c["connect_failures"] += 1
                self.error("rpc", str(exc), slot=slot)
                return None
            conn = Conn(cid, self.new_seed(slot))
            self.by_id[cid] = conn
            self._rpc_by_cid[cid] = rpc
            for event, info in self.early.pop(cid, ()):
                self.apply_event(conn, event, info)
            # The "offloaded" event of the offload done inside tcp.connect comes before the
            # daemon records us as the owner, so it is not delivered: ask for the state.
            try:
                async with rpc.sem:
                    info = await rpc.client.tcp_info(cid)
                conn.offloaded = info.get("state") == "offloaded"
            except RpcError as exc:
                self.error("info", str(exc), conn=cid)
            if not conn.offloaded:
                self.c["offload_refused_at_connect"] += 1
                conn.needs_offload = True
            if self.cfg.upload_share > 0 and self.rng.random() < self.cfg.upload_share:
                conn.upload_at = time.monotonic() + self.rng.uniform(0.5, 3.0) * max(
                    self.cfg.think_ms / 1000.0, 0.2
                )
            self.c["opened"] += 1
            return conn
        return None

    async def replace(
        self, rpc: Rpc, slot: int, peer: tuple[str, int], conn: Conn, why: str
    ) -> Conn | None:
        if why == "churn":
            self.c["churn_closes"] += 1
        await self.close_conn(rpc, conn, final=False)
        if self.stopping:
            self.supersede(conn, "peer_reset")  # the soak ends: no reopen
            return None
        new = await self.open(rpc, slot, peer)
        if conn.reset_expected and new is not None:
            self.c["reopened_after_reset"] += 1
            for rec in conn.faults:
                if rec["kind"] == "peer_reset":
                    rec["reopened"] = True
                    rec["new_conn"] = new.cid
        return new

    async def reoffload(self, rpc: Rpc, conn: Conn) -> None:
        try:
            async with rpc.sem:
                await rpc.client.tcp_offload(conn.cid)
        except NdisStatusError:
            # PAUSE while the NIC is down: stay in host mode and try again later
            self.c["reoffload_refused"] += 1
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            return
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            self.error("reoffload", str(exc), conn=conn.cid)
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
            return
        conn.needs_offload = False
        conn.offloaded = True
        self.c["reoffloads"] += 1
        for rec in conn.faults:
            if rec["kind"] == "retrieve" and rec.get("uploaded"):
                # the re-offload after the retrieve's own upload, not after one the NIC
                # failure made (UPLOAD_ALL) while the retrieve was still pending
                rec["reoffloaded"] = True

    async def echo(self, rpc: Rpc, conn: Conn) -> None:
        """One round trip: send a payload, read it all back, verify it in order. A planned upload
        happens between the send and the reads (bytes in flight cross the upload), then the
        connection is offloaded again."""
        size = self.cfg.payload.sample(self.rng)
        data = conn.stream.read(size)
        upload = conn.upload_at is not None and time.monotonic() >= conn.upload_at
        async with rpc.sem:
            conn.busy = True
            try:
                reader = asyncio.create_task(self.read_back(rpc, conn, size))
                try:
                    await self.send_all(rpc, conn, data)
                    if upload:
                        conn.upload_at = None
                        await self.planned_upload(rpc, conn)
                finally:
                    # never cancel a read: the daemon would still hand it the next bytes
                    await asyncio.wait([reader])
                reader.result()
                if upload:
                    await self.planned_offload(rpc, conn)
                self.c["ops"] += 1
            finally:
                conn.busy = False

    async def send_all(self, rpc: Rpc, conn: Conn, data: bytes) -> None:
        off, failures = 0, 0
        view = memoryview(data)
        while off < len(data):
            t0 = time.perf_counter()
            try:
                acked = await rpc.client.tcp_send(conn.cid, view[off:] if off else data)
            except NdisStatusError as exc:
                got = exc.acknowledged or 0
                off += got
                conn.sent += got
                self.c["bytes_sent"] += got
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                failures += 1
                self.c["send_failures"] += 1
                if failures >= MAX_SEND_FAILURES:
                    self.error("send", f"{failures} failed sends in a row: {exc}", conn=conn.cid)
                    conn.lost = True
                    raise SlotBroken("send failures") from None
                await asyncio.sleep(0.01 * failures)
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.c["send_resends"] += 1
                continue
            except RpcError as exc:
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.error("send", str(exc), conn=conn.cid, offset=conn.sent)
                raise SlotBroken("send error") from None
            self.latency((time.perf_counter() - t0) * 1000.0)
            off += acked
            conn.sent += acked
            self.c["bytes_sent"] += acked

    async def read_back(self, rpc: Rpc, conn: Conn, size: int) -> None:
        got = 0
        t0 = time.monotonic()
        while got < size:
            try:
                chunk = await rpc.client.tcp_recv(
                    conn.cid, min(size - got, RECV_CHUNK), RECV_TIMEOUT_MS
                )
            except RpcTimeout:
                self.c["recv_timeouts"] += 1
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                if time.monotonic() - t0 > OP_TIMEOUT_S:
                    self.c["stuck_ops"] += 1
                    conn.lost = True
                    self.error(
                        "stuck",
                        f"{got} of {size} bytes back after {OP_TIMEOUT_S:g} s",
                        conn=conn.cid,
                        offset=conn.verifier.offset,
                    )
                    raise SlotBroken("stuck") from None
                continue
            except NdisStatusError as exc:
                if conn.aborted or exc.status == "NDIS_STATUS_REQUEST_ABORTED":
                    conn.aborted = True
                    raise SlotBroken("aborted") from None
                self.error("recv", str(exc), conn=conn.cid, offset=conn.verifier.offset)
                raise SlotBroken("recv error") from None
            except RpcError as exc:
                if conn.aborted:
                    raise SlotBroken("aborted") from None
                self.error("recv", str(exc), conn=conn.cid, offset=conn.verifier.offset)
                raise SlotBroken("recv error") from None
            if not chunk:
                if conn.aborted:
                    raise SlotBroken("aborted")
                self.error("eof", "unexpected end of stream", conn=conn.cid, offset=got)
                raise SlotBroken("eof")
            self.verify(conn, chunk)
            got += len(chunk)

    def verify(self, conn: Conn, chunk: bytes) -> None:
        at = conn.verifier.offset
        bad = conn.verifier.check(chunk)
        n = len(chunk)
        conn.verified += n
        self.c["bytes_verified"] += n
        if bad is not None:
            self.c["integrity_errors"] += 1
            conn.integrity_errors += 1
            if len(self.integrity) < DETAILS_KEPT:
                self.integrity.append(
                    {
                        "conn": conn.cid,
                        "seed": conn.seed,
                        "offset": bad,
                        "chunk_offset": at,
                        "chunk_len": n,
                        "worker": self.cfg.index,
                        "offloaded": conn.offloaded,
                    }
                )

    async def planned_upload(self, rpc: Rpc, conn: Conn) -> None:
        conn.own_upload = True
        try:
            await rpc.client.tcp_upload(conn.cid)
            self.c["uploads_planned"] += 1
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            self.error("upload", str(exc), conn=conn.cid)
        finally:
            conn.own_upload = False
            conn.offloaded = False

    async def planned_offload(self, rpc: Rpc, conn: Conn) -> None:
        try:
            await rpc.client.tcp_offload(conn.cid)
            conn.offloaded = True
            self.c["reoffloads_planned"] += 1
        except NdisStatusError:
            conn.needs_offload = True  # e.g. the NIC is paused: try later
            conn.next_offload_try = time.monotonic() + REOFFLOAD_RETRY_S
        except RpcError as exc:
            if conn.aborted:
                raise SlotBroken("aborted") from None
            self.error("offload", str(exc), conn=conn.cid)

    def supersede(self, conn: Conn, kind: str) -> None:
        """The soak itself closed `conn` (churn, stop) before the fault aimed at it had played
        out: counted apart as superseded, neither a success nor a failure of the daemon."""
        for rec in conn.faults:
            if rec["kind"] == kind:
                rec["superseded"] = True

    async def close_conn(self, rpc: Rpc, conn: Conn, final: bool) -> None:
        mode = self.cfg.close
        if final:
            self.supersede(conn, "peer_reset")
        self.supersede(conn, "retrieve")  # `uploaded` wins if the upload came first
        conn.own_upload = True  # tcp.close uploads first: that upload is ours
        abortive = mode == "abortive" or (mode == "mixed" and conn.seed % 2 == 1)
        if conn.reset_expected or conn.aborted:
            if conn.reset_expected:
                self.c["resets_observed"] += int(conn.aborted)
                for rec in conn.faults:
                    if rec["kind"] == "peer_reset":
                        rec["observed"] = conn.aborted
            elif not conn.aborted:
                pass
            else:
                self.c["unexpected_aborts"] += 1
                self.error("abort", "aborted with no fault aimed at it", conn=conn.cid)
        else:
            if conn.sent != conn.verified and not conn.lost:
                self.c["unverified_on_close"] += conn.sent - conn.verified
                self.error(
                    "unverified",
                    f"{conn.sent - conn.verified} byte(s) sent, never echoed",
                    conn=conn.cid,
                    offset=conn.verified,
                )
            if final and not conn.offloaded:
                self.c["host_at_close"] += 1
        async with rpc.sem:
            if not conn.aborted:
                try:
                    status = await rpc.client.tcp_disconnect(conn.cid, abortive)
                    if status != "NDIS_STATUS_SUCCESS" and not conn.aborted:
                        self.error("disconnect", status, conn=conn.cid, abortive=abortive)
                    if not abortive:
                        await self.drain_to_eof(rpc, conn)
                except RpcError as exc:
                    if not conn.aborted:
                        self.error("disconnect", str(exc), conn=conn.cid, abortive=abortive)
            try:
                await rpc.client.tcp_close(conn.cid)
                self.c["closed"] += 1
            except ChimneyError as exc:
                self.error("close", str(exc), conn=conn.cid)
        self.by_id.pop(conn.cid, None)
        self._rpc_by_cid.pop(conn.cid, None)

    async def drain_to_eof(self, rpc: Rpc, conn: Conn) -> None:
        """After our FIN the echo peer returns its FIN: read to end of stream (bounded)."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                chunk = await rpc.client.tcp_recv(conn.cid, RECV_CHUNK, 2000)
            except RpcTimeout:
                continue
            except RpcError:
                return
            if not chunk:
                return
            self.verify(conn, chunk)
        self.error("fin", "no FIN from the echo peer within 10 s", conn=conn.cid)

    # -- connection faults ---------------------------------------------------------------------
    async def conn_fault(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        rec: dict[str, Any] = {"tag": msg["tag"], "kind": kind, "injected": False}
        self.fault_records.append(rec)
        live = [
            c
            for c in self.by_id.values()
            if not c.aborted and not c.reset_expected and not c.churn and not c.faults
        ]
        # offloaded connections first; a reset or a stall also means something in host mode
        # (e.g. while a NIC failure has everything uploaded), a retrieve does not
        candidates = [c for c in live if c.offloaded] or ([] if kind == "retrieve" else live)
        if not candidates:
            rec["error"] = "no live connection to aim at"
            return
        conn = self.rng.choice(candidates)
        rec["conn"] = conn.cid
        keys: dict[str, Any] = {"conn": conn.cid}
        if kind == "peer_reset":
            conn.reset_expected = True
        elif kind == "stall":
            keys["ms"] = int(msg["params"].get("ms", DEFAULT_STALL_MS))
            rec["verified_at"] = conn.verified
        elif kind == "retrieve" and msg["params"].get("reason"):
            keys["reason"] = msg["params"]["reason"]
        rec["_conn"] = conn
        conn.faults.append(rec)
        daemon_kind = "stall_peer" if kind == "stall" else kind
        try:
            rec["fault_id"] = await self._rpc_by_cid[conn.cid].client.fault_inject(
                daemon_kind, **keys
            )
            rec["injected"] = True
        except (ChimneyError, KeyError) as exc:
            rec["error"] = str(exc)
            conn.reset_expected = False

    def finish_fault_records(self) -> None:
        for rec in self.fault_records:
            conn: Conn | None = rec.pop("_conn", None)
            if conn is None:
                continue
            if rec["kind"] == "stall":
                rec["verified_after"] = conn.verified - rec.get("verified_at", 0)
                rec["integrity_errors"] = conn.integrity_errors
                rec["lost"] = conn.lost or conn.aborted
            elif rec["kind"] == "peer_reset":
                rec.setdefault("observed", conn.aborted)

    def final(self) -> dict[str, Any]:
        self.c["open_now"] = len(self.by_id)
        return {
            "type": "final",
            "w": self.cfg.index,
            "c": dict(self.c),
            "latencies": self.latencies,
            "integrity": self.integrity,
            "errors": self.errors,
            "faults": self.fault_records,
            "slots": len(self.cfg.slots),
            "slots_with_traffic": sum(1 for v in self.slot_ops.values() if v > 0),
        }


async def run_worker(cfg: WorkerConfig, out: Channel, inbox: Channel) -> None:
    worker = Worker(cfg, out, inbox)
    try:
        await worker.run()
    except Exception as exc:  # report, never die silently: the coordinator waits for us
        out.put({"type": "fatal", "w": cfg.index, "error": f"{type(exc).__name__}: {exc}"})


def _worker_process(cfg: WorkerConfig, out_q: Any, in_q: Any) -> None:
    """Entry of a worker process: its own uvloop, talking to the coordinator over queues."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    raise_nofile_limit()
    try:
        import uvloop

        uvloop.run(run_worker(cfg, ProcessChannel(out_q), ProcessChannel(in_q)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(run_worker(cfg, ProcessChannel(out_q), ProcessChannel(in_q)))


# ================================================================================================
# processes: limits, the daemon, the peers
# ================================================================================================
def raise_nofile_limit() -> tuple[int, int]:
    """Raise our soft open-file limit to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def process_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_nofile_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class Child:
    """A spawned process whose stdout/stderr go to files (a pipe nobody reads would block it)."""

    def __init__(self, name: str, argv: list[str], logdir: Path) -> None:
        self.name = name
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.stopped_by_us = False

    async def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            m = pattern.search(text)
            if m is not None:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode}: {self.tail()}"
                )
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready within {timeout:g} s: {self.tail()}")

    def tail(self, n: int = 800) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            self.stopped_by_us = True
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


_DAEMON_READY = re.compile(r"chimneyd listening on (\S+)")
_PEER_READY = re.compile(r"listening on (\S+):(\d+)")


# ================================================================================================
# the coordinator
# ================================================================================================
@dataclass
class Plan:
    connections: int
    requested: int
    rate: float
    duration: float
    think_ms: float
    workers: int
    payload: PayloadDist
    faults: list[ScheduledFault]
    fd_note: str | None = None
    fd_limit: int = 0


@dataclass
class Live:
    """What the coordinator knows during the run (from workers' progress messages)."""

    counters: dict[int, dict[str, int]] = field(default_factory=dict)
    finals: dict[int, dict[str, Any]] = field(default_factory=dict)
    ramped: set[int] = field(default_factory=set)
    ready: set[int] = field(default_factory=set)
    opened: dict[int, int] = field(default_factory=dict)
    fatal: dict[int, str] = field(default_factory=dict)

    def total(self) -> dict[str, int]:
        return merge_counters(list(self.counters.values()))


class Soak:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.live = Live()
        self.daemon: Child | None = None
        self.peers: list[Child] = []
        self.peer_addrs: list[tuple[str, int]] = []
        self.rpc_addr: str = args.rpc or ""
        self.daemon_pid: int | None = args.daemon_pid
        self.control: AsyncClient | None = None
        self.outs: list[Channel] = []
        self.ins: list[Channel] = []
        self.procs: list[Any] = []
        self.local_tasks: list[asyncio.Task[None]] = []
        self.layer_records: list[dict[str, Any]] = []
        self.crash: str | None = None
        self.rss_peak: int | None = None
        self.logdir = Path(tempfile.mkdtemp(prefix="chimney-soak-"))
        self.t_phase: dict[str, float] = {}
        self.progress: Any = None
        self.console_err: Any = None

    # -- helpers -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.args.quiet:
            if self.progress is not None:
                self.progress.console.print(text)
            else:
                print(text, file=sys.stderr, flush=True)

    def daemon_gone(self) -> str | None:
        if self.daemon is not None and self.daemon.proc.poll() is not None:
            return f"exit status {self.daemon.proc.returncode}: {self.daemon.tail()}"
        if (
            self.daemon is None
            and self.daemon_pid is not None
            and not process_alive(self.daemon_pid)
        ):
            return f"process {self.daemon_pid} is gone"
        return None

    def sample_rss(self) -> int | None:
        if self.daemon_pid is None:
            return None
        rss = process_rss_kb(self.daemon_pid)
        if rss is not None and (self.rss_peak is None or rss > self.rss_peak):
            self.rss_peak = rss
        return rss

    # -- set-up ----------------------------------------------------------------------------------
    async def start_processes(self) -> None:
        args = self.args
        if not args.rpc:
            argv = [sys.executable, "-m", "chimneyd", "--listen", "127.0.0.1:0", "--invariants"]
            argv += ["--log-level", "warning"]
            if args.daemon_config:
                argv += ["--config", args.daemon_config]
            self.daemon = Child("chimneyd", argv, self.logdir)
            m = await self.daemon.wait_line(_DAEMON_READY, SPAWN_READY_S)
            self.rpc_addr = m.group(1)
            self.daemon_pid = self.daemon.proc.pid
        if args.peer:
            self.peer_addrs = [_host_port(p) for p in args.peer]
        else:
            n = max(2, math.ceil(self.plan.connections / CONNS_PER_PEER))
            for i in range(n):
                argv = [sys.executable, "-m", "chimney_client.peer", "echo"]
                argv += ["--listen", "127.0.0.1:0"]
                self.peers.append(Child(f"peer{i}", argv, self.logdir))
            for peer in self.peers:
                m = await peer.wait_line(_PEER_READY, SPAWN_READY_S)
                self.peer_addrs.append((m.group(1), int(m.group(2))))

    async def warm_up(self) -> int | None:
        """A few hundred connections opened, echoed and closed before the soak, so the RSS
        measured after them is the daemon's idle plateau (lazy imports, the event loop's free
        lists, the ring of closed connections' traces, allocator pools) rather than its cold
        start. The soak's own growth is then what `after` shows above it."""
        assert self.control is not None
        n = min(self.plan.connections, WARM_UP_CONNECTIONS)
        c = self.control
        peer = self.peer_addrs[0]

        async def one(seed: int) -> None:
            cid = await c.tcp_connect(*peer)
            data = PatternStream(seed).read(4096)
            got = b""
            send = asyncio.create_task(c.tcp_send(cid, data))
            while len(got) < len(data):
                got += await c.tcp_recv(cid, len(data) - len(got), RECV_TIMEOUT_MS)
            await send
            await c.tcp_close(cid)

        sem = asyncio.Semaphore(50)

        async def bounded(seed: int) -> None:
            async with sem:
                await one(seed)

        await asyncio.gather(*(bounded(s) for s in range(n)))
        await self.wait_drained(10.0)
        await asyncio.sleep(IDLE_TRIM_WAIT_S)  # measured as `after` is: once the daemon trimmed
        samples: list[int] = []
        for _ in range(10):
            rss = process_rss_kb(self.daemon_pid) if self.daemon_pid else None
            if rss is None:
                return None
            samples.append(rss)
            if len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) <= samples[-1] // 100:
                break
            await asyncio.sleep(0.2)
        return samples[-1]

    async def wait_drained(
        self, timeout: float, idle: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, float]:
        assert self.control is not None
        t0 = time.monotonic()
        stats: dict[str, Any] | None = None
        while True:
            try:
                stats = await self.control.stack_stats()
            except ChimneyError:
                stats = None
            if stats is not None and not gauges_left(stats, idle):
                break
            if time.monotonic() - t0 > timeout or self.daemon_gone():
                break
            await asyncio.sleep(0.2)
        return stats, time.monotonic() - t0

    def start_workers(self) -> None:
        p = self.plan
        slots = list(range(p.connections))
        k = max(1, p.workers)
        per_worker_rate = p.rate / k
        for i in range(k):
            cfg = WorkerConfig(
                index=i,
                rpc=self.rpc_addr,
                token=self.args.token,
                peers=tuple(self.peer_addrs),
                slots=tuple(slots[i::k]),
                rate=per_worker_rate,
                payload=p.payload,
                think_ms=p.think_ms,
                upload_share=self.args.upload_share,
                churn=self.args.churn,
                close=self.args.close,
                conns_per_rpc=self.args.conns_per_rpc,
                ops_per_rpc=self.args.ops_per_rpc,
                seed=self.args.seed,
            )
            if p.workers == 0:
                out, inbox = LocalChannel(), LocalChannel()
                self.outs.append(out)
                self.ins.append(inbox)
                self.local_tasks.append(asyncio.create_task(run_worker(cfg, out, inbox)))
            else:
                ctx = mp.get_context("spawn")
                out_q, in_q = ctx.Queue(), ctx.Queue()
                proc = ctx.Process(target=_worker_process, args=(cfg, out_q, in_q), daemon=True)
                proc.start()
                self.procs.append(proc)
                self.outs.append(ProcessChannel(out_q))
                self.ins.append(ProcessChannel(in_q))

    def poll_workers(self) -> None:
        for ch in self.outs:
            for msg in ch.drain():
                w = msg["w"]
                kind = msg["type"]
                if kind == "progress":
                    self.live.counters[w] = msg["c"]
                elif kind == "ready":
                    self.live.ready.add(w)
                elif kind == "ramped":
                    self.live.ramped.add(w)
                    self.live.opened[w] = msg["opened"]
                elif kind == "final":
                    self.live.finals[w] = msg
                    self.live.counters[w] = msg["c"]
                elif kind == "fatal":
                    self.live.fatal[w] = msg["error"]
                    self.live.ramped.add(w)
        for i, proc in enumerate(self.procs):
            if not proc.is_alive() and i not in self.live.finals and i not in self.live.fatal:
                self.live.fatal[i] = f"worker process exited with status {proc.exitcode}"
                self.live.ramped.add(i)

    def broadcast(self, msg: dict[str, Any]) -> None:
        for ch in self.ins:
            ch.put(msg)

    # -- the live line -----------------------------------------------------------------------------
    def status_line(self, phase: str, last: dict[str, float]) -> str:
        t = self.live.total()
        now = time.monotonic()
        dt = max(now - last.get("t", now - 1), 1e-3)
        mb = (t["bytes_verified"] - last.get("bytes", 0)) / dt / 1e6
        ops = (t["ops"] - last.get("ops", 0)) / dt
        last.update(t=now, bytes=t["bytes_verified"], ops=t["ops"])
        rss = self.sample_rss()
        rss_s = f" | daemon {rss / 1024:.0f} MB" if rss else ""
        return (
            f"{phase} | open {t['open_now']}/{self.plan.connections} (offloaded "
            f"{t['offloaded_now']}) | {mb:7.1f} MB/s | {ops:7.0f} ops/s | errors {t['errors']}"
            f" | integrity {t['integrity_errors']}{rss_s}"
        )

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        plan = self.plan
        stats_before: dict[str, Any] | None = None
        stats_after: dict[str, Any] | None = None
        rss_before = rss_after = None
        drained_s = 0.0
        exit_status: int | None = None
        timing: dict[str, float] = {}
        try:
            await self.start_processes()
            self.control = await AsyncClient.connect(
                self.rpc_addr, token=self.args.token, call_timeout=CALL_TIMEOUT_S
            )
            if self.daemon_pid is not None and self.daemon is None:
                limit = process_nofile_limit(self.daemon_pid)
                if limit is not None and plan.connections > limit - FD_RESERVE:
                    self._cap(limit - FD_RESERVE, f"the daemon's open-file limit is {limit}")
            if self.daemon_pid is not None:
                rss_before = await self.warm_up()
            stats_before = await self.control.stack_stats()
            self.say(
                f"chimney-soak: {plan.connections} connections at {plan.rate:g}/s, hold "
                f"{plan.duration:g} s, {max(plan.workers, 1)} worker(s)"
                f"{' in-process' if plan.workers == 0 else ''}, {len(self.peer_addrs)} echo peer(s), "
                f"daemon {self.rpc_addr}; logs in {self.logdir}"
            )
            if plan.fd_note:
                self.say(f"chimney-soak: {plan.fd_note}")
            t_start = time.monotonic()
            self.start_workers()
            await self.drive(t_start, timing)
            self.broadcast({"type": "stop"})
            t_stop = time.monotonic()
            await self.collect(timeout=OP_TIMEOUT_S + 60 + plan.connections / 200)
            timing["close_s"] = time.monotonic() - t_stop
            timing["active_s"] = t_stop - t_start
            stats_after, drained_s = await self.wait_drained(self.args.drain_timeout, stats_before)
            timing["drain_s"] = drained_s
            if self.daemon_pid is not None and not self.daemon_gone():
                await asyncio.sleep(IDLE_TRIM_WAIT_S)
                rss_after = process_rss_kb(self.daemon_pid)
        except (ChimneyError, RuntimeError, OSError) as exc:
            self.crash = self.crash or f"{type(exc).__name__}: {exc}"
        finally:
            gone = self.daemon_gone()
            if gone:
                self.crash = self.crash or gone
            await self.teardown_workers()
            if self.control is not None:
                await self.control.close()
            for peer in self.peers:
                await peer.stop()
            if self.daemon is not None:
                crashed_before = self.daemon.proc.poll() is not None
                exit_status = await self.daemon.stop()
                if crashed_before and not self.crash:
                    self.crash = f"daemon exited with status {exit_status} before the end"
        return self.make_report(
            stats_before, stats_after, rss_before, rss_after, exit_status, timing
        )

    def _cap(self, cap: int, why: str) -> None:
        plan = self.plan
        plan.fd_note = (
            f"open-file limit caps this run: {plan.requested} connections asked, {cap} possible "
            f"({why}; the daemon holds one socket per connection)"
        )
        plan.connections = max(1, cap)

    async def drive(self, t_start: float, timing: dict[str, float]) -> None:
        """Ramp, hold with the fault schedule, live line; returns when the hold is over."""
        plan = self.plan
        k = max(1, plan.workers)
        last: dict[str, float] = {}
        ramp_limit = t_start + 60 + 3 * plan.connections / plan.rate
        phase = "ramp"
        hold_start: float | None = None
        pending = deque(plan.faults)
        layer_tasks: list[asyncio.Task[None]] = []
        next_line = 0.0
        while True:
            await asyncio.sleep(0.1)
            self.poll_workers()
            if self.live.fatal and len(self.live.fatal) == k:
                raise RuntimeError(f"every worker failed: {self.live.fatal}")
            gone = self.daemon_gone()
            if gone:
                self.crash = gone
                raise RuntimeError(f"daemon died: {gone}")
            now = time.monotonic()
            if hold_start is None and (len(self.live.ramped) == k or now > ramp_limit):
                hold_start = now
                timing["ramp_s"] = now - t_start
                phase = "hold"
                t = self.live.total()
                self.say(
                    f"chimney-soak: ramp done in {now - t_start:.1f} s: "
                    f"{sum(self.live.opened.values())} opened"
                    + (f", {t['limit_refusals']} refused by LIMIT" if t["limit_refusals"] else "")
                )
                if t["limit_refusals"]:
                    self.say(
                        "chimney-soak: the daemon's open-file limit capped this run at "
                        f"{t['opened']} connections"
                    )
            if hold_start is not None:
                while pending and now - hold_start >= pending[0].t:
                    layer_tasks.append(asyncio.create_task(self.inject(pending.popleft())))
                if now - hold_start >= plan.duration:
                    timing["hold_s"] = now - hold_start
                    break
            if now >= next_line:
                next_line = now + PROGRESS_EVERY_S
                held = f" {now - hold_start:.0f}/{plan.duration:g}s" if hold_start else ""
                line = self.status_line(phase + held, last)
                if self.progress is not None:
                    self.progress.update(line)
        if layer_tasks:
            await asyncio.gather(*layer_tasks)

    async def inject(self, sf: ScheduledFault) -> None:
        spec = sf.spec
        if spec.scope == "conn":
            # the owner of a connection injects faults on it: pick a worker round-robin
            self.ins[sf.tag % len(self.ins)].put(
                {"type": "fault", "tag": sf.tag, "kind": spec.kind, "params": dict(spec.params)}
            )
            return
        assert self.control is not None
        rec: dict[str, Any] = {"tag": sf.tag, "kind": spec.kind, "injected": False, "t": sf.t}
        self.layer_records.append(rec)
        layer = spec.param("layer")
        try:
            if spec.kind in ("fail_send", "upload_send"):
                rec["fault_id"] = await self.control.fault_inject(
                    "fail_next",
                    layer=layer,
                    call="MiniportTcpOffloadSend",
                    status=spec.param("status"),
                    count=int(spec.param("n")),
                )
                rec["injected"] = True
            elif spec.kind == "nic_failure":
                outage = parse_duration(spec.param("for"))
                rec["fault_id"] = fid = await self.control.fault_inject(
                    "target_failure", layer=layer
                )
                rec["injected"] = True
                self.say(f"chimney-soak: {layer} failed (fault {fid}) for {outage:g} s")
                await asyncio.sleep(outage)
                await self.control.fault_clear(fid)
                rec["cleared"] = True
                self.say(f"chimney-soak: {layer} recovered (fault {fid} cleared)")
        except ChimneyError as exc:
            rec["error"] = str(exc)

    async def collect(self, timeout: float) -> None:
        k = max(1, self.plan.workers)
        deadline = time.monotonic() + timeout
        last: dict[str, float] = {}
        while len(self.live.finals) + len(self.live.fatal) < k:
            if time.monotonic() > deadline:
                self.live.fatal.update(
                    {i: "no final report in time" for i in range(k) if i not in self.live.finals}
                )
                break
            await asyncio.sleep(0.1)
            self.poll_workers()
            if self.progress is not None:
                self.progress.update(self.status_line("closing", last))
        # fault records of layer faults that used fail_next: were they consumed?
        if self.control is not None:
            with contextlib.suppress(ChimneyError):
                active = {f.get("id") for f in await self.control.fault_list()}
                for rec in self.layer_records:
                    if rec["kind"] in ("fail_send", "upload_send") and rec.get("injected"):
                        rec["consumed"] = rec.get("fault_id") not in active
            with contextlib.suppress(ChimneyError):
                await self.control.fault_clear("*")

    async def teardown_workers(self) -> None:
        self.broadcast({"type": "stop"})
        for task in self.local_tasks:
            if not task.done():
                task.cancel()
        if self.local_tasks:
            await asyncio.gather(*self.local_tasks, return_exceptions=True)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def make_report(
        self,
        stats_before: dict[str, Any] | None,
        stats_after: dict[str, Any] | None,
        rss_before: int | None,
        rss_after: int | None,
        exit_status: int | None,
        timing: dict[str, float],
    ) -> dict[str, Any]:
        plan = self.plan
        finals = list(self.live.finals.values())
        counters = self.live.total()
        latencies = [x for f in finals for x in f["latencies"]]
        integrity = [x for f in finals for x in f["integrity"]][:DETAILS_KEPT]
        errors: dict[str, dict[str, Any]] = {}
        for f in finals:
            for kind, e in f["errors"].items():
                agg = errors.setdefault(kind, {"count": 0, "examples": []})
                agg["count"] += e["count"]
                agg["examples"] = (agg["examples"] + e["examples"])[:5]
        for w, why in self.live.fatal.items():
            counters["errors"] += 1
            errors.setdefault("worker", {"count": 0, "examples": []})
            errors["worker"]["count"] += 1
            errors["worker"]["examples"].append({"detail": why, "worker": w})
        conn_records = [r for f in finals for r in f["faults"]]
        faults = summarize_faults(self.layer_records, conn_records, counters)
        for entry in faults:
            consumed = [r.get("consumed") for r in self.layer_records if r["kind"] == entry["kind"]]
            if any(c is not None for c in consumed):
                entry["consumed"] = sum(1 for c in consumed if c)
        slots_with_traffic = sum(f.get("slots_with_traffic", 0) for f in finals)
        connections = {
            "requested": plan.requested,
            "held": plan.connections - counters["limit_refusals"] - counters["connect_failures"],
            "opened_total": counters["opened"],
            "with_traffic": slots_with_traffic,
            "limit_refusals": counters["limit_refusals"],
            "connect_failures": counters["connect_failures"],
            "capped_by_fd_limit": plan.fd_note,
            "fd_limit": plan.fd_limit,
        }
        daemon = {
            "address": self.rpc_addr,
            "pid": self.daemon_pid,
            "spawned": self.daemon is not None,
            "exit_status": exit_status,
            "crashed": self.crash is not None,
            "crash": self.crash,
            "log": str(self.daemon.err_path) if self.daemon is not None else None,
        }
        settings = {
            "connections": plan.connections,
            "rate": plan.rate,
            "duration": plan.duration,
            "payload": plan.payload.describe(),
            "think_ms": plan.think_ms,
            "upload_share": self.args.upload_share,
            "churn": self.args.churn,
            "close": self.args.close,
            "faults": self.args.faults or "",
            "workers": plan.workers,
            "conns_per_rpc": self.args.conns_per_rpc,
            "peers": [f"{h}:{p}" for h, p in self.peer_addrs],
        }
        report = build_report(
            settings=settings,
            counters=counters,
            latencies_ms=latencies,
            integrity_details=integrity,
            error_details=errors,
            faults=faults,
            stats_before=stats_before,
            stats_after=stats_after,
            timing=timing,
            rss_kb={"before": rss_before, "after": rss_after, "peak": self.rss_peak},
            daemon=daemon,
            connections=connections,
        )
        if slots_with_traffic < connections["held"] and not report["failures"]:
            report["failures"].append(
                f"only {slots_with_traffic} of {connections['held']} connections carried traffic"
            )
            report["ok"] = False
        return report


def _host_port(text: str) -> tuple[str, int]:
    target = parse_address(text)
    if isinstance(target, str):
        raise argparse.ArgumentTypeError(f"a peer is HOST:PORT, got {text!r}")
    return target[0], int(target[1])


# ================================================================================================
# output
# ================================================================================================
def render_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    def mb(n: int) -> str:
        return f"{n / 1e6:,.1f} MB"

    conns = report["connections_detail"]
    lat = report["latency_ms"]
    rss = report["rss_kb"]
    t = Table(title="chimney-soak", show_header=False, title_justify="left")
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
        t.add_row("LIMIT", f"{conns['limit_refusals']} connects refused by the daemon's limit")
    tm = report["timing_s"]
    t.add_row(
        "time",
        f"ramp {tm.get('ramp_s', 0)} s, hold {tm.get('hold_s', 0)} s, close "
        f"{tm.get('close_s', 0)} s, drain {tm.get('drain_s', 0)} s",
    )
    t.add_row("ops", f"{report['ops']:,} echo round trips, {report['ops_per_s']:,} ops/s")
    t.add_row(
        "tcp.send latency",
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms ({lat['samples']} samples)",
    )
    t.add_row(
        "bytes",
        f"sent {mb(report['bytes_sent'])}, verified {mb(report['bytes_verified'])} "
        f"({report['throughput_mb_s']} MB/s)",
    )
    t.add_row("integrity errors", str(report["integrity_errors"]))
    t.add_row(
        "errors",
        str(report["errors"])
        + (
            ": " + ", ".join(f"{k} {v['count']}" for k, v in report["error_details"].items())
            if report["error_details"]
            else ""
        ),
    )
    c = report["counters"]
    t.add_row(
        "mix",
        f"planned uploads {c['uploads_planned']} (re-offloaded {c['reoffloads_planned']}), "
        f"churn closes {c['churn_closes']}, re-offloads after faults {c['reoffloads']}",
    )
    for f in report["faults"]:
        t.add_row(f"fault {f['kind']}", ("ok: " if f["ok"] else "NOT OK: ") + _fault_brief(f))
    t.add_row(
        "drain",
        "every gauge back to 0"
        if report["drained"]
        else f"LEFT: {json.dumps(report['left_over'], sort_keys=True)}",
    )
    if rss.get("before"):
        t.add_row(
            "daemon RSS",
            f"before {rss['before'] / 1024:.1f} MB, peak {(rss.get('peak') or 0) / 1024:.1f} MB, "
            f"after drain {(rss.get('after') or 0) / 1024:.1f} MB "
            f"(x{rss.get('after_over_before')}, within 10%: {rss.get('within_10pct')})",
        )
    d = report["daemon"]
    t.add_row(
        "daemon",
        f"{d['address']} pid {d['pid']}"
        + (f", exit {d['exit_status']}" if d["spawned"] else "")
        + (f", CRASHED: {d['crash']}" if d["crashed"] else ""),
    )
    t.add_row("verdict", "PASS" if report["ok"] else "FAIL: " + "; ".join(report["failures"]))
    console.print(t)
    if report["integrity_error_details"]:
        it = Table(title="integrity errors (first bad byte)", title_justify="left")
        cols = ("conn", "offset", "chunk_offset", "chunk_len", "seed", "worker", "offloaded")
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


# ================================================================================================
# command line
# ================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimney-soak",
        description=(
            "Soak chimneyd: N concurrent offloaded connections to echo peers, every byte verified "
            "in order, with workload mix and a fault schedule; a live line, a report, --json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=FAULT_HELP
        + """
payload (--payload): LO:HI log-uniform (1k:64k), a list picked uniformly (1k,4k,64k), or one size.
exit status: 0 when every byte came back intact, every gauge drained to 0 and the daemon stayed up;
1 otherwise (the report says why); 2 for bad arguments.
""",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rpc", metavar="ADDR", help="drive a running daemon at ADDR")
    where.add_argument(
        "--spawn",
        action="store_true",
        help="start our own daemon and peers (default without --rpc)",
    )
    p.add_argument("--token", help="auth token of the daemon (with --rpc)")
    p.add_argument(
        "--daemon-pid", type=int, metavar="PID", help="pid of the --rpc daemon, for RSS and limits"
    )
    p.add_argument("--daemon-config", metavar="FILE", help="--config for the spawned daemon")
    p.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="use these echo peers (repeatable); default: spawn chimney-peer echo processes",
    )
    p.add_argument("--connections", "-n", type=int, default=100, metavar="N")
    p.add_argument(
        "--rate", type=float, metavar="R", help="connections opened per second (default N/8, >=200)"
    )
    p.add_argument(
        "--duration", type=parse_duration, default=30.0, metavar="T", help="hold time (30s)"
    )
    p.add_argument(
        "--payload",
        type=parse_payload,
        default=parse_payload("1k:32k"),
        metavar="DIST",
        help="bytes per echo round trip (default 1k:32k)",
    )
    p.add_argument(
        "--think-ms",
        type=float,
        metavar="MS",
        help="pause between round trips on a connection (default N ms within 50..10000)",
    )
    p.add_argument(
        "--upload-share",
        type=float,
        default=0.0,
        metavar="F",
        help="share of connections uploaded and re-offloaded mid-stream (0..1)",
    )
    p.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="F",
        help="share of connections closed and reopened per minute (0..)",
    )
    p.add_argument("--close", choices=CLOSE_MODES, default="graceful")
    p.add_argument("--faults", metavar="SCHEDULE", help="fault schedule (below)")
    p.add_argument(
        "--workers",
        type=int,
        metavar="K",
        help="client worker processes (0: in this process; default 0 up to 1000 connections, "
        "else 2)",
    )
    p.add_argument("--conns-per-rpc", type=int, default=DEFAULT_CONNS_PER_RPC, metavar="N")
    p.add_argument("--ops-per-rpc", type=int, default=DEFAULT_OPS_PER_RPC, metavar="N")
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", "-q", action="store_true", help="no live line, no table")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the report as JSON ('-': stdout)",
    )
    return p


def make_plan(args: argparse.Namespace, fd_limit: int) -> Plan:
    n = args.connections
    if n < 1:
        raise ValueError("--connections must be at least 1")
    if not 0 <= args.upload_share <= 1:
        raise ValueError("--upload-share must be within 0..1")
    if args.churn < 0:
        raise ValueError("--churn must not be negative")
    if args.ops_per_rpc * 2 + 8 > 256:
        raise ValueError("--ops-per-rpc above 124 would pass the daemon's 256 in-flight limit")
    rate = args.rate if args.rate else max(200.0, n / 8)
    think = args.think_ms if args.think_ms is not None else min(10000.0, max(50.0, float(n)))
    workers = args.workers if args.workers is not None else (0 if n <= 1000 else 2)
    faults = schedule_faults(parse_faults(args.faults), args.duration)
    plan = Plan(n, n, rate, args.duration, think, workers, args.payload, faults, None, fd_limit)
    if not args.rpc and n > fd_limit - FD_RESERVE:
        # the spawned daemon raises itself to the same hard limit we have
        cap = fd_limit - FD_RESERVE
        plan.fd_note = (
            f"open-file limit caps this run: {n} connections asked, {cap} possible (hard limit "
            f"{fd_limit} per process; the daemon holds one socket per connection)"
        )
        plan.connections = cap
    return plan


async def _amain(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    soak = Soak(args, plan)
    if not args.quiet and sys.stderr.isatty():
        soak.progress = ProgressLine()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
    try:
        return await soak.run()
    finally:
        if soak.progress is not None:
            soak.progress.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _soft, hard = raise_nofile_limit()
    try:
        plan = make_plan(args, hard)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        report = runner(_amain(args, plan))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chimney-soak: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        from rich.console import Console

        render_report(report, Console())
    if args.json:
        text = json.dumps(report, indent=2, sort_keys=True, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if report["ok"] else 1


__all__ = [
    "FAULT_KINDS",
    "FaultSpec",
    "PayloadDist",
    "ScheduledFault",
    "build_report",
    "gauges_left",
    "main",
    "merge_counters",
    "parse_duration",
    "parse_faults",
    "parse_payload",
    "parse_size",
    "percentiles",
    "schedule_faults",
    "summarize_faults",
    "verdict",
]

if __name__ == "__main__":
    sys.exit(main())
