"""The supervisor of a daemon of several shards: the parent process, pre-fork style.

It holds the RPC addresses (`listen`), starts one engine process per shard (`python -m
chimneyd.shards.shard`, a unix socketpair as its control channel), and then only routes: a
shard's `ask` goes out to the other shards as `part` requests, each answered within
`daemon.control_timeout_s` or marked `timeout` (a shard being restarted is `down` at once);
events go to the shards that have an admin watching `"*"`. Nothing of the data path passes
through it. It keeps what every shard's processes counted (`aggregate.CounterCarry`), from the
parts that count passing it and the shards' reports, and adds it to every daemon-wide read of
counters: they never go down while the daemon runs, whichever shard restarts or answers.

Lifecycle: SIGTERM or SIGINT → every shard gets SIGTERM and drains within
`rpc.shutdown_deadline_s` (a shard still there well after that is killed); SIGHUP → the log
file is reopened here and in every shard; a shard that dies is logged (`shard_died`) and started
again after a back-off (`Backoff`), with a new range of ids; the kernel has closed its clients'
connections already. A shard silent on its control channel for `daemon.heartbeat_timeout_s`
(it reports every second), one started again that does not listen within `start_bound` of its
start (silent or not), or one that leaves `MAX_QUEUED` unread, is hung: killed (`shard_hung`)
and restarted the same way (`_watch`, `_hung`). What a process's channel still held when it
ended is read (`_drain`) for its last counts; its `ready` or `watch` changes nothing. If the
supervisor itself goes, the shards see their control channel close and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from chimneyd.config import Config
from chimneyd.observe.aggregate import COUNTED, CounterCarry, counts, plus
from chimneyd.observe.logging import reopen
from chimneyd.runtime.signals import HANDLED_SIGNALS

from .link import EVENTS_QUEUED_MAX, ControlLink
from .listen import Reservation

log = structlog.get_logger("chimneyd.shards")

#: A shard's ids (connections, listeners, faults) count up from `gen * ID_SPAN`, `gen` being the
#: number of the shard's start in the daemon's life (0 for shard 0's first): ids are never
#: reused across shards or restarts (rpc-contract: never reused within a daemon's life), and a
#: daemon of one shard numbers exactly as before. 10^12 a life is more than any soak makes;
#: the cap keeps every id below 2^53, exact in a JavaScript client.
ID_SPAN = 10**12
MAX_GEN = (1 << 53) // ID_SPAN - 1
#: How long a shard may take from its start to listening: at the daemon's start-up (`run` gives
#: up), and for a shard started again (`_watch` takes it for hung, however often it reports:
#: its counts reporter runs from its channel's start, before it listens), at least
#: `daemon.heartbeat_timeout_s` then.
START_TIMEOUT_S = 60.0
#: After SIGTERM a shard has `rpc.shutdown_deadline_s` plus this to exit before it is killed.
STOP_GRACE_S = 10.0
#: How often the supervisor looks for a hung shard (`_watch`). A look that comes more than
#: `LATE_S` late means the supervisor itself was held up (a loaded machine, or the whole
#: process group stopped by a Ctrl-Z and continued): what the shards sent meanwhile may be
#: unread yet, or they were stopped too. Every shard then counts as heard at that moment.
WATCH_INTERVAL_S = 1.0
LATE_S = 1.0
#: Past `EVENTS_QUEUED_MAX` unread, events to a shard are dropped (its admins watching `"*"`
#: miss them; logged). Past this much unread of anything, the shard has stopped reading its
#: control channel: it is taken as hung (killed and restarted) rather than let the
#: supervisor's memory grow without bound.
MAX_QUEUED = 64 * 1024 * 1024


@dataclass
class Backoff:
    """When to start a shard that died: at once the first time, then waits that double up to
    `most` while it keeps dying young; one that listened `settled_s` (ran fine) starts over
    from `first`. What counts is the time it listened, not the time it lived: one that never
    listened (hung at start until the start bound, 60 s, killed it) is a crash loop.

    A shard killed as hung counts as one that crashed: it served up to the last time it was
    heard, not through the silence that made it hung (`Supervisor._on_exit`). With
    `daemon.heartbeat_timeout_s` at or above `settled_s` (both 30 s by default), a shard that
    hangs as soon as it listens would otherwise look settled at every kill and be restarted at
    once, hang after hang; one that served `settled_s` before it hung starts over from `first`."""

    first: float = 0.1
    most: float = 10.0
    settled_s: float = 30.0
    delay: float = 0.0

    def next(self, served_s: float) -> float:
        """The wait before the next start of a shard whose process died after listening for
        `served_s` seconds (0 if it never listened)."""
        if served_s >= self.settled_s:
            self.delay = 0.0
        wait = self.delay
        self.delay = self.first if wait == 0.0 else min(wait * 2, self.most)
        return wait


@dataclass
class Shard:
    index: int
    gen: int = -1
    proc: subprocess.Popen[bytes] | None = None
    link: ControlLink | None = None
    state: str = "down"  # starting, running, down
    started: float = 0.0
    # time.monotonic() at which this process said `ready` (listened); None until it does: the
    # back-off resets only on time spent listening (`Backoff`), never on a hung start-up
    ready_at: float | None = None
    start_by: float = 0.0  # loop time by which this process must be ready (`_watch`)
    info: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: Backoff = field(default_factory=Backoff)
    restarts: int = 0
    # a second descriptor of the control channel, to read what the shard wrote before it
    # ended and the loop has not read yet (`Supervisor._drain`)
    peek: socket.socket | None = None
    hung: str = ""  # why the supervisor killed this process as hung (`Supervisor._hung`)
    # a process of this shard has listened: said `ready`, read while it ran or from what its
    # channel held when it ended (`Supervisor._drain`); never cleared
    listened: bool = False
    dropped: int = 0  # events not forwarded to it since its channel filled up


class Supervisor:
    def __init__(self, config: Config, held: Reservation, http: dict[str, str]) -> None:
        self.config = config
        self.held = held
        self.http = http  # "web" / "metrics" → the address shard 0 serves them on
        self.count = config.daemon.shards
        self.timeout = config.daemon.control_timeout_s
        self.heartbeat = config.daemon.heartbeat_timeout_s
        self.start_timeout = START_TIMEOUT_S
        self.ticks = 0  # looks `_watch` has taken (tests wait on it)
        self.watching: asyncio.Task[None] | None = None
        self.shards = [Shard(i) for i in range(self.count)]
        self.next_gen = 0
        self.watchers: set[int] = set()  # shards with an admin watching "*"
        self.stopping = False
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.restarting: set[asyncio.Task[None]] = set()
        self.carry = CounterCarry()

    # -- the run ---------------------------------------------------------------------------------
    async def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_stop, sig)
        self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        reopen()  # a SIGHUP until now was ignored (`__main__`): a log rotated meanwhile
        for shard in self.shards:
            await self.spawn(shard)
        if not await self._all_ready():
            if self.stop.is_set():  # SIGTERM or SIGINT while starting
                return await self.stop_all()
            await self.stop_all()
            print("chimneyd: a shard did not start; see the log", file=sys.stderr)
            return 2
        addresses = self.held.addresses
        log.info(
            "daemon_ready",
            listen=addresses,
            shards=self.count,
            pids=[s.proc.pid for s in self.shards if s.proc is not None],
        )
        print(f"chimneyd listening on {' '.join(addresses)}", flush=True)
        self.watching = self.loop.create_task(self._watch())
        web, metrics = self.http.get("web"), self.http.get("metrics")
        if web:
            print(f"chimneyd web view on http://{web}/", flush=True)
        if metrics:
            print(f"chimneyd metrics on http://{metrics}/metrics", flush=True)
        await self.stop.wait()
        return await self.stop_all()

    async def _all_ready(self) -> bool:
        """Every shard listening (True), or one that exited or hung on the way (False). Time the
        supervisor was held up (a Ctrl-Z of the group, a loaded machine) does not count, as in
        `_watch`: the wait goes in steps of `WATCH_INTERVAL_S`, and a step that ended more than
        `LATE_S` late moves the deadline by as much (the shards were most likely held up too)."""
        deadline = self.loop.time() + self.start_timeout
        for shard in self.shards:
            ready = asyncio.ensure_future(shard.ready.wait())
            exited = asyncio.ensure_future(shard.exited.wait())
            stopped = asyncio.ensure_future(self.stop.wait())
            waits = {ready, exited, stopped}
            try:
                while not any(fut.done() for fut in waits):
                    now = self.loop.time()
                    if now >= deadline:
                        break
                    step = min(WATCH_INTERVAL_S, deadline - now)
                    await asyncio.wait(waits, timeout=step, return_when="FIRST_COMPLETED")
                    late = self.loop.time() - now - step
                    if late > LATE_S:
                        deadline += late
            finally:
                for fut in waits:
                    fut.cancel()
            # one that listened and ended meanwhile is being restarted (`_on_exit`), as it would
            # be had the loop read its `ready` before it noticed its end
            if not (shard.ready.is_set() or shard.listened):
                return False
        return True

    def _on_stop(self, sig: signal.Signals) -> None:
        log.info("daemon_signal", signal=sig.name)
        if self.stopping:
            log.warning("daemon_already_stopping", signal=sig.name)
        self.stop.set()

    def _on_hup(self) -> None:
        reopen()
        # a shard still starting holds it until its loop answers it (see `spawn`)
        for shard in self.shards:
            if shard.proc is not None and shard.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shard.proc.pid, signal.SIGHUP)

    async def stop_all(self) -> int:
        """SIGTERM every shard, wait for them to drain, kill what is left; exit status."""
        self.stopping = True
        if self.watching is not None:
            self.watching.cancel()
        for task in self.restarting:
            task.cancel()
        deadline = self.config.rpc.shutdown_deadline_s + STOP_GRACE_S
        log.info("daemon_stopping", deadline_s=self.config.rpc.shutdown_deadline_s)
        live = [s for s in self.shards if s.proc is not None and s.proc.poll() is None]
        for shard in live:
            assert shard.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(shard.proc.pid, signal.SIGTERM)
        waits = [asyncio.ensure_future(s.exited.wait()) for s in live]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=deadline)
            for fut in pending:
                fut.cancel()
        killed = []
        for shard in live:
            assert shard.proc is not None
            if shard.proc.poll() is None:
                killed.append(shard.index)
                shard.proc.kill()
                # its pidfd tells `_on_exit`, which reaps it; no thread (the stop signals must
                # find no thread that has not blocked them, see `ignore_stop_signals`)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(shard.exited.wait(), 5)
        self.held.close()
        # a shard that had died before the stop (its restart waiting out a back-off) had
        # nothing to drain: its death was logged then (`shard_died`), the stop is clean
        ok = not killed and all(s.proc is not None for s in self.shards)
        ok = ok and all(s.proc.returncode == 0 for s in live if s.proc is not None)
        how: dict[int, str] = {}
        for s in self.shards:
            if s.proc is None:
                how[s.index] = "never started"
            elif any(s is x for x in live):
                how[s.index] = _how(s.proc.returncode)
            else:
                how[s.index] = f"{_how(s.proc.returncode)}, before the stop"
        (log.info if ok else log.error)("supervisor_stopped", how=how, killed=killed)
        return 0 if ok else 1

    # -- shards ----------------------------------------------------------------------------------
    async def spawn(self, shard: Shard) -> None:
        """Start shard `shard.index` with the next generation of ids."""
        if self.next_gen > MAX_GEN:
            log.error("shard_ids_exhausted", shard=shard.index)
            self.stop.set()
            return
        gen, self.next_gen = self.next_gen, self.next_gen + 1
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        unix_fds = self.held.unix_fds()
        # the shard starts with the daemon's signals blocked (a mask survives fork and exec), so
        # a SIGHUP or SIGTERM (or a Ctrl-C to the process group) that reaches it before its loop
        # answers them waits for the loop instead of meeting the default action: serve()
        # unblocks them once its handlers are in place
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chimneyd.shards.shard", str(theirs.fileno())],
                pass_fds=[theirs.fileno(), *unix_fds.values()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()
        shard.gen, shard.proc, shard.state = gen, proc, "starting"
        shard.started = time.monotonic()
        shard.ready_at = None
        shard.start_by = self.loop.time() + self.start_bound
        shard.ready.clear()
        shard.exited.clear()
        shard.hung = ""
        index = shard.index
        self.carry.started(index, gen)
        # watched from its start, before any await: a stop (or its own end) that comes while
        # its channel is being set up still sees it end, and `_on_exit` reaps it
        try:
            pidfd = os.pidfd_open(proc.pid)
        except BaseException:
            mine.close()
            proc.kill()
            proc.wait()
            raise
        self.loop.add_reader(pidfd, self._on_exit, shard, proc, pidfd)
        peek: socket.socket | None = None
        try:
            peek = shard.peek = mine.dup()
            link = await self._connect(
                mine,
                lambda: ControlLink(
                    f"supervisor:{index}",
                    lambda m, p: self._on_request(index, gen, m, p),
                    lambda m, p: self._on_notification(index, gen, m, p),
                    peek.close,  # else the shard would never see its channel close
                    max_queued=MAX_QUEUED,
                    on_overfull=lambda queued: self._hung(
                        shard, gen, "not_reading", queued=queued, bound=MAX_QUEUED
                    ),
                ),
            )
        except BaseException as exc:
            # the shard sees its channel close before its hello and ends; `_on_exit` then
            # restarts it (a stop cancelled us: it is stopped with the others)
            mine.close()
            if peek is not None:
                peek.close()
                if shard.peek is peek:
                    shard.peek = None
            if isinstance(exc, OSError):
                log.error("shard_start_failed", shard=index, pid=proc.pid, error=str(exc))
                return
            raise
        if shard.proc is not proc or proc.returncode is not None:
            link.close()  # it ended meanwhile (`_on_exit` has seen to it)
            return
        shard.link = link
        link.notify("hello", [self._hello(shard, unix_fds)])
        log.info("shard_started", shard=index, pid=proc.pid, gen=gen)

    async def _connect(
        self, sock: socket.socket, factory: Callable[[], ControlLink]
    ) -> ControlLink:
        """The supervisor's end of a shard's control channel, served on `sock`."""
        _, link = await self.loop.create_unix_connection(factory, sock=sock)
        return link

    def _hello(self, shard: Shard, unix_fds: dict[str, int]) -> dict[str, Any]:
        raw = self.config.as_dict(redact=False)
        raw["rpc"]["listen"] = self.held.addresses
        # the web view and /metrics are one shard's (shard 0), on the port held for it
        raw["web"]["listen"] = self.http.get("web", "") if shard.index == 0 else ""
        raw["metrics"]["listen"] = self.http.get("metrics", "") if shard.index == 0 else ""
        return {
            "config": raw,
            "index": shard.index,
            "count": self.count,
            "id_base": shard.gen * ID_SPAN,
            "unix_fds": unix_fds,
            "histograms": bool(self.http) and self.config.metrics.histograms,
        }

    def _on_exit(self, shard: Shard, proc: subprocess.Popen[bytes], pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        code = proc.wait()
        now = time.monotonic()
        lived = now - shard.started
        shard.state = "down"
        self.watchers.discard(shard.index)
        self._tell_forwarding()
        # a hung process served until it was last heard (`Backoff`): read before `_drain`,
        # whose leftovers say nothing of when they were sent. What it sent, not `heard`, which
        # a hold-up of the supervisor moves on (`_watch`) without a word from the shard
        heard: float | None = None
        if shard.link is not None:
            if shard.hung:
                heard = now - max(0.0, self.loop.time() - shard.link.reported)
            self._drain(shard.link, shard.peek)
            shard.link.close()  # its pending requests are answered (expired) at once
            shard.link = None
        if shard.peek is not None:
            shard.peek.close()
            shard.peek = None
        # what it counted, as last seen, is its shard's for good (its last report included)
        self.carry.ended(shard.index, shard.gen)
        self._dropped_until(shard, "ended")
        shard.exited.set()
        if self.stopping or self.stop.is_set():
            log.info("shard_exited", shard=shard.index, pid=proc.pid, how=_how(code))
            return
        died = {
            "shard": shard.index,
            "pid": proc.pid,
            "how": _how(code),
            "lived_s": round(lived, 1),
        }
        # read after `_drain`: a `ready` it left unread counts as listening from its end (0 s)
        served = (
            0.0
            if shard.ready_at is None
            else max(0.0, (now if heard is None else heard) - shard.ready_at)
        )
        died["served_s"] = round(served, 1)
        if shard.hung:
            died["hung"] = shard.hung
        if not shard.listened and shard.gen < self.count:
            # it never listened at start-up: the daemon gives up (run() sees `exited`)
            log.error("shard_died", **died, then="daemon_stops")
            return
        # a process that never listened did not run fine, however long it lived (a start-up hung
        # until `start_bound`, longer than `settled_s`): its back-off grows as a crash loop's
        delay = shard.backoff.next(served)
        log.error("shard_died", **died, then="restart", restart_in_s=delay)
        task = self.loop.create_task(self._restart(shard, delay))
        self.restarting.add(task)
        task.add_done_callback(self.restarting.discard)

    async def _restart(self, shard: Shard, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            if self.stopping or self.stop.is_set():  # no new shard once a stop was asked
                return
            shard.restarts += 1
            try:
                await self.spawn(shard)
                return
            except OSError as exc:  # out of descriptors or processes: try again, later
                delay = shard.backoff.next(0.0)
                log.error("shard_start_failed", shard=shard.index, error=str(exc), retry_in_s=delay)

    @staticmethod
    def _drain(link: ControlLink, peek: socket.socket | None) -> None:
        """Hand `link` what its shard, now ended, wrote before and the loop has not read yet:
        its last report of its counts, say, sent as it stopped. Nothing the shard sent is lost,
        whichever the loop notices first: the process's end, or its channel's."""
        if peek is None or link.closed:
            return
        chunks = []
        while True:
            try:
                data = peek.recv(1 << 16, socket.MSG_DONTWAIT)
            except OSError:  # nothing more (BlockingIOError), or the channel is gone
                break
            if not data:
                break
            chunks.append(data)
        if chunks:
            link.data_received(b"".join(chunks))

    # -- what shards ask --------------------------------------------------------------------------
    def _on_notification(self, index: int, gen: int, method: str, params: list[Any]) -> None:
        shard = self.shards[index]
        if method == "counts" and len(params) == 2 and isinstance(params[0], dict):
            self.carry.seen(index, gen, counts("counts", params[0]))
            if params[0]:  # most reports change nothing: a line a second each would say nothing
                log.debug(
                    "shard_counts", shard=index, gen=gen, taken=params[1], changed=len(params[0])
                )
        elif method in ("ready", "watch") and (gen != shard.gen or shard.state == "down"):
            # read from the channel of a process that has ended (`_drain` hands on what it
            # left unread, for its last counts): it says nothing about the shard's next
            # process, which must not look running, ready or watched before that one says so;
            # but that process did listen: at start-up it is restarted, not taken for one that
            # never started (`_on_exit`), whichever the loop noticed first
            if method == "ready":
                shard.listened = True
                if gen == shard.gen and shard.ready_at is None:
                    # the current process, ended: it listened, for no time the loop saw
                    shard.ready_at = time.monotonic()
            log.info("shard_stale_notification", shard=index, gen=gen, method=method)
        elif method == "ready":
            shard.state = "running"
            shard.listened = True
            if shard.ready_at is None:  # its first `ready`: listening from now
                shard.ready_at = time.monotonic()
            shard.info = dict(params[0]) if params else {}
            first = not shard.ready.is_set()
            shard.ready.set()
            if self.watchers and shard.link is not None:
                shard.link.notify("forward", [True])
            if shard.restarts and first:
                log.warning(
                    "shard_restarted", shard=index, pid=shard.info.get("pid"), gen=shard.gen
                )
        elif method == "watch" and params:
            if params[0]:
                self.watchers.add(index)
            else:
                self.watchers.discard(index)
            self._tell_forwarding()
        elif method == "event" and len(params) == 3:
            for w in self.watchers:
                target = self.shards[w]
                if w != index and target.link is not None:
                    self._forward_event(target, target.link, [index, *params])
        else:
            log.warning("control_notification_unknown", shard=index, method=method)

    def _forward_event(self, target: Shard, link: ControlLink, params: list[Any]) -> None:
        """An event for `target`'s watching admins, unless its channel holds more than
        `EVENTS_QUEUED_MAX` it has not read: then events to it are dropped (and counted) until
        what it holds drains below a quarter of that."""
        queued = link.queued
        if queued > (EVENTS_QUEUED_MAX // 4 if target.dropped else EVENTS_QUEUED_MAX):
            if not target.dropped:
                log.warning(
                    "shard_events_dropping",
                    shard=target.index,
                    queued=queued,
                    bound=EVENTS_QUEUED_MAX,
                )
            target.dropped += 1
            return
        self._dropped_until(target, "drained")
        link.notify("event", params)

    @staticmethod
    def _dropped_until(shard: Shard, until: str) -> None:
        """The end of a spell of dropped events to `shard`: how many, and why it ended."""
        if shard.dropped:
            log.warning(
                "shard_events_dropped", shard=shard.index, dropped=shard.dropped, until=until
            )
            shard.dropped = 0

    # -- hung shards -------------------------------------------------------------------------------
    @property
    def start_bound(self) -> float:
        """How long a shard started again may take to listen: the start timeout, or the
        heartbeat timeout if longer (86400 lets a shard sit in a debugger, starting or not)."""
        return max(self.start_timeout, self.heartbeat)

    async def _watch(self) -> None:
        """Every `WATCH_INTERVAL_S`: a running shard silent on its control channel (it
        reports its counts every second) for `daemon.heartbeat_timeout_s`, or a shard started
        again that is not listening `start_bound` after its start, silent or not (it reports
        from before it listens), is hung: killed and restarted (`_hung`)."""
        last = self.loop.time()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = self.loop.time()
            late, last = now - last - WATCH_INTERVAL_S, now
            self.ticks += 1
            if late > LATE_S:  # held up ourselves: nobody's silence counts meanwhile
                for shard in self.shards:
                    if shard.link is not None:
                        shard.link.heard = max(shard.link.heard, now)
                    # nor the time a start took: the shard was most likely held up as well
                    shard.start_by += late
                continue
            for shard in self.shards:
                link = shard.link
                if link is None or shard.state == "down":
                    continue
                if shard.state == "starting":
                    # its silence is within this too: it was heard no earlier than its start
                    if now > shard.start_by:
                        self._hung(shard, shard.gen, "start_timeout", bound_s=self.start_bound)
                    continue
                silent = now - link.heard
                if silent > self.heartbeat:
                    self._hung(
                        shard,
                        shard.gen,
                        "silent",
                        silent_s=round(silent, 1),
                        bound_s=self.heartbeat,
                    )

    def _hung(self, shard: Shard, gen: int, why: str, **details: Any) -> None:
        """Kill process `gen` of `shard`, hung (`why`): `_on_exit` restarts it as one that
        died (SIGKILL: a hung process may not answer SIGTERM; its clients' connections are
        lost either way)."""
        proc = shard.proc
        if self.stopping or self.stop.is_set() or shard.gen != gen or proc is None or shard.hung:
            return
        if proc.returncode is not None:
            return
        shard.hung = why
        log.error("shard_hung", shard=shard.index, pid=proc.pid, why=why, **details)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def _tell_forwarding(self) -> None:
        """Events flow up from every shard while any shard has an admin watching `"*"`."""
        on = bool(self.watchers)
        for shard in self.shards:
            if shard.link is not None and shard.state == "running":
                shard.link.notify("forward", [on])

    async def _on_request(self, index: int, gen: int, method: str, params: list[Any]) -> Any:
        if method != "ask" or len(params) not in (3, 4):
            raise ValueError(f"no control method {method!r}")
        what, arg, targets = params[:3]
        wanted = [t for t in targets if isinstance(t, int) and 0 <= t < self.count]
        if len(params) == 4 and what in COUNTED:
            return await self._counted(index, gen, what, params[3], wanted)
        answers = await asyncio.gather(*(self._part(t, what, arg) for t in wanted))
        return [[t, state, payload] for t, (state, payload) in zip(wanted, answers, strict=True)]

    async def _counted(
        self, index: int, gen: int, what: str, mine: Any, wanted: list[int]
    ) -> dict[str, Any]:
        """A part that counts, asked by process `gen` of shard `index` with the counts of its
        own part, `mine`: every target's part, and `carried`, the counts of every shard's
        processes that have no part in this answer (`CounterCarry`). Each shard's part and
        what it carries are taken at one moment: no process is counted twice, and none less
        than before."""
        # recorded before the asker can show them to anyone
        self.carry.seen(index, gen, counts("counts", mine))
        wanted = [t for t in wanted if t != index]  # its part is `mine`: never counted twice
        carried = self.carry.carried(index, counting=True)
        answers = await asyncio.gather(*(self._counted_part(t, what) for t in wanted))
        parts = []
        for t, (state, payload, theirs) in zip(wanted, answers, strict=True):
            parts.append([t, state, payload])
            carried = plus(carried, theirs)
        return {"parts": parts, "carried": carried}

    async def _counted_part(self, index: int, what: str) -> tuple[str, Any, dict[str, Any]]:
        """Shard `index`'s part of `what` (as `_part`), and what the daemon carries of it."""
        shard = self.shards[index]
        link, gen = shard.link, shard.gen
        state, payload = await self._part(index, what, None)
        if state == "ok" and shard.link is link and shard.state == "running":
            self.carry.seen(index, gen, counts(what, payload))
            return state, payload, self.carry.carried(index, counting=True)
        if state == "ok":  # its process ended meanwhile: it counts as last seen, as if down
            state, payload = "down", None
        return state, payload, self.carry.carried(index, counting=False)

    async def _part(self, index: int, what: str, arg: Any) -> tuple[str, Any]:
        shard = self.shards[index]
        link = shard.link
        if shard.state != "running" or link is None:
            return "down", None
        answer = await link.request("part", [what, arg], self.timeout)
        if answer.expired:
            # gone meanwhile (its channel closed), or slow
            return ("down", None) if link.closed or shard.state != "running" else ("timeout", None)
        if answer.error is not None:
            return "error", answer.error
        return "ok", answer.result


def _how(code: int | None) -> str:
    """How a process ended, from its return code (negative: the signal that killed it; None:
    it has not ended, a kill notwithstanding)."""
    if code is None:
        return "not ended"
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


__all__ = ["ID_SPAN", "MAX_GEN", "Backoff", "Supervisor"]
