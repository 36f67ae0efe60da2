"""Requests whose client went away while they waited (a real daemon subprocess): nothing of
them is left in the daemon, and they take nothing that belongs to another client."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, Daemon, HandPeer
from tests.e2e.support import MsgidClient as Client

ADMIN = "adm1n"
ADMIN_CONFIG = f'[rpc]\nadmin_token = "{ADMIN}"\n'


@pytest.fixture
def peer() -> Iterator[HandPeer]:
    p = HandPeer()
    yield p
    p.close()


def engine_stats(d: Daemon) -> dict[str, Any]:
    c = Client(d, ADMIN)
    try:
        stats: dict[str, Any] = c.ok("stack.stats")["engine"]
        return stats
    finally:
        c.close()


def settled_engine(d: Daemon, key: str, timeout: float = 5.0) -> dict[str, Any]:
    """The engine's stats once `key` is back at 0 (or the last ones after `timeout`)."""
    deadline = time.monotonic() + timeout
    while (stats := engine_stats(d))[key] and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


@pytest.mark.parametrize("timeout_ms", [None, 60_000], ids=["no-timeout", "long-timeout"])
@pytest.mark.parametrize("offload", [True, False], ids=["offloaded", "host"])
def test_a_read_whose_client_left_takes_no_bytes_and_leaves_nothing(
    spawn_daemon: SpawnDaemon, peer: HandPeer, offload: bool, timeout_ms: int | None
) -> None:
    """A `tcp.recv` still waiting when its client leaves is withdrawn from the host: the
    connection's next bytes go to the next read (the owner's), none is lost, and the engine's
    pending-request table is back at 0 (rpc-contract tcp.recv: no data is lost)."""
    d = spawn_daemon(ADMIN_CONFIG, admin_token=ADMIN)
    owner = Client(d)
    conn = owner.ok("tcp.connect", HOST, peer.port, {"offload": offload})
    psock = peer.wait()
    admin = Client(d, ADMIN)  # an admin may read another client's connection
    admin.send("tcp.recv", conn, 100, *([timeout_ms] if timeout_ms else []))
    assert admin.ok("ping") == "pong"  # the read was dispatched before this answer
    admin.close()  # the admin leaves; its read waits for bytes in the host
    pending = settled_engine(d, "pending_requests")["pending_requests"]
    psock.sendall(b"hello")
    err, data = owner.call("tcp.recv", conn, 100, 3000)
    try:
        assert [err, data] == [None, b"hello"], "the owner's bytes went to the abandoned read"
        assert pending == 0, f"engine pending_requests = {pending} after the admin left"
    finally:
        owner.ok("tcp.close", conn)
        owner.close()


def test_an_accept_whose_client_left_takes_no_connection(spawn_daemon: SpawnDaemon) -> None:
    """A `tcp.accept` still waiting when its client leaves stops waiting: the listener's next
    connection goes to the next accept (its owner's), not to the one that left (which would
    close it for want of an owner)."""
    d = spawn_daemon(ADMIN_CONFIG, admin_token=ADMIN)
    owner = Client(d)
    lid = owner.ok("tcp.listen", HOST, 0)
    port = owner.ok("tcp.listener_info", lid)["port"]
    admin = Client(d, ADMIN)  # an admin may accept on another client's listener
    admin.send("tcp.accept", lid)  # no timeout
    assert admin.ok("ping") == "pong"
    admin.close()
    waiting = settled_engine(d, "accept_waiters")["accept_waiters"]
    s = socket.create_connection((HOST, port))  # a peer connects to the owner's listener
    try:
        err, conn = owner.call("tcp.accept", lid, 3000)
        assert err is None, f"the owner's tcp.accept: {err!r} (taken by the abandoned accept)"
        assert waiting == 0, f"accepts still waiting after their client left: {waiting}"
        s.sendall(b"ping")
        assert owner.ok("tcp.recv", conn, 10, 3000) == b"ping"  # the connection is live
        owner.ok("tcp.close", conn)
    finally:
        s.close()
        owner.close()


def test_accepts_that_timed_out_leave_no_waiter(spawn_daemon: SpawnDaemon) -> None:
    """A timed-out `tcp.accept` leaves nothing behind in its listener (tables back to 0)."""
    d = spawn_daemon(ADMIN_CONFIG, admin_token=ADMIN)
    owner = Client(d)
    lid = owner.ok("tcp.listen", HOST, 0)
    for _ in range(3):
        err, _ = owner.call("tcp.accept", lid, 10)
        assert err is not None and err[0] == 7  # TIMEOUT
    assert settled_engine(d, "accept_waiters")["accept_waiters"] == 0
    owner.close()
