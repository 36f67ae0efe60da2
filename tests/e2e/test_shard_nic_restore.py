"""A shard restarted under a teaming MUX has each NIC in or out of service exactly as the faults
meant for every shard left it in the other shards (docs/faults.md `nic_up`, `restore_faults`),
whatever faults put into one shard only (`shard` key) hold there, and it makes no fault of its
own to get there: no fault id used up, no `fault_injected` logged that nobody asked for.

Shard 1 is killed and restarted by the supervisor; its NIC states are read from `stack.info`
(`lowers`). One test stops shard 2 of three (SIGSTOP) to hold the restarted shard's requests
to the others, so that a fault it takes meanwhile comes after its first restore (before it
listens) and before its second is done (once it runs), as it must to show the race; without
the race the test passes wherever the fault comes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from chimney_client import AsyncClient
from tests.e2e.support import Daemon, wait_until
from tests.e2e.test_shard_faults import _pid, _restarted
from tests.e2e.test_shard_nic_up_restart import TEAMING
from tests.e2e.test_shards import ADMIN, ID_SPAN, on_shards, sharded


async def _nic1(c: AsyncClient) -> dict[int, bool | None]:
    """Whether each running shard's team0 has nic1 in service."""
    out: dict[int, bool | None] = {}
    for s in (await c.stack_info())["shards"]:
        team = next((la for la in s.get("layers", []) if la["name"] == "team0"), {})
        out[s["shard"]] = ((team.get("lowers") or {}).get("nic1") or {}).get("in_service")
    return out


async def _becomes(c: AsyncClient, want: dict[int, bool | None]) -> None:
    async def there() -> bool:
        return await _nic1(c) == want

    try:
        await wait_until(there, 10)
    except AssertionError:
        raise AssertionError(f"nic1 in service: {await _nic1(c)}, wanted {want}") from None


async def _restart_shard_1(
    d: Daemon, c: dict[int, AsyncClient], token: str | None = None
) -> dict[int, AsyncClient]:
    """Kill shard 1 (its client closed first), wait until it runs again, and find a client on
    each shard again (shard 0's is kept)."""
    victim = await _pid(c[0], 1)
    await c[1].close()
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: _restarted(c[0], victim), 30)
    fresh = await on_shards(d, token=token)
    await fresh[0].close()
    return {0: c[0], 1: fresh[1]}


async def test_a_nic_down_in_one_other_shard_does_not_hold_the_restarted_one_out(
    tmp_path: Path,
) -> None:
    """nic_down everywhere, nic_up (cleared), then nic_down into shard 0 only: nic1 is out in
    shard 0 alone. Shard 1 restarted takes the first nic_down and has nic1 in service again, as
    it had: shard 0's own nic_down is no fault meant for it."""
    with sharded(tmp_path, TEAMING) as d:
        c = await on_shards(d)
        try:
            first = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            up = await c[0].fault_inject("nic_up", layer="nic1")
            await _becomes(c[0], {0: True, 1: True})
            assert await c[0].fault_clear(up) is True
            mine = await c[0].fault_inject("nic_down", layer="nic1", shard=0)
            await _becomes(c[0], {0: False, 1: True})
            c = await _restart_shard_1(d, c)
            await _becomes(c[0], {0: False, 1: True})
            listed = {f["id"]: f["shards"] for f in await c[0].fault_list()}
            assert listed == {first: [0, 1], mine: [0]}, listed
            # shard 0's own nic_down took nic1 out after the nic_up: the first one still holds
            # it out there, and clearing that puts nic1 back (docs/faults.md `nic_down`)
            assert await c[0].fault_clear(mine) is True
            assert await _nic1(c[0]) == {0: False, 1: True}
            assert await c[0].fault_clear(first) is True
            await _becomes(c[0], {0: True, 1: True})
        finally:
            for client in c.values():
                await client.close()


