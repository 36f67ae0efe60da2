"""The web view's WebSocket: what a browser watches, pushed as it changes.

A page subscribes over its socket with JSON messages `{"op": "sub", "topic": T, ...}`:
- `stats`: the per-layer gauges, pushed every `push_interval_ms`;
- `conns` (`page`, `size`): one page of the connection list, cut on the server, same timer;
- `events` (`conn`: an id, or absent for all): connection events and faults, batched per 100 ms;
- `hops` (`conn`): the connection's hop trace, then each hop as it is recorded, batched per 50 ms.

Nothing runs for nobody: the timer and the event observer exist while a browser is connected,
and a connection's trace is watched (`ndis.trace`) only while a browser shows its diagram. Each
browser has a queue bounded in frames and in bytes: a browser that does not keep up loses the oldest. Nothing
is lost without saying so: events past a batch's bound, or in a frame a browser's queue let go,
are counted and the browser is sent `{"type": "events", "events": [], "dropped": N}` before its
next frame; hops past a batch's bound are counted in the next `hops` frame's `dropped`, and
hops in a frame the queue let go in a `{"type": "hops", "conn": C, "hops": [], "dropped": N}`
sent first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from chimneyd.api import EngineError
from chimneyd.ndis.trace import HopRecord
from chimneyd.ndis.trace import record_maps as trace_record_maps
from chimneyd.observe.metrics import layer_summary

log = structlog.get_logger("chimneyd.web")

StatsSource = Callable[[], dict[str, Any]]
EVENT_FLUSH_S = 0.1
HOP_FLUSH_S = 0.05
OUTBOX_FRAMES = 256  # per browser; past this the oldest frames are dropped
# and in characters of JSON (bytes, near enough: it is ASCII but for names): 256 snapshots of a
# 1,000-row page would be ~50 MB per stalled page, ~1.6 GB for web.max_clients of them
OUTBOX_BYTES = 4 * 1024 * 1024
RECENT_EVENTS = 200  # shown to a page that opens while others were watching
MAX_EVENTS_PER_PUSH = 1000  # per batch; past it the oldest are dropped (and counted)
MAX_HOPS_PER_PUSH = 4000
MAX_PAGE_SIZE = 1000
MAX_MESSAGE = 16 * 1024


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


def _events_frame(events: list[dict[str, Any]], dropped: int = 0, backlog: bool = False) -> str:
    frame: dict[str, Any] = {"type": "events", "events": events}
    if dropped:
        frame["dropped"] = dropped
    if backlog:
        frame["backlog"] = True
    return _dumps(frame)


def _concerns(event: dict[str, Any], conn: int) -> bool:
    """An event of the connection, or a fault put on it (`peer_reset`, `stall_peer`)."""
    return event["conn"] == conn or (event["conn"] is None and event["info"].get("conn") == conn)


def conn_row(engine: Any, conn_id: int) -> dict[str, Any] | None:
    """One row of the connection list: state, path, the NIC (last layer of the path), bytes."""
    try:
        info = engine.conn_info(conn_id)
    except EngineError:
        return None
    path = list(info.get("path") or ())
    return {
        "id": conn_id,
        "state": info.get("state"),
        "path": path,
        "nic": path[-1] if len(path) > 1 else None,
        "bytes_sent": info.get("bytes_sent", 0),
        "bytes_received": info.get("bytes_received", 0),
        "local": info.get("local"),
        "remote": info.get("remote"),
    }


def record_maps(records: Iterable[HopRecord]) -> list[dict[str, Any]]:
    """Hop records as `trace.get` maps (the trace's own reader does it: one place for it)."""
    return trace_record_maps(records)


class Browser:
    """One page's socket: its subscriptions and its queue of frames."""

    __slots__ = (
        "conns",
        "events",
        "events_lost",
        "hops",
        "hops_lost",
        "outbox",
        "queued",
        "stats",
        "transport",
        "wake",
        "writer",
        "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.transport = transport  # aborted when the daemon stops and the page does not read
        # frames, and how many events and hop records each carries (a frame let go loses them)
        self.outbox: deque[tuple[str, int, int]] = deque(maxlen=OUTBOX_FRAMES)
        self.queued = 0  # characters in outbox
        # events this page subscribed to that it was not sent: reported before its next frame
        self.events_lost = 0
        # hop records of the watched connection it was not sent: the same, in a hops frame
        self.hops_lost = 0
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.stats = False
        self.conns: tuple[int, int] | None = None  # (page, size)
        self.events: int | str | None = None  # "*", a connection id, or None
        self.hops: int | None = None

    def push(self, text: str, events: int = 0, hops: int = 0) -> None:
        """Queue a frame (`events`, `hops`: how many events and hop records it carries, a hops
        frame's own `dropped` count included); a full queue (OUTBOX_FRAMES, or OUTBOX_BYTES with
        this frame) lets the oldest go, never this one."""
        outbox = self.outbox
        while outbox and (len(outbox) == OUTBOX_FRAMES or self.queued + len(text) > OUTBOX_BYTES):
            gone, events_gone, hops_gone = outbox.popleft()
            self.queued -= len(gone)
            self.events_lost += events_gone
            self.hops_lost += hops_gone
        outbox.append((text, events, hops))
        self.queued += len(text)
        self.wake.set()

    async def write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox or self.events_lost or self.hops_lost:
                if self.events_lost:
                    # the count goes first: what was lost came before what is queued
                    lost, self.events_lost = self.events_lost, 0
                    await self.ws.send_str(_events_frame([], dropped=lost))
                    continue
                if self.hops_lost:
                    lost, self.hops_lost = self.hops_lost, 0
                    if self.hops is not None:  # else the page no longer watches them
                        frame = {"type": "hops", "conn": self.hops, "hops": [], "dropped": lost}
                        await self.ws.send_str(_dumps(frame))
                    continue
                text = self.outbox.popleft()[0]
                self.queued -= len(text)
                await self.ws.send_str(text)


class HopWatch:
    """One watched connection: its new hop records until the next push, and who sees them."""

    __slots__ = ("browsers", "conn", "dropped", "flush_at", "hub", "pending", "unwatch")

    def __init__(self, hub: LiveHub, conn: int) -> None:
        self.hub = hub
        self.conn = conn
        self.browsers: set[Browser] = set()
        self.pending: list[HopRecord] = []
        self.dropped = 0
        self.flush_at: asyncio.TimerHandle | None = None
        self.unwatch: Callable[[], None] | None = None

    def record(self, rec: HopRecord) -> None:
        """Called from `HopTrace.record` of the watched connection (in a layer's task)."""
        pending = self.pending
        pending.append(rec)
        if len(pending) > MAX_HOPS_PER_PUSH:
            self.dropped += len(pending) - MAX_HOPS_PER_PUSH // 2
            del pending[: len(pending) - MAX_HOPS_PER_PUSH // 2]
        if self.flush_at is None:
            self.flush_at = self.hub.loop.call_later(HOP_FLUSH_S, self.flush)

    def flush(self) -> None:
        self.flush_at = None
        if not self.pending:
            return
        records, self.pending = self.pending, []
        frame = {
            "type": "hops",
            "conn": self.conn,
            "hops": record_maps(records),
            "info": conn_row(self.hub.engine, self.conn),
        }
        carried = len(records) + self.dropped  # what a page loses if its queue lets this go
        if self.dropped:
            frame["dropped"] = self.dropped
            self.dropped = 0
        text = _dumps(frame)
        for b in self.browsers:
            b.push(text, hops=carried)

    def stop(self) -> None:
        if self.flush_at is not None:
            self.flush_at.cancel()
            self.flush_at = None
        if self.unwatch is not None:
            self.unwatch()
            self.unwatch = None


class LiveHub:
    """Every browser's socket, and the pushes they subscribed to."""

    def __init__(self, engine: Any, stats: StatsSource, config: Any) -> None:
        self.engine = engine
        self.stats = stats
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.browsers: set[Browser] = set()
        self.ticker: asyncio.Task[None] | None = None
        self.watches: dict[int, HopWatch] = {}
        self.stop_observing: Callable[[], None] | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.pending_events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS_PER_PUSH)
        self.events_at: asyncio.TimerHandle | None = None
        self.closing = False

    # -- sockets -------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.closing or len(self.browsers) >= self.config.max_clients:
            return web.Response(status=503, text="too many browsers on this daemon\n")
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        b = Browser(ws, request.transport)
        self._join(b)
        try:
            await self._serve(b, ws)
        finally:
            self._leave(b)
        return ws

    async def _serve(self, b: Browser, messages: AsyncIterable[Any]) -> None:
        """A page's messages, one loop turn each: the messages of one read are there at once,
        and each is answered with a snapshot (a page of rows, a trace), so a page that sends a
        burst of them would otherwise hold the loop, and every RPC client and connection with
        it, until the last is answered (seconds for a few thousand)."""
        async for msg in messages:
            if msg.type != WSMsgType.TEXT:
                break
            self._on_message(b, msg.data)
            await asyncio.sleep(0)

    def _join(self, b: Browser) -> None:
        self.browsers.add(b)
        self.loop = asyncio.get_running_loop()
        b.writer = self.loop.create_task(self._write(b))
        if self.ticker is None:
            self.ticker = self.loop.create_task(self._tick(), name="web:push")
        if self.stop_observing is None:
            self.stop_observing = self.engine.events.observe(self._on_event)

    async def _write(self, b: Browser) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await b.write()

    def _leave(self, b: Browser) -> None:
        self.browsers.discard(b)
        if b.writer is not None:
            b.writer.cancel()
        self._unwatch(b)
        if not self.browsers:
            if self.ticker is not None:
                self.ticker.cancel()
                self.ticker = None
            if self.stop_observing is not None:
                self.stop_observing()
                self.stop_observing = None
            if self.events_at is not None:
                self.events_at.cancel()
                self.events_at = None
            self.pending_events.clear()
            self.recent.clear()

    async def close(self, timeout: float) -> None:
        """The daemon stops: close every socket at once, watch nothing. A page that does not
        read its socket (a stalled tab, a debugger on a breakpoint) would hold a close forever,
        and the daemon's stop has one deadline (`rpc.shutdown_deadline_s`, docs/security.md):
        a socket not closed within `timeout` is cut."""
        self.closing = True
        browsers = list(self.browsers)
        await asyncio.gather(*(self._close(b, timeout) for b in browsers))
        for b in browsers:
            self._leave(b)

    async def _close(self, b: Browser, timeout: float) -> None:
        b.outbox.clear()  # nothing more goes out after the close frame
        try:
            async with asyncio.timeout(timeout):
                # no drain: the close frame waits behind what the page has not read, and its
                # writer may be draining (aiohttp shares one drain between senders)
                await b.ws.close(code=1001, message=b"daemon stopping", drain=False)
            return
        except TimeoutError:
            log.info("web_browser_cut", reason="no close handshake in time")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # a send under way on this socket was cancelled, not this stop: cut it
        except Exception:  # a socket already gone, or failing: cut it all the same
            pass
        if b.transport is not None:
            b.transport.abort()

    # -- subscriptions -------------------------------------------------------------------------
    def _on_message(self, b: Browser, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("op") != "sub":
            return
        topic = msg.get("topic")
        conn = msg.get("conn")
        if conn is not None and (not isinstance(conn, int) or isinstance(conn, bool)):
            return
        if topic == "stats":
            b.stats = True
            b.push(_dumps(self.stats_frame()))
        elif topic == "conns":
            page, size = msg.get("page", 0), msg.get("size", self.config.page_size)
            if not isinstance(page, int) or not isinstance(size, int):
                return
            b.conns = (max(page, 0), min(max(size, 1), MAX_PAGE_SIZE))
            b.push(_dumps(self.conns_page(*b.conns)))
        elif topic == "events":
            b.events = "*" if conn is None else conn
            backlog = [e for e in self.recent if conn is None or _concerns(e, conn)]
            # what came before the page opened: not counted as lost if its queue lets it go
            b.push(_events_frame(backlog, backlog=True))
        elif topic == "hops" and conn is not None:
            self._watch(b, conn)

    def _watch(self, b: Browser, conn: int) -> None:
        self._unwatch(b)
        try:
            hops = self.engine.trace(conn, None)
        except EngineError as exc:
            b.push(_dumps({"type": "hops", "conn": conn, "reset": True, "error": exc.message}))
            return
        watch = self.watches.get(conn)
        if watch is None and len(self.watches) < self.config.max_watched:
            watch = HopWatch(self, conn)
            watch.unwatch = self.engine.watch_hops(conn, watch.record)
            if watch.unwatch is None:
                watch = None  # closed: its trace is all there will be
            else:
                self.watches[conn] = watch
        if watch is not None:
            watch.browsers.add(b)
            b.hops = conn
        frame = {
            "type": "hops",
            "conn": conn,
            "reset": True,
            "hops": hops,
            "info": conn_row(self.engine, conn),
            "live": watch is not None,
        }
        b.push(_dumps(frame))

    def _unwatch(self, b: Browser) -> None:
        conn, b.hops = b.hops, None
        watch = self.watches.get(conn) if conn is not None else None
        if watch is None:
            return
        watch.browsers.discard(b)
        if not watch.browsers:
            watch.stop()
            del self.watches[watch.conn]

    # -- pushes --------------------------------------------------------------------------------
    def stats_frame(self) -> dict[str, Any]:
        stats = self.stats()
        return {
            "type": "stats",
            "t": time.time(),
            "layers": layer_summary(stats),
            "connections": stats.get("connections", 0),
            "rpc": stats.get("rpc") or {},
            "faults": len(self.engine.fault_list()),
        }

    def conns_page(self, page: int, size: int) -> dict[str, Any]:
        ids = self.engine.conn_ids()
        total = len(ids)
        pages = max(1, math.ceil(total / size))
        page = min(page, pages - 1)
        rows = [conn_row(self.engine, i) for i in ids[page * size : (page + 1) * size]]
        return {
            "type": "conns",
            "total": total,
            "page": page,
            "pages": pages,
            "size": size,
            "rows": [r for r in rows if r is not None],
        }

    async def _tick(self) -> None:
        interval = self.config.push_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                self._push_periodic()
            except Exception:
                log.exception("web_push_failed")

    def _push_periodic(self) -> None:
        watching = [b for b in self.browsers if b.stats]
        if watching:
            text = _dumps(self.stats_frame())
            for b in watching:
                b.push(text)
        pages: dict[tuple[int, int], str] = {}
        for b in self.browsers:
            if b.conns is not None:
                if b.conns not in pages:
                    pages[b.conns] = _dumps(self.conns_page(*b.conns))
                b.push(pages[b.conns])

    def _on_event(self, conn: int | None, event: str, info: dict[str, Any]) -> None:
        item = {"t": time.time(), "conn": conn, "event": event, "info": info}
        self.recent.append(item)
        pending = self.pending_events
        if len(pending) == pending.maxlen:
            # the oldest of the batch goes: counted for each page that would have shown it
            self._lost(pending[0])
        pending.append(item)
        if self.events_at is None:
            self.events_at = self.loop.call_later(EVENT_FLUSH_S, self._flush_events)

    def _lost(self, event: dict[str, Any]) -> None:
        for b in self.browsers:
            if b.events == "*" or (isinstance(b.events, int) and _concerns(event, b.events)):
                b.events_lost += 1

    def _flush_events(self) -> None:
        self.events_at = None
        events = list(self.pending_events)
        self.pending_events.clear()
        everything: str | None = None
        for b in self.browsers:
            if b.events_lost:
                b.wake.set()  # its writer reports them, even with nothing new for it below
            if not events:
                continue
            if b.events == "*":
                if everything is None:
                    everything = _events_frame(events)
                b.push(everything, len(events))
            elif isinstance(b.events, int):
                conn = b.events
                mine = [e for e in events if _concerns(e, conn)]
                if mine:
                    b.push(_events_frame(mine), len(mine))


__all__ = ["Browser", "HopWatch", "LiveHub", "conn_row", "record_maps"]
