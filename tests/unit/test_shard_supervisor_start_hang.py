"""A restarted shard that never gets to listen is hung, whether it says nothing (silent, as
`daemon.heartbeat_timeout_s` catches it) or keeps reporting its counts while its start-up
waits for good (its loop runs: a count reporter starts with its control channel, before it
listens): docs/configuration.md, a shard must listen within the start timeout of its start.
Real shard processes in this process's supervisor (`tests.unit.test_shard_supervisor_stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from chimneyd.shards import supervisor as supervisor_module
from chimneyd.shards.control import ControlCodec
from chimneyd.shards.listen import reserve
from tests.unit.test_shard_supervisor_stale import StoppingSupervisor, until
from tests.unit.test_shard_supervisor_stop import (
    WAIT_S,
    named,
    running_shard,
    shard_config,
    tear_down,
)

START_S = 3.0  # the start timeout in this test (60 s in the daemon)


async def test_a_restarted_shard_that_reports_but_never_listens_is_hung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "START_TIMEOUT_S", START_S)
    config = shard_config(tmp_path, "heartbeat_timeout_s = 5.0")
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    sup = StoppingSupervisor(config, held, stop_at=2)
    procs: list[subprocess.Popen[bytes]] = []
    shard = sup.shards[0]
    feeding: asyncio.Task[None] | None = None
    try:
        first = await running_shard(sup, procs)
        sup.watching = asyncio.ensure_future(sup._watch())
        with capture_logs() as logs:
            os.kill(first, signal.SIGKILL)  # restarted at once, its process stopped (SIGSTOP)
            await until(lambda: shard.gen == 1 and shard.link is not None, "no restart")
            second = shard.proc
            assert second is not None
            procs.append(second)
            link = shard.link
            assert link is not None

            async def reports() -> None:
                # what a shard whose loop runs but whose start-up never ends sends: its counts
                # every second (here more often), never `ready`
                while not link.closed:
                    link.data_received(ControlCodec.notify("counts", [{}, time.monotonic()]))
                    await asyncio.sleep(0.2)

            feeding = asyncio.ensure_future(reports())
            # bounded well past the start timeout, and short of what silence alone would need
            # were the reports not coming (none is silent here: heard every 0.2 s)
            await asyncio.wait_for(shard.exited.wait(), 4 * START_S + 5.0)
            # the next start (after a back-off of 0.1 s) gets the daemon's own bound: a loaded
            # machine may take more than START_S to start a shard
            sup.start_timeout = WAIT_S
            await until(lambda: shard.gen == 2 and shard.ready.is_set(), "no second restart")
            assert shard.proc is not None
            procs.append(shard.proc)
        (hung,) = named(logs, "shard_hung")
        assert hung["why"] == "start_timeout" and hung["pid"] == second.pid, hung
        # the start timeout, or the heartbeat timeout where that is longer (5 s here)
        assert hung["bound_s"] == max(START_S, 5.0), hung
        (died,) = [e for e in named(logs, "shard_died") if e["pid"] == second.pid]
        assert died["hung"] == "start_timeout" and died["how"] == "signal SIGKILL", died
    finally:
        if feeding is not None:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        tear_down(sup, held, procs)
    assert WAIT_S > 4 * START_S
