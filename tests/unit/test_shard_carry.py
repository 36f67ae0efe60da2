"""The supervisor's side of the counters it keeps for a daemon of several shards: what a shard
wrote on its control channel just before it ended is read before the channel is closed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from chimneyd.shards.control import ControlCodec
from chimneyd.shards.link import ControlLink
from chimneyd.shards.supervisor import Supervisor


async def test_what_an_ended_shard_wrote_is_read_before_its_channel_is_closed() -> None:
    """A shard stopping cleanly reports its counts, then exits: the supervisor may see the
    process end before its loop has read that report (docs/metrics.md "Shards": a clean stop
    loses nothing). `_drain` hands the link what is left on the channel first."""
    loop = asyncio.get_running_loop()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peek = mine.dup()
    heard: list[tuple[str, list[Any]]] = []
    _, link = await loop.create_unix_connection(
        lambda: ControlLink(
            "test", lambda m, p: None, lambda m, p: heard.append((m, p)), peek.close
        ),
        sock=mine,
    )
    try:
        report: list[Any] = [{"layers": {"nic0": {"bytes_sent": 4096}}}, 1.5]
        theirs.sendall(ControlCodec.notify("counts", report))
        theirs.close()
        # the loop has not run since: nothing read yet
        assert heard == []
        Supervisor._drain(link, peek)
        assert heard == [("counts", report)]
    finally:
        link.close()
        await asyncio.sleep(0)
    # the link closed: so is the second descriptor, and the channel with it
    assert peek.fileno() == -1
