"""`chimney-soak`: many concurrent offloaded connections through chimneyd, verified byte by byte.

Shape of a run (one coordinator, K client workers, a daemon, P echo peers):

1. The coordinator starts the daemon and echo peers (`--spawn`, each in its own session) or uses
   a running daemon (`--rpc`), raises its open-file limit and caps the run when the limit would
   be hit (which fails the run unless `--allow-fd-cap`).
2. Workers (in-process, or K processes on uvloop) ramp their share of the connections at
   `--rate`; each connection streams its own seeded pattern to an echo peer and verifies every
   returned byte in order. The state of each connection (offloaded, host, uploading) is followed
   from the daemon's events, with the time spent in each.
3. During the hold the coordinator runs the fault schedule: layer faults itself, connection faults
   through the worker that owns the connection, `peer_reset` through the echo peer.
4. Stop: connections whose fault outcome is still pending go on a little (settle); then every
   connection is closed, the daemon's gauges must drain to zero, and the verdict judges what the
   run claims: bytes, offload (every stretch out of offload explained by a fault), each fault's
   outcome, drain, memory and limits.

Modules, in the order of a run: `limits` (every bound, named), `parsing` and `faults` (options
and the fault vocabulary), `plan`; `coordinator` with `phases` (processes, warm-up, drain, report
assembly) and `layer_faults`; `worker` (`state` → `traffic` → `conn_faults`: bookkeeping and
time per state, echo traffic, connection faults) over `conn`; `echo_peer` (the peer that takes
reset orders) and `peer_control`; `outcomes` and `report` (judging); `render` and `cli`.
"""

from __future__ import annotations

from .cli import build_parser, main
from .faults import (
    ALIASES,
    FAULT_KINDS,
    FaultSpec,
    ScheduledFault,
    canonical_kind,
    parse_faults,
    schedule_faults,
)
from .outcomes import judge
from .parsing import PayloadDist, parse_duration, parse_payload, parse_size
from .report import (
    COUNTER_FIELDS,
    build_report,
    gauges_left,
    merge_counters,
    percentiles,
    state_times,
    verdict,
)

__all__ = [
    "ALIASES",
    "COUNTER_FIELDS",
    "FAULT_KINDS",
    "FaultSpec",
    "PayloadDist",
    "ScheduledFault",
    "build_parser",
    "build_report",
    "canonical_kind",
    "gauges_left",
    "judge",
    "main",
    "merge_counters",
    "parse_duration",
    "parse_faults",
    "parse_payload",
    "parse_size",
    "percentiles",
    "schedule_faults",
    "state_times",
    "verdict",
]
