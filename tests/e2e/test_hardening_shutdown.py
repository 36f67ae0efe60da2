"""Shutdown keeps its deadline in every state (issue: faults whose effects outlive them).

A one-minute `delay` holds sends and a disconnect when SIGTERM arrives: the daemon must exit 0
within `rpc.shutdown_deadline_s` and a small margin — never its deadline twice (the RPC drain
and then the engine each waiting the whole of it), and never the fault's minute.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from chimneyd.faults import MAX_FAULT_MS
from tests.e2e.support import HOST, Daemon, HandPeer, MsgidClient, peer_process

pytestmark = pytest.mark.timeout(120, method="thread")

DEADLINE_S = 3.0
#: start-up of the signal handling, closing sockets, writing the last log lines
MARGIN_S = 2.0


async def _held_when_stopped(d: Daemon, layer: str, call: str) -> float:
    """Hold calls with a long delay, SIGTERM, and return how long the daemon took to exit."""
    with peer_process("sink") as (_, sink_port), peer_process("echo") as (_, echo_port):
        a = await d.aclient(call_timeout=120.0)
        b = await d.aclient(call_timeout=120.0)
        try:
            mine = [await a.tcp_connect(HOST, sink_port) for _ in range(3)]
            theirs = await b.tcp_connect(HOST, echo_port)
            await a.fault_inject("delay", layer=layer, call=call, ms=MAX_FAULT_MS)
            pending: list[Any] = [
                asyncio.ensure_future(a.tcp_send(conn, b"held" * 10_000)) for conn in mine
            ]
            pending.append(asyncio.ensure_future(a.tcp_disconnect(mine[0])))
            pending.append(asyncio.ensure_future(b.tcp_send(theirs, b"another client's")))
            pending.append(asyncio.ensure_future(a.tcp_close(mine[1])))
            await asyncio.sleep(0.3)
            assert not pending[-1].done()  # the close waits behind what is held (order)
            start = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(d.proc.wait, 90)
            took = time.monotonic() - start
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await a.close()
            await b.close()
    assert rc == 0, d.log_tail()
    return took


@pytest.mark.parametrize(
    ("layer", "call"),
    [
        ("nic0", "MiniportTcpOffloadSend"),
        ("im0", "MiniportTcpOffloadSend"),
        ("nic0", "MiniportTerminateOffload"),
    ],
)
async def test_shutdown_keeps_its_deadline_while_a_delay_holds_calls(
    spawn_daemon: Any, layer: str, call: str
) -> None:
    d: Daemon = spawn_daemon(f"[rpc]\nshutdown_deadline_s = {DEADLINE_S}\n")
    took = await _held_when_stopped(d, layer, call)
    assert took < DEADLINE_S + MARGIN_S, f"took {took:.1f} s\n{d.log_tail()}"
    d.stopped = True  # stopped here; the fixture only checks what it logged
    d.returncode = 0
    stopped = d.events_named("daemon_stopped")
    assert len(stopped) == 1, d.log_tail()


async def test_shutdown_with_nothing_held_is_quick(spawn_daemon: Any) -> None:
    """The deadline is an upper bound, not a wait: with nothing held the daemon exits at once."""
    d: Daemon = spawn_daemon(f"[rpc]\nshutdown_deadline_s = {DEADLINE_S}\n")
    with peer_process("echo") as (_, port):
        c = await d.aclient()
        conn = await c.tcp_connect(HOST, port)
        assert await c.tcp_send(conn, b"x") == 1
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(d.proc.wait, 60)
        took = time.monotonic() - start
        await c.close()
    assert rc == 0
    assert took < DEADLINE_S, f"took {took:.1f} s"
    d.stopped = True
    d.returncode = 0


async def test_shutdown_keeps_its_deadline_with_requests_that_never_finish(
    spawn_daemon: Any,
) -> None:
    """A recv on a silent peer and an accept nobody connects to wait for ever: the drain waits
    the deadline once, cancels them (answered TIMEOUT, or the client is closed), and the
    connections' close is not given a second deadline."""
    d: Daemon = spawn_daemon(f"[rpc]\nshutdown_deadline_s = {DEADLINE_S}\n")
    with peer_process("sink") as (_, port):
        c = await d.aclient(call_timeout=120.0)
        try:
            conns = [await c.tcp_connect(HOST, port) for _ in range(4)]
            listener = await c.tcp_listen(HOST, 0)
            pending = [asyncio.ensure_future(c.tcp_recv(conn, 100)) for conn in conns]
            pending.append(asyncio.ensure_future(c.tcp_accept(listener)))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(d.proc.wait, 90)
            took = time.monotonic() - start
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await c.close()
    assert rc == 0, d.log_tail()
    assert took < DEADLINE_S + MARGIN_S, f"took {took:.1f} s\n{d.log_tail()}"
    d.stopped = True
    d.returncode = 0
    stopped = d.events_named("daemon_stopped")
    assert len(stopped) == 1 and stopped[0]["left_over"] == {}, d.log_tail()


