"""A restarted shard whose first restore (before it listens) heard from no other shard: what
its second restore (once it runs) then brings must not undo what a fault put into it alone
(`shard` key) did meanwhile. The faults it missed came before those: it listened only once the
first restore was over, and a fault put into one shard reaches a shard only once it listens
or runs (docs/faults.md `nic_up`, `restore_faults`).

Shard 0 of two is stopped (SIGSTOP) before shard 1 is killed, so that both of shard 1's
restores wait `HELD_S` for it; shard 0 is let go while the second waits, which then has its
answer. Shard 1's NIC states are read from `stack.info` once shard 0 answers again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chimney_client import AsyncClient
from tests.e2e.support import Daemon, wait_until
from tests.e2e.test_shard_faults import _pid
from tests.e2e.test_shard_nic_restore import _becomes, _nic1, _now, _on
from tests.e2e.test_shard_nic_up_restart import TEAMING
from tests.e2e.test_shards import ID_SPAN, sharded

#: Each of the restarted shard's restores waits this long for the stopped shard 0: the test
#: finds a client of shard 1 and puts its fault there within it.
HELD_S = 5.0
HELD = f"[daemon]\ncontrol_timeout_s = {HELD_S}\n\n{TEAMING}"
#: Shard 1's third start (gens 0, 1 for the first starts of shards 0, 1).
RESTARTED_GEN = 2


async def _on_shard_1(d: Daemon, tries: int = 64) -> AsyncClient:
    """A client of the restarted shard 1 while shard 0 is stopped: one that lands on shard 0
    gets no answer, and is let go after a short wait."""
    for _ in range(tries):
        client = await d.aclient()
        try:
            listener = await asyncio.wait_for(client.tcp_listen("127.0.0.1", 0), 0.2)
        except TimeoutError:
            await client.close(timeout=0.1)
            continue
        if listener // ID_SPAN == RESTARTED_GEN:
            return client
        await client.close()
    raise AssertionError("no client landed on the restarted shard 1")


def _restores(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.events_named("shard_faults_restored") if e.get("shard") == 1]


async def _held_restart(
    d: Daemon, c0: AsyncClient, act: Callable[[AsyncClient], Awaitable[Any]]
) -> AsyncClient:
    """Stop shard 0, kill shard 1, and once shard 1 runs again (its first restore heard
    nothing) `act` through a client of it; then let shard 0 go and wait for shard 1's second
    restore, which hears from shard 0. Returns that client."""
    victim, held = await _pid(c0, 1), await _pid(c0, 0)
    # shard 1's first process logged its two restores (the second once it ran) before these
    await wait_until(lambda: _now(len(_restores(d)) >= 2), 30)
    before = len(_restores(d))
    os.kill(held, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        await asyncio.to_thread(d.wait_events, "shard_restarted", 1, 30)
        c1 = await _on_shard_1(d)
        await act(c1)
    finally:
        os.kill(held, signal.SIGCONT)
    await wait_until(lambda: _now(len(_restores(d)) >= before + 2), 30)
    first, second = _restores(d)[before : before + 2]
    assert first["shards"] == [], f"the first restore heard from shard 0: {first}"
    assert second["shards"] == [0], f"the second restore did not hear from shard 0: {second}"
    return c1


async def _nic_down_here(c1: AsyncClient) -> int:
    """A nic_down of nic1 into shard 1 alone, through its client `c1`."""
    fid: int = await c1.fault_inject("nic_down", layer="nic1", shard=1)
    return fid


async def test_a_nic_down_into_the_restarted_shard_outlives_a_restore_held_up(
    tmp_path: Path,
) -> None:
    """nic_down everywhere, nic_up cleared: nic1 in service in both shards. Shard 1 restarted
    while shard 0 does not answer listens with nothing restored, and a client of it takes
    nic1 out there (a nic_down into shard 1 only). That nic_down came after the other two:
    nic1 stays out in shard 1 once its second restore has taken theirs, as in a shard that
    took all three in order."""
    with sharded(tmp_path, HELD) as d:
        c0 = await _on(d, 0)
        try:
            first = await c0.fault_inject("nic_down", layer="nic1")
            await _becomes(c0, {0: False, 1: False})
            up = await c0.fault_inject("nic_up", layer="nic1")
            await _becomes(c0, {0: True, 1: True})
            assert await c0.fault_clear(up) is True
            c1 = await _held_restart(d, c0, _nic_down_here)
            states = await _nic1(c0)
            assert states == {0: True, 1: False}, f"nic1 in service: {states}"
            # the first nic_down holds nic1 out once shard 1's own is cleared, as it would in
            # a shard never restarted (`mine` took it out after the nic_up)
            mine = next(f["id"] for f in await c1.fault_list() if f["shards"] == [1])
            assert await c1.fault_clear(mine) is True
            assert await _nic1(c0) == {0: True, 1: False}
            assert await c0.fault_clear(first) is True
            await _becomes(c0, {0: True, 1: True})
            await c1.close()
        finally:
            await c0.close()


async def test_a_nic_up_into_the_restarted_shard_outlives_a_restore_held_up(
    tmp_path: Path,
) -> None:
    """nic_down everywhere: nic1 out in both shards. Shard 1 restarted while shard 0 does not
    answer listens with nothing restored, and a client of it puts nic1 back there (a nic_up
    into shard 1 only). The nic_down its second restore takes came before that nic_up: nic1
    stays in service in shard 1, as in a shard that took both in order."""
    with sharded(tmp_path, HELD) as d:
        c0 = await _on(d, 0)
        try:
            down = await c0.fault_inject("nic_down", layer="nic1")
            await _becomes(c0, {0: False, 1: False})
            c1 = await _held_restart(
                d, c0, lambda c1: c1.fault_inject("nic_up", layer="nic1", shard=1)
            )
            listed = {f["id"]: f["shards"] for f in await c0.fault_list()}
            assert listed == {down: [0, 1]}, listed
            states = await _nic1(c0)
            assert states == {0: False, 1: True}, f"nic1 in service: {states}"
            assert await c0.fault_clear(down) is True
            await _becomes(c0, {0: True, 1: True})
            await c1.close()
        finally:
            await c0.close()
