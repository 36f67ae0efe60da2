"""One client worker (in the coordinator's process, or its own on uvloop): opens its share of
the connections at the ramp rate, runs echo round trips on each, injects connection faults when
told to, lets pending fault outcomes play out after the hold, closes everything and reports."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from typing import Any

from ..aio import AsyncClient
from ..errors import ChimneyError
from .channels import Channel, ProcessChannel
from .conn import Conn, SlotBroken, outcome_done, watch
from .conn_faults import ConnFaults
from .limits import (
    CALL_TIMEOUT_S,
    CLOSE_ALL_S,
    COMMAND_POLL_S,
    INTERRUPT_GRACE_S,
    PROGRESS_EVERY_S,
    WIND_DOWN_S,
)
from .procs import raise_nofile_limit
from .shards import dial_balanced
from .state import Rpc


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


class Worker(ConnFaults):
    async def run(self) -> None:
        cfg = self.cfg
        nrpc = max(1, math.ceil(len(cfg.slots) / cfg.conns_per_rpc))

        async def dial() -> AsyncClient:
            return await AsyncClient.connect(cfg.rpc, token=cfg.token, call_timeout=CALL_TIMEOUT_S)

        try:
            where: list[int | None]
            if cfg.shards > 1:
                clients, self.rpc_shards, self.redials, landed = await dial_balanced(
                    nrpc, cfg.shards, dial, cfg.balance_shards
                )
                where = list(landed)
            else:
                clients = [await dial() for _ in range(nrpc)]
                where = [None] * len(clients)
            for client, shard in zip(clients, where, strict=True):
                client.on_tcp_event(self.on_event)
                await client.events_subscribe("*")
                self.rpcs.append(Rpc(client, cfg.ops_per_rpc, shard))
        except ChimneyError as exc:
            self.out.put({"type": "fatal", "w": cfg.index, "error": str(exc)})
            return
        self.out.put({"type": "ready", "w": cfg.index})
        ticker = asyncio.create_task(self.ticker())
        start = time.monotonic()
        for i, slot in enumerate(cfg.slots):
            delay = start + i / cfg.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                break
            self.tasks.append(asyncio.create_task(self.run_slot(i, slot)))
            await asyncio.sleep(0)
        # wait until every slot has opened (or failed to)
        c = self.c
        while not self.stopping and not self.ramp_done():
            await asyncio.sleep(0.05)
        self.out.put({"type": "ramped", "w": cfg.index, "opened": c["opened"]})
        while not self.stopping:
            await asyncio.sleep(0.05)
        await self.wind_down()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for task in list(self.fault_tasks):
            task.cancel()
        await asyncio.gather(*self.fault_tasks, return_exceptions=True)
        await self.close_controls()
        for rpc in self.rpcs:
            await rpc.client.close()
        self.finish_fault_records()
        self.out.put(self.final())

    async def wind_down(self) -> None:
        """Let the slots finish (settling pending outcomes first, unless told to stop fast,
        which may come while we wait); what is still busy then is reported, cancelled and
        closed (bounded: a broken daemon may not answer) so the daemon's tables can drain."""
        pending: set[asyncio.Task[None]] = set(self.tasks)
        while pending:
            fast = self.fast_stop
            end = self.fast_at + INTERRUPT_GRACE_S if fast else self.stop_at + WIND_DOWN_S
            left = end - time.monotonic()
            if left <= 0:
                break
            _done, pending = await asyncio.wait(pending, timeout=min(left, 0.5))
        if pending and not self.fast_stop:
            await self.report_stuck(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)  # every outcome retrieved
        if self.by_id:
            closes = [self.rpc_of(conn).client.tcp_close(conn.cid) for conn in self.by_id.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*closes, return_exceptions=True), CLOSE_ALL_S)

    async def report_stuck(self, pending: set[asyncio.Task[None]]) -> None:
        """Say where each connection still busy at stop is waiting, and what the daemon says
        about it, before cancelling: a hang must be diagnosable from the report alone."""
        where: dict[str, int] = {}
        for task in pending:
            path = ">".join(awaiting(task.get_coro())[-4:])
            where[path] = where.get(path, 0) + 1
        states = []
        for conn in list(self.by_id.values())[:3]:
            try:
                client = self.rpc_of(conn).client
                info = await asyncio.wait_for(client.tcp_info(conn.cid), 2.0)
                hops = await asyncio.wait_for(client.trace_get(conn.cid, 24), 2.0)
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

    def count_live(self) -> None:
        self.c["open_now"] = len(self.by_id)
        self.c["offloaded_now"] = sum(1 for c in self.by_id.values() if c.offloaded)

    async def ticker(self) -> None:
        """Commands from the coordinator, read every `COMMAND_POLL_S` (a stop, or a fault's
        order, waits no longer); progress and churn marks every `PROGRESS_EVERY_S`."""
        last_churn = time.monotonic()
        next_progress = 0.0
        while True:
            await asyncio.sleep(COMMAND_POLL_S)
            for msg in self.inbox.drain():
                if msg["type"] == "nic_outage":
                    self.told_outage(float(msg["t0"]), msg.get("nic"), msg.get("shard"))
                elif msg["type"] == "stop":
                    self.outages_all_told = True  # their notices came before it
                    if not self.stopping:
                        self.stopping, self.stop_at = True, time.monotonic()
                        for conn in list(self.by_id.values()):
                            self.wake(conn)  # settle what is pending, or close, now
                    if msg.get("fast") and not self.fast_stop:
                        self.fast_stop, self.fast_at = True, time.monotonic()
                elif msg["type"] == "provoke_offload":
                    self.provoke_offloads(int(msg["count"]))
                elif msg["type"] == "fault":
                    task = asyncio.create_task(self.conn_fault(msg))
                    self.fault_tasks.add(task)
                    task.add_done_callback(self.fault_tasks.discard)
            now = time.monotonic()
            if now < next_progress:
                continue
            next_progress = now + PROGRESS_EVERY_S
            self.prune_placements(now)
            if self.cfg.churn > 0 and now - last_churn >= 1.0 and not self.stopping:
                p = self.cfg.churn / 60.0 * (now - last_churn)
                for conn in self.by_id.values():
                    if self.rng.random() < p:
                        conn.churn = True
                last_churn = now
            self.count_live()
            self.out.put({"type": "progress", "w": self.cfg.index, "c": dict(self.c)})

    def provoke_offloads(self, n: int) -> None:
        """Have `n` offloaded connections upload and offload again at their next round trip."""
        live = [c for c in self.by_id.values() if c.offloaded and not c.faults and not c.churn]
        for conn in self.rng.sample(live, min(n, len(live))):
            conn.upload_at = time.monotonic()

    def ramp_done(self) -> bool:
        """Every slot started has had its first connect answered, either way. Not `opened`,
        which counts reopens too: a slot reset or churned in the ramp would stand in for one
        still connecting, and the hold begin (and end) before it had its round trip."""
        return self.first_opens >= len(self.tasks)

    def keep_going(self, conn: Conn) -> bool:
        """During the hold, always; after it, only while an outcome still needs this connection,
        or while its slot has carried no verified byte yet (opened late: the report counts each
        slot held that carried none), bounded by `--settle`; never once interrupted. A reset's
        reopened connection has its first round trip even after `--settle` (`owes_reset_trip`).
        """
        if not self.stopping:
            return True
        if self.fast_stop:
            return False
        if self.owes_reset_trip(conn):
            return True
        if time.monotonic() > self.stop_at + self.cfg.settle_s:
            return False
        return conn.wants_more() or self.owes_traffic(conn)

    @staticmethod
    def owes_reset_trip(conn: Conn) -> bool:
        """`conn` reopened the slot of a reset connection and has had no round trip back yet:
        the reset's outcome is its first verified data. After the hold the soak's own final
        closes hold the RPC clients' semaphores, and a reopen asked for inside `--settle` can be
        answered after it (10,000 connections under load): the settle's clock is the soak's,
        not the daemon's, so that one round trip is still made, bounded by its own timeout
        (`OP_TIMEOUT_S`) and the wind-down (`WIND_DOWN_S`). One only: a connection that broke
        in it does not reopen again after the settle (it carries no reset of its own)."""
        return (
            conn.verified == 0
            and not conn.aborted
            and any(
                r["kind"] in ("peer_reset", "daemon_reset") and not outcome_done(r)
                for r in conn.watch
            )
        )

    def owes_traffic(self, conn: Conn) -> bool:
        """`conn`'s slot has carried no verified byte on any of its connections yet."""
        if conn.verified > 0:
            self.slots_carried.add(conn.slot)
        return conn.slot not in self.slots_carried

    async def run_slot(self, i: int, slot: int) -> None:
        cfg = self.cfg
        rpc = self.rpcs[i % len(self.rpcs)]
        peer = slot % len(cfg.peers)
        self.slot_ops[slot] = 0
        conn: Conn | None = None
        try:
            try:
                conn = await self.open(rpc, slot, peer)
            finally:
                self.first_opens += 1
            if conn is None:
                self.slots_unopened.add(slot)
            while conn is not None:
                try:
                    if conn.aborted:
                        raise SlotBroken("aborted")
                    if conn.churn and not conn.wants_more() and not self.stopping:
                        self.c["churn_closes"] += 1
                        raise SlotBroken("churn")
                    if not self.keep_going(conn):
                        break
                    if conn.needs_offload and time.monotonic() >= conn.next_offload_try:
                        await self.reoffload(rpc, conn)
                    if conn.reset_order is not None:
                        await self.reset_now(rpc, conn)  # its round trip ends with the reset
                        continue
                    if conn.stall_order is not None:
                        await self.stall_now(conn)
                    await self.echo(rpc, conn)
                    self.slot_ops[slot] += 1
                    think = cfg.think_ms / 1000.0 * self.rng.uniform(0.5, 1.5)
                    if think > 0 and conn.stall_order is None and conn.reset_order is None:
                        await self.think(conn, think)
                except SlotBroken:
                    # (`replace` counts what it verified, a reset's round trip too)
                    conn = await self.replace(rpc, slot, peer, conn)
            if conn is not None:
                self.owes_traffic(conn)
                await self.close_conn(rpc, conn, final=True)
        except ChimneyError as exc:  # the RPC connection itself is gone (daemon died)
            if "rpc_lost" not in self.errors:
                self.error("rpc_lost", str(exc), slot=slot)
        finally:
            # a slot the wind-down cancelled (stuck at stop: `close_timeout`) is counted by
            # what it carried, not as carrying nothing: the run fails for the hang alone
            if conn is not None:
                self.owes_traffic(conn)

    async def replace(self, rpc: Rpc, slot: int, peer: int, conn: Conn) -> Conn | None:
        await self.close_conn(rpc, conn, final=False)
        resets = any(r["kind"] in ("peer_reset", "daemon_reset") for r in conn.faults)
        bugged = conn.holed or conn.abort is not None
        # after the hold a slot reopens only to show a reset's or a bug's outcome (data on a
        # new connection), or for its first round trip (one churned before it had any); a
        # reset's even after `--settle`, which its own round trip may outlast under load: its
        # reopen and first round trip are bounded by the wind-down (`owes_reset_trip`)
        owes = self.owes_traffic(conn)
        reset_owed = resets and not self.fast_stop
        if self.stopping and not (
            reset_owed or ((bugged or owes) and self.keep_going_after_reset())
        ):
            self.after_reset(conn, None)
            return None
        new = await self.open(rpc, slot, peer)
        self.after_reset(conn, new)
        if bugged and new is not None:
            # the bug's outcome: the reopened slot carries verified data
            self.c["reopened_after_bug"] += 1
            for rec in [*conn.bugs, *([conn.abort] if conn.abort is not None else [])]:
                rec["new_conn"] = new.cid
                watch(new, rec, 0)
        return new

    def keep_going_after_reset(self) -> bool:
        return not self.fast_stop and time.monotonic() <= self.stop_at + self.cfg.settle_s

    def final(self) -> dict[str, Any]:
        self.count_live()
        for conn in self.by_id.values():  # left open by a cut-short run: account their time
            self.move(conn, "closing")
        self.prune_placements(time.monotonic())
        return {
            "type": "final",
            "w": self.cfg.index,
            "c": dict(self.c),
            "state_s": self.state_s,
            "host_s_by_cause": self.host_s_by_cause,
            "latencies": self.latencies,
            "slowest": list(self.slowest),
            "integrity": self.integrity,
            "errors": self.errors,
            "faults": self.fault_records,
            "obs": self.obs,
            "slots": len(self.cfg.slots),
            "slots_unopened": len(self.slots_unopened),
            "slots_with_traffic": len(self.slots_carried),
            "rpc_shards": {str(k): v for k, v in sorted(self.rpc_shards.items())},
            "redials": self.redials,
        }


async def run_worker(cfg: Any, out: Channel, inbox: Channel) -> None:
    worker = Worker(cfg, out, inbox)
    try:
        await worker.run()
    except Exception as exc:  # report, never die silently: the coordinator waits for us
        out.put({"type": "fatal", "w": cfg.index, "error": f"{type(exc).__name__}: {exc}"})


def worker_process(cfg: Any, out_q: Any, in_q: Any) -> None:
    """Entry of a worker process: its own uvloop, talking to the coordinator over queues. The
    coordinator started it with SIGINT blocked; it ignores SIGINT for good (the coordinator
    decides when to stop) before unblocking, so a Ctrl-C never kills it half-way."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    raise_nofile_limit()
    try:
        import uvloop

        uvloop.run(run_worker(cfg, ProcessChannel(out_q), ProcessChannel(in_q)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(run_worker(cfg, ProcessChannel(out_q), ProcessChannel(in_q)))
