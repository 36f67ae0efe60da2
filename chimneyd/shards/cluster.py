"""A shard's side of the control channel: `api.ClusterAPI` for its RPC methods, and what the
supervisor asks of it.

Supervisor → shard: `part [what, arg]` (this shard's part of a daemon-wide answer, from the RPC
server's `ShardParts`), `forward [on]` (send every event of this shard up: some shard has an
admin watching `"*"`), `event [shard, conn, event, info]` (another shard's event, for this
shard's watching admins).
Shard → supervisor: `ask [what, arg, targets]` (the parts of other shards, each answered in time
or marked failed), `ask [what, arg, targets, mine]` (a part that counts, `stats` or `metrics`,
with this shard's own counts: answered `{"parts", "carried"}`, see `gather_counted`), `watch
[on]` (this shard has admins watching `"*"`, or none any more), `event [conn, event, info]`
(while forwarding), `ready [info]` (listening), `counts [changed, taken]` (its counts that
changed since its last report, every `COUNTS_INTERVAL_S` and once more on a clean stop;
`taken`: its `time.monotonic()` then).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from chimneyd.api import (
    EngineAPI,
    EngineError,
    ErrorCode,
    RemoteEventCallback,
    ShardReply,
)
from chimneyd.observe.aggregate import changed, counts

from .link import EVENTS_QUEUED_MAX, ControlLink, answer_error

log = structlog.get_logger("chimneyd.shards")

#: A shard waits this much longer than the supervisor waits for the other shards: the
#: supervisor's answer (with any shard that timed out marked so) always comes first.
ASK_MARGIN_S = 2.0
#: How often a shard reports its counters to the supervisor, which keeps them for the daemon's
#: sums (`aggregate.CounterCarry`): what a shard killed outright counted since its last report,
#: and nobody read, is lost (docs/metrics.md "Shards"). A report is the counters that changed,
#: a few dozen numbers, read off counts the layers keep anyway: nothing on the data path.
COUNTS_INTERVAL_S = 1.0


class Cluster:
    """The other shards of the daemon, seen from shard `index` of `count`."""

    def __init__(self, index: int, count: int, timeout: float) -> None:
        self.index = index
        self.count = count
        self.timeout = timeout
        self.parts: Callable[[str, Any], Any] | None = None  # this shard's answers (ShardParts)
        self.engine: EngineAPI | None = None
        self.link: ControlLink | None = None
        self.watchers: set[RemoteEventCallback] = set()
        self.lost = asyncio.Event()  # the supervisor is gone: the shard stops
        self._forwarding: Callable[[], None] | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._reported: dict[str, Any] = {}  # the counts as the supervisor has them
        self._dropped = 0  # events not sent up since the supervisor's unread passed the bound

    async def connect(self, sock: socket.socket, leftover: bytes, engine: EngineAPI) -> None:
        """Serve the control channel on `sock` (`leftover`: bytes read after the hello)."""
        self.engine = engine
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(
            lambda: ControlLink(
                f"shard{self.index}", self._on_request, self._on_notification, self._on_lost
            ),
            sock=sock,
        )
        self.link = link
        if leftover:
            link.data_received(leftover)
        self._reporting = loop.create_task(self._report_every())

    # -- api.ClusterAPI ---------------------------------------------------------------------------
    def local(self, what: str, arg: Any = None) -> Any:
        assert self.parts is not None, "the RPC server gives the cluster its parts"
        return self.parts(what, arg)

    async def ask(self, what: str, arg: Any, targets: list[int]) -> dict[int, ShardReply]:
        if not targets:
            return {}
        replies, _ = await self._ask([what, arg, targets], targets)
        return replies

    async def _ask(
        self, params: list[Any], targets: list[int]
    ) -> tuple[dict[int, ShardReply], dict[str, Any]]:
        """The supervisor's answer to `ask params`: each target's reply, and what it carries
        (only for a part that counts, asked with this shard's own)."""
        link = self.link
        if link is None:
            err = EngineError(ErrorCode.INTERNAL, "no control channel")
            return {t: ShardReply("failed", error=err) for t in targets}, {}
        answer = await link.request("ask", params, self.timeout + ASK_MARGIN_S)
        if answer.expired or answer.error is not None:
            err = answer_error(answer, "the supervisor", self.timeout + ASK_MARGIN_S)
            return {t: ShardReply("failed", error=err) for t in targets}, {}
        result, carried = answer.result, {}
        if isinstance(result, dict):
            result, carried = result["parts"], dict(result["carried"] or {})
        out: dict[int, ShardReply] = {}
        for shard, state, payload in result:
            if state == "ok":
                out[shard] = ShardReply("ok", payload)
            elif state == "down":
                out[shard] = ShardReply("down")
            elif state == "timeout":
                detail = f"shard {shard} did not answer within {self.timeout:g} s"
                out[shard] = ShardReply("failed", error=EngineError(ErrorCode.TIMEOUT, detail))
            else:
                out[shard] = ShardReply("failed", error=_error(shard, payload))
        return out, carried

    async def gather(self, what: str, arg: Any = None) -> dict[int, Any]:
        others = [k for k in range(self.count) if k != self.index]
        replies = await self.ask(what, arg, others)
        return self._parts(replies, lambda: self.local(what, arg))

    async def gather_counted(self, what: str) -> tuple[dict[int, Any], dict[str, Any]]:
        # this shard's own part goes with the ask: the supervisor records its counts before
        # anyone sees them, so a restart of this shard cannot take them back (CounterCarry)
        mine = self.local(what)
        others = [k for k in range(self.count) if k != self.index]
        replies, carried = await self._ask([what, None, others, counts(what, mine)], others)
        return self._parts(replies, lambda: mine), carried

    def _parts(self, replies: dict[int, ShardReply], mine: Callable[[], Any]) -> dict[int, Any]:
        parts: dict[int, Any] = {}
        for k in range(self.count):
            if k == self.index:
                parts[k] = mine()
                continue
            reply = replies.get(k)
            if reply is None or reply.state == "failed":
                raise (reply.error if reply and reply.error else _error(k, None))
            parts[k] = reply.result if reply.state == "ok" else None
        return parts

    def watch(self, callback: RemoteEventCallback) -> Callable[[], None]:
        if not self.watchers and self.link is not None:
            self.link.notify("watch", [True])
        self.watchers.add(callback)

        def stop() -> None:
            self.watchers.discard(callback)
            if not self.watchers and self.link is not None:
                self.link.notify("watch", [False])

        return stop

    # -- towards the supervisor -------------------------------------------------------------------
    def ready(self, info: dict[str, Any]) -> None:
        if self.link is not None:
            self.link.notify("ready", [info])

    def close(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
        # on its way out: what it counted since its last report (a clean stop loses nothing)
        self.report()
        self._forward(False)
        if self.link is not None:
            self.link.close()

    def report(self) -> None:
        """Tell the supervisor this shard's counts that changed since the last report (an
        empty report when none did), with when they were taken."""
        link = self.link
        if link is None or self.parts is None:
            return
        try:
            now: dict[str, Any] = self.local("counts")
            link.notify("counts", [changed(now, self._reported), time.monotonic()])
        except Exception as exc:  # a bug: the next report tries again
            log.error("shard_counts_failed", exc_info=exc)
            # an empty report all the same: the supervisor takes a shard silent for
            # `daemon.heartbeat_timeout_s` for hung, and this one is alive
            link.notify("counts", [{}, time.monotonic()])
            return
        self._reported = now

    async def _report_every(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL_S)
            self.report()

    # -- from the supervisor ----------------------------------------------------------------------
    def _on_request(self, method: str, params: list[Any]) -> Any:
        if method == "part" and len(params) == 2 and isinstance(params[0], str):
            return self.local(params[0], params[1])
        raise EngineError(ErrorCode.NO_METHOD, f"no control method {method!r}")

    def _on_notification(self, method: str, params: list[Any]) -> None:
        if method == "event" and len(params) == 4:
            shard, conn, event, info = params
            for callback in list(self.watchers):
                callback(shard, conn, event, info)
        elif method == "forward" and params:
            self._forward(bool(params[0]))
        else:
            log.warning("control_notification_unknown", method=method)

    def _forward(self, on: bool) -> None:
        """Send this shard's events up to the supervisor, while some shard has watchers."""
        if on and self._forwarding is None and self.engine is not None:
            link = self.link

            def up(conn: int, event: str, info: dict[str, Any]) -> None:
                if link is not None and self._room(link):
                    link.notify("event", [conn, event, info])

            self._forwarding = self.engine.subscribe(None, up)
        elif not on and self._forwarding is not None:
            self._forwarding()
            self._forwarding = None

    def _room(self, link: ControlLink) -> bool:
        """Whether an event may go up: not while the supervisor has `EVENTS_QUEUED_MAX` unread
        (held up or stuck: its watching admins miss them, logged), until that drains below a
        quarter of it."""
        queued = link.queued
        if queued > (EVENTS_QUEUED_MAX // 4 if self._dropped else EVENTS_QUEUED_MAX):
            if not self._dropped:
                log.warning("shard_events_up_dropping", queued=queued, bound=EVENTS_QUEUED_MAX)
            self._dropped += 1
            return False
        if self._dropped:
            log.warning("shard_events_up_dropped", dropped=self._dropped)
            self._dropped = 0
        return True

    def _on_lost(self) -> None:
        self.link = None
        self.lost.set()


def _error(shard: int, payload: Any) -> EngineError:
    if isinstance(payload, list) and len(payload) == 2:
        try:
            code = ErrorCode(int(payload[0]))
        except (ValueError, TypeError):
            code = ErrorCode.INTERNAL
        message = str(payload[1])
        detail = message.split(": ", 1)[1] if message.startswith(f"{code.name}: ") else message
        return EngineError(code, f"shard {shard}: {detail}")
    return EngineError(ErrorCode.INTERNAL, f"shard {shard}: no answer")


__all__ = ["ASK_MARGIN_S", "COUNTS_INTERVAL_S", "Cluster"]