async def test_a_nic_left_out_by_a_cleared_nic_down_stays_out_in_the_restarted_shard(
    tmp_path: Path,
) -> None:
    """nic_down, nic_up, nic_down, and the second nic_down cleared: the first still holds, and
    the second took nic1 out after the nic_up, so nic1 stays out in every shard (docs/faults.md
    `nic_down`: back only once both are cleared, or at a nic_up). Shard 1 restarted has it out
    too, though the nic_up is still listed after the first nic_down; once both are cleared, a
    shard restarted has it in service."""
    with sharded(tmp_path, TEAMING) as d:
        c = await on_shards(d)
        try:
            first = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            await c[0].fault_inject("nic_up", layer="nic1")
            await _becomes(c[0], {0: True, 1: True})
            second = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            assert await c[0].fault_clear(second) is True
            assert await _nic1(c[0]) == {0: False, 1: False}
            c = await _restart_shard_1(d, c)
            # what shard 1 takes is in place once its faults are listed there
            listed = {f["id"]: f["shards"] for f in await c[0].fault_list()}
            assert listed == {first: [0, 1]}, listed
            states = await _nic1(c[0])
            assert states == {0: False, 1: False}, f"nic1 in service after the restart: {states}"
            assert await c[0].fault_clear(first) is True
            await _becomes(c[0], {0: True, 1: True})
            # with every nic_down cleared, a shard restarted again has nic1 in service
            c = await _restart_shard_1(d, c)
            assert await c[0].fault_list() == []
            assert await _nic1(c[0]) == {0: True, 1: True}
        finally:
            for client in c.values():
                await client.close()


async def test_a_restarted_shard_makes_no_fault_to_put_a_nic_back(tmp_path: Path) -> None:
    """nic_down, nic_up cleared: shard 1 restarted puts nic1 back in service without a fault of
    its own. The first fault a client of it makes has the first id of its range (docs/rpc.md
    Shards: each start of a shard numbers from its own base; shard 1's restart is the third
    start, gen 2), and the daemon logs no fault made (`fault_injected`) but the test's."""
    with sharded(tmp_path, TEAMING) as d:
        c = await on_shards(d)
        try:
            down = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            up = await c[0].fault_inject("nic_up", layer="nic1")
            await _becomes(c[0], {0: True, 1: True})
            assert await c[0].fault_clear(up) is True
            c = await _restart_shard_1(d, c)
            await _becomes(c[0], {0: True, 1: True})
            own = await c[1].fault_inject("rebalance", layer="team0", shard=1)
            assert own == 2 * ID_SPAN + 1, f"the restarted shard's first fault id is {own}"
            made = {down, up, own}
            used = {f["id"] for f in await c[1].fault_list(used=True)}
            assert used <= made, used
            logged = {e["fault"] for e in d.wait_events("fault_injected", 6)}
            assert logged == made, f"faults made: {sorted(logged)}, by the test: {sorted(made)}"
        finally:
            for client in c.values():
                await client.close()


async def test_fault_list_and_clear_after_a_restart_under_a_nic_up(tmp_path: Path) -> None:
    """nic_down and nic_up, both listed (the nic_up used up): shard 1 restarted takes the
    nic_down, which `fault.list` shows in both shards, and has nic1 in service as shard 0 has.
    The nic_up acted at once and is not taken again (a used-up fault is not, docs/faults.md):
    `fault.list {"used": true}` shows it, used up, in shard 0 alone. Clearing it changes
    nothing; clearing everything of its maker's (`"*"`) puts nic1 back in both and leaves
    nothing listed."""
    with sharded(tmp_path, TEAMING) as d:
        c = await on_shards(d)
        try:
            down = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            up = await c[0].fault_inject("nic_up", layer="nic1")
            await _becomes(c[0], {0: True, 1: True})
            c = await _restart_shard_1(d, c)
            await _becomes(c[0], {0: True, 1: True})
            active = {f["id"]: f["shards"] for f in await c[0].fault_list()}
            assert active == {down: [0, 1]}, active
            used = {f["id"]: (f["shards"], f["active"]) for f in await c[0].fault_list(used=True)}
            assert used == {down: ([0, 1], True), up: ([0], False)}, used
            assert await c[0].fault_clear(up) is True
            assert await _nic1(c[0]) == {0: True, 1: True}
            assert await c[0].fault_clear("*") is True
            assert await c[0].fault_list(used=True) == []
            assert await _nic1(c[0]) == {0: True, 1: True}
            again = await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            assert await c[0].fault_clear(again) is True
            await _becomes(c[0], {0: True, 1: True})
        finally:
            for client in c.values():
                await client.close()


