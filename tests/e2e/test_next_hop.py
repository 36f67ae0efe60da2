"""A next-hop change (spec §3.4 (b)) against a real daemon: `tcp.update` with `object` "path"
and `NextHop` moves the connection's path, with every connection on it, under the neighbor of
that next hop — through the default topology's pass-through IM and through
deploy/teaming.toml (tcpip → filter0 → team0 → nic0..nic2), where each NIC moves its copies.
`tcp.info`'s `objects` shows the new neighbor layer by layer, `trace.get` the hops to every
NIC and back; bytes in flight both ways arrive whole and in order; a NIC failing the move
uploads the path's connections; the daemon's stop finds nothing left over."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import BIN, HOST, Daemon, child_env, echo, peer_process

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
HOP = "02:00:00:00:00:2b"
OK = {"status": "NDIS_STATUS_SUCCESS"}
#: how long an upload after a failed move may take (polled until then, not a sync)
BOUND_S = 10.0


def _nic(info: dict[str, Any]) -> str:
    return str(info["path"][-1])


def _macs(info: dict[str, Any]) -> dict[str, str]:
    """The neighbor's DlDestinationAddress at each layer that holds one."""
    return {
        layer: held["neighbor"]["DlDestinationAddress"] for layer, held in info["objects"].items()
    }


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "chimneyctl"), "--rpc", daemon.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
    )


def test_a_move_through_the_default_im(daemon: Daemon) -> None:
    with peer_process("echo") as (_, port), daemon.client() as c:
        conn = c.tcp_connect(HOST, port)
        echo(c, conn, b"before " * 512)
        assert c.call("tcp.update", conn, {"object": "path", "NextHop": HOP}) == OK
        info = c.tcp_info(conn)
        assert info["state"] == "offloaded"
        assert _macs(info) == {"tcpip": HOP, _nic(info): HOP}, info
        echo(c, conn, b"after " * 512)
        later = c.tcp_connect(HOST, port)  # the same remote: under the path's new neighbor
        assert _macs(c.tcp_info(later))[_nic(c.tcp_info(later))] == HOP
        for k in (conn, later):
            c.tcp_close(k)


def test_every_connection_moves_on_every_nic_with_bytes_in_flight(
    spawn_daemon: SpawnDaemon,
) -> None:
    daemon = spawn_daemon(TEAMING.read_text())

    async def run(port: int) -> None:
        c = await daemon.aclient()
        try:
            conns = [await c.call("tcp.connect", HOST, port) for _ in range(3)]
            nics = sorted([_nic(await c.call("tcp.info", k)) for k in conns])
            assert nics == ["nic0", "nic1", "nic2"]
            payloads = {k: os.urandom(128 * 1024) for k in conns}

            async def stream(conn: int) -> bytes:
                data = payloads[conn]
                sending = asyncio.ensure_future(c.call("tcp.send", conn, data))
                got = b""
                while len(got) < len(data):
                    got += await c.call("tcp.recv", conn, len(data) - len(got), 5000)
                assert await sending == len(data)
                return got

            streams = [asyncio.ensure_future(stream(k)) for k in conns]
            assert await c.call("tcp.update", conns[1], {"object": "path", "NextHop": HOP}) == OK
            got = await asyncio.wait_for(asyncio.gather(*streams), BOUND_S)
            assert got == [payloads[k] for k in conns]
            for k in conns:
                info = await c.call("tcp.info", k)
                assert info["state"] == "offloaded"
                assert _macs(info) == {"tcpip": HOP, "team0": HOP, _nic(info): HOP}, info
            for k in conns:
                await c.call("tcp.close", k)
        finally:
            await c.close()

    with peer_process("echo") as (_, port):
        asyncio.run(run(port))


