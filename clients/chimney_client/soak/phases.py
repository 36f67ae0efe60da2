"""The coordinator's phases around the workers and its view of the daemon: spawn the daemon and
the echo peers, find its pid, warm it up to its idle plateau, watch its health (gone, or a new
layer error), wait for its gauges to drain, and assemble the report."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..aio import AsyncClient
from ..errors import ChimneyError
from ..stream import PatternStream, Verifier
from .limits import (
    CONNS_PER_PEER,
    DETAILS_KEPT,
    FD_RESERVE,
    IDLE_TRIM_WAIT_S,
    RECV_TIMEOUT_MS,
    SPAWN_READY_S,
    WARM_UP_CONNECTIONS,
)
from .outcomes import judge
from .plan import Plan, cap_to, peer_address, set_shards
from .procs import (
    Child,
    listener_pid,
    parent_pid,
    process_alive,
    process_nofile_limit,
    process_rss_kb,
)
from .report import build_report, gauges_left, state_times
from .shards import connections_per_shard, shard_count, shard_pids
from .state import OBS_LISTS

_DAEMON_READY = re.compile(r"chimneyd listening on (\S+)")
_PEER_READY = re.compile(r"listening on (\S+):(\d+) control (\S+):(\d+)")


class Phases:
    args: argparse.Namespace
    plan: Plan
    daemon: Child | None
    peers: list[Child]
    peer_addrs: list[tuple[str, int]]
    peer_controls: list[tuple[str, int] | None]
    rpc_addr: str
    daemon_pid: int | None
    control: AsyncClient | None
    logdir: Path
    live: Any
    layer_records: list[dict[str, Any]]
    crash: str | None
    rss_peak: int | None
    interrupted: asyncio.Event
    broken: str | None
    health_base: dict[str, int]
    bugs_planted: int
    shard_pids: dict[int, int]  # a daemon of several shards: each shard's process
    rss_shards: dict[int, dict[str, int | None]]  # per shard: before, after, peak
    spread: dict[int, int]  # connections per shard at the end of the ramp
    warm_up_damage: list[dict[str, Any]]  # warm-up echoes that came back wrong
    hold_started: float | None  # monotonic: what `--faults KIND@Ts` counts from

    # -- the daemon's health -----------------------------------------------------------------
    def daemon_gone(self) -> str | None:
        if self.daemon is not None and self.daemon.proc.poll() is not None:
            return f"exit status {self.daemon.proc.returncode}: {self.daemon.tail()}"
        if (
            self.daemon is None
            and self.daemon_pid is not None
            and not process_alive(self.daemon_pid)
        ):
            return f"process {self.daemon_pid} is gone"
        for shard, pid in sorted(self.shard_pids.items()):
            if not process_alive(pid):
                return f"shard {shard} (pid {pid}) is gone"
        return None

    def sample_rss(self) -> int | None:
        if self.shard_pids:
            total = 0
            for shard, pid in self.shard_pids.items():
                rss = process_rss_kb(pid)
                if rss is None:
                    return None
                mine = self.rss_shards.setdefault(shard, {})
                mine["peak"] = max(mine.get("peak") or 0, rss)
                total += rss
            self.rss_peak = max(self.rss_peak or 0, total)
            return total
        if self.daemon_pid is None:
            return None
        rss = process_rss_kb(self.daemon_pid)
        if rss is not None and (self.rss_peak is None or rss > self.rss_peak):
            self.rss_peak = rss
        return rss

    def learn_shards(self, info: dict[str, Any]) -> None:
        """A daemon of several shards: their processes, the spread of the RPC clients over them,
        and (a daemon we did not start) the open-file limit of each."""
        self.shard_pids = shard_pids(info)
        count = shard_count(info)
        if count != self.plan.shards:
            set_shards(self.plan, count, self.args.conns_per_rpc)
        if self.daemon is None and self.shard_pids:
            limits = [process_nofile_limit(pid) for pid in self.shard_pids.values()]
            if all(limit is not None for limit in limits):
                room = sum(int(limit or 0) - FD_RESERVE for limit in limits)
                if self.plan.connections > room:
                    cap_to(self.plan, room, f"the open-file limits of its {count} shards")

    async def note_spread(self) -> None:
        """Connections per shard as the daemon counts them, at the end of the ramp."""
        if self.control is None or not self.shard_pids:
            return
        try:
            self.spread = connections_per_shard(await self.control.stack_stats())
        except ChimneyError:
            pass

    def find_daemon_pid(self) -> None:
        """--rpc without --daemon-pid: find who listens on the RPC port (loopback only)."""
        if self.daemon_pid is not None or self.daemon is not None:
            return
        host, _, port = self.rpc_addr.rpartition(":")
        if port.isdigit() and host.strip("[]") in ("127.0.0.1", "localhost", "::1"):
            pid = listener_pid(int(port))
            if pid is not None and pid in self.shard_pids.values():
                # with shards only the shard processes listen (SO_REUSEPORT): the daemon is
                # their parent, the supervisor, which the report names and watches
                pid = parent_pid(pid) or pid
            self.daemon_pid = pid

    async def daemon_broken(self) -> str | None:
        """A layer error or invariant violation the daemon reports now and did not before the
        run: the daemon is broken, and what follows would only hide the first fault."""
        if self.control is None:
            return None
        try:
            stats = await asyncio.wait_for(self.control.stack_stats(), 5.0)
        except (ChimneyError, TimeoutError):
            return None  # a busy daemon; a dead one is caught by daemon_gone
        engine = stats.get("engine") or {}
        for key in ("layer_errors", "invariant_violations"):
            now = engine.get(key) or 0
            base = self.health_base.setdefault(key, now)
            # each bug a raise_next planted counts once in each (spec §6.3); the verdict checks
            # they match exactly
            if now > base + self.bugs_planted:
                new = now - base - self.bugs_planted
                planted = f" beyond the {self.bugs_planted} planted" if self.bugs_planted else ""
                return f"the daemon reports {new} new {key.replace('_', ' ')}{planted}"
        for part in stats.get("shards") or []:
            shard, pid = part.get("shard"), (part.get("process") or {}).get("pid")
            was = self.shard_pids.get(shard)
            if was is not None and (part.get("state") != "running" or pid != was):
                self.crash = self.crash or f"shard {shard} (pid {was}) died and was restarted"
                return self.crash
        return None

    # -- set-up ----------------------------------------------------------------------------------
    async def start_processes(self) -> None:
        """The daemon and the echo peers (unless given), booting side by side: each waits for
        its own ready line, not for the one started before it."""
        args = self.args
        daemon_ready = None
        if not args.rpc:
            argv = [sys.executable, "-m", "chimneyd", "--listen", "127.0.0.1:0", "--invariants"]
            # a soak killed outright (SIGKILL) cannot stop its daemon: it stops by itself
            argv += ["--log-level", "warning", "--parent-pid", str(os.getpid())]
            if args.daemon_config:
                argv += ["--config", args.daemon_config]
            if getattr(args, "shards", None):
                argv += ["--shards", str(args.shards)]
            self.daemon = Child("chimneyd", argv, self.logdir)
            self.daemon_pid = self.daemon.proc.pid
            daemon_ready = self.daemon
        if args.peer:
            self.peer_addrs = [peer_address(p) for p in args.peer]
            self.peer_controls = [None] * len(self.peer_addrs)
        else:
            n = max(2, math.ceil(self.plan.connections / CONNS_PER_PEER))
            for i in range(n):
                argv = [sys.executable, "-m", "chimney_client.soak.echo_peer", "--listen"]
                # a soak killed outright (SIGKILL) cannot stop its peers: they stop by themselves
                argv += ["127.0.0.1:0", "--parent-pid", str(os.getpid())]
                self.peers.append(Child(f"peer{i}", argv, self.logdir))
        if daemon_ready is not None:
            m = await daemon_ready.wait_line(_DAEMON_READY, SPAWN_READY_S)
            self.rpc_addr = m.group(1)
        for peer in self.peers:
            m = await peer.wait_line(_PEER_READY, SPAWN_READY_S)
            self.peer_addrs.append((m.group(1), int(m.group(2))))
            self.peer_controls.append((m.group(3), int(m.group(4))))

    async def warm_up(self, measure: bool = True) -> int | None:
        """A few hundred connections opened, echoed and closed before the soak, so the RSS
        measured after them is the daemon's idle plateau (lazy imports, the event loop's free
        lists, the ring of closed connections' traces, allocator pools) rather than its cold
        start. The soak's own growth is then what `after` shows above it. A daemon of several
        shards is warmed up and measured shard by shard (a client on each). `measure` False
        (`--no-rss`): warmed up alike, then neither waited for nor measured."""
        assert self.control is not None
        clients = await self.clients_on_every_shard()
        try:
            await asyncio.gather(
                *(
                    self.warm(c, min(self.plan.connections, WARM_UP_CONNECTIONS))
                    for c in clients.values()
                )
            )
        finally:
            for c in clients.values():
                if c is not self.control:
                    await c.close()
        await self.wait_drained(10.0)
        if not measure:
            return None
        await asyncio.sleep(IDLE_TRIM_WAIT_S)  # measured as `after` is: once the daemon trimmed
        if self.shard_pids:
            total = 0
            for shard, pid in sorted(self.shard_pids.items()):
                rss = await self.plateau(pid)
                if rss is None:
                    return None
                self.rss_shards.setdefault(shard, {})["before"] = rss
                total += rss
            return total
        return await self.plateau(self.daemon_pid) if self.daemon_pid else None

    async def plateau(self, pid: int) -> int | None:
        """RSS of `pid` once three samples agree within 1%."""
        samples: list[int] = []
        for _ in range(10):
            rss = process_rss_kb(pid)
            if rss is None:
                return None
            samples.append(rss)
            if len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) <= samples[-1] // 100:
                break
            await asyncio.sleep(0.2)
        return samples[-1]

    def rss_after(self) -> int | None:
        """RSS after the drain: the daemon's, or every shard's (kept per shard) summed."""
        if not self.shard_pids:
            return process_rss_kb(self.daemon_pid) if self.daemon_pid else None
        total = 0
        for shard, pid in sorted(self.shard_pids.items()):
            rss = process_rss_kb(pid)
            if rss is None:
                return None
            self.rss_shards.setdefault(shard, {})["after"] = rss
            total += rss
        return total

    async def clients_on_every_shard(self) -> dict[int, AsyncClient]:
        """The control client, and one more client on each other shard of the daemon (the
        kernel picks the shard: dial until each has one, bounded)."""
        assert self.control is not None
        first = int((await self.control.stack_info()).get("shard", 0))
        found: dict[int, AsyncClient] = {first: self.control}
        for _ in range(64 * self.plan.shards):
            if len(found) >= self.plan.shards:
                break
            c = await AsyncClient.connect(self.rpc_addr, token=self.args.token, call_timeout=60.0)
            shard = int((await c.stack_info()).get("shard", 0))
            if shard in found:
                await c.close()
            else:
                found[shard] = c
        return found

    async def warm(self, c: AsyncClient, n: int) -> None:
        peer = self.peer_addrs[0]

        async def one(seed: int) -> None:
            cid = await c.tcp_connect(*peer)
            data = PatternStream(seed).read(4096)

            async def back() -> None:
                got = b""
                while len(got) < len(data):
                    got += await c.tcp_recv(cid, len(data) - len(got), RECV_TIMEOUT_MS)
                # checked like every other echo: a byte damaged here is an integrity error too
                bad = Verifier(seed).check(got)
                if bad is not None:
                    self.warm_up_damage.append(
                        {"conn": cid, "seed": seed, "offset": bad, "chunk_offset": 0,
                         "chunk_len": len(got), "worker": None, "state": "warm-up"}
                    )  # fmt: skip

            await asyncio.gather(c.tcp_send(cid, data), back())
            await c.tcp_close(cid)

        sem = asyncio.Semaphore(50)

        async def bounded(seed: int) -> None:
            async with sem:
                await one(seed)

        await asyncio.gather(*(bounded(s) for s in range(n)))

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

    def shards_report(self, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The spread over the shards and each shard's RSS (None: a daemon of one process)."""
        if not self.shard_pids:
            return None
        clients: dict[str, int] = {}
        for f in finals:
            for shard, n in (f.get("rpc_shards") or {}).items():
                clients[str(shard)] = clients.get(str(shard), 0) + int(n)
        return {
            "count": self.plan.shards,
            "pids": {str(k): v for k, v in sorted(self.shard_pids.items())},
            "connections_at_hold": {str(k): v for k, v in sorted(self.spread.items())},
            "rpc_clients": dict(sorted(clients.items())),
            "redials": sum(int(f.get("redials") or 0) for f in finals),
            "rss_kb": {str(k): dict(v) for k, v in sorted(self.rss_shards.items())},
        }

    def slowest_send(self, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The slowest `tcp.send` of every worker's (not of the sample): its time, connection,
        and when it was asked, in seconds into the hold (`--faults KIND@Ts` counts from there;
        negative: during the ramp)."""
        worst = max((f["slowest"] for f in finals if f.get("slowest")), default=None)
        if not worst or worst[0] <= 0:
            return None
        ms, asked, conn = worst
        into = None if self.hold_started is None else round(asked - self.hold_started, 2)
        return {"ms": round(ms, 3), "conn": conn, "asked_into_hold_s": into}

    def make_report(
        self,
        stats_before: dict[str, Any] | None,
        stats_after: dict[str, Any] | None,
        rss_before: int | None,
        rss_after: int | None,
        exit_status: int | None,
        timing: dict[str, float],
    ) -> dict[str, Any]:
        plan, args = self.plan, self.args
        finals = list(self.live.finals.values())
        counters = self.live.total()
        counters["integrity_errors"] += len(self.warm_up_damage)
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
        obs = {name: [r for f in finals for r in f["obs"][name]] for name in OBS_LISTS}
        faults, host_mode = judge(self.layer_records, [r for f in finals for r in f["faults"]], obs)
        state_s: dict[str, float] = {}
        by_cause: dict[str, float] = {}
        for f in finals:
            for key, v in f["state_s"].items():
                state_s[key] = state_s.get(key, 0.0) + v
            for key, v in f["host_s_by_cause"].items():
                by_cause[key] = by_cause.get(key, 0.0) + v
        connections = {
            "requested": plan.requested,
            "held": slots_held(plan.connections, plan.workers, finals, counters),
            "opened_total": counters["opened"],
            "with_traffic": sum(f.get("slots_with_traffic", 0) for f in finals),
            "limit_refusals": counters["limit_refusals"],
            "limit_refusals_at_reopen": counters["limit_refusals_at_reopen"],
            "connect_failures": counters["connect_failures"],
            "capped_by_fd_limit": plan.fd_note,
            "fd_limit": plan.fd_limit,
        }
        daemon = {
            "address": self.rpc_addr,
            "pid": self.daemon_pid,
            "spawned": self.daemon is not None,
            "peers_spawned": bool(self.peers),
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
            "upload_share": args.upload_share,
            "churn": args.churn,
            "close": args.close,
            "settle_s": args.settle,
            "faults": args.faults or "",
            "workers": plan.workers,
            "conns_per_rpc": plan.conns_per_rpc,
            "shards": plan.shards,
            "peers": [f"{h}:{p}" for h, p in self.peer_addrs],
        }
        return build_report(
            settings=settings,
            counters=counters,
            latencies_ms=[x for f in finals for x in f["latencies"]],
            slowest_send=self.slowest_send(finals),
            integrity_details=[
                *self.warm_up_damage,
                *(x for f in finals for x in f["integrity"]),
            ][:DETAILS_KEPT],
            error_details=errors,
            faults=faults,
            host_mode=host_mode,
            states=state_times(state_s, by_cause),
            stats_before=stats_before,
            stats_after=stats_after,
            timing=timing,
            rss_kb={"before": rss_before, "after": rss_after, "peak": self.rss_peak},
            shards=self.shards_report(finals),
            daemon=daemon,
            connections=connections,
            interrupted=self.interrupted.is_set(),
            stopped_early=self.broken,
            allow_rss_growth=args.allow_rss_growth,
            rss_measured=not args.no_rss,
            allow_fd_cap=args.allow_fd_cap,
            fail_not_judged=args.fail_not_judged,
        )


def slots_held(
    connections: int, workers: int, finals: list[dict[str, Any]], counters: dict[str, Any]
) -> int:
    """The report's `held`: the slots but those whose first connect was refused or failed. A
    reopen refused or failed later leaves its slot held (its traffic counted), where counting
    the failed attempts took it out; a slot the stop came before is held, and carried none.
    Without every worker's final count, the failed attempts are all that is known."""
    if len(finals) == max(1, workers) and all("slots_unopened" in f for f in finals):
        return connections - sum(int(f["slots_unopened"]) for f in finals)
    # a refused reopen leaves its slot held: only the rest may have been first connects
    refused = int(counters["limit_refusals"]) - int(counters.get("limit_refusals_at_reopen", 0))
    return connections - refused - int(counters["connect_failures"])
