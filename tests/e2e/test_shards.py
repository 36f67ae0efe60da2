"""A daemon of two shards as a subprocess (`chimneyd --shards 2`), driven over its one RPC
address: clients land on both shards, what the daemon answers covers both, a fault on a layer
reaches both, one shard killed is restarted while the other's clients go on, SIGTERM drains
both, SIGHUP reopens the log file in both, and a shard out of descriptors answers LIMIT.

Which shard a client is on is what `stack.info` says (`shard`); the kernel's SO_REUSEPORT hash
picks it, so a test opens clients until it has one on each shard (bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client import AsyncClient, PeerServer
from chimney_client.errors import ChimneyError, InternalError, LimitError, NotFound
from tests.e2e.support import Daemon, start_daemon, wait_until

ADMIN = "shard-admin-token"
ID_SPAN = 10**12  # chimneyd.shards.supervisor.ID_SPAN: each shard life numbers from its own base
MAX_DIALS = 64  # clients opened at most to find one on each shard (a miss is 2^-63 likely)
GAUGES = ("offloads_active", "handles", "outstanding_nbls")


def shard_pids(d: Daemon) -> set[int]:
    return {int(e["pid"]) for e in d.events_named("shard_started")}


@contextlib.contextmanager
def sharded(
    tmp_path: Path,
    config: str | None = None,
    shards: int = 2,
    args: tuple[str, ...] = (),
    log_file: Path | None = None,
    **kw: Any,
) -> Iterator[Daemon]:
    """A daemon of `shards` shards; at the end, a clean stop: exit 0, every shard's
    `daemon_stopped` with nothing left over, no INTERNAL error. Every process is killed in
    `finally` whatever happened."""
    d = start_daemon(tmp_path, config, args=("--shards", str(shards), *args), **kw)
    try:
        yield d
        if not d.stopped:
            d.check_final_stats()
            assert_clean_stop(d, log_file)
    finally:
        d.kill()
        for pid in shard_pids(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def events(d: Daemon, name: str, log_file: Path | None = None) -> list[dict[str, Any]]:
    """The daemon's log events `name`, from its stderr or from `log_file`."""
    if log_file is None:
        return d.events_named(name)
    out = []
    for line in log_file.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
    return out


def assert_clean_stop(d: Daemon, log_file: Path | None = None) -> list[dict[str, Any]]:
    rc = d.stop()
    assert rc == 0, f"chimneyd exited {rc}\n{d.log_tail()}"
    assert events(d, "supervisor_stopped", log_file), d.log_tail()
    stopped = events(d, "daemon_stopped", log_file)
    assert stopped, d.log_tail()
    for event in stopped:
        assert event.get("left_over") == {}, event
    assert not events(d, "rpc_internal_error", log_file), d.log_tail()
    assert not events(d, "daemon_state_left_over", log_file), d.log_tail()
    return stopped


async def on_shards(d: Daemon, token: str | None = None) -> dict[int, AsyncClient]:
    """One client on each shard (`stack.info` says which; extra clients are closed)."""
    found: dict[int, AsyncClient] = {}
    for _ in range(MAX_DIALS):
        client = await d.aclient(token=token)
        shard = (await client.stack_info())["shard"]
        if shard in found:
            await client.close()
        else:
            found[shard] = client
        if len(found) == 2:
            return found
    raise AssertionError(f"{MAX_DIALS} clients all landed on shards {sorted(found)}")


async def echo(c: AsyncClient, conn: int, data: bytes) -> None:
    assert await c.tcp_send(conn, data) == len(data)
    got = b""
    while len(got) < len(data):
        got += await c.tcp_recv(conn, len(data) - len(got), 5000)
    assert got == data


@contextlib.asynccontextmanager
async def closing(clients: dict[int, AsyncClient]) -> AsyncIterator[dict[int, AsyncClient]]:
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.close()


