"""Many clients against one real daemon: concurrency, ordering, events, ownership, auth, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import msgpack
import pytest

from chimney_client import (
    AsyncClient,
    Denied,
    LimitError,
    NotFound,
    PatternStream,
    PeerServer,
    RpcTimeout,
    Verifier,
    start_peer,
)
from tests.e2e.support import (
    HOST,
    Daemon,
    RawConn,
    all_zero,
    assert_daemon_serves,
    peer_process,
    settled,
    wait_until,
)

TOKEN = "user-token-0123"
ADMIN = "admin-token-4567"
AUTH_CONFIG = f'[rpc]\ntoken = "{TOKEN}"\nadmin_token = "{ADMIN}"\n'


async def echo_round_trips(c: AsyncClient, port: int, seed: int, rounds: int, size: int) -> int:
    conn = await c.tcp_connect(HOST, port)
    stream, verifier = PatternStream(seed), Verifier(seed)
    total = 0
    for _ in range(rounds):
        chunk = stream.read(size)
        assert await c.tcp_send(conn, chunk) == size
        got = 0
        while got < size:
            data = await c.tcp_recv(conn, size - got, 10_000)
            assert data, "end of stream in the middle of an echo"
            assert verifier.check(data) is None, f"conn {conn}: bytes differ"
            got += len(data)
        total += got
    assert await c.tcp_close(conn) is True
    return total


async def test_many_clients_at_once(daemon: Daemon, echo_peer: PeerServer) -> None:
    watcher = await daemon.aclient()
    idle_tasks = (await watcher.stack_stats())["tasks"]
    clients = await asyncio.gather(*(daemon.aclient() for _ in range(20)))
    try:

        async def one_client(i: int, c: AsyncClient) -> int:
            results = await asyncio.gather(
                *(
                    echo_round_trips(c, echo_peer.port, seed=i * 10 + j, rounds=3, size=3000 + j)
                    for j in range(5)
                )
            )
            return sum(results)

        totals = await asyncio.gather(*(one_client(i, c) for i, c in enumerate(clients)))
        assert totals == [3 * sum(3000 + j for j in range(5))] * 20
        stats = await settled(clients[0].stack_stats)
        assert stats["rpc"]["clients"] >= 20
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    # once the clients are gone, so is every task they caused (issue: soak at scale, item 2)
    for _ in range(100):
        tasks = (await watcher.stack_stats())["tasks"]
        if tasks <= idle_tasks:
            break
        await asyncio.sleep(0.05)
    assert tasks == idle_tasks
    await watcher.close()


def test_responses_out_of_order(daemon: Daemon) -> None:
    """A tcp.recv that waits, pipelined before a ping: the ping's answer comes first."""
    with peer_process("sink") as (_, port), RawConn((daemon.host, daemon.port)) as raw:
        kind, msgid, err, conn = raw.call(1, "tcp.connect", [HOST, port])
        assert (kind, msgid, err) == (1, 1, None)
        # both requests in one write: recv (waits up to 1.5 s for data that never comes), ping
        raw.send(
            msgpack.packb([0, 2, "tcp.recv", [conn, 100, 1500]]) + msgpack.packb([0, 3, "ping", []])
        )
        first = raw.read_message()
        assert first == [1, 3, None, "pong"]
        second = raw.read_message()
        assert second[:2] == [1, 2]
        assert second[2][0] == RpcTimeout.code
        assert second[2][1].startswith("TIMEOUT")
        assert second[3] is None
        assert raw.call(4, "tcp.close", [conn]) == [1, 4, None, True]


