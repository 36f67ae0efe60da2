"""The supervisor in this process, with real shard processes (`python -m
chimneyd.shards.shard`): a stop that lands while a restart waits for the new shard's control
channel. The wait is held open by a `_connect` that waits for a gate, so the stop lands in
that window every time, not by a race."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from chimneyd.config import Config, load_config
from chimneyd.shards.link import ControlLink
from chimneyd.shards.listen import Reservation, reserve
from chimneyd.shards.supervisor import Shard, Supervisor

#: Bounds on waits for something to happen (never timings that are asserted).
WAIT_S = 60.0


class GatedSupervisor(Supervisor):
    """A supervisor whose control connects after the first `free` ones wait for `gate`."""

    def __init__(self, config: Config, held: Reservation, free: int = 1) -> None:
        super().__init__(config, held, {})
        self.free = free
        self.connects = 0
        self.held_open = asyncio.Event()  # a connect is waiting for the gate
        self.gate = asyncio.Event()

    async def _connect(
        self, sock: socket.socket, factory: Callable[[], ControlLink]
    ) -> ControlLink:
        self.connects += 1
        if self.connects > self.free:
            self.held_open.set()
            await self.gate.wait()
        return await super()._connect(sock, factory)


def shard_config(tmp_path: Path, daemon: str = "", shards: int = 1) -> Config:
    """`shards` shards (the tests start only those they need), `daemon`: more `[daemon]` keys."""
    path = tmp_path / "chimneyd.toml"
    # a short drain: a shard left unwatched would hold the stop this long before its kill
    path.write_text(f"[rpc]\nshutdown_deadline_s = 1.0\n[daemon]\n{daemon}\n")
    overrides = {"rpc.listen": ["127.0.0.1:0"], "log.format": "json", "daemon.shards": shards}
    return load_config(path, overrides)


def named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def spawned(
    sup: Supervisor, procs: list[subprocess.Popen[bytes]] | None = None, index: int = 0
) -> Shard:
    """Shard `index` started; its process goes in `procs` (killed at the end, even once a
    restart has replaced it)."""
    shard = sup.shards[index]
    await sup.spawn(shard)
    assert shard.proc is not None
    if procs is not None:
        procs.append(shard.proc)
    return shard


async def running_shard(
    sup: Supervisor, procs: list[subprocess.Popen[bytes]] | None = None, index: int = 0
) -> int:
    """`spawned`, once it listens: its pid."""
    shard = await spawned(sup, procs, index)
    await asyncio.wait_for(shard.ready.wait(), WAIT_S)
    assert shard.proc is not None
    return shard.proc.pid


@contextlib.asynccontextmanager
async def supervising(tmp_path: Path, daemon: str = "", shards: int = 1, **kw: Any) -> Any:
    """A `GatedSupervisor` (`kw`) on a held RPC port; at the end every shard process it
    started is killed and the port released."""
    config = shard_config(tmp_path, daemon, shards)
    held = reserve(config.rpc.listen, config.rpc.unix_socket_mode)
    sup = GatedSupervisor(config, held, **kw)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield sup, procs
    finally:
        tear_down(sup, held, procs)


async def test_a_stop_while_a_restart_connects_reaps_the_new_shard(tmp_path: Path) -> None:
    """README "Shards": SIGTERM drains every shard; docs/configuration.md: the stop is clean
    (exit 0). A stop that lands between a restarted shard's start and its control channel
    being served must still see that shard end (watched from its start), promptly and
    cleanly, not leave it unwatched until the stop's deadline and then kill it."""
    async with supervising(tmp_path) as (sup, procs):
        shard = sup.shards[0]
        with capture_logs() as logs:
            await running_shard(sup, procs)
            assert shard.proc is not None
            shard.proc.kill()  # restarted at once (the first back-off is 0)
            await asyncio.wait_for(sup.held_open.wait(), WAIT_S)
            second = shard.proc
            assert second is not procs[0]
            procs.append(second)
            rc = await sup.stop_all()
        stopped = named(logs, "supervisor_stopped")
        exited = named(logs, "shard_exited")
        assert rc == 0, (stopped, [e["event"] for e in logs])
        assert second.returncode == 0, second.returncode
        assert [e["pid"] for e in exited] == [second.pid], exited
        assert stopped and stopped[0]["killed"] == [], stopped


async def test_a_stop_while_a_restart_waits_out_its_back_off_is_clean(tmp_path: Path) -> None:
    """docs/configuration.md: SIGTERM stops the daemon cleanly (exit 0). A shard that died
    earlier and waits out its back-off (`Backoff`) when the stop comes has nothing to drain:
    the stop is as clean as when the restart came first (that shard's death was logged as it
    happened, `shard_died`)."""
    async with supervising(tmp_path) as (sup, procs):
        shard = sup.shards[0]
        with capture_logs() as logs:
            await running_shard(sup, procs)
            assert shard.proc is not None
            shard.backoff.delay = shard.backoff.most  # it has died young before: a long wait
            shard.proc.kill()
            await asyncio.wait_for(shard.exited.wait(), WAIT_S)
            assert sup.restarting  # waiting out the back-off
            rc = await sup.stop_all()
        stopped = named(logs, "supervisor_stopped")
        assert rc == 0, stopped
        assert stopped[0]["how"] == {0: "signal SIGKILL, before the stop"}, stopped


def tear_down(sup: Supervisor, held: Reservation, procs: list[Any]) -> None:
    """The end of a supervisor test: no restart from here on, no task left waiting, the
    reserved port given back, and every process the test or the supervisor started killed."""
    sup.stopping = True
    for task in [*sup.restarting, *([sup.watching] if sup.watching else [])]:
        task.cancel()
    held.close()
    for proc in [*procs, *(s.proc for s in sup.shards if s.proc is not None)]:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
