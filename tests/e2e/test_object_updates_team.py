"""`tcp.update` of a connection's neighbor and path against a real daemon on
deploy/teaming.toml (tcpip → filter0 → team0 → nic0..nic2): the host's `NdisUpdateOffload` of
the shared object reaches every NIC's copy (spec §3.4 (a)), shown by `tcp.info`'s `objects`;
and a NIC failing while the update is on its way (spec §5.5) neither holds the update nor
leaves anything behind (the daemon's final checks: no invariant violation, nothing left over
at its stop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, echo, peer_process

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"
MAC = "02:00:00:00:00:2a"
#: how long a NIC's failover may take to move a connection (not a sync: polled until then)
MOVE_BOUND_S = 10.0


def _nic(info: dict[str, Any]) -> str:
    return str(info["path"][-1])


def _copy(info: dict[str, Any], what: str) -> dict[str, Any]:
    """The connection's `what` (neighbor, path) as its NIC holds it."""
    view: dict[str, Any] = info["objects"][_nic(info)][what]
    return view


def test_neighbor_and_path_updates_reach_every_nic(spawn_daemon: SpawnDaemon) -> None:
    daemon = spawn_daemon(TEAMING.read_text())
    with peer_process("echo") as (_, port), daemon.client() as c:
        conns = [c.tcp_connect(HOST, port) for _ in range(3)]  # least-loaded: one per NIC
        infos = [c.tcp_info(conn) for conn in conns]
        assert sorted(_nic(i) for i in infos) == ["nic0", "nic1", "nic2"]
        assert all("objects" not in i for i in infos)  # until an update changed them
        # through one connection: the neighbor they all share (one per binding, spec §2.3)
        update = {"object": "neighbor", "DlDestinationAddress": MAC, "HostReachabilityDelta": 3}
        assert c.call("tcp.update", conns[0], update) == {"status": "NDIS_STATUS_SUCCESS"}
        assert c.call("tcp.update", conns[2], {"object": "path", "PathMtu": 1400}) == {
            "status": "NDIS_STATUS_SUCCESS"
        }
        for conn in conns:
            info = c.tcp_info(conn)
            for layer in ("tcpip", "team0", _nic(info)):
                objects = info["objects"][layer]
                assert objects["neighbor"]["DlDestinationAddress"] == MAC, (conn, layer, info)
                assert objects["path"]["PathMtu"] == 1400, (conn, layer, info)
            echo(c, conn, b"after the update " * 64)  # still offloaded, carrying bytes
            assert c.tcp_info(conn)["state"] == "offloaded"
        # a bad value never reaches a layer
        try:
            c.call("tcp.update", conns[0], {"object": "path", "PathMtu": 1})
        except Exception as exc:
            assert "INVALID_PARAMS" in str(exc), exc
        else:
            raise AssertionError("PathMtu 1 accepted")
        for conn in conns:
            c.tcp_close(conn)


def test_a_nic_failing_while_a_neighbor_update_runs(spawn_daemon: SpawnDaemon) -> None:
    """The update is held at nic1 (a `delay` fault on its MiniportUpdateOffload) and nic1
    fails (`target_failure`) with it on its way: the update is answered, nic1's connection
    moves to another NIC with the new MAC in that NIC's copy, and after nic1 is back every
    connection carries bytes and closes clean."""
    daemon = spawn_daemon(TEAMING.read_text())

    async def run(port: int) -> None:
        c = await daemon.aclient()
        try:
            conns = [await c.call("tcp.connect", HOST, port) for _ in range(3)]
            nics = {conn: _nic(await c.call("tcp.info", conn)) for conn in conns}
            assert sorted(nics.values()) == ["nic0", "nic1", "nic2"]
            on_nic1 = next(conn for conn, nic in nics.items() if nic == "nic1")
            await c.call(
                "fault.inject",
                {"kind": "delay", "layer": "nic1", "call": "MiniportUpdateOffload", "ms": 300},
            )
            update = {"object": "neighbor", "DlDestinationAddress": MAC}
            # one connection, in order: the update goes into the stack, then nic1 fails
            answer, failure = await asyncio.wait_for(
                asyncio.gather(
                    c.call("tcp.update", conns[0], update),
                    c.call("fault.inject", {"kind": "target_failure", "layer": "nic1"}),
                ),
                MOVE_BOUND_S,
            )
            assert answer == {"status": "NDIS_STATUS_SUCCESS"}
            end = time.monotonic() + MOVE_BOUND_S
            while True:
                info = await c.call("tcp.info", on_nic1)
                if info["state"] == "offloaded" and _nic(info) != "nic1":
                    break
                assert time.monotonic() < end, f"conn {on_nic1} never left nic1: {info}"
                await asyncio.sleep(0.02)
            for conn in conns:
                info = await c.call("tcp.info", conn)
                assert _copy(info, "neighbor")["DlDestinationAddress"] == MAC, (conn, info)
            await c.call("fault.clear", failure)  # nic1 back (RESUME)
            for conn in conns:
                data = b"after the failover " * 64
                assert await c.call("tcp.send", conn, data) == len(data)
                got = b""
                while len(got) < len(data):
                    got += await c.call("tcp.recv", conn, len(data) - len(got), 5000)
                assert got == data
            await c.call("fault.clear", "*")
            for conn in conns:
                await c.call("tcp.close", conn)
        finally:
            await c.close()

    with peer_process("echo") as (_, port):
        asyncio.run(run(port))


def test_the_trace_shows_a_neighbor_update_travel_to_every_nic(
    spawn_daemon: SpawnDaemon,
) -> None:
    daemon = spawn_daemon(TEAMING.read_text())
    with peer_process("echo") as (_, port), daemon.client() as c:
        conns = [c.tcp_connect(HOST, port) for _ in range(3)]
        last = max(h["seq"] for h in c.trace_get(conns[1]))
        update = {"object": "neighbor", "DlDestinationAddress": MAC}
        assert c.call("tcp.update", conns[1], update) == {"status": "NDIS_STATUS_SUCCESS"}
        hops = [(h["layer"], h["call"]) for h in c.trace_get(conns[1]) if h["seq"] > last]
        # host → NDIS → the filter IM → NDIS → MUX, then MUX → NDIS → each NIC's copy, and
        # the completions back up: each IM lends the trace on for the call
        assert hops[:4] == [
            ("tcpip", "NdisUpdateOffload"),
            ("filter0", "MiniportUpdateOffload"),
            ("filter0", "NdisUpdateOffload"),
            ("team0", "MiniportUpdateOffload"),
        ], hops
        nics = [la for la, call in hops if call == "MiniportUpdateOffload" and la.startswith("nic")]
        assert sorted(nics) == ["nic0", "nic1", "nic2"], hops
        assert hops.count(("team0", "NdisUpdateOffload")) == 3, hops
        done = [la for la, call in hops if call == "NdisMUpdateOffloadComplete"]
        assert sorted(done) == ["filter0", "nic0", "nic1", "nic2", "team0"], hops
        assert hops[-1] == ("tcpip", "ProtocolUpdateOffloadComplete"), hops
        for conn in conns:
            info = c.tcp_info(conn)
            assert info["objects"][_nic(info)]["neighbor"]["DlDestinationAddress"] == MAC
            c.tcp_close(conn)