async def test_clients_land_on_both_shards_and_what_the_daemon_answers_covers_both(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], f"shard {k}".encode())
            # ids never collide: shard 1's first life numbers from its own base
            assert conns[0] < ID_SPAN <= conns[1] < 2 * ID_SPAN
            # a client sees only its own shard's connections
            assert await c[0].tcp_list() == [conns[0]]
            with pytest.raises(NotFound):
                await c[0].tcp_info(conns[1])

            stats = await c[0].stack_stats()
            assert stats["connections"] == 2
            parts = {p["shard"]: p for p in stats["shards"]}
            assert stats["rpc"]["clients"] == sum(parts[k]["rpc"]["clients"] for k in (0, 1))
            assert set(parts) == {0, 1}
            for k in (0, 1):
                assert parts[k]["state"] == "running"
                assert parts[k]["connections"] == 1
                assert parts[k]["rpc"]["clients"] >= 1
                assert parts[k]["process"]["pid"] != d.pid
                assert parts[k]["layers"]["nic0"]["offloads_active"] > 0
            for layer, st in stats["layers"].items():
                for gauge in GAUGES:
                    assert st[gauge] == sum(parts[k]["layers"][layer][gauge] for k in (0, 1))
            assert stats["layers"]["nic0"]["bytes_sent"] == len(b"shard 0") + len(b"shard 1")

            info = await c[1].stack_info()
            assert info["shard"] == 1
            pids = [s["pid"] for s in info["shards"]]
            assert len(set(pids)) == 2 and d.pid not in pids
            nic = next(la for la in info["layers"] if la["name"] == "nic0")
            assert nic["tcp"] == 2  # offloaded connections of both shards' nic0

            text = await c[1].call("stack.metrics")
            assert "chimney_connections 2.0" in text
            for k in (0, 1):
                assert f'chimney_shard_connections{{shard="{k}"}} 1.0' in text
                assert f'chimney_shard_up{{shard="{k}"}} 1.0' in text

            for k in (0, 1):
                await c[k].tcp_close(conns[k])
            drained = await c[0].stack_stats()
            assert drained["connections"] == 0
            for part in drained["shards"]:
                for st in part["layers"].values():
                    assert all(st[g] == 0 for g in GAUGES), part


async def test_one_shard_keeps_the_answers_of_a_single_process(tmp_path: Path) -> None:
    """`--shards 1` is the daemon as it always was: one process, no `shards` key."""
    d = start_daemon(tmp_path, args=("--shards", "1"))
    try:
        async with await d.aclient() as c:
            assert "shards" not in await c.stack_info()
            assert "shards" not in await c.stack_stats()
        assert not d.events_named("shard_started")
        d.assert_clean_stop()
    finally:
        d.kill()


