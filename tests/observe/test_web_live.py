"""The web view's server side on its own, with stand-in sockets: what a browser's bounded queue
lets go is counted, never lost in silence; stopping is bounded whatever the pages do."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from aiohttp import WSMsgType, web

from chimneyd.observe.web.live import OUTBOX_BYTES, OUTBOX_FRAMES, Browser, LiveHub
from chimneyd.observe.web.server import Guard, HttpSite


class FakeSocket:
    """Records the text frames sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def written(b: Browser, ws: FakeSocket, frames: int) -> None:
    """Run the page's writer until it has sent `frames` frames (bounded), then stop it."""
    writer = asyncio.get_running_loop().create_task(b.write())
    try:
        for _ in range(100):
            await asyncio.sleep(0)
            if len(ws.sent) == frames:
                break
    finally:
        writer.cancel()


async def test_events_a_full_queue_lets_go_are_reported_first() -> None:
    ws = FakeSocket()
    b = Browser(ws, None)  # type: ignore[arg-type]
    extra = 10
    for i in range(OUTBOX_FRAMES + extra):
        b.push(json.dumps({"type": "events", "events": [{"i": i}, {"i": i}]}), 2)
    b.push(json.dumps({"type": "stats"}))  # a frame without events lets one more go
    await written(b, ws, OUTBOX_FRAMES + 1)
    first, rest = ws.sent[0], ws.sent[1:]
    assert first == {"type": "events", "events": [], "dropped": 2 * (extra + 1)}
    assert len(rest) == OUTBOX_FRAMES
    kept = [e["i"] for f in rest if f["type"] == "events" for e in f["events"]]
    carried = len(kept) + first["dropped"]
    assert carried == 2 * (OUTBOX_FRAMES + extra), "every event: sent, or counted as dropped"


async def test_hops_a_full_queue_lets_go_are_reported_first() -> None:
    """As events: hop records in frames a slow page's queue let go (and the counts those
    frames carried) reach the page as one `dropped` count, on the connection it watches."""
    ws = FakeSocket()
    b = Browser(ws, None)  # type: ignore[arg-type]
    b.hops = 7
    extra = 5
    for i in range(OUTBOX_FRAMES + extra):
        frame = {"type": "hops", "conn": 7, "hops": [{"i": i}] * 3, "dropped": 1}
        b.push(json.dumps(frame), hops=4)
    await written(b, ws, OUTBOX_FRAMES + 1)
    first, rest = ws.sent[0], ws.sent[1:]
    assert first == {"type": "hops", "conn": 7, "hops": [], "dropped": 4 * extra}
    carried = sum(len(f["hops"]) + f["dropped"] for f in rest) + first["dropped"]
    assert carried == 4 * (OUTBOX_FRAMES + extra), "every hop: sent, or counted as dropped"


async def test_a_slow_pages_queue_is_bounded_in_bytes() -> None:
    """Frames of large snapshots (a page of 1,000 rows, a trace) fill a stalled page's queue
    long before 256 frames: its bytes are bounded too, the oldest let go and counted."""
    ws = FakeSocket()
    b = Browser(ws, None)  # type: ignore[arg-type]
    big = "x" * (OUTBOX_BYTES // 8)
    pushed = 40
    for i in range(pushed):
        b.push(json.dumps({"type": "events", "events": [{"i": i, "pad": big}]}), 1)
        assert sum(len(t) for t, _, _ in b.outbox) <= OUTBOX_BYTES
    assert b.queued == sum(len(t) for t, _, _ in b.outbox)
    kept = len(b.outbox)
    assert 0 < kept < pushed
    await written(b, ws, kept + 1)
    first, rest = ws.sent[0], ws.sent[1:]
    assert first == {"type": "events", "events": [], "dropped": pushed - kept}
    assert [f["events"][0]["i"] for f in rest] == list(range(pushed - kept, pushed))
    assert b.queued == 0, "what was sent no longer counts against the bound"


async def test_one_frame_larger_than_the_bound_is_still_sent() -> None:
    """The bound lets older frames go, never the newest: a snapshot larger than the bound
    on its own still reaches the page, whole."""
    ws = FakeSocket()
    b = Browser(ws, None)  # type: ignore[arg-type]
    b.push(json.dumps({"type": "events", "events": [{"pad": "y" * OUTBOX_BYTES}]}), 1)
    await written(b, ws, 1)
    assert len(ws.sent) == 1
    assert len(ws.sent[0]["events"][0]["pad"]) == OUTBOX_BYTES


class SilentPage:
    """A page's socket whose close handshake never ends (the page does not answer it)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    async def close(self, **kw: Any) -> bool:
        self.closing.set()
        await asyncio.Event().wait()
        return True


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_closing_cuts_every_page_that_does_not_answer() -> None:
    """The daemon's stop has one deadline: pages that never finish the close handshake are
    closed together and cut, not waited for one after another without end."""
    hub = LiveHub(None, dict, SimpleNamespace(max_clients=4))
    pages = [(SilentPage(), Transport()) for _ in range(3)]
    for ws, transport in pages:
        hub.browsers.add(Browser(ws, transport))  # type: ignore[arg-type]
    await asyncio.wait_for(hub.close(0.05), 10)  # a bound, not a measurement
    assert all(ws.closing.is_set() and transport.aborted for ws, transport in pages)
    assert not hub.browsers and hub.closing


async def test_a_request_under_way_does_not_hold_the_stop() -> None:
    """`HttpSite.stop` is bounded: a handler that does not end is cut (aiohttp's own shutdown
    waits up to a minute for it)."""
    started = asyncio.Event()

    async def forever(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/slow", forever)
    site = HttpSite(app, Guard("", "127.0.0.1", 0), "127.0.0.1", 0)
    address = await site.start()
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /slow HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(site.stop(0.2), 10)  # a bound, not a measurement
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, unanswered
    finally:
        writer.close()


class Burst:
    """A page's socket whose messages are all there at once, as those of one read are."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def __aiter__(self) -> Any:
        for text in self.texts:
            yield SimpleNamespace(type=WSMsgType.TEXT, data=text)


async def test_a_burst_of_messages_from_a_page_does_not_hold_the_loop() -> None:
    """Each message is answered with a snapshot: a burst of them from one page (a read's
    worth) answered in one go held every RPC client and connection of the daemon until the
    last (seconds for a few thousand). Something else scheduled meanwhile runs long before
    the burst is done."""
    hub = LiveHub(None, lambda: {}, SimpleNamespace(max_clients=4))
    n = 2000
    answered = 0
    seen_at: list[int] = []

    def snapshot() -> dict[str, Any]:
        nonlocal answered
        answered += 1
        if answered == 1:  # other work, due as soon as the loop is free
            asyncio.get_running_loop().call_soon(lambda: seen_at.append(answered))
        return {"type": "stats"}

    hub.stats_frame = snapshot  # type: ignore[method-assign]
    b = Browser(FakeSocket(), None)  # type: ignore[arg-type]
    sub = json.dumps({"op": "sub", "topic": "stats"})
    await asyncio.wait_for(hub._serve(b, Burst([sub] * n)), 30)
    assert answered == n
    assert seen_at and seen_at[0] < n // 10, f"the loop ran other work after {seen_at} of {n}"