async def test_out_of_order_with_async_client(daemon: Daemon) -> None:
    async with await start_peer("sink", HOST, 0) as sink:
        c = await daemon.aclient()
        try:
            conn = await c.tcp_connect(HOST, sink.port)
            recv = asyncio.ensure_future(c.tcp_recv(conn, 10, 1500))
            ping = asyncio.ensure_future(c.ping())
            done, _ = await asyncio.wait({recv, ping}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {ping}
            assert ping.result() == "pong"
            with pytest.raises(RpcTimeout):
                await recv
            await c.tcp_close(conn)
        finally:
            await c.close()


class ControlledPeer:
    """A loopback server whose accepted sockets the test ends by FIN or by RST."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.writers.append(w)
            await self.accepted.put((r, w))

        self.server = await asyncio.start_server(on_client, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for w in self.writers:
            w.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def controlled_peer() -> Any:
    peer = ControlledPeer()
    port = await peer.start()
    try:
        yield peer, port
    finally:
        await peer.close()


async def next_event(events: asyncio.Queue[tuple[int, str, dict[str, Any]]], conn: int, name: str):
    """The first event `name` for `conn` (others are skipped); fails after a generous wait."""
    async with asyncio.timeout(15):
        while True:
            cid, event, info = await events.get()
            if cid == conn and event == name:
                return info


@pytest.mark.parametrize("offload", [True, False], ids=["offloaded", "host"])
async def test_event_on_peer_fin(daemon: Daemon, controlled_peer: Any, offload: bool) -> None:
    peer, port = controlled_peer
    c = await daemon.aclient()
    events: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
    c.on_tcp_event(lambda cid, ev, info: events.put_nowait((cid, ev, info)))
    try:
        assert await c.events_subscribe("*") is True
        conn = await c.tcp_connect(HOST, port, offload=offload)
        _, writer = await peer.accepted.get()
        writer.write(b"last words")
        await writer.drain()
        writer.write_eof()  # FIN
        info = await next_event(events, conn, "TcpIndicateDisconnect")
        # docs/rpc.md: {} when the target indicated it, {"path": "host"} from the host stack
        assert info == ({} if offload else {"path": "host"}), info
        data = b""
        while True:
            chunk = await c.tcp_recv(conn, 100, 10_000)
            if not chunk:
                break
            data += chunk
        assert data == b"last words"
        await c.tcp_close(conn)
        await next_event(events, conn, "closed")
    finally:
        await c.close()


@pytest.mark.parametrize("offload", [True, False], ids=["offloaded", "host"])
async def test_event_on_peer_rst(daemon: Daemon, controlled_peer: Any, offload: bool) -> None:
    peer, port = controlled_peer
    c = await daemon.aclient()
    events: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
    try:
        conn = await c.tcp_connect(HOST, port, offload=offload)
        c.on_tcp_event(lambda cid, ev, info: events.put_nowait((cid, ev, info)))
        assert await c.events_subscribe(conn) is True
        _, writer = await peer.accepted.get()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close with SO_LINGER 0: RST
        info = await next_event(events, conn, "TcpIndicateAbort")
        assert info == ({} if offload else {"path": "host"}), info
        await c.tcp_close(conn)
        await settled(c.stack_stats)
    finally:
        await c.close()


async def test_ownership_isolation(spawn_daemon: Any, echo_peer: PeerServer) -> None:
    d: Daemon = spawn_daemon(AUTH_CONFIG, token=TOKEN, admin_token=ADMIN)
    a = await d.aclient(TOKEN)
    b = await d.aclient(TOKEN)
    admin = await d.aclient(ADMIN)
    try:
        conn_a = await a.tcp_connect(HOST, echo_peer.port)
        conn_b = await b.tcp_connect(HOST, echo_peer.port)
        listener_a = await a.tcp_listen(HOST, 0)
        assert await a.tcp_list() == [conn_a]
        assert await b.tcp_list() == [conn_b]
        assert sorted(await admin.tcp_list()) == sorted([conn_a, conn_b])

        for call, params in [
            ("tcp.info", [conn_a]),
            ("tcp.send", [conn_a, b"x"]),
            ("tcp.recv", [conn_a, 10, 10]),
            ("tcp.upload", [conn_a]),
            ("tcp.offload", [conn_a]),
            ("tcp.disconnect", [conn_a]),
            ("tcp.close", [conn_a]),
            ("trace.get", [conn_a]),
            ("events.subscribe", [conn_a]),
            ("fault.inject", [{"kind": "peer_reset", "conn": conn_a}]),
            ("tcp.listener_info", [listener_a]),
            ("tcp.accept", [listener_a, 10]),
        ]:
            with pytest.raises(NotFound) as info:
                await b.call(call, *params)
            assert info.value.message.startswith("NOT_FOUND"), (call, info.value)

        # A's connection is untouched by all that, and A still owns it
        assert (await a.tcp_info(conn_a))["state"] == "offloaded"
        assert await a.tcp_send(conn_a, b"ping") == 4
        assert await a.tcp_recv(conn_a, 4, 10_000) == b"ping"
        # the admin sees and touches everyone's
        assert (await admin.tcp_info(conn_a))["remote"] == f"{HOST}:{echo_peer.port}"
        assert await admin.trace_get(conn_b)
        assert (await admin.tcp_upload(conn_b))["state"] == "host"

        # B's '*' subscription carries only B's events
        seen_by_b: list[tuple[int, str]] = []
        own_event = asyncio.Event()

        def on_b(cid: int, ev: str, info: dict[str, Any]) -> None:
            seen_by_b.append((cid, ev))
            if cid == conn_b and ev == "offloaded":
                own_event.set()

        b.on_tcp_event(on_b)
        await b.events_subscribe("*")
        assert (await a.tcp_upload(conn_a))["state"] == "host"
        assert (await b.tcp_offload(conn_b))["state"] == "offloaded"
        async with asyncio.timeout(15):
            await own_event.wait()
        assert all(cid == conn_b for cid, _ in seen_by_b), seen_by_b

        await a.tcp_close(conn_a)
        await b.tcp_close(conn_b)
    finally:
        for c in (a, b, admin):
            await c.close()


async def test_faults_on_a_connection_belong_to_its_owner(
    spawn_daemon: Any, echo_peer: PeerServer
) -> None:
    """NOT_FOUND covers a fault that is not yours (rpc-contract error table): B cannot clear a
    fault A put on A's connection."""
    d: Daemon = spawn_daemon(AUTH_CONFIG, token=TOKEN, admin_token=ADMIN)
    a = await d.aclient(TOKEN)
    b = await d.aclient(TOKEN)
    try:
        conn_a = await a.tcp_connect(HOST, echo_peer.port)
        fault = await a.fault_inject("stall_peer", conn=conn_a, ms=60_000)
        with pytest.raises(NotFound):
            await b.fault_clear(fault)
        assert [f["id"] for f in await a.fault_list()] == [fault]
        assert await a.fault_clear(fault) is True
        await a.tcp_close(conn_a)
    finally:
        await a.close()
        await b.close()


async def test_auth_required_first(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon(AUTH_CONFIG, token=TOKEN, admin_token=ADMIN)
    c = await AsyncClient.connect(d.address, call_timeout=15.0)
    try:
        assert await c.ping() == "pong"  # open before auth
        for call, params in [
            ("stack.info", []),
            ("stack.stats", []),
            ("tcp.list", []),
            ("tcp.connect", [HOST, 9]),
            ("events.subscribe", ["*"]),
            ("fault.list", []),
        ]:
            with pytest.raises(Denied) as info:
                await c.call(call, *params)
            assert info.value.message.startswith("DENIED"), info.value
        with pytest.raises(Denied):
            await c.auth("wrong-token")
        with pytest.raises(Denied):
            await c.call("stack.info")
        assert await c.auth(TOKEN) is True
        assert (await c.stack_info())["contract"] == 1
        assert await c.tcp_list() == []
    finally:
        await c.close()


async def test_limit_in_flight(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon("[rpc]\nmax_in_flight = 4\n")
    async with await start_peer("sink", HOST, 0) as sink:
        c = await d.aclient()
        try:
            conns = [await c.tcp_connect(HOST, sink.port) for _ in range(5)]
            # five slow requests at once (a sink never answers): four run, the fifth gets LIMIT
            calls = [c.tcp_recv(conn, 10, 1500) for conn in conns]
            results = await asyncio.gather(*calls, return_exceptions=True)
            kinds = sorted(type(r).__name__ for r in results)
            assert kinds == ["LimitError"] + ["RpcTimeout"] * 4, results
            limit = next(r for r in results if isinstance(r, LimitError))
            assert limit.message.startswith("LIMIT")
            # once they are answered, there is room again
            assert await c.ping() == "pong"
            for conn in conns:
                await c.tcp_close(conn)
        finally:
            await c.close()


async def test_limit_connections_per_client(spawn_daemon: Any, echo_peer: PeerServer) -> None:
    d: Daemon = spawn_daemon("[rpc]\nmax_connections_per_client = 2\n")
    c = await d.aclient()
    other = await d.aclient()
    try:
        first = await c.tcp_connect(HOST, echo_peer.port)
        await c.tcp_connect(HOST, echo_peer.port)
        with pytest.raises(LimitError) as info:
            await c.tcp_connect(HOST, echo_peer.port)
        assert info.value.message.startswith("LIMIT")
        # the limit is per client
        mine = await other.tcp_connect(HOST, echo_peer.port)
        await other.tcp_close(mine)
        # closing one makes room
        await c.tcp_close(first)
        again = await c.tcp_connect(HOST, echo_peer.port)
        assert again not in (first,)
        assert len(await c.tcp_list()) == 2
        assert (await c.stack_stats())["connections"] == 2
    finally:
        await c.close()
        await other.close()
    # the daemon frees what the departed client held
    checker = await d.aclient()
    try:
        await settled(checker.stack_stats)
    finally:
        await checker.close()


def test_limit_max_clients(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon("[rpc]\nmax_clients = 2\n")
    with RawConn((d.host, d.port)) as one, RawConn((d.host, d.port)) as two:
        assert one.call(1, "ping", []) == [1, 1, None, "pong"]
        assert two.call(1, "ping", []) == [1, 1, None, "pong"]
        with RawConn((d.host, d.port)) as three:
            with contextlib.suppress(OSError):
                three.request(1, "ping", [])
            assert three.closed_by_peer()
        assert one.call(2, "ping", []) == [1, 2, None, "pong"]
    # room again once they left (the daemon notices the departures asynchronously)
    for _ in range(200):
        with RawConn((d.host, d.port)) as again:
            with contextlib.suppress(OSError):
                again.request(1, "ping", [])
            try:
                if again.read_message() == [1, 1, None, "pong"]:
                    break
            except (EOFError, OSError):
                pass
    else:
        raise AssertionError("a new client is still refused after the others left")
    assert_daemon_serves(d)


async def test_client_that_goes_away_frees_its_connections(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    gone = await daemon.aclient()
    watcher = await daemon.aclient()
    try:
        conns = [await gone.tcp_connect(HOST, echo_peer.port) for _ in range(3)]
        listener = await gone.tcp_listen(HOST, 0)
        listen_port = (await gone.tcp_listener_info(listener))["port"]
        r, w = await asyncio.open_connection(HOST, listen_port)
        accepted = await gone.tcp_accept(listener, 10_000)
        assert sorted(await gone.tcp_list()) == sorted([*conns, accepted])
        assert accepted not in await watcher.tcp_list()
        await gone.tcp_upload(conns[1])  # one in host mode
        for i, conn in enumerate(conns):
            assert await gone.tcp_send(conn, b"x" * (1000 + i)) == 1000 + i
        # one recv left pending while the client vanishes
        pending = asyncio.ensure_future(gone.tcp_recv(conns[0], 1, 30_000))
        await asyncio.sleep(0)
        assert echo_peer.stats.active == 3
        stats = await watcher.stack_stats()
        assert stats["connections"] == 4
        assert stats["engine"]["listeners"] == 1
        gone._transport.abort()  # type: ignore[union-attr]  # vanish without a goodbye
        with contextlib.suppress(Exception):
            await pending

        async def freed() -> bool:
            s = await watcher.stack_stats()
            return s["connections"] == 0 and all_zero(s) and echo_peer.stats.active == 0

        await wait_until(freed)
        assert await watcher.tcp_list() == []
        assert (await watcher.stack_stats())["engine"]["listeners"] == 0
        # the listener's port is closed with it; the accepted connection was closed too
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, listen_port)
        try:
            async with asyncio.timeout(15):
                assert await r.read() == b""
        except ConnectionResetError:
            pass  # closed abortively: as good
        w.close()
    finally:
        await gone.close()
        await watcher.close()