def test_every_request_read_before_the_drain_ends_is_answered(spawn_daemon: Any) -> None:
    """SIGTERM while a client floods requests without reading its answers (reading it is
    paused for back-pressure): nothing more is read from it once the daemon is stopping, even
    when its answers drain, and every request the daemon did read is answered — served, or
    TIMEOUT for the one still waiting at the drain's deadline."""
    import json
    import select

    import msgpack

    peer = HandPeer()
    d = spawn_daemon("[rpc]\nshutdown_deadline_s = 3.0\n")
    c = MsgidClient(d)
    try:
        conn = c.ok("tcp.connect", HOST, peer.port)
        peer.wait()
        for i in range(40):  # a long hop trace: large trace.get answers
            assert c.ok("tcp.send", conn, b"x" * (i + 1)) == i + 1
        size = len(msgpack.packb(c.ok("trace.get", conn)))
        n = (24 << 20) // size + 1  # answers well past the 4 MiB pause mark and socket buffers
        first = c.send("tcp.recv", conn, 10)  # in flight when the drain starts (no timeout)
        c.ok("ping")
        final = 900_000
        payload = b"".join(msgpack.packb([0, 100_000 + i, "trace.get", [conn]]) for i in range(n))
        pad = b"p" * 65536  # requests that fill the socket buffers (INVALID_PARAMS each)
        payload += b"".join(
            msgpack.packb([0, 500_000 + i, "ping", [pad]], use_bin_type=True) for i in range(400)
        )
        payload += msgpack.packb([0, final, "tcp.recv", [conn, 10]])
        sock = c.raw.sock
        sock.setblocking(False)
        sent = 0
        stuck: float | None = None
        while sent < len(payload):  # write without reading until the daemon stops reading us
            try:
                sent += sock.send(payload[sent : sent + 65536])
                stuck = None
            except BlockingIOError:
                now = time.monotonic()
                stuck = stuck or now
                if now - stuck > 1.0:
                    break
                select.select([], [sock], [], 0.1)
        assert sent < len(payload), "the daemon never paused this client"
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # read (and write the rest as the daemon makes room) until the daemon closes us
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        answered: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r, w, _ = select.select([sock], [sock] if sent < len(payload) else [], [], 0.5)
            if w:
                try:
                    sent += sock.send(payload[sent : sent + 65536])
                except OSError:
                    pass
            if r:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                unpacker.feed(data)
                answered.update(m[1] for m in unpacker if m[0] == 1)
        assert d.stop() == 0
    finally:
        c.close()
        peer.close()
    left = [json.loads(line) for line in d.stderr.lines if '"rpc_client_disconnected"' in line]
    received = max(e["requests"] for e in left)  # the flooding client's: by far the most
    assert first in answered, "the request in flight when the drain began got no answer"
    # before the flood: connect, 40 sends, trace.get, ping and the first tcp.recv
    flood = [100_000 + i for i in range(n)] + [500_000 + i for i in range(400)] + [final]
    read_of_flood = received - 44
    missing = [m for m in flood[:read_of_flood] if m not in answered]
    assert not missing, (
        f"{read_of_flood} requests of the flood read, these got no answer: {missing[:10]} "
        f"({len(missing)} in all)"
    )
