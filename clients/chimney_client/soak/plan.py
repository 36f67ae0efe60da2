"""What a run will do, decided from the options before anything starts."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ..protocol import parse_address
from .faults import ScheduledFault, parse_faults, schedule_faults
from .limits import DAEMON_MAX_IN_FLIGHT, DEFAULT_CONNS_PER_RPC, FD_RESERVE
from .parsing import PayloadDist
from .shards import conns_per_rpc


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
    shards: int = 1  # engine processes of the daemon (each with its own open-file limit)
    conns_per_rpc: int = DEFAULT_CONNS_PER_RPC


def parse_shards(value: str | None) -> int:
    """`--shards`: a positive number, or auto (one per CPU, as chimneyd counts them)."""
    if value is None:
        return 1
    if value == "auto":
        return len(os.sched_getaffinity(0)) or 1
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--shards must be a number or auto, got {value!r}") from None
    if n < 1:
        raise ValueError("--shards must be at least 1")
    return n


def rpc_address(text: str) -> tuple[str, int] | str:
    """`--rpc`: what the client library dials; the error names the option and the value."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise ValueError(f"--rpc {text!r}: {exc}") from None


def peer_address(text: str) -> tuple[str, int]:
    """`--peer`: HOST:PORT of an echo peer (a TCP address: the daemon dials it)."""
    try:
        target = parse_address(text)
    except ValueError as exc:
        raise ValueError(f"--peer {text!r}: {exc}") from None
    if isinstance(target, str):
        raise ValueError(f"--peer {text!r}: a peer is HOST:PORT, not a unix socket")
    return target[0], int(target[1])


def make_plan(args: argparse.Namespace, fd_limit: int) -> Plan:
    # the addresses are dialled only after set-up: a typo must not wait for it, nor end in a
    # traceback
    if args.rpc:
        rpc_address(args.rpc)
    for peer in args.peer or ():
        peer_address(peer)
    n = args.connections
    if n < 1:
        raise ValueError("--connections must be at least 1")
    if not 0 <= args.upload_share <= 1:
        raise ValueError("--upload-share must be within 0..1")
    if args.churn < 0:
        raise ValueError("--churn must not be negative")
    if args.ops_per_rpc < 1 or (args.conns_per_rpc is not None and args.conns_per_rpc < 1):
        raise ValueError("--ops-per-rpc and --conns-per-rpc must be at least 1")
    if args.ops_per_rpc * 2 + 8 > DAEMON_MAX_IN_FLIGHT:
        raise ValueError("--ops-per-rpc above 124 would pass the daemon's 256 in-flight limit")
    rate = args.rate if args.rate else max(200.0, n / 8)
    think = args.think_ms if args.think_ms is not None else min(10000.0, max(50.0, float(n)))
    workers = args.workers if args.workers is not None else (0 if n <= 1000 else 2)
    specs = parse_faults(args.faults)
    if args.peer and any(s.kind == "peer_reset" for s in specs):
        raise ValueError(
            "peer_reset needs the soak's own echo peers (they take the reset order): drop --peer, "
            "or use daemon_reset"
        )
    if args.rpc and getattr(args, "shards", None):
        raise ValueError("--shards is for the spawned daemon (with --rpc it is found)")
    shards = parse_shards(getattr(args, "shards", None))
    faults = schedule_faults(specs, args.duration)
    plan = Plan(n, n, rate, args.duration, think, workers, args.payload, faults, None, fd_limit)
    set_shards(plan, shards, args.conns_per_rpc)
    # the spawned daemon raises itself to the same hard limit we have, in every shard
    room = shards * (fd_limit - FD_RESERVE)
    if not args.rpc and n > room:
        each = "" if shards == 1 else f" in each of {shards} shards"
        cap_to(
            plan,
            room,
            f"hard limit {fd_limit} per process{each}; the daemon holds one socket per connection",
        )
    return plan


def set_shards(plan: Plan, shards: int, asked_conns_per_rpc: int | None) -> None:
    """The daemon has `shards` shards: spread the RPC clients over them."""
    plan.shards = shards
    plan.conns_per_rpc = conns_per_rpc(
        plan.connections, shards, asked_conns_per_rpc, DEFAULT_CONNS_PER_RPC
    )


def cap_to(plan: Plan, cap: int, why: str) -> None:
    plan.fd_note = (
        f"open-file limit caps this run: {plan.requested} connections asked, {cap} possible ({why})"
    )
    plan.connections = max(1, cap)
