"""The real daemon against clients that hold memory, slots or guesses: partial frames, idle
sockets, token floods and pipelined connects stay within the configured limits."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import msgpack

from tests.e2e.support import HOST, Daemon, RawConn, assert_daemon_serves, peer_process

MiB = 1024 * 1024
WAIT = 30.0  # bound on any retry loop here (a hang fails, nothing is timed)


def read_all(raw: RawConn) -> list[Any]:
    """Every message until the daemon closes; a socket timeout (a hang) is raised."""
    out = []
    with contextlib.suppress(EOFError):
        while True:
            out.append(raw.read_message())
    return out


def test_partial_frames_cannot_pin_the_daemons_memory(spawn_daemon: Any) -> None:
    """31 clients each send all but the last bytes of an 8 MiB frame and wait. Unbounded, that
    pins ~250 MB; with a 32 MiB budget, clients holding the largest frames are dropped."""
    d: Daemon = spawn_daemon(
        f"[rpc]\nmax_message_bytes = {8 * MiB}\nmax_buffered_frame_bytes = {32 * MiB}\n"
    )
    frame = msgpack.packb([0, 1, "tcp.send", [1, b"\x00" * (8 * MiB - 64)]])
    head = frame[:-1]
    rss_before = d.rss_kb()
    socks = []
    try:
        for _ in range(31):
            sock = socket.create_connection((d.host, d.port), timeout=WAIT)
            socks.append(sock)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(head)
        with RawConn((d.host, d.port)) as watcher:
            stats = watcher.call(1, "stack.stats", [])[3]
        assert stats["rpc"]["buffered_frame_bytes"] <= 32 * MiB, stats["rpc"]
        growth_mb = (d.rss_peak_kb() - rss_before) / 1024
        assert growth_mb < 120, f"the daemon grew by {growth_mb:.0f} MB"
        # at most 4 frames of 8 MiB fit in 32 MiB
        dropped = d.wait_events("rpc_frame_budget_exceeded", count=31 - 4)
        assert len(dropped) >= 31 - 4, len(dropped)
        assert_daemon_serves(d)
    finally:
        for sock in socks:
            sock.close()


def test_idle_sockets_cannot_lock_out_new_clients(spawn_daemon: Any) -> None:
    """More idle sockets than max_clients: a newcomer is served all the same (idle clients
    holding nothing are evicted, and closed after idle_timeout_s anyway)."""
    d: Daemon = spawn_daemon("[rpc]\nmax_clients = 32\n")
    idle = [socket.create_connection((d.host, d.port), timeout=WAIT) for _ in range(40)]
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with RawConn((d.host, d.port), timeout=5) as raw:
                    assert raw.call(1, "ping", []) == [1, 1, None, "pong"]
                break
            except (EOFError, OSError):
                assert time.monotonic() < deadline, "every new client was refused"
                time.sleep(0.2)
        assert d.wait_events("rpc_client_evicted"), d.log_tail()
    finally:
        for sock in idle:
            sock.close()


def test_a_flood_of_wrong_tokens_is_cut_short(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon('[rpc]\ntoken = "the-real-one"\n', token="the-real-one")
    flood = b"".join(msgpack.packb([0, i, "auth", [f"guess-{i}"]]) for i in range(20_000))
    with RawConn((d.host, d.port), timeout=WAIT) as raw:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            raw.send(flood)
        answers = read_all(raw)
    assert [a[1] for a in answers] == [0, 1, 2]
    assert all(a[2] == [8, "DENIED: bad token"] for a in answers)
    with RawConn((d.host, d.port)) as other:  # the right token still works on a new connection
        assert other.call(1, "auth", ["the-real-one"]) == [1, 1, None, True]
        assert other.call(2, "tcp.list", []) == [1, 2, None, []]


def test_pipelined_connects_stop_at_the_per_client_limit(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon("[rpc]\nmax_connections_per_client = 5\n")
    with peer_process("echo") as (_, port), RawConn((d.host, d.port), timeout=WAIT) as raw:
        raw.send(b"".join(msgpack.packb([0, i, "tcp.connect", [HOST, port]]) for i in range(50)))
        answers = [raw.read_message() for _ in range(50)]
        made = [a[3] for a in answers if a[2] is None]
        refused = [a[2] for a in answers if a[2] is not None]
        assert len(made) == 5, answers
        assert all(e == [6, "LIMIT: this client already has 5 connections"] for e in refused)
        assert sorted(raw.call(100, "tcp.list", [])[3]) == sorted(made)
        for i, conn in enumerate(made):
            assert raw.call(200 + i, "tcp.close", [conn]) == [1, 200 + i, None, True]
