"""A shard's side of the control channel (`Cluster`): when the supervisor stops reading it
(held up or stuck), the events the shard forwards up for admins watching `"*"` must not grow
the shard's memory without bound; and its reports, by which the supervisor knows it alive,
go on whatever a bug does to its counters."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from structlog.testing import capture_logs

from chimneyd.api import EngineAPI
from chimneyd.shards.cluster import Cluster
from chimneyd.shards.control import ControlCodec, Notification
from chimneyd.shards.link import ControlLink

#: README "Shards": events to a peer with this much unread are dropped
BOUND = 8 * 1024 * 1024
EVENT_PAD = 4096

EventCallback = Callable[[int, str, dict[str, Any]], None]


class OneSubscriber:
    """The one `subscribe` the cluster makes of its engine (to forward every event up)."""

    def __init__(self) -> None:
        self.callback: EventCallback | None = None

    def subscribe(self, conn: int | None, callback: EventCallback) -> Callable[[], None]:
        assert conn is None
        self.callback = callback

        def stop() -> None:
            self.callback = None

        return stop


def unread(link: ControlLink) -> int:
    """What the cluster wrote that the supervisor has not read (beyond the kernel's buffer)."""
    assert link.transport is not None
    return link.transport.get_write_buffer_size()


async def test_events_forwarded_to_a_supervisor_that_does_not_read_are_bounded() -> None:
    bound = BOUND
    ours, supervisors = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    engine = OneSubscriber()
    cluster = Cluster(0, 2, 1.0)
    cluster.parts = lambda what, arg: {}
    try:
        await cluster.connect(ours, b"", cast(EngineAPI, engine))
        link = cluster.link
        assert link is not None
        cluster._on_notification("forward", [True])  # an admin of another shard watches "*"
        assert engine.callback is not None
        info = {"pad": "x" * EVENT_PAD}
        most = 0
        with capture_logs() as logs:
            for conn in range(3 * bound // EVENT_PAD):
                engine.callback(conn, "offloaded", info)
                most = max(most, unread(link))
        assert most <= bound + 2 * EVENT_PAD, (most, bound)
        dropping = [e for e in logs if e["event"] == "shard_events_up_dropping"]
        assert len(dropping) == 1, dropping
        # the supervisor reads again: what is queued drains, and events go up again
        supervisors.setblocking(False)
        while unread(link) > bound // 4:
            try:
                supervisors.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0)  # the loop writes more once the socket has room
        with capture_logs() as logs:
            engine.callback(0, "closed", {})
        (dropped,) = [e for e in logs if e["event"] == "shard_events_up_dropped"]
        assert dropped["dropped"] > 0, dropped
    finally:
        cluster.close()
        supervisors.close()


async def test_a_shard_whose_counts_fail_still_shows_it_is_alive() -> None:
    """The supervisor takes a shard silent for `daemon.heartbeat_timeout_s` for hung and kills
    it; a shard reports its counters every second. A bug that makes reading them fail (logged,
    `shard_counts_failed`) must not make a live shard silent, and so killed every 30 s."""
    ours, supervisors = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cluster = Cluster(0, 2, 1.0)

    def broken(what: str, arg: Any) -> Any:
        raise RuntimeError(f"a bug in {what}")

    cluster.parts = broken
    try:
        await cluster.connect(ours, b"", cast(EngineAPI, OneSubscriber()))
        with capture_logs() as logs:
            cluster.report()
        assert [e["event"] for e in logs] == ["shard_counts_failed"], logs
        supervisors.settimeout(10.0)
        (frame,) = ControlCodec().feed(supervisors.recv(1 << 16))
        assert isinstance(frame, Notification) and frame.method == "counts", frame
        assert frame.params[0] == {}, frame
    finally:
        cluster.close()
        supervisors.close()