async def test_an_admin_watching_everything_hears_both_shards(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path, f'[rpc]\nadmin_token = "{ADMIN}"\n', admin_token=ADMIN) as d:
        admin = await d.aclient(token=ADMIN)
        heard: list[tuple[int, str, dict[str, Any]]] = []
        admin.on_tcp_event(lambda conn, event, info: heard.append((conn, event, info)))
        assert await admin.events_subscribe("*") is True
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}

            async def heard_both() -> bool:
                offloaded = {
                    (conn, info.get("shard")) for conn, ev, info in heard if ev == "offloaded"
                }
                return all((conns[k], k) in offloaded for k in (0, 1))

            await wait_until(heard_both)
            for k in (0, 1):
                await c[k].tcp_close(conns[k])

            async def closed_both() -> bool:
                return {conns[0], conns[1]} <= {conn for conn, ev, _ in heard if ev == "closed"}

            await wait_until(closed_both)
        # a client that is not an admin hears only its own connections
        async with closing(await on_shards(d)) as c:
            mine: list[int] = []
            c[0].on_tcp_event(lambda conn, event, info: mine.append(conn))
            await c[0].events_subscribe("*")
            other = await c[1].tcp_connect("127.0.0.1", echo_peer.port)
            own = await c[0].tcp_connect("127.0.0.1", echo_peer.port)
            await wait_until(lambda: _true(own in mine))
            assert other not in mine
            await c[1].tcp_close(other)
            await c[0].tcp_close(own)
        await admin.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_layer_fault_reaches_the_layer_in_every_shard(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:

            async def nic_states() -> dict[int, str]:
                info = await c[0].stack_info()
                return {
                    s["shard"]: next(la["state"] for la in s["layers"] if la["name"] == "nic0")
                    for s in info["shards"]
                }

            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            fid = await c[0].fault_inject("target_failure", layer="nic0")
            assert set((await nic_states()).values()) == {"failed"}
            listed = await c[0].fault_list()
            assert listed == [
                {
                    "id": fid,
                    "kind": "target_failure",
                    "layer": "nic0",
                    "shards": [0, 1],
                    "active_shards": [0, 1],
                }
            ]

            # the NIC failure uploads every connection, in both shards (spec §6.1)
            async def both_in_host_mode() -> bool:
                states = [(await c[k].tcp_info(conns[k]))["state"] for k in (0, 1)]
                return states == ["host", "host"]

            await wait_until(both_in_host_mode)
            for k in (0, 1):
                await echo(c[k], conns[k], b"carried by the host stack")

            # another client does not see it while its maker is here, nor may it clear it
            assert await c[1].fault_list() == []
            with pytest.raises(NotFound):
                await c[1].fault_clear(fid)
            await c[0].fault_clear(fid)
            assert set((await nic_states()).values()) == {"running"}
            assert await c[0].fault_list() == []

            # `shard` names one shard only
            one = await c[1].fault_inject("target_failure", layer="nic0", shard=0)
            assert await nic_states() == {0: "failed", 1: "running"}
            assert [f["shards"] for f in await c[1].fault_list()] == [[0]]
            await c[1].fault_clear("*")
            assert await nic_states() == {0: "running", 1: "running"}
            assert await c[1].fault_list() == [] and one > ID_SPAN

            for k in (0, 1):
                await c[k].tcp_close(conns[k])


async def test_what_a_bug_hit_is_listed_with_the_shard_it_was_in(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """A raise_next goes into nic0 of both shards; the bug goes off in shard 0 only.
    fault.list `used` shows the fault still active (shard 1 holds its bug yet) and what the
    bug hit: the layer, the handler, the connection, and shard 0."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            conn = await c[0].tcp_connect("127.0.0.1", echo_peer.port)
            fid = await c[0].fault_inject("raise_next", layer="nic0", call="MiniportTcpOffloadSend")
            d.planted_bugs = 1
            with pytest.raises(InternalError):
                await c[0].tcp_send(conn, b"meets the bug")
            (listed,) = await c[0].fault_list()  # still armed in shard 1
            assert listed["id"] == fid and "raised" not in listed
            (used,) = await c[0].fault_list(used=True)
            assert used["active"] is True and used["shards"] == [0, 1]
            assert used["raised"] == [
                {
                    "layer": "nic0",
                    "handler": "MiniportTcpOffloadSend",
                    "conns": [conn],
                    "conns_total": 1,
                    "shard": 0,
                }
            ]
            await echo(c[0], conn, b"still carried")
            await c[0].fault_clear(fid)
            await c[0].tcp_close(conn)


async def test_a_killed_shard_is_restarted_and_only_its_clients_lose_their_connection(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path) as d:
        c = await on_shards(d)
        conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
        info = await c[0].stack_info()
        victim = next(s["pid"] for s in info["shards"] if s["shard"] == 1)

        waiting = asyncio.ensure_future(c[1].tcp_recv(conns[1], 100, 60_000))
        await asyncio.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        # its client's call ends with the RPC connection, long before its own 60 s
        with pytest.raises(ChimneyError):
            await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - t0 < 10
        assert c[1].closed

        # the other shard's client and connection go on untouched
        await echo(c[0], conns[0], b"still here")
        assert (await c[0].tcp_info(conns[0]))["state"] == "offloaded"

        async def restarted() -> bool:
            shards = {s["shard"]: s for s in (await c[0].stack_info())["shards"]}
            return shards[1]["state"] == "running" and shards[1]["pid"] != victim

        await wait_until(restarted, 30)
        died = d.events_named("shard_died")
        assert len(died) == 1 and died[0]["shard"] == 1 and died[0]["how"] == "signal SIGKILL"
        assert d.events_named("shard_restarted")
        # a new client on the new shard 1 gets ids from a range never used before
        c2 = await on_shards(d)
        fresh = await c2[1].tcp_connect("127.0.0.1", echo_peer.port)
        assert fresh > 2 * ID_SPAN
        await echo(c2[1], fresh, b"new life")
        await c2[1].tcp_close(fresh)
        await c[0].tcp_close(conns[0])
        for client in (*c.values(), *c2.values()):
            await client.close()


async def test_sigterm_drains_both_shards(tmp_path: Path, echo_peer: PeerServer) -> None:
    with sharded(tmp_path) as d:
        c = await on_shards(d)
        for k in (0, 1):
            for _ in range(3):
                await c[k].tcp_connect("127.0.0.1", echo_peer.port)
        stopped = assert_clean_stop(d)
        # each shard closed its own client's three connections (as the client left, or in its
        # engine's shutdown) and left nothing behind
        assert sorted(e["shard"] for e in stopped) == [0, 1]
        for k in (0, 1):
            left = d.events_named("rpc_client_disconnected")
            closed = sum(e["conns_closed"] for e in left if e.get("shard") == k)
            closed += sum(e["closed"] for e in stopped if e["shard"] == k)
            assert closed >= 3, (k, left, stopped)
        assert all(e["connections"] == 0 for e in stopped)
        for client in c.values():
            await client.wait_closed()


async def test_sighup_reopens_the_log_file_in_both_shards(tmp_path: Path) -> None:
    log = tmp_path / "chimneyd.log"
    with sharded(tmp_path, f'[log]\nfile = "{log}"\nformat = "json"\n', log_file=log) as d:
        c = await on_shards(d)
        for client in c.values():
            await client.close()
        rotated = tmp_path / "chimneyd.log.1"
        log.rename(rotated)
        d.proc.send_signal(signal.SIGHUP)

        async def both_write_the_new_file() -> bool:
            # every new client is a log line (rpc_client_connected) in the shard it lands on
            more = await on_shards(d)
            for client in more.values():
                await client.close()
            text = log.read_text() if log.exists() else ""
            return '"shard": 0' in text and '"shard": 1' in text

        await wait_until(both_write_the_new_file, 20)
        assert '"shard": 1' in rotated.read_text()


async def test_a_shard_out_of_descriptors_answers_limit_and_the_other_goes_on(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            info = await c[0].stack_info()
            pid = next(s["pid"] for s in info["shards"] if s["shard"] == 1)
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, hard))
            conns: list[int] = []
            with pytest.raises(LimitError) as err:
                for _ in range(128):
                    conns.append(await c[1].tcp_connect("127.0.0.1", echo_peer.port))
            assert "open-file limit" in str(err.value)
            # the other shard is not limited by it
            others = [await c[0].tcp_connect("127.0.0.1", echo_peer.port) for _ in range(80)]
            await echo(c[0], others[-1], b"the other shard goes on")
            # and the limited one still serves what it has, and the daemon-wide answers
            await echo(c[1], conns[0], b"still served")
            assert (await c[1].stack_stats())["connections"] == len(conns) + len(others)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            for conn in conns:
                await c[1].tcp_close(conn)
            for conn in others:
                await c[0].tcp_close(conn)


async def test_unix_socket_clients_are_served_by_the_shards(tmp_path: Path) -> None:
    path = tmp_path / "chimneyd.sock"
    with sharded(tmp_path, args=("--listen", f"unix:{path}")) as d:
        seen: set[int] = set()
        for _ in range(16):
            async with await AsyncClient.connect(f"unix:{path}", call_timeout=15.0) as c:
                info = await c.stack_info()
                seen.add(info["shard"])
                assert f"unix:{path}" in info["rpc"]["listen"]
        assert seen <= {0, 1} and seen
        assert path.exists()
        assert_clean_stop(d)
        assert not path.exists()  # the supervisor made it, and removed it


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (("--shards", "0"), None),
        (("--shards", "1000"), None),
        (("--shards", "many"), None),
        ((), "[daemon]\nshards = 0\n"),
    ],
)
def test_check_config_refuses_a_shard_count_the_machine_cannot_hold(
    tmp_path: Path, args: tuple[str, ...], config: str | None
) -> None:
    cmd = [sys.executable, "-m", "chimneyd", "--check-config", *args]
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        cmd += ["--config", str(tmp_path / "c.toml")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout
    assert "daemon.shards" in run.stderr


def test_check_config_takes_auto_as_one_shard_per_cpu(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "chimneyd", "--check-config", "--shards", "auto"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f'"shards": {len(os.sched_getaffinity(0))}' in run.stdout


async def test_metrics_over_http_answer_for_every_shard(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """`/metrics` is served by shard 0, on the port the supervisor holds, for the whole daemon."""
    import urllib.request

    with sharded(tmp_path, args=("--metrics", "127.0.0.1:0")) as d:
        line = await asyncio.to_thread(d.stdout.wait_for, "chimneyd metrics on ", 30)
        url = line.split()[-1]
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], b"measured")

            def scrape() -> str:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    return str(resp.read().decode())

            text = await asyncio.to_thread(scrape)
            assert "chimney_connections 2.0" in text
            for k in (0, 1):
                assert f'chimney_shard_connections{{shard="{k}"}} 1.0' in text
            # both shards' sends are in the histogram (each keeps it while /metrics is served)
            count = next(
                float(x.split()[-1])
                for x in text.splitlines()
                if x.startswith("chimney_send_completion_seconds_count")
            )
            assert count >= 2
            for k in (0, 1):
                await c[k].tcp_close(conns[k])


async def test_a_stopped_shard_makes_daemon_wide_requests_time_out_not_hang(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """A shard that does not answer (SIGSTOP) makes what needs every shard answer TIMEOUT,
    naming it, within `daemon.control_timeout_s`; a layer fault is then put nowhere; its own
    shard's methods and the other shard are not held up. Once it runs again, all is well."""
    from chimney_client.errors import RpcTimeout

    with sharded(tmp_path, "[daemon]\ncontrol_timeout_s = 1.0\n") as d:
        async with closing(await on_shards(d)) as c:
            info = await c[0].stack_info()
            pid = next(s["pid"] for s in info["shards"] if s["shard"] == 1)
            os.kill(pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(RpcTimeout) as err:
                    await c[0].stack_stats()
                assert "shard 1 did not answer" in str(err.value)
                assert time.monotonic() - t0 < 10
                with pytest.raises(RpcTimeout):
                    await c[0].fault_inject("target_failure", layer="nic0")
                # shard 0 goes on with what is its own
                conn = await c[0].tcp_connect("127.0.0.1", echo_peer.port)
                await echo(c[0], conn, b"not held up")
                assert (await c[0].tcp_info(conn))["state"] == "offloaded"
            finally:
                os.kill(pid, signal.SIGCONT)

            async def answers() -> bool:
                try:
                    return bool(await c[0].stack_stats())
                except RpcTimeout:
                    return False

            await wait_until(answers, 20)

            # the fault that timed out is nowhere: shard 1 took it late and gave it back
            async def no_fault_left() -> bool:
                stats = await c[0].stack_info()
                states = [la["state"] for s in stats["shards"] for la in s["layers"]]
                return "failed" not in states and await c[0].fault_list() == []

            await wait_until(no_fault_left, 20)
            await c[0].tcp_close(conn)
