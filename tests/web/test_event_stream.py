"""The event stream under a burst of events: every event reaches the page or is counted as not
shown, over the WebSocket and on the events page."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from tests.web.support import WebDaemon, web_daemon

BURST = 1500  # fault.inject requests pipelined at once: one `fault_injected` event each; more
# than one 100 ms batch keeps (MAX_EVENTS_PER_PUSH)


async def inject_burst(w: WebDaemon) -> None:
    c = await w.daemon.aclient()
    try:
        await asyncio.gather(
            *(
                c.fault_inject("delay", layer="nic0", call="MiniportTcpOffloadSend", ms=1)
                for _ in range(BURST)
            )
        )
    finally:
        await c.close()


async def clear_faults(w: WebDaemon) -> None:
    c = await w.daemon.aclient()
    try:
        await c.fault_clear("*")
    finally:
        await c.close()


async def burst_and_listen(w: WebDaemon) -> tuple[int, list[dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(w.url + "/ws")
        try:
            await ws.send_str(json.dumps({"op": "sub", "topic": "events"}))
            first = json.loads((await ws.receive(timeout=10)).data)
            assert first.get("backlog"), first  # subscribed: what comes next is new
            await inject_burst(w)
            frames: list[dict[str, Any]] = []
            heard = told = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 30.0  # a bound, not a measurement
            while heard + told < BURST and loop.time() < end:
                try:
                    msg = await ws.receive(timeout=max(0.1, end - loop.time()))
                except TimeoutError:
                    break
                frame = json.loads(msg.data)
                if frame.get("type") == "events":
                    frames.append({k: v for k, v in frame.items() if k != "events"})
                    heard += sum(e["event"] == "fault_injected" for e in frame["events"])
                    told += int(frame.get("dropped", 0))
            await clear_faults(w)
        finally:
            await ws.close()
        return heard, frames


def test_event_frames_count_the_events_they_could_not_carry(tmp_path: Path) -> None:
    """`LiveHub` keeps at most MAX_EVENTS_PER_PUSH events per 100 ms batch: the older ones it
    lets go are counted in an `events` frame's `dropped`, as a `hops` frame does."""
    with web_daemon(tmp_path) as w:
        heard, frames = asyncio.run(burst_and_listen(w))
        told = sum(int(f.get("dropped", 0)) for f in frames)
        assert heard + told == BURST, (
            f"{BURST} faults injected: {heard} fault_injected events reached the page, "
            f"{told} reported dropped; frames {frames}"
        )


def in_a_thread(fn: Callable[[WebDaemon], Coroutine[Any, Any, None]], w: WebDaemon) -> None:
    """Run `fn(w)` on its own event loop: Playwright's sync API holds this thread's."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(fn(w))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive() and not errors, errors


COUNT = re.compile(r"^([\d,]+) seen since this page opened(?:, ([\d,]+) not shown \(too many\))?$")


def test_the_events_page_says_how_many_it_did_not_show(wd: WebDaemon, page: Any) -> None:
    """ "N seen since this page opened" counts every event, listed or not, and says how many
    were not shown."""
    page.goto(wd.url + "/events")
    page.wait_for_selector("#status.on")
    page.wait_for_function("document.getElementById('event-count') !== null")
    in_a_thread(inject_burst, wd)
    try:
        page.wait_for_function(
            "n => /^[\\d,]+ seen/.test(document.getElementById('event-count').textContent)"
            " && Number(document.getElementById('event-count').textContent"
            ".split(' ')[0].replaceAll(',', '')) >= n",
            arg=BURST,
        )
        text = page.text_content("#event-count") or ""
        m = COUNT.match(text)
        assert m, text
        seen = int(m.group(1).replace(",", ""))
        not_shown = int((m.group(2) or "0").replace(",", ""))
        assert seen == BURST, text  # nothing else happens on this daemon meanwhile
        rows = page.locator('#events tr[data-event="fault_injected"]').count()
        assert rows == min(1000, seen - not_shown), (text, rows)  # the list keeps 1,000 rows
    finally:
        in_a_thread(clear_faults, wd)
