"""What a shard's control channel still held when its process ended (`Supervisor._drain`
reads it, so its last report of counts is not lost) is the dead process's: a `ready` or a
`watch` in it must not make the shard look running, ready or watched until its restart, nor
log a restart that did not take. Real shard processes in this process's supervisor
(`tests.unit.test_shard_supervisor_stop`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from chimneyd.config import Config
from chimneyd.shards.control import ControlCodec
from chimneyd.shards.link import ControlLink
from chimneyd.shards.listen import Reservation, reserve
from chimneyd.shards.supervisor import Supervisor
from tests.unit.test_shard_supervisor_stop import (
    WAIT_S,
    named,
    running_shard,
    shard_config,
    tear_down,
)


class StoppingSupervisor(Supervisor):
    """Stops (SIGSTOP) the shard process whose control channel is the `stop_at`-th connected
    (with `and_after`, that one and every later one), before the supervisor's `hello` reaches
    it: it can have said nothing, `ready` least of all (a shard needs its hello to listen)."""

    def __init__(
        self, config: Config, held: Reservation, stop_at: int, and_after: bool = False
    ) -> None:
        super().__init__(config, held, {})
        self.stop_at = stop_at
        self.and_after = and_after
        self.connects = 0

    async def _connect(
        self, sock: socket.socket, factory: Callable[[], ControlLink]
    ) -> ControlLink:
        self.connects += 1
        proc = self.shards[0].proc
        due = self.connects >= self.stop_at if self.and_after else self.connects == self.stop_at
        if due and proc is not None:
            os.kill(proc.pid, signal.SIGSTOP)
        return await super()._connect(sock, factory)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_ready_left_in_a_dead_shards_channel_changes_nothing(tmp_path: Path) -> None:
    config = shard_config(tmp_path)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    sup = StoppingSupervisor(config, held, stop_at=2)
    procs: list[subprocess.Popen[bytes]] = []
    shard = sup.shards[0]
    try:
        with capture_logs() as logs:
            first = await running_shard(sup, procs)
            os.kill(first, signal.SIGKILL)  # restarted at once (the first back-off is 0)
            await until(lambda: shard.gen == 1 and shard.link is not None, "no restart")
            second = shard.proc
            assert second is not None and second.pid != first
            procs.append(second)
            assert shard.state == "starting" and not shard.ready.is_set()
            # what the stopped process's channel holds when it ends, as `_drain` reads it: a
            # `ready` (as a shard that listened and died before the loop read it would leave)
            # and a `watch` of an admin of that process
            theirs, peek = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            assert shard.peek is not None
            shard.peek.close()
            shard.peek = peek
            theirs.sendall(
                ControlCodec.notify("ready", [{"pid": second.pid}])
                + ControlCodec.notify("watch", [True])
            )
            theirs.close()
            os.kill(second.pid, signal.SIGKILL)
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            seen: dict[str, Any] = {
                "state": shard.state,
                "ready": shard.ready.is_set(),
                "watched": 0 in sup.watchers,
                "restarted": named(logs, "shard_restarted"),
            }
            assert seen == {"state": "down", "ready": False, "watched": False, "restarted": []}
            # the next process starts, listens, and is the one restart that took
            await until(lambda: shard.gen == 2 and shard.ready.is_set(), "no second restart")
            assert shard.proc is not None
            procs.append(shard.proc)
        restarted = named(logs, "shard_restarted")
        assert [(e["gen"], e["pid"]) for e in restarted] == [(2, shard.proc.pid)], restarted
        assert shard.state == "running" and 0 not in sup.watchers
    finally:
        tear_down(sup, held, procs)
