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
from tests.e2e.support import HOST, Daemon, peer_process

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
