"""A daemon of two shards under signals while a shard starts or is started again: a shard
starts with the daemon's signals blocked (from its fork), so one that comes before it answers
them waits for its loop instead of meeting the default action.

Each test states what the docs promise (README "Shards", docs/architecture.md "Scale",
docs/configuration.md, docs/metrics.md "Shards") and checks it on a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.support import HOST, LineReader, popen_chimneyd, wait_until
from tests.e2e.test_shards import closing, on_shards, sharded

#: Bounds on waits for something to happen (never timings that are asserted).
RESTART_WAIT_S = 30.0
EXIT_WAIT_S = 60.0


def shard_pid(info: dict[str, Any], k: int) -> int:
    return int(next(s["pid"] for s in info["shards"] if s["shard"] == k))


async def restarted(c: Any, k: int, old_pid: int) -> None:
    """Until shard `k` runs again in a process other than `old_pid` (asked on client `c`)."""

    async def running() -> bool:
        shards = {s["shard"]: s for s in (await c.stack_info())["shards"]}
        return bool(shards[k]["state"] == "running" and shards[k]["pid"] != old_pid)

    await wait_until(running, RESTART_WAIT_S)


async def test_sighup_while_a_shard_restarts_does_not_kill_it(tmp_path: Path) -> None:
    """README: "SIGHUP reopens the log in every shard" — a logrotate that comes while a shard
    is being restarted must not kill that shard."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            victim = shard_pid(await c[0].stack_info(), 1)
            os.kill(victim, signal.SIGKILL)
            # the supervisor logs shard_started once the new process is spawned
            await asyncio.to_thread(d.wait_events, "shard_started", 3, RESTART_WAIT_S)
            d.proc.send_signal(signal.SIGHUP)
            await restarted(c[0], 1, victim)
            died = [e["how"] for e in d.events_named("shard_died")]
            assert died == ["signal SIGKILL"], (died, d.log_tail())


@dataclass
class Raw:
    """A daemon started by `raw_daemon`: its process, stdout and stderr."""

    proc: subprocess.Popen[bytes]
    out: LineReader
    err: LineReader


@contextlib.contextmanager
def raw_daemon(tmp_path: Path, *args: str) -> Iterator[Raw]:
    """`chimneyd --shards 2` in a session of its own (a Ctrl-C can reach its process group
    alone), not waited for; yields the process and its stderr. Every process is killed at
    the end."""
    proc = popen_chimneyd(
        *("--listen", f"{HOST}:0", "--log-format", "json", "--shards", "2"),
        *("--parent-pid", str(os.getpid()), *args),
        cwd=tmp_path,
        session=True,
    )
    raw = Raw(proc, LineReader(proc.stdout), LineReader(proc.stderr))
    try:
        yield raw
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_line(d: Raw, *parts: str, count: int = 1) -> None:
    """Until `count` log lines hold every one of `parts` (bounded; fails if the daemon exits)."""
    deadline = time.monotonic() + EXIT_WAIT_S
    while sum(all(p in x for p in parts) for x in d.err.lines) < count:
        assert d.proc.poll() is None, "\n".join(d.err.lines[-8:])
        assert time.monotonic() < deadline, "\n".join(d.err.lines[-8:])
        time.sleep(0.01)


def listening(d: Raw, why: str) -> str:
    """The daemon's RPC address once it listens; fails with its last log lines if it exits."""
    try:
        return d.out.wait_for("chimneyd listening on ", EXIT_WAIT_S).split()[3]
    except (EOFError, TimeoutError):
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(EXIT_WAIT_S)
        d.err.join()
        tail = "\n".join(d.err.lines[-8:])
        raise AssertionError(f"chimneyd exited {d.proc.returncode} {why}:\n{tail}") from None


def test_sighup_while_the_shards_start_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """docs/configuration.md: SIGHUP reopens the log file; the supervisor passes it on. One
    that comes while the shards are starting (before they listen) must not stop the daemon."""
    with raw_daemon(tmp_path) as d:
        wait_line(d, '"shard_started"', '"shard": 1')
        d.proc.send_signal(signal.SIGHUP)
        listening(d, "after SIGHUP")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(EXIT_WAIT_S) == 0


def test_ctrl_c_while_a_shard_restarts_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    """docs/architecture.md "Lifecycle": SIGINT, as Ctrl-C sends it to the whole process
    group, is the supervisor's ("shards leave SIGINT to the supervisor"), and stops the daemon
    cleanly (exit 0, docs/configuration.md) — a shard being restarted at that moment too."""
    with raw_daemon(tmp_path) as d:
        listening(d, "at start")
        wait_line(d, '"shard_started"', count=2)
        pid = next(
            int(json.loads(x)["pid"])
            for x in d.err.lines
            if '"shard_started"' in x and json.loads(x)["shard"] == 1
        )
        os.kill(pid, signal.SIGKILL)
        wait_line(d, '"shard_started"', count=3)
        # Ctrl-C: the whole process group, the shard being started included
        os.killpg(d.proc.pid, signal.SIGINT)
        rc = d.proc.wait(EXIT_WAIT_S)
        d.err.join()
        assert rc == 0, "\n".join(d.err.lines[-6:])


async def test_sigterm_while_a_shard_restarts_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    """docs/configuration.md: "SIGTERM or SIGINT stop it cleanly (exit 0)"; the supervisor
    passes SIGTERM on. One that comes while a shard (killed earlier) is being started again
    must still end in a clean stop, as it does once that shard runs."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            victim = shard_pid(await c[0].stack_info(), 1)
        os.kill(victim, signal.SIGKILL)
        await asyncio.to_thread(d.wait_events, "shard_started", 3, RESTART_WAIT_S)
        rc = d.stop()
        stopped = d.events_named("supervisor_stopped")
        assert rc == 0, (rc, stopped, d.log_tail())
