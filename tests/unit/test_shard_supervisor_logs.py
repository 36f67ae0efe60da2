"""What the supervisor logs about its shards, read as structured events (`capture_logs`), with
real shard processes in this process's supervisor (`tests.unit.test_shard_supervisor_stop`)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from structlog.testing import capture_logs

from tests.unit.test_shard_supervisor_stop import (
    WAIT_S,
    named,
    running_shard,
    spawned,
    supervising,
)


async def test_a_shard_that_dies_before_it_ever_listened_is_not_said_to_restart(
    tmp_path: Path,
) -> None:
    """docs/architecture.md "Lifecycle": a shard that dies at start-up, before it listens,
    stops the daemon ("a shard did not start"). Its `shard_died` must say so, not promise a
    restart that never comes."""
    async with supervising(tmp_path) as (sup, procs):
        with capture_logs() as logs:
            shard = await spawned(sup, procs)
            assert shard.proc is not None
            shard.proc.kill()
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
        (died,) = named(logs, "shard_died")
        assert not sup.restarting
        assert "restart_in_s" not in died, died
        assert died["then"] == "daemon_stops", died
        assert died["how"] == "signal SIGKILL", died


async def test_how_shards_ended_is_told_alike_in_every_line(tmp_path: Path) -> None:
    """`shard_died` names how a shard ended ("exit status 0", "signal SIGKILL"): so do
    `shard_exited` and `supervisor_stopped`, not a raw return code such as -9. A shard hung
    through the stop (SIGSTOP) is killed at its deadline: "signal SIGKILL"."""
    async with supervising(tmp_path) as (sup, procs):
        with capture_logs() as logs:
            os.kill(await running_shard(sup, procs), signal.SIGSTOP)
            rc = await sup.stop_all()
        assert rc == 1
        (exited,) = named(logs, "shard_exited")
        (stopped,) = named(logs, "supervisor_stopped")
        assert exited["how"] == "signal SIGKILL", exited
        assert stopped["how"] == {0: "signal SIGKILL"}, stopped
        assert stopped["killed"] == [0], stopped


async def test_a_clean_stop_tells_every_shard_ended_with_exit_status_0(tmp_path: Path) -> None:
    async with supervising(tmp_path) as (sup, procs):
        with capture_logs() as logs:
            await running_shard(sup, procs)
            rc = await sup.stop_all()
        assert rc == 0
        (exited,) = named(logs, "shard_exited")
        (stopped,) = named(logs, "supervisor_stopped")
        assert exited["how"] == "exit status 0", exited
        assert stopped["how"] == {0: "exit status 0"}, stopped


async def test_only_a_counts_report_that_carries_a_change_is_logged(tmp_path: Path) -> None:
    """Each shard reports its counters every second, most often with nothing changed: a debug
    line per shard per second that says nothing would bury the rest of a debug log."""
    async with supervising(tmp_path) as (sup, _):
        with capture_logs() as logs:
            sup._on_notification(0, 0, "counts", [{}, 1.0])
            sup._on_notification(0, 0, "counts", [{"connections_opened": 3}, 2.0])
            sup._on_notification(0, 0, "counts", [{}, 3.0])
        reports = named(logs, "shard_counts")
        assert [e["taken"] for e in reports] == [2.0], reports
        assert reports[0]["changed"] == 1, reports
