"""A shard that listened at the daemon's start-up and then ended is restarted, not taken for one
that never started, whichever the loop noticed first: its `ready` read from the channel while
it ran, or its end (its `ready` then read from what the channel still held, `Supervisor._drain`).
Such a drained `ready` says nothing of the shard's next process (it must not make it look
running or ready), but it does say that this process listened. Real shard processes in this
process's supervisor (`tests.unit.test_shard_supervisor_stop`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

from structlog.testing import capture_logs

from chimneyd.shards.control import ControlCodec
from chimneyd.shards.listen import reserve
from tests.unit.test_shard_supervisor_stale import StoppingSupervisor, until
from tests.unit.test_shard_supervisor_stop import (
    WAIT_S,
    named,
    shard_config,
    spawned,
    tear_down,
)


async def test_a_start_up_shard_whose_ready_is_read_after_its_end_is_restarted(
    tmp_path: Path,
) -> None:
    config = shard_config(tmp_path)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    # the first process is stopped before its hello: it says nothing the loop could read live
    sup = StoppingSupervisor(config, held, stop_at=1)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with capture_logs() as logs:
            shard = await spawned(sup, procs)
            assert shard.proc is not None and shard.gen == 0
            starting = asyncio.ensure_future(sup._all_ready())
            # what its channel holds when it ends: the `ready` it wrote as it listened (the
            # loop noticed its end first)
            theirs, peek = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            assert shard.peek is not None
            shard.peek.close()
            shard.peek = peek
            theirs.sendall(ControlCodec.notify("ready", [{"pid": shard.proc.pid}]))
            theirs.close()
            # the loop notices the end first: the channel's own close is not read before it
            assert shard.link is not None and shard.link.transport is not None
            shard.link.transport.pause_reading()
            os.kill(shard.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            (died,) = named(logs, "shard_died")
            assert died["then"] == "restart", died
            # the start-up goes on, as it would have had the loop read the `ready` first
            assert await asyncio.wait_for(starting, WAIT_S) is True
            await until(lambda: shard.gen == 1 and shard.ready.is_set(), "no restart")
            assert shard.proc is not None
            procs.append(shard.proc)
    finally:
        tear_down(sup, held, procs)
