"""A shard that stops reading its control channel, or says nothing on it, with real shard
processes in this process's supervisor (`tests.unit.test_shard_supervisor_stop`): what the
supervisor queues to it is bounded, and a hung one is killed and restarted — but never one
that only looks silent because the supervisor itself was held up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from chimneyd.config import ConfigError, load_config
from chimneyd.shards import supervisor as supervisor_module
from tests.unit.test_shard_supervisor_stop import WAIT_S, named, running_shard, supervising

#: an event's info padded to about this many bytes, so that a few thousand fill the bound
EVENT_PAD = 4096


async def until(predicate: Any, what: str) -> None:
    """Until `predicate()` holds (bounded by `WAIT_S`; fails saying `what`)."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_events_to_a_shard_that_does_not_read_are_bounded(tmp_path: Path) -> None:
    """Shard 0 has an admin watching `"*"` and stops reading (SIGSTOP) while shard 1's events
    keep coming: what the supervisor holds for it stays within `EVENTS_QUEUED_MAX` (and a
    frame), the drop is logged, and once shard 0 reads again events reach it again."""
    bound = supervisor_module.EVENTS_QUEUED_MAX
    async with supervising(tmp_path, shards=2) as (sup, _):
        pid = await running_shard(sup)
        link = sup.shards[0].link
        assert link is not None
        sup.watchers.add(0)
        info = {"pad": "x" * EVENT_PAD}
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            most = 0
            for conn in range(3 * bound // EVENT_PAD):
                sup._on_notification(1, 1, "event", [conn, "offloaded", info])
                most = max(most, link.queued)
            assert most <= bound + 2 * EVENT_PAD, (most, bound)
            (dropping,) = named(logs, "shard_events_dropping")
            assert dropping["shard"] == 0, dropping
            os.kill(pid, signal.SIGCONT)
            await until(lambda: link.queued < bound // 4, "shard 0 never drained its channel")
            sup._on_notification(1, 1, "event", [0, "closed", {}])
        (dropped,) = named(logs, "shard_events_dropped")
        assert dropped["until"] == "drained" and dropped["dropped"] > 0, dropped
        assert not named(logs, "shard_hung"), logs


async def test_a_shard_that_stops_reading_its_channel_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    """Past `MAX_QUEUED` unread bytes of anything (here requests for its part of an answer),
    the supervisor takes the shard for hung: it kills it and starts it again, rather than let
    its own memory grow without bound."""
    async with supervising(tmp_path, free=2) as (sup, _):
        pid = await running_shard(sup)
        shard = sup.shards[0]
        link = shard.link
        assert link is not None
        arg = "y" * (1 << 20)
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            parts = [
                asyncio.ensure_future(sup._part(0, "info", arg))
                for _ in range(supervisor_module.MAX_QUEUED // len(arg) + 2)
            ]
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            await asyncio.gather(*parts)
            await asyncio.wait_for(shard.ready.wait(), WAIT_S)
        (hung,) = named(logs, "shard_hung")
        assert hung["why"] == "not_reading" and hung["pid"] == pid, hung
        (died,) = named(logs, "shard_died")
        assert died["how"] == "signal SIGKILL" and died["hung"] == "not_reading", died
        assert shard.proc is not None and shard.proc.pid != pid


async def test_a_silent_shard_is_killed_and_restarted(tmp_path: Path) -> None:
    """docs/configuration.md `daemon.heartbeat_timeout_s`: a shard that says nothing on its
    control channel that long (SIGSTOP: it reports every second otherwise) is killed and
    started again, logged `shard_hung` then `shard_died`."""
    async with supervising(tmp_path, "heartbeat_timeout_s = 5.0", free=2) as (sup, _):
        pid = await running_shard(sup)
        shard = sup.shards[0]
        sup.watching = asyncio.ensure_future(sup._watch())
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            await asyncio.wait_for(shard.ready.wait(), WAIT_S)
        (hung,) = named(logs, "shard_hung")
        assert hung["why"] == "silent" and hung["bound_s"] == 5.0, hung
        (died,) = named(logs, "shard_died")
        assert died["how"] == "signal SIGKILL" and died["hung"] == "silent", died
        assert shard.proc is not None and shard.proc.pid != pid


async def test_a_supervisor_stopped_with_its_shards_kills_none_when_continued(
    tmp_path: Path,
) -> None:
    """A Ctrl-Z stops the whole process group, supervisor and shards, until `fg` continues
    it (a frozen container alike): the shards said nothing meanwhile, but none is hung. Held
    up past `daemon.heartbeat_timeout_s`, the supervisor must not kill them once continued."""
    async with supervising(tmp_path, "heartbeat_timeout_s = 5.0") as (sup, _):
        pid = await running_shard(sup)
        sup.watching = asyncio.ensure_future(sup._watch())
        await until(lambda: sup.ticks >= 1, "the watch never looked")
        with capture_logs() as logs:
            os.kill(pid, signal.SIGSTOP)
            # a look later the loop has read all the stopped shard sent: nothing in flight
            ticks = sup.ticks
            await until(lambda: sup.ticks > ticks, "the watch stopped looking")
            time.sleep(6.0)  # the stimulus: this loop held up longer than the timeout
            # the supervisor's first look once continued comes before the shard catches up
            ticks = sup.ticks
            await until(lambda: sup.ticks > ticks, "the watch stopped looking")
            os.kill(pid, signal.SIGCONT)
            ticks = sup.ticks
            await until(lambda: sup.ticks >= ticks + 3, "the watch stopped looking")
        assert not named(logs, "shard_hung"), logs
        assert sup.shards[0].proc is not None and sup.shards[0].proc.pid == pid
        assert sup.shards[0].proc.poll() is None


@pytest.mark.parametrize("value", ["1.0", "0", "nan", "1e9"])
def test_a_heartbeat_timeout_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    """docs/configuration.md: `daemon.heartbeat_timeout_s` is 5 to 86400 (30 by default):
    a shard reports every second, so a bound of a second or two would kill healthy shards."""
    assert load_config(None).daemon.heartbeat_timeout_s == 30.0
    path = tmp_path / "chimneyd.toml"
    path.write_text(f"[daemon]\nheartbeat_timeout_s = {value}\n")
    with pytest.raises(ConfigError, match=r"daemon\.heartbeat_timeout_s"):
        load_config(path)
