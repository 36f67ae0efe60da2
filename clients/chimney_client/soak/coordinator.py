"""The coordinator: starts (or finds) the daemon and the echo peers, warms the daemon up, runs the
workers through ramp, hold (with the fault schedule), settle and drain, and builds the report.
A Ctrl-C cuts the run short: workers close their connections at once and a partial report
follows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aio import AsyncClient
from ..errors import ChimneyError, InvalidParams
from .channels import Channel, LocalChannel, ProcessChannel
from .faults import OUTAGES, ScheduledFault, take_due
from .layer_faults import LayerFaults
from .limits import (
    CALL_TIMEOUT_S,
    CLOSE_ALL_S,
    FD_RESERVE,
    FINAL_REPORT_S,
    HEALTH_EVERY_S,
    IDLE_TRIM_WAIT_S,
    INTERRUPT_GRACE_S,
    LAST_CALL_S,
    PROGRESS_EVERY_S,
)
from .phases import Phases
from .plan import Plan, cap_to
from .procs import Child, process_nofile_limit
from .report import gauges_left, merge_counters
from .state import WorkerConfig
from .worker import run_worker, worker_process


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


class Soak(Phases, LayerFaults):
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.live = Live()
        self.daemon: Child | None = None
        self.peers: list[Child] = []
        self.peer_addrs: list[tuple[str, int]] = []
        self.peer_controls: list[tuple[str, int] | None] = []
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
        # the spawned processes' output; a temporary directory goes once a run has passed
        self.logs_kept = bool(getattr(args, "logs", None))
        if self.logs_kept:
            self.logdir = Path(args.logs)
            self.logdir.mkdir(parents=True, exist_ok=True)
        else:
            self.logdir = Path(tempfile.mkdtemp(prefix="chimney-soak-"))
        self.progress: Any = None
        self.phase = "setup"
        self.interrupted = asyncio.Event()
        self.broken: str | None = None  # why the run was stopped early (the daemon broke)
        self.health_base: dict[str, int] = {}
        self.bugs_planted = 0
        self.nics_settling = 0  # NIC outages under way, until their RESUME's re-offloads end
        self.shard_pids: dict[int, int] = {}
        self.rss_shards: dict[int, dict[str, int | None]] = {}
        self.spread: dict[int, int] = {}
        self.warm_up_damage: list[dict[str, Any]] = []
        self.hold_started: float | None = None  # monotonic: what `--faults KIND@Ts` counts from
        self.helpers_stopped = False  # `stop_helpers` has run

    # -- helpers -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.args.quiet:
            if self.progress is not None:
                self.progress.console.print(text)
            else:
                print(text, file=sys.stderr, flush=True)

    def kill_now(self) -> None:
        """A second Ctrl-C: everything we started goes at once."""
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
        for child in [*self.peers, *([self.daemon] if self.daemon else [])]:
            child.kill()

    # -- workers ---------------------------------------------------------------------------------
    def start_workers(self) -> None:
        p = self.plan
        slots = list(range(p.connections))
        k = max(1, p.workers)
        for i in range(k):
            cfg = WorkerConfig(
                index=i,
                rpc=self.rpc_addr,
                token=self.args.token,
                peers=tuple(self.peer_addrs),
                peer_controls=tuple(self.peer_controls),
                slots=tuple(slots[i::k]),
                rate=p.rate / k,
                payload=p.payload,
                think_ms=p.think_ms,
                upload_share=self.args.upload_share,
                churn=self.args.churn,
                close=self.args.close,
                conns_per_rpc=p.conns_per_rpc,
                ops_per_rpc=self.args.ops_per_rpc,
                seed=self.args.seed,
                shards=p.shards,
                balance_shards=getattr(self.args, "balance_shards", True),
                # and an invalidate: with no room for its second connection on the NIC it is
                # judged on the workers' there (probe_faults `_unasked_on_the_nic`)
                nic_outages=any(f.spec.kind in (*OUTAGES, "invalidate") for f in p.faults),
                settle_s=self.args.settle,
            )
            if p.workers == 0:
                out, inbox = LocalChannel(), LocalChannel()
                self.outs.append(out)
                self.ins.append(inbox)
                self.local_tasks.append(asyncio.create_task(run_worker(cfg, out, inbox)))
                continue
            ctx = mp.get_context("spawn")
            out_q, in_q = ctx.Queue(), ctx.Queue()
            proc = ctx.Process(target=worker_process, args=(cfg, out_q, in_q), daemon=True)
            # started with SIGINT blocked (the mask is inherited): the worker ignores it before
            # it unblocks, so a Ctrl-C during its start-up cannot kill it with a traceback
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.procs.append(proc)
            self.outs.append(ProcessChannel(out_q))
            self.ins.append(ProcessChannel(in_q))

    def poll_workers(self) -> None:
        for ch in self.outs:
            for msg in ch.drain():
                w, kind = msg["w"], msg["type"]
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

    def show(self, line: str) -> None:
        if self.progress is not None:
            self.progress.update(line)

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        plan = self.plan
        stats_before: dict[str, Any] | None = None
        stats_after: dict[str, Any] | None = None
        rss_before = rss_after = None
        exit_status: int | None = None
        # every phase's wall time, in the order of the run (`PHASES`): where a run's time went.
        # Each starts where the one before ended (`mark`), so together they are the total
        timing: dict[str, float] = {}
        t_run = mark = time.monotonic()
        t_start: float | None = None
        try:
            try:
                await self.start_processes()
                self.control = await AsyncClient.connect(
                    self.rpc_addr, token=self.args.token, call_timeout=CALL_TIMEOUT_S
                )
                timing["start_s"], mark = _lap(mark)
                self.learn_shards(await self.control.stack_info())
                self.find_daemon_pid()
                if self.daemon_pid is not None and self.daemon is None and not self.shard_pids:
                    limit = process_nofile_limit(self.daemon_pid)
                    if limit is not None and plan.connections > limit - FD_RESERVE:
                        cap_to(plan, limit - FD_RESERVE, f"the daemon's open-file limit is {limit}")
                if self.daemon_pid is not None or self.shard_pids:
                    rss_before = await self.warm_up(measure=not self.args.no_rss)
                stats_before = await self.control.stack_stats()
                engine = stats_before.get("engine") or {}
                for key in ("layer_errors", "invariant_violations"):
                    self.health_base[key] = engine.get(key) or 0
                timing["warm_up_s"], mark = _lap(mark)
            except asyncio.CancelledError:
                # Ctrl-C before the workers started: nothing to wind down but our processes
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                raise _Interrupted() from None
            self.phase = "run"
            self.say(
                f"chimney-soak: {plan.connections} connections at {plan.rate:g}/s, hold "
                f"{plan.duration:g} s, {max(plan.workers, 1)} worker(s)"
                f"{' in-process' if plan.workers == 0 else ''}, {len(self.peer_addrs)} echo "
                f"peer(s), daemon {self.rpc_addr}; logs in {self.logdir}"
            )
            if plan.fd_note:
                self.say(f"chimney-soak: {plan.fd_note}")
            t_start = mark
            self.start_workers()
            await self.drive(t_start, timing)
            # settle+close runs from the end of the ramp and hold (`drive`): an outage the hold
            # ended in, its NICs settling and late faults are waited for before the stop
            mark = t_start + timing.get("ramp_s", 0.0) + timing.get("hold_s", 0.0)
            fast = self.interrupted.is_set() or self.broken is not None
            self.broadcast({"type": "stop", "fast": fast})
            t_stop = time.monotonic()
            bound = INTERRUPT_GRACE_S + CLOSE_ALL_S + 15 if fast else FINAL_REPORT_S
            await self.collect(timeout=bound + plan.connections / 200)
            timing["close_s"], mark = _lap(mark)
            timing["active_s"] = t_stop - t_start
            self.show("draining | waiting for every gauge of the daemon to come back to 0")
            drain_timeout = 5.0 if fast else self.args.drain_timeout
            stats_after, _ = await self.wait_drained(drain_timeout, stats_before)
            timing["drain_s"], mark = _lap(mark)
            if (
                (self.daemon_pid is not None or self.shard_pids)
                and not self.daemon_gone()
                and not fast
                and not self.args.no_rss
            ):
                self.show(
                    f"memory | 0 open; waiting {IDLE_TRIM_WAIT_S:g} s for the idle daemon to "
                    "give memory back"
                )
                waits = [self.wait_or_interrupt(IDLE_TRIM_WAIT_S)]
                if stats_after is not None and not gauges_left(stats_after, stats_before):
                    # drained: the workers and peers hold nothing in the daemon any more, and
                    # their stop cannot move its RSS: they stop while it gives memory back
                    waits.append(self.stop_helpers())
                await asyncio.gather(*waits)
                rss_after = self.rss_after()
                timing["memory_s"], mark = _lap(mark)
        except _Interrupted:
            pass
        except (ChimneyError, RuntimeError, OSError) as exc:
            self.crash = self.crash or f"{type(exc).__name__}: {exc}"
        finally:
            # the stop: from wherever the run got to (a run cut short waits here for its
            # workers' counts) until the daemon has exited
            t_stop_all = mark if "drain_s" in timing else time.monotonic()
            gone = self.daemon_gone()
            if gone:
                self.crash = self.crash or gone
            k = max(1, plan.workers)
            if self.outs and len(self.live.finals) + len(self.live.fatal) < k:
                # cut short (daemon died, a worker failed): their counts still make the report
                self.broadcast({"type": "stop", "fast": True})
                await self.collect(timeout=INTERRUPT_GRACE_S + CLOSE_ALL_S + 15)
            if "active_s" not in timing and t_start is not None:
                timing["active_s"] = time.monotonic() - t_start
            # our clients first, then the peers, then the daemon (it drains what is left)
            await self.stop_helpers()
            if self.control is not None:
                await self.control.close()
            if self.daemon is not None:
                crashed_before = self.daemon.proc.poll() is not None
                exit_status = await self.daemon.stop()
                if crashed_before and not self.crash:
                    self.crash = f"daemon exited with status {exit_status} before the end"
            timing["stop_s"] = time.monotonic() - t_stop_all
            timing["total_s"] = time.monotonic() - t_run
        report = self.make_report(
            stats_before, stats_after, rss_before, rss_after, exit_status, timing
        )
        self.settle_logs(report)
        return report

    def settle_logs(self, report: dict[str, Any]) -> None:
        """A passing run leaves no temporary directory behind; any other keeps its logs, and
        the report names where."""
        d = report["daemon"]
        # a --rpc run with --peer started nothing: its temporary directory holds nothing
        spawned = self.daemon is not None or bool(self.peers)
        if self.logs_kept or (spawned and (not report["ok"] or report.get("interrupted"))):
            d["logs"] = str(self.logdir)
            return
        shutil.rmtree(self.logdir, ignore_errors=True)
        d["logs"] = d["log"] = None

    async def wait_or_interrupt(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupted.wait(), seconds)

    async def drive(self, t_start: float, timing: dict[str, float]) -> None:
        """Ramp, hold with the fault schedule, live line; returns when the hold is over (or on
        Ctrl-C)."""
        plan = self.plan
        k = max(1, plan.workers)
        last: dict[str, float] = {}
        ramp_limit = t_start + 60 + 3 * plan.connections / plan.rate
        phase = "ramp"
        hold_start: float | None = None
        pending: deque[ScheduledFault] = deque(plan.faults)
        layer_tasks: list[asyncio.Task[None]] = []
        next_line = next_health = 0.0
        last_inject = last_t = float("-inf")  # when the last fault went in, and its time
        try:
            while not self.interrupted.is_set():
                await self.wait_or_interrupt(0.1)
                self.poll_workers()
                if self.live.fatal and len(self.live.fatal) == k:
                    raise RuntimeError(f"every worker failed: {self.live.fatal}")
                gone = self.daemon_gone()
                if gone:
                    self.crash = gone
                    raise RuntimeError(f"daemon died: {gone}")
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + HEALTH_EVERY_S
                    self.broken = await self.daemon_broken()
                    if self.broken:
                        self.say(f"chimney-soak: stopping early: {self.broken}")
                        break
                if hold_start is None and (len(self.live.ramped) == k or now > ramp_limit):
                    hold_start = self.hold_started = now
                    timing["ramp_s"] = now - t_start
                    phase = "hold"
                    layer_tasks.append(asyncio.create_task(self.note_spread()))
                    t = self.live.total()
                    self.say(
                        f"chimney-soak: ramp done in {now - t_start:.1f} s: "
                        f"{sum(self.live.opened.values())} opened"
                        + (
                            f", {t['limit_refusals']} refused by LIMIT"
                            if t["limit_refusals"]
                            else ""
                        )
                    )
                if hold_start is not None:
                    elapsed = now - hold_start
                    # in the hold's last second what waits for a NIC goes in anyway, to go off
                    settling = self.nics_settling > 0 and elapsed < plan.duration - LAST_CALL_S
                    since = now - last_inject
                    while due := take_due(pending, elapsed, since, settling, last_t):
                        last_inject, last_t, since = now, due.t, 0.0
                        layer_tasks.append(asyncio.create_task(self.inject(due)))
                    if elapsed >= plan.duration:
                        timing["hold_s"] = elapsed
                        # what waited for a NIC to settle goes in now, apart as scheduled
                        layer_tasks.append(asyncio.create_task(self.inject_late(pending)))
                        break
                if now >= next_line:
                    next_line = now + PROGRESS_EVERY_S
                    held = f" {now - hold_start:.0f}/{plan.duration:g}s" if hold_start else ""
                    self.show(self.status_line(phase + held, last))
        except BaseException:
            for task in layer_tasks:  # the daemon died or a worker failed: stop injecting
                task.cancel()
            await asyncio.gather(*layer_tasks, return_exceptions=True)
            raise
        if self.interrupted.is_set():
            self.say("chimney-soak: interrupted; closing connections (Ctrl-C again: stop at once)")
            if hold_start is not None:
                timing["hold_s"] = time.monotonic() - hold_start
            else:  # cut short in the ramp: its time is the ramp's all the same
                timing["ramp_s"] = time.monotonic() - t_start
        # each injection keeps its own error in its record
        await asyncio.gather(*layer_tasks, return_exceptions=True)

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
            phase = "closing" if self.interrupted.is_set() else "settling and closing"
            self.show(self.status_line(phase, last))
        if self.control is not None:
            # fail_next and raise_next faults still active were never used up; what each bug
            # a raise_next planted and each call a fail_next failed hit is the daemon's to say
            # (fault.list `used`)
            with contextlib.suppress(ChimneyError):
                try:
                    listed = await self.control.fault_list(used=True)
                except InvalidParams:  # a daemon from before `used`: what is listed is active
                    listed = [{**f, "active": True} for f in await self.control.fault_list()]
                held = {f.get("id"): f for f in listed}
                for rec in self.layer_records:
                    if rec["kind"] not in OUTAGES and rec.get("injected"):
                        entry = held.get(rec.get("fault_id"))
                        rec["consumed"] = entry is None or not entry.get("active")
                        for key in ("raised", "failed"):
                            if entry is not None and key in entry:
                                rec[key] = entry[key]
                                rec[f"{key}_dropped"] = entry.get(f"{key}_dropped", 0)
            with contextlib.suppress(ChimneyError):
                await self.control.fault_clear("*")

    async def stop_helpers(self) -> None:
        """The workers, then the echo peers (at once: each its own process); once."""
        if self.helpers_stopped:
            return
        self.helpers_stopped = True
        await self.teardown_workers()
        await asyncio.gather(*(peer.stop() for peer in self.peers))

    async def teardown_workers(self) -> None:
        self.broadcast({"type": "stop", "fast": True})
        for task in self.local_tasks:
            if not task.done():
                task.cancel()
        if self.local_tasks:
            await asyncio.gather(*self.local_tasks, return_exceptions=True)
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _lap(since: float) -> tuple[float, float]:
    """The time since `since`, and now (the next phase's start)."""
    now = time.monotonic()
    return now - since, now


class _Interrupted(Exception):
    """Ctrl-C during set-up: straight to the teardown and a partial report."""