def test_a_nic_failing_the_move_uploads_the_path_s_connections(
    spawn_daemon: SpawnDaemon,
) -> None:
    daemon = spawn_daemon(TEAMING.read_text())
    with peer_process("echo") as (_, port), daemon.client() as c:
        conns = [c.tcp_connect(HOST, port) for _ in range(3)]
        c.call(
            "fault.inject",
            {
                "kind": "fail_next",
                "layer": "nic2",
                "call": "MiniportUpdateOffload",
                "status": "NDIS_STATUS_FAILURE",
            },
        )
        try:
            c.call("tcp.update", conns[0], {"object": "path", "NextHop": HOP})
        except Exception as exc:
            assert "NDIS_STATUS" in str(exc), exc
        else:
            raise AssertionError("the failed move was answered SUCCESS")
        end = time.monotonic() + BOUND_S
        while not all(c.tcp_info(k)["state"] == "host" for k in conns):
            assert time.monotonic() < end, [c.tcp_info(k) for k in conns]
            time.sleep(0.02)
        for k in conns:
            echo(c, k, b"in the host " * 64)
        c.call("fault.clear", "*")
        for k in conns:
            c.tcp_close(k)


def test_chimneyctl_moves_a_path_and_shows_it(spawn_daemon: SpawnDaemon) -> None:
    daemon = spawn_daemon(TEAMING.read_text())
    with peer_process("echo") as (_, port):
        run = ctl(
            daemon,
            "run",
            f"connect {HOST} {port} as c",
            f"update c object=path NextHop={HOP}",
            "update c object=path NextHop=000000000000 PathMtu=1400",
            f"update c object=path NextHop={HOP}",
            "info c",
            "trace c",
            "close c",
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert f"conn 1: moved path to next hop {HOP}: status=NDIS_STATUS_SUCCESS" in lines, lines
    assert (
        "conn 1: moved path to next hop 000000000000 and updated PathMtu: "
        "status=NDIS_STATUS_SUCCESS"
    ) in lines, lines
    rows = [line for line in lines if line.startswith("objects.")]
    assert len(rows) == 3, lines
    for row in rows:
        assert f"neighbor DlDestinationAddress={HOP}" in row, row
        assert "path PathMtu=1400" in row, row
    trace = "\n".join(lines)
    for hop in ("tcpip", "filter0", "team0"):
        assert hop in trace


def test_a_nic_failing_while_it_offloads_its_copy_for_the_move(
    spawn_daemon: SpawnDaemon,
) -> None:
    """nic1 is slow offloading its copy of the new neighbor (a `delay` on its
    MiniportInitiateOffload) and fails (`target_failure`) meanwhile: the move is answered
    without waiting for it, nic1's connection moves to another NIC under that NIC's copy of the
    new neighbor, and after nic1's RESUME every connection carries bytes and closes clean."""
    daemon = spawn_daemon(TEAMING.read_text())

    async def run(port: int) -> None:
        c = await daemon.aclient()
        try:
            conns = [await c.call("tcp.connect", HOST, port) for _ in range(3)]
            nics = {k: _nic(await c.call("tcp.info", k)) for k in conns}
            on_nic1 = next(k for k, nic in nics.items() if nic == "nic1")
            await c.call(
                "fault.inject",
                {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": 300},
            )
            answer, failure = await asyncio.wait_for(
                asyncio.gather(
                    c.call("tcp.update", conns[0], {"object": "path", "NextHop": HOP}),
                    c.call("fault.inject", {"kind": "target_failure", "layer": "nic1"}),
                ),
                BOUND_S,
            )
            assert answer == OK
            end = time.monotonic() + BOUND_S
            while True:
                info = await c.call("tcp.info", on_nic1)
                if info["state"] == "offloaded" and _nic(info) != "nic1":
                    break
                assert time.monotonic() < end, f"conn {on_nic1} never left nic1: {info}"
                await asyncio.sleep(0.02)
            for k in conns:
                info = await c.call("tcp.info", k)
                assert _macs(info)[_nic(info)] == HOP, (k, info)
            await c.call("fault.clear", failure)  # nic1 back (RESUME)
            for k in conns:
                data = os.urandom(64 * 1024)
                sending = asyncio.ensure_future(c.call("tcp.send", k, data))
                got = b""
                while len(got) < len(data):
                    got += await c.call("tcp.recv", k, len(data) - len(got), 5000)
                assert got == data and await sending == len(data)
            await c.call("fault.clear", "*")
            for k in conns:
                await c.call("tcp.close", k)
        finally:
            await c.close()

    with peer_process("echo") as (_, port):
        asyncio.run(run(port))
