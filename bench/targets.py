"""Every figure the bench prints, with its target: the one table to change when targets move.

A figure is a ratio of two things measured side by side in one run (emulated / baseline). Each
row says how the ratio is judged: `op` and `bound` (`">="` for "at least", `"<="` for "at
most"), or no bound at all ("reported, no target"): measured and shown for context, never
claimed as met or missed. A section can only make figures whose key is in this table, so a new
figure cannot slip into the output unjudged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Op = Literal[">=", "<="]


@dataclass(frozen=True, slots=True)
class Target:
    """How one figure's ratio is judged, and where that target came from."""

    op: Op | None
    bound: float | None
    source: str  # why this target: CURRENT, HISTORY, or "reported, no target"

    @property
    def judged(self) -> bool:
        return self.op is not None and self.bound is not None

    def met_by(self, ratio: float) -> bool:
        if self.op is None or self.bound is None:
            raise ValueError("a reported figure has no target to meet")
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    def label(self) -> str:
        if self.op is None or self.bound is None:
            return "—"
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {self.bound:g}x"


def at_least(bound: float, source: str) -> Target:
    return Target(">=", bound, source)


def at_most(bound: float, source: str) -> Target:
    return Target("<=", bound, source)


def reported(source: str = "reported, no target") -> Target:
    return Target(None, None, source)


#: where a target came from, for the `from` column of `--targets`: set for this version, or the
#: bound the first benchmarks of the project met, kept since
CURRENT = "set for this version"
HISTORY = "kept from the first benchmarks"

# key → target. Keys are `section.figure`; a section names its figures with these keys.
TARGETS: dict[str, Target] = {
    # -- hops: ns per hand-off, broker / asyncio.Queue (lower is better) -------------------------
    "hops.post.single": at_most(3.0, HISTORY),
    "hops.post.burst": at_most(3.0, HISTORY),
    "hops.post.batch": reported(),
    "hops.io.single": at_most(3.0, HISTORY),
    "hops.io.burst": at_most(3.0, HISTORY),
    "hops.io.batch": reported(),
    # the daemon records every hop in the connection's trace: the same round trip with it on
    "hops.io_traced.single": at_most(3.0, HISTORY),
    "hops.io_traced.burst": at_most(3.0, HISTORY),
    "hops.io_traced.batch": reported(),
    # -- bulk: MB/s, emulated / raw uvloop loopback ------------------------------------------------
    # sink and sender on one core (the baseline repeats there, bench/bulk_bench.py `placements`)
    "bulk.1im": at_least(0.6, CURRENT),
    "bulk.1im.two_cores": reported(),
    # the IM curve: MB/s with n IM layers / with 0
    "bulk.im_curve.1": reported(),
    "bulk.im_curve.2": reported(),
    "bulk.im_curve.4": at_least(0.8, CURRENT),
    # -- rpc: daemon / minimal uvloop msgpack-RPC echo --------------------------------------------
    "rpc.ping.1": at_least(0.5, HISTORY),
    "rpc.ping.64": at_least(0.8, CURRENT),
    "rpc.tcp_send": reported(),
    # -- echo: verified MB/s, via the daemon / straight to the peers -------------------------------
    "echo.100": at_least(0.2, CURRENT),
    "echo.1000": at_least(0.2, CURRENT),
    "echo.other": reported("reported, no target: a count of connections the targets do not name"),
    # the same daemon windows / a do-nothing RPC proxy (bench.floor_proxy): the emulation's share
    "echo.floor.100": reported("reported, no target: where the echo's cost goes"),
    "echo.floor.1000": reported("reported, no target: where the echo's cost goes"),
    "echo.floor.other": reported(
        "reported, no target: a count of connections the targets do not name"
    ),
    # -- observe: the daemon with the web view and /metrics listening, no browser attached / the
    # same daemon with both off (ping req/s, verified echo MB/s): watching must cost no more than
    # the noise of a shared machine
    "observe.ping.64": at_least(0.95, CURRENT),
    "observe.echo.100": at_least(0.95, CURRENT),
    "observe.echo.other": reported(
        "reported, no target: a count of connections the targets do not name"
    ),
    # -- mux: a MUX over n NICs / one pass-through IM over one NIC, 8 connections ---------------
    "mux.mbps.1": at_least(0.8, CURRENT),
    "mux.mbps.2": at_least(0.8, CURRENT),
    "mux.mbps.4": at_least(0.8, CURRENT),
    "mux.p99.1": reported("reported, no target: latency, lower is better"),
    "mux.p99.2": reported("reported, no target: latency, lower is better"),
    "mux.p99.4": reported("reported, no target: latency, lower is better"),
    # -- memory: RSS delta per idle offloaded connection, daemon / bare uvloop server --------------
    "memory.1000": reported("reported, no target: judged at 10k, where fixed costs fade"),
    "memory.5000": reported("reported, no target: judged at 10k, where fixed costs fade"),
    "memory.10000": at_most(4.0, CURRENT),
    "memory.other": reported("reported, no target: a count of connections the targets do not name"),
    # -- shards: req/s and verified MB/s, the daemon with 2 shards / with 1 ------------------------
    # reported: on a 2-core machine the bench's own client takes a core, so the second shard's
    # gain is bounded by the CPU left to it; the shards' point here is capacity (fds)
    "shards.ping": reported(),
    "shards.echo": reported(),
}


def count_key(prefix: str, n: int) -> str:
    """`prefix.n` when the table has a row for that count of connections, else `prefix.other`
    (--smoke and hand-picked counts are reported, not judged)."""
    key = f"{prefix}.{n}"
    return key if key in TARGETS else f"{prefix}.other"


def target_for(key: str) -> Target:
    """The target of figure `key`; a key missing from TARGETS is a bench bug, not a figure."""
    try:
        return TARGETS[key]
    except KeyError:
        raise KeyError(f"figure {key!r} has no row in bench/targets.py TARGETS") from None
