"""A daemon of two shards (`chimneyd --shards 2`) as its supervisor watches them: how a shard's
end is logged, and a shard that hangs (SIGSTOP: silent on its control channel) is killed and
started again. Read from the daemon's JSON log lines.

Each test states what the docs promise (README "Shards", docs/configuration.md `[daemon]`)
and checks it on a real daemon."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.e2e.test_shard_signals import RESTART_WAIT_S, restarted, shard_pid
from tests.e2e.test_shards import closing, on_shards, sharded


def test_a_clean_stop_logs_how_every_shard_ended(tmp_path: Path) -> None:
    """`shard_died` names how a shard ended ("signal SIGKILL"); `shard_exited` and
    `supervisor_stopped` name it the same way, not as raw return codes."""
    with sharded(tmp_path) as d:
        assert d.stop() == 0, d.log_tail()
        exited = sorted((e["shard"], e["how"]) for e in d.events_named("shard_exited"))
        assert exited == [(0, "exit status 0"), (1, "exit status 0")], d.log_tail()
        (stopped,) = d.events_named("supervisor_stopped")
        assert stopped["how"] == {"0": "exit status 0", "1": "exit status 0"}, stopped
        assert stopped["killed"] == [], stopped


async def test_a_hung_shard_is_killed_and_restarted_while_the_other_serves_on(
    tmp_path: Path,
) -> None:
    """docs/configuration.md `daemon.heartbeat_timeout_s`: a shard silent on its control
    channel that long (SIGSTOP; a running one reports every second) is killed and started
    again like one that died (README "Shards"), logged `shard_hung` then `shard_died`; the
    other shard's clients carry on, and the daemon still stops cleanly."""
    # 10 s: shard 0, alive, is never that silent even on a loaded machine
    with sharded(tmp_path, "[daemon]\nheartbeat_timeout_s = 10.0\n") as d:
        async with closing(await on_shards(d)) as c:
            victim = shard_pid(await c[0].stack_info(), 1)
            os.kill(victim, signal.SIGSTOP)
            # (meanwhile an answer that needs shard 1 would be TIMEOUT: the log tells first)
            await asyncio.to_thread(d.wait_events, "shard_restarted", 1, RESTART_WAIT_S)
            await restarted(c[0], 1, victim)
            (hung,) = await asyncio.to_thread(d.wait_events, "shard_hung", 1, RESTART_WAIT_S)
            assert (hung["shard"], hung["pid"], hung["why"]) == (1, victim, "silent"), hung
            assert hung["silent_s"] >= 10.0 and hung["bound_s"] == 10.0, hung  # (rounded)
            (died,) = d.events_named("shard_died")
            assert died["how"] == "signal SIGKILL" and died["hung"] == "silent", died
            assert died["then"] == "restart", died
            assert (await c[0].stack_info())["shard"] == 0
