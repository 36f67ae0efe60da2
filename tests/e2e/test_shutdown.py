"""Graceful shutdown with connections open: SIGTERM (or SIGINT) → exit 0, nothing left over."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from chimney_client import ConnectionLost, InternalError, RpcError
from tests.e2e.support import HOST, Daemon, peer_process

CONFIG = "[rpc]\nshutdown_deadline_s = 3.0\n"


def outcome(result: Any) -> str:
    """What a pending call ended with: an answer, an error answer, or a clean close."""
    if isinstance(result, InternalError):
        raise AssertionError(f"INTERNAL error at shutdown: {result}")
    if isinstance(result, RpcError):
        return f"error:{result.message.split(':')[0]}"
    if isinstance(result, ConnectionLost):
        return "closed"
    if isinstance(result, BaseException):
        raise AssertionError(f"unexpected failure at shutdown: {result!r}")
    return "answer"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_shutdown_with_connections_open(spawn_daemon: Any, sig: int) -> None:
    d: Daemon = spawn_daemon(CONFIG)
    with peer_process("echo") as (_, echo_port), peer_process("sink") as (_, sink_port):
        c = await d.aclient(call_timeout=60.0)
        watcher = await d.aclient(call_timeout=60.0)
        try:
            echo = [await c.tcp_connect(HOST, echo_port) for _ in range(3)]
            sink = [await c.tcp_connect(HOST, sink_port) for _ in range(3)]
            host_mode = await c.tcp_connect(HOST, echo_port, offload=False)
            await c.tcp_upload(echo[2])
            listener = await c.tcp_listen(HOST, 0)
            await c.events_subscribe("*")
            for conn in echo:
                assert await c.tcp_send(conn, b"before shutdown") == 15
            # requests in flight when the signal arrives
            pending = [
                asyncio.ensure_future(c.tcp_send(conn, b"\xab" * (2 << 20))) for conn in sink
            ]
            pending += [asyncio.ensure_future(c.tcp_send(host_mode, b"h" * 100_000))]
            idle = await c.tcp_connect(HOST, echo_port)
            pending += [asyncio.ensure_future(c.tcp_recv(idle, 100))]  # nothing will come
            pending += [asyncio.ensure_future(c.tcp_accept(listener))]  # nobody will connect
            pending += [asyncio.ensure_future(watcher.ping())]
            stats = await watcher.stack_stats()
            assert stats["connections"] == 8

            d.proc.send_signal(sig)
            rc = await asyncio.to_thread(d.proc.wait, 60)
            outcomes = [outcome(r) for r in await asyncio.gather(*pending, return_exceptions=True)]
        finally:
            await c.close()
            await watcher.close()
    assert rc == 0, d.log_tail()
    # the recv and accept that could never finish were answered at the deadline or closed
    assert outcomes[-3] in ("error:TIMEOUT", "closed"), outcomes
    assert outcomes[-2] in ("error:TIMEOUT", "closed"), outcomes
    d.assert_clean_stop()
    stopped = d.events_named("daemon_stopped")[0]
    assert stopped["errors"] == [], stopped
    assert stopped["connections"] == 0, stopped
    assert d.events_named("daemon_stopping"), d.log_tail()


async def test_shutdown_with_nothing_open(daemon: Daemon) -> None:
    assert daemon.client().ping() == "pong"
    daemon.assert_clean_stop()
    stopped = daemon.events_named("daemon_stopped")[0]
    assert stopped["closed"] == 0 and stopped["cancelled_requests"] == 0, stopped
