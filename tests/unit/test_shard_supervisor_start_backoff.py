"""A shard that never gets to listen has not run fine, however long it took to be found hung:
its restarts back off as a crash loop's do (docs/configuration.md, `daemon.heartbeat_timeout_s`;
README "Shards"). Only time spent listening counts toward the `Backoff`'s reset. Real shard
processes in this process's supervisor (`tests.unit.test_shard_supervisor_stop`).

The start timeout (60 s in the daemon) is longer than the time that resets the back-off (30 s):
here 2 s and 0.5 s, the same order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from chimneyd.shards import supervisor as supervisor_module
from chimneyd.shards.listen import reserve
from chimneyd.shards.supervisor import Backoff
from tests.unit.test_shard_supervisor_stale import StoppingSupervisor, until
from tests.unit.test_shard_supervisor_stop import named, running_shard, shard_config, tear_down

START_S = 2.0  # the start timeout here (60 s in the daemon)
SETTLED_S = 0.5  # listening this long resets the back-off (30 s in the daemon)


async def test_a_shard_that_keeps_hanging_at_start_backs_off_as_a_crash_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "START_TIMEOUT_S", START_S)
    config = shard_config(tmp_path)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    sup = StoppingSupervisor(config, held, stop_at=2, and_after=True)
    sup.heartbeat = START_S  # the start bound is the longer of the two: START_S here
    procs: list[subprocess.Popen[bytes]] = []
    shard = sup.shards[0]
    shard.backoff = Backoff(first=0.1, most=10.0, settled_s=SETTLED_S)
    try:
        with capture_logs() as logs:
            first = await running_shard(sup, procs)
            sup.watching = asyncio.ensure_future(sup._watch())
            os.kill(first, signal.SIGKILL)  # died young: restarted at once
            # the second and third processes hang at start, each found after START_S (longer
            # than SETTLED_S), killed and restarted
            await until(lambda: len(named(logs, "shard_hung")) >= 2, "no second hang")
            await until(
                lambda: len([e for e in named(logs, "shard_died") if "hung" in e]) >= 2,
                "the second hung process's end not seen",
            )
        died = named(logs, "shard_died")
        assert died[0]["pid"] == first and died[0]["restart_in_s"] == 0.0, died
        hung = [e for e in died if "hung" in e][:2]
        assert all(e["hung"] == "start_timeout" for e in hung), hung
        # each was found hung only after START_S > SETTLED_S of life, but never listened: the
        # back-off keeps doubling (main reset it to 0 each time: a restart every start bound)
        assert all(e["lived_s"] >= SETTLED_S for e in hung), hung
        assert [e["restart_in_s"] for e in hung] == [0.1, 0.2], hung
        assert all(e["served_s"] == 0.0 for e in hung), hung
    finally:
        tear_down(sup, held, procs)


async def test_a_shard_that_listened_long_enough_starts_its_back_off_over(
    tmp_path: Path,
) -> None:
    """The other side of the rule: a process that listened `settled_s` ran fine, and its death
    restarts it at once, whatever its predecessors did."""
    config = shard_config(tmp_path)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    sup = StoppingSupervisor(config, held, stop_at=10**9, and_after=True)  # none stops
    procs: list[subprocess.Popen[bytes]] = []
    shard = sup.shards[0]
    shard.backoff = Backoff(first=0.1, most=10.0, settled_s=SETTLED_S)
    shard.backoff.delay = 0.4  # it has died young a few times before
    try:
        with capture_logs() as logs:
            first = await running_shard(sup, procs)
            listening = time.monotonic()  # it said `ready` before this
            # waits on the condition the rule reads (no timing asserted)
            await until(lambda: time.monotonic() - listening > SETTLED_S, "time stands still")
            os.kill(first, signal.SIGKILL)
            await until(lambda: bool(named(logs, "shard_died")), "its death not seen")
        (died,) = named(logs, "shard_died")
        assert died["restart_in_s"] == 0.0 and died["served_s"] >= SETTLED_S, died
    finally:
        tear_down(sup, held, procs)
