"""A shard killed as hung is restarted as one that crashed (`Backoff`): what resets its back-off
is the time it served, up to the last time it was heard, never the silence that made it hung.
A shard that hangs right after listening, with `daemon.heartbeat_timeout_s` at or above the
back-off's `settled_s` (30 s both by default), otherwise looked settled every time and was
restarted at once, hang after hang. Real shard processes in this process's supervisor
(`tests.unit.test_shard_supervisor_stop`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from structlog.testing import capture_logs

from chimneyd.shards.supervisor import LATE_S, WATCH_INTERVAL_S, Backoff
from tests.unit.test_shard_supervisor_hung import until
from tests.unit.test_shard_supervisor_stop import WAIT_S, named, running_shard, supervising

#: The back-off of the shard under test: it died young once already (its next wait is `first`),
#: and a run of `SETTLED_S` resets it: shorter than the heartbeat timeout (5 s, its least).
FIRST_S = 0.1
SETTLED_S = 2.0


async def hang_and_restart(tmp_path: Path, served_s: float) -> dict[str, object]:
    """A shard that listens, reports for `served_s` more, then goes silent (SIGSTOP) until the
    supervisor kills it as hung: its `shard_died` line."""
    async with supervising(tmp_path, "heartbeat_timeout_s = 5.0", free=2) as (sup, _):
        pid = await running_shard(sup)
        shard = sup.shards[0]
        shard.backoff = Backoff(first=FIRST_S, settled_s=SETTLED_S, delay=FIRST_S)
        link = shard.link
        assert link is not None
        heard_from = link.heard
        # the stimulus: the time it serves, seen as reports heard that much after it listened
        await until(lambda: link.heard - heard_from >= served_s, "the shard stopped reporting")
        sup.watching = asyncio.ensure_future(sup._watch())
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            await asyncio.wait_for(shard.ready.wait(), WAIT_S)
        (hung,) = named(logs, "shard_hung")
        assert hung["why"] == "silent", hung
        (died,) = named(logs, "shard_died")
        assert died["hung"] == "silent" and died["then"] == "restart", died
        return died


async def test_a_shard_hung_soon_after_listening_backs_off_as_a_crash(tmp_path: Path) -> None:
    died = await hang_and_restart(tmp_path, 0.0)
    # it lived past `settled_s` (the heartbeat timeout alone is longer), but served less
    assert died["lived_s"] >= 5.0, died  # type: ignore[operator]
    assert died["served_s"] < SETTLED_S, died  # type: ignore[operator]
    assert died["restart_in_s"] == FIRST_S, died


async def test_a_shard_that_served_before_it_hung_starts_over(tmp_path: Path) -> None:
    died = await hang_and_restart(tmp_path, SETTLED_S + 0.5)
    assert died["served_s"] >= SETTLED_S, died  # type: ignore[operator]
    assert died["restart_in_s"] == 0.0, died


async def test_a_hold_up_of_the_supervisor_is_not_time_served(tmp_path: Path) -> None:
    """The supervisor held up (a loaded machine, a Ctrl-Z) counts every shard as heard, so that
    nobody is killed for a silence that was its own: that moment is not a report, and a shard
    hung since it listened has served nothing more for it."""
    async with supervising(tmp_path, "heartbeat_timeout_s = 5.0", free=2) as (sup, _):
        pid = await running_shard(sup)
        shard = sup.shards[0]
        shard.backoff = Backoff(first=FIRST_S, settled_s=SETTLED_S, delay=FIRST_S)
        sup.watching = asyncio.ensure_future(sup._watch())
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            # the stimulus: silent past `settled_s` (not yet hung), then the supervisor's loop
            # held up long enough for its next look to come `LATE_S` late
            await asyncio.sleep(SETTLED_S + 0.5)
            time.sleep(LATE_S + WATCH_INTERVAL_S + 0.5)
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            await asyncio.wait_for(shard.ready.wait(), WAIT_S)
        (died,) = named(logs, "shard_died")
        assert died["hung"] == "silent", died
        assert died["served_s"] < SETTLED_S, died  # type: ignore[operator]
        assert died["restart_in_s"] == FIRST_S, died
