"""The web view's WebSocket side (`LiveHub`, `Browser`) on its own, with a stand-in socket:
what a browser's bounded queue lets go is counted, never lost in silence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from chimneyd.observe.web.live import OUTBOX_FRAMES, Browser


class FakeSocket:
    """Records the text frames sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def test_events_a_full_queue_lets_go_are_reported_first() -> None:
    ws = FakeSocket()
    b = Browser(ws, None)  # type: ignore[arg-type]
    extra = 10
    for i in range(OUTBOX_FRAMES + extra):
        b.push(json.dumps({"type": "events", "events": [{"i": i}, {"i": i}]}), 2)
    b.push(json.dumps({"type": "stats"}))  # a frame without events lets one more go
    writer = asyncio.get_running_loop().create_task(b.write())
    try:
        for _ in range(100):
            await asyncio.sleep(0)
            if len(ws.sent) == OUTBOX_FRAMES + 1:
                break
    finally:
        writer.cancel()
    first, rest = ws.sent[0], ws.sent[1:]
    assert first == {"type": "events", "events": [], "dropped": 2 * (extra + 1)}
    assert len(rest) == OUTBOX_FRAMES
    kept = [e["i"] for f in rest if f["type"] == "events" for e in f["events"]]
    carried = len(kept) + first["dropped"]
    assert carried == 2 * (OUTBOX_FRAMES + extra), "every event: sent, or counted as dropped"
