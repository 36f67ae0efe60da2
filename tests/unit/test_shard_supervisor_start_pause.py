"""Time the supervisor itself was held up does not count against a shard's start at the daemon's
start-up either (docs/configuration.md, `daemon.heartbeat_timeout_s`): after a Ctrl-Z of the
whole group, the shards were held up as long as the supervisor and have their start-up bound
still to come, as `_watch` allows a restarted shard (`start_by`). The start-up's wait had one
fixed deadline: past it when the group ran again, the daemon stopped ("a shard did not start")
without waiting a moment for shards that had not yet had their time. Real shard processes in
this process's supervisor (`tests.unit.test_shard_supervisor_stop`); the supervisor is held up
by blocking its loop, the shard by SIGSTOP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from chimneyd.shards.listen import reserve
from tests.unit.test_shard_supervisor_stale import StoppingSupervisor
from tests.unit.test_shard_supervisor_stop import WAIT_S, shard_config, spawned

START_S = 10.0  # the start-up bound here (60 s in the daemon): a shard starts well within it,
# even on a machine so loaded that the suite takes 3-4 times as long (5 s was missed there)


async def test_a_start_up_held_up_with_the_supervisor_still_gets_its_bound(tmp_path: Path) -> None:
    config = shard_config(tmp_path)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    # the shard is stopped before its hello: it can have done nothing of its start-up
    sup = StoppingSupervisor(config, held, stop_at=1)
    sup.start_timeout = START_S
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shard = await spawned(sup, procs)
        assert shard.proc is not None
        waiting = asyncio.ensure_future(sup._all_ready())
        await asyncio.sleep(0)  # the start-up wait is armed
        # the whole group held up (a Ctrl-Z) past the start-up bound: the supervisor's loop
        # blocked, the shard stopped; then both go on
        time.sleep(START_S * 1.5)
        os.kill(shard.proc.pid, signal.SIGCONT)
        assert await asyncio.wait_for(waiting, WAIT_S) is True
        assert shard.ready.is_set() and shard.state == "running"
    finally:
        sup.stopping = True
        held.close()
        for proc in [*procs, *(s.proc for s in sup.shards if s.proc is not None)]:
            if proc.poll() is None:
                proc.kill()  # stopped or not
                proc.wait(5)