async def test_an_admins_clear_of_every_fault_leaves_no_nic_out_in_a_restarted_shard(
    tmp_path: Path,
) -> None:
    """nic_down and nic_down again, then an admin's `fault.clear "*"` (every fault of every
    shard at once): nic1 is back in every shard, and a shard restarted then has it in service
    too, with nothing listed."""
    config = f'[rpc]\nadmin_token = "{ADMIN}"\n\n{TEAMING}'
    with sharded(tmp_path, config, admin_token=ADMIN) as d:
        c = await on_shards(d, token=ADMIN)
        try:
            await c[0].fault_inject("nic_down", layer="nic1")
            await c[0].fault_inject("nic_down", layer="nic1")
            await _becomes(c[0], {0: False, 1: False})
            assert await c[0].fault_clear("*") is True
            await _becomes(c[0], {0: True, 1: True})
            c = await _restart_shard_1(d, c, token=ADMIN)
            assert await c[0].fault_list(used=True) == []
            assert await _nic1(c[0]) == {0: True, 1: True}
        finally:
            for client in c.values():
                await client.close()


async def _now(value: bool) -> bool:
    return value


#: The race test's bound on one shard's answer: the restarted shard's requests to the stopped
#: shard 2 each wait this long, which holds its restore open while the test acts.
HELD_S = 3.0
RACE = f"[daemon]\ncontrol_timeout_s = {HELD_S}\n\n{TEAMING}"
#: Shard 1's third start (gens 0, 1, 2 for the first starts of shards 0, 1, 2).
RESTARTED_GEN = 3


async def _on(d: Daemon, gen: int, tries: int = 64) -> AsyncClient:
    """A client of the shard process of `gen`, told by the id of a listener it makes (a
    request its shard answers alone: shard 2 may be stopped); one on a stopped shard is let go
    after a short wait."""
    for _ in range(tries):
        client = await d.aclient()
        try:
            listener = await asyncio.wait_for(client.tcp_listen("127.0.0.1", 0), 0.5)
        except TimeoutError:
            await client.close(timeout=0.1)
            continue
        if listener // ID_SPAN == gen:
            return client
        await client.close()
    raise AssertionError(f"no client landed on the shard process of gen {gen}")


def _restores(d: Daemon) -> int:
    """How many restores shard 1's processes have ended (`shard_faults_restored`; before it
    was logged, a restore that put a NIC back logged `shard_nics_back_in_service`)."""
    names = ("shard_faults_restored", "shard_nics_back_in_service")
    return sum(1 for e in d.log_events() if e.get("event") in names and e.get("shard") == 1)


async def test_a_nic_down_taken_while_the_restarted_shard_restores_is_not_undone(
    tmp_path: Path,
) -> None:
    """nic_down everywhere, nic_up cleared: a shard restarted now puts nic1 back in service.
    Shard 2 of three is stopped while shard 1 restarts, so that shard 1's restore, which asks
    the others, waits `HELD_S` for it once shard 1 listens; meanwhile a client of shard 1 takes
    nic1 out there (a nic_down into shard 1 only). That nic_down came after what the restore
    puts back: nic1 stays out in shard 1 once the restore is done (and in service in the
    others), and comes back once both nic_downs are cleared."""
    with sharded(tmp_path, RACE, shards=3) as d:
        c0 = await _on(d, 0)
        try:
            first = await c0.fault_inject("nic_down", layer="nic1")
            await _becomes(c0, {0: False, 1: False, 2: False})
            up = await c0.fault_inject("nic_up", layer="nic1")
            await _becomes(c0, {0: True, 1: True, 2: True})
            assert await c0.fault_clear(up) is True
            victim, held = await _pid(c0, 1), await _pid(c0, 2)
            restores = _restores(d)
            os.kill(held, signal.SIGSTOP)
            try:
                os.kill(victim, signal.SIGKILL)
                await asyncio.to_thread(d.wait_events, "shard_restarted", 1, 30)
                c1 = await _on(d, RESTARTED_GEN)
                mine = await c1.fault_inject("nic_down", layer="nic1", shard=1)
            finally:
                os.kill(held, signal.SIGCONT)
            # shard 1's two restores (before it listens, and once it runs) are over
            await wait_until(lambda: _now(_restores(d) >= restores + 2), 30)
            states = await _nic1(c0)
            assert states == {0: True, 1: False, 2: True}, f"nic1 in service: {states}"
            listed = {f["id"]: f["shards"] for f in await c1.fault_list()}
            assert listed[mine] == [1], listed
            # the first nic_down, still listed, holds nic1 out in shard 1 once `mine` is
            # cleared: `mine` took it out after the nic_up, as in a shard never restarted
            assert await c1.fault_clear(mine) is True
            assert await _nic1(c0) == {0: True, 1: False, 2: True}
            assert await c0.fault_clear(first) is True
            await _becomes(c0, {0: True, 1: True, 2: True})
            await c1.close()
        finally:
            await c0.close()
