"""Parity between a connection the host stack carries and one offloaded to a NIC: the client
sees the same bytes, results, errors and events either way (rpc-contract: `tcp.offload` "the
connection stays usable in host mode", `tcp.upload` "goes on in the host stack with no byte
lost"; docs/rpc.md per method). Each scenario runs once offloaded and once in another mode —
never offloaded (`offload: false`), offloaded then uploaded (`tcp.upload`), offload refused
(`fail_next` on the initiate), uploaded by a `target_failure` or a `host_event` — and the two
transcripts are compared. Placement itself (`tcp.info` state, `offloaded`/`uploaded` events,
the documented `path: "host"` in event info, `tcp.offload`'s answer under a fault) is not.

A plain run (about 35 s on two cores) compares the scenarios of EVERY_MODE with all five modes
and those of ONE_MODE with one mode each; `CHIMNEYD_PARITY_MATRIX=full` compares every scenario
with every mode (`make parity`; about three minutes on two cores), and adds accepted
connections the peer resets at each place they wait (ACCEPT_SCENARIOS: a listener that offloads
what it accepts against one that does not). Cases whose fault leaves a NIC coming back get a
daemon of their own; the others share one per module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from chimney_client import AsyncClient, RpcError
from tests.e2e.conftest import daemon_factory
from tests.e2e.support import HOST, Daemon, HandPeer, settled, wait_until

Transcript = list[Any]
Scenario = Callable[[AsyncClient, int, socket.socket, list[str]], Awaitable[Transcript]]

ABORTED = "NDIS_STATUS_REQUEST_ABORTED (NxC023000C)"
#: events that say where the connection is, not what happened to its stream
_PLACEMENT = {"offloaded", "uploaded", "TcpIndicateSendBacklogChange", "TcpIndicateRetrieve"}


async def outcome(aw: Awaitable[Any]) -> Any:
    """A call's result, or its error as (symbol, message with numbers blanked)."""
    try:
        res = await aw
    except RpcError as err:
        # numbers blanked (ids, status codes) but the acknowledged byte count
        return (err.symbol, re.sub(r"(?<!acknowledged )\b\d+", "N", err.message))
    return bytes(res) if isinstance(res, bytes | bytearray) else res


async def recv_all(c: AsyncClient, conn: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = await c.call("tcp.recv", conn, n - len(got), 10_000)
        assert chunk, f"end of stream after {len(got)} of {n} bytes"
        got += chunk
    return got


def peer_read(s: socket.socket, n: int) -> bytes:
    """What the peer receives: up to `n` bytes or until EOF (bounded wait)."""
    s.settimeout(10)
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def peer_reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def open_conn(
    c: AsyncClient, peer: HandPeer, n: int, mode: str, faults: list[int]
) -> tuple[int, socket.socket]:
    """A connection carried as `mode` says: `offloaded`; `host` (never offloaded); `uploaded`
    (`tcp.upload`); `refused` (the NIC failed its initiate); `target_failure` / `host_event`
    (offloaded, then uploaded by the fault, which stays on for the scenario)."""
    if mode == "refused":
        faults.append(
            await c.fault_inject(
                "fail_next",
                layer="nic0",
                call="MiniportInitiateOffload",
                status="NDIS_STATUS_FAILURE",
                count=1,
            )
        )
    conn = await c.tcp_connect(HOST, peer.port, offload=(mode != "host"))
    if mode == "uploaded":
        assert (await c.tcp_upload(conn))["state"] == "host"
    elif mode == "target_failure":
        faults.append(await c.fault_inject("target_failure", layer="nic0"))
    elif mode == "host_event":
        faults.append(await c.fault_inject("host_event", layer="nic0", event="media_disconnect"))
    want = "offloaded" if mode == "offloaded" else "host"
    for _ in range(100):
        if (await c.tcp_info(conn))["state"] == want:
            break
        await asyncio.sleep(0.05)
    assert (await c.tcp_info(conn))["state"] == want
    return conn, await asyncio.to_thread(peer.wait, n)


async def run_both(daemon: Daemon, mode: str, scenario: Scenario) -> tuple[Transcript, Transcript]:
    peer = HandPeer()
    c = await AsyncClient.connect(daemon.address, call_timeout=120.0)
    events: dict[int, list[str]] = {}

    def on_event(conn: int, event: str, info: dict[str, Any]) -> None:
        if event not in _PLACEMENT:
            events.setdefault(conn, []).append(event)

    c.on_tcp_event(on_event)
    await c.events_subscribe("*")
    faults: list[int] = []
    try:
        out = []
        for i, m in enumerate(("offloaded", mode), start=1):
            conn, s = await open_conn(c, peer, i, m, faults)
            ev = events.setdefault(conn, [])
            t = await scenario(c, conn, s, ev)
            await asyncio.sleep(0.2)  # late events (not a timing assertion: a settle)
            out.append([*t, ("events", list(ev))])
        return out[0], out[1]
    finally:
        for fid in faults:
            await outcome(c.fault_clear(fid))
        for conn in await c.tcp_list():
            await outcome(c.tcp_close(conn))
        await c.close()
        peer.close()


# -- scenarios ---------------------------------------------------------------------------------


async def peer_fin_after_data(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The peer sends, then half-closes: bytes, EOF (again and again), sends still go out."""
    t: Transcript = []
    s.sendall(b"abcdef")
    s.shutdown(socket.SHUT_WR)
    t.append(await recv_all(c, conn, 6))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 5000)))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 5000)))
    t.append(await outcome(c.call("tcp.send", conn, b"after-fin")))
    t.append(await asyncio.to_thread(peer_read, s, 9))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await asyncio.to_thread(peer_read, s, 1))  # the FIN: b""
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def peer_rst_pending_recv(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A read waits when the peer resets: it fails, and so does everything after."""
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 10_000)))
    await asyncio.sleep(0.3)
    peer_reset(s)
    t.append(await pending)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 2000)))
    t.append(await outcome(c.call("tcp.send", conn, b"x")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    t.append(await outcome(c.call("tcp.close", conn)))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 100)))
    return t


async def graceful_disconnect(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """Our FIN: sends refused after it, a second disconnect refused, reads still work."""
    t: Transcript = []
    t.append(await outcome(c.call("tcp.send", conn, b"bye")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await asyncio.to_thread(peer_read, s, 10))
    t.append(await outcome(c.call("tcp.send", conn, b"x")))
    t.append(await outcome(c.call("tcp.send", conn, b"")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    return t


async def graceful_then_peer_data(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    s.sendall(b"late")
    t.append(await recv_all(c, conn, 4))
    s.shutdown(socket.SHUT_WR)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def abortive_disconnect(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    s.sendall(b"unread")
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 1000)))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 1000)))
    t.append(await outcome(c.call("tcp.send", conn, b"x")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    try:
        s.settimeout(5)
        t.append(("peer", s.recv(100)))
    except OSError as exc:
        t.append(("peer", type(exc).__name__))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def recv_timeout_loses_nothing(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    t.append(await outcome(c.call("tcp.recv", conn, 100, 200)))
    s.sendall(b"later")
    t.append(await recv_all(c, conn, 5))
    t.append(await outcome(c.call("tcp.send", conn, b"")))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 200)))
    return t


async def close_with_pending_recv(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 10_000)))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.close", conn)))
    t.append(await pending)
    t.append(await asyncio.to_thread(peer_read, s, 1))
    t.append(await outcome(c.call("tcp.info", conn)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def peer_fin_with_unread(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The peer sends and closes before anything is read; then the client closes."""
    t: Transcript = []
    s.sendall(b"0123456789" * 10)
    s.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.recv", conn, 30, 5000)))
    t.append(await recv_all(c, conn, 70))
    t.append(await outcome(c.call("tcp.recv", conn, 30, 5000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def large_send_peer_reads(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    data = bytes(range(256)) * 8192  # 2 MiB
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    got = await asyncio.to_thread(peer_read, s, len(data))
    t.append(got == data)
    t.append(await sending)
    return t


async def close_with_send_stuck(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The peer reads nothing; a big send waits for acks; tcp.close answers it."""
    stop_reading(s)
    data = b"z" * (4 * 1024 * 1024)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.5)
    t.append(await outcome(c.call("tcp.close", conn)))
    res = await sending
    t.append(res[0] if isinstance(res, tuple) else res)
    return t


async def waitall_short_at_eof(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = asyncio.ensure_future(
        outcome(c.call("tcp.recv", conn, 10, 10_000, {"waitall": True}))
    )
    await asyncio.sleep(0.2)
    s.sendall(b"abc")
    await asyncio.sleep(0.2)
    s.sendall(b"de")
    s.shutdown(socket.SHUT_WR)
    t.append(await pending)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000, {"waitall": True})))
    return t


async def rst_after_fin(c: AsyncClient, conn: int, s: socket.socket, ev: list[str]) -> Transcript:
    """The peer's FIN is read, then the peer resets: EOF stays EOF (receive.at_eof)."""
    t: Transcript = []
    s.sendall(b"xy")
    s.shutdown(socket.SHUT_WR)
    t.append(await recv_all(c, conn, 2))
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
    peer_reset(s)
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.send", conn, b"q")))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 2000)))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


def stop_reading(s: socket.socket) -> None:
    """A peer that reads nothing yet: a small window (not below a loopback MSS, or the peer's
    kernel never announces it opening again and the sender crawls on zero-window probes)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)


async def upload_with_pending_recv(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 10_000)))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.upload", conn)))
    s.sendall(b"abc")
    t.append(await pending)
    return t


async def upload_with_unread_and_fin(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    s.sendall(b"q" * 5000)
    s.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.upload", conn)))
    t.append(len(await recv_all(c, conn, 5000)))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 5000)))
    t.append(await outcome(c.call("tcp.send", conn, b"ok")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    return t


async def upload_with_send_in_flight(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    data = bytes(range(251)) * 8000
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.5)
    uploading = asyncio.ensure_future(outcome(c.call("tcp.upload", conn)))
    got = await asyncio.to_thread(peer_read, s, len(data))
    t.append(got == data)
    t.append(await uploading)
    t.append(await sending)
    return t


async def upload_with_disconnect_pending(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    data = b"d" * (1024 * 1024)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.3)
    disc = asyncio.ensure_future(outcome(c.call("tcp.disconnect", conn)))
    await asyncio.sleep(0.3)
    uploading = asyncio.ensure_future(outcome(c.call("tcp.upload", conn)))
    got = await asyncio.to_thread(peer_read, s, len(data) + 1)
    t.append(got == data)
    t.append(await sending)
    t.append(await disc)
    t.append(await uploading)
    return t


async def offload_with_pending_recv(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 10_000)))
    await asyncio.sleep(0.3)
    # answered NDIS_STATUS (target_failure) or INVALID_STATE (host_event) where the NIC takes
    # no offload: docs/faults.md says so; what matters here is the waiting read
    await outcome(c.call("tcp.offload", conn))
    s.sendall(b"abc")
    t.append(await pending)
    return t


async def close_with_disconnect_pending(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    data = b"d" * (2 * 1024 * 1024)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.3)
    disc = asyncio.ensure_future(outcome(c.call("tcp.disconnect", conn)))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.close", conn)))
    r = await sending
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await disc)
    return t


async def fault_peer_reset(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 10_000)))
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"s" * (2 * 1024 * 1024))))
    await asyncio.sleep(0.5)
    fid = await c.fault_inject("peer_reset", conn=conn)
    t.append(await pending)
    r = await sending
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 1000)))
    t.append(await outcome(c.call("tcp.send", conn, b"x")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    await c.fault_clear(fid)
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def peer_rst_send_stuck(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"s" * (2 * 1024 * 1024))))
    await asyncio.sleep(0.5)
    peer_reset(s)
    r = await sending
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 1000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def stall_peer(c: AsyncClient, conn: int, s: socket.socket, ev: list[str]) -> Transcript:
    t: Transcript = []
    fid = await c.fault_inject("stall_peer", conn=conn, ms=500)
    s.sendall(b"in")
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"out")))
    t.append(await recv_all(c, conn, 2))
    t.append(await sending)
    t.append(await asyncio.to_thread(peer_read, s, 3))
    await c.fault_clear(fid)
    return t


async def backpressure_in(c: AsyncClient, conn: int, s: socket.socket, ev: list[str]) -> Transcript:
    data = bytes(range(253)) * 16000  # ~4 MiB, more than the daemon buffers
    t: Transcript = []
    writer = asyncio.ensure_future(asyncio.to_thread(s.sendall, data))
    await asyncio.sleep(1.0)
    got = await recv_all(c, conn, len(data))
    await writer
    t.append(got == data)
    s.shutdown(socket.SHUT_WR)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
    return t


async def abortive_with_send_stuck(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"s" * (2 * 1024 * 1024))))
    await asyncio.sleep(0.5)
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    r = await sending
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def info_keys(c: AsyncClient, conn: int, s: socket.socket, ev: list[str]) -> Transcript:
    info = await c.tcp_info(conn)
    s.sendall(b"12345")
    await recv_all(c, conn, 5)
    await c.tcp_send(conn, b"678")
    info2 = await c.tcp_info(conn)
    return [sorted(info), sorted(info["socket"]), info2["bytes_sent"], info2["bytes_received"]]


async def waitall_larger_than_buffer(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A waitall read of 1 MiB (docs/rpc.md allows up to 8 MiB) the peer sends in full."""
    data = bytes(range(241)) * 4352  # 1,048,832 bytes
    n = 1024 * 1024
    writer = asyncio.ensure_future(asyncio.to_thread(s.sendall, data))
    got = await outcome(c.call("tcp.recv", conn, n, 20_000, {"waitall": True}))
    t: Transcript = [got == data[:n] if isinstance(got, bytes) else got]
    await writer
    t.append(await recv_all(c, conn, len(data) - n) == data[n:])
    return t


async def peer_close_then_send(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The peer closes its socket for good (FIN; its kernel answers later bytes with RST)."""
    t: Transcript = []
    s.close()
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
    # the send the peer's RST answers: offloaded its message lacks "; connection reset",
    # which the host's has; both name the status and the acknowledged count, as the contract
    # asks, so only those are compared
    first = await outcome(c.call("tcp.send", conn, b"first"))
    t.append(tuple(re.sub(r"; connection reset$", "", x) for x in first))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.send", conn, b"second")))
    t.append(await outcome(c.call("tcp.recv", conn, 10, 2000)))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def nic_fails_mid_transfer(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The NIC fails (target_failure) while a read waits and a send is unacknowledged."""
    stop_reading(s)
    data = bytes(range(251)) * 8000
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 20_000)))
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.5)
    fid = await c.fault_inject("target_failure", layer="nic0")
    await asyncio.sleep(0.3)
    s.sendall(b"back")
    got = await asyncio.to_thread(peer_read, s, len(data))
    t.append(got == data)
    t.append(await sending)
    t.append(await pending)
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await asyncio.to_thread(peer_read, s, 1))
    await c.fault_clear(fid)
    return t


async def host_event_mid_close(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A host_event uploads while a graceful disconnect waits for the peer to read."""
    stop_reading(s)
    data = b"h" * (1024 * 1024)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.3)
    disc = asyncio.ensure_future(outcome(c.call("tcp.disconnect", conn)))
    await asyncio.sleep(0.3)
    fid = await c.fault_inject("host_event", layer="nic0", event="power_down")
    got = await asyncio.to_thread(peer_read, s, len(data) + 1)
    t.append(got == data)
    t.append(await sending)
    t.append(await disc)
    s.sendall(b"fin")
    s.shutdown(socket.SHUT_WR)
    t.append(await recv_all(c, conn, 3))
    t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
    await c.fault_clear(fid)
    return t


async def waitall_timeout_then_recv(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A waitall read times out with part of what it wanted arrived; nothing is lost by a
    timeout (rpc-contract tcp.recv), so a plain read then gets those bytes."""
    t: Transcript = []
    pending = asyncio.ensure_future(outcome(c.call("tcp.recv", conn, 100, 1000, {"waitall": True})))
    await asyncio.sleep(0.3)
    s.sendall(b"0123456789")
    t.append(await pending)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 3000)))
    t.append(await outcome(c.call("tcp.recv", conn, 100, 300)))
    return t


async def answered_within(fut: asyncio.Future[Any], seconds: float) -> Any:
    """The future's outcome, or "no answer" if it has none after `seconds` (a bound on a
    wait, not a timing claim: the other mode answers at once)."""
    try:
        return await asyncio.wait_for(asyncio.shield(fut), seconds)
    except TimeoutError:
        return "no answer"


async def abortive_over_pending_graceful(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A graceful disconnect waits behind bytes the peer does not read; an abortive one
    follows: both are answered (docs/rpc.md tcp.disconnect)."""
    stop_reading(s)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"g" * (2 * 1024 * 1024))))
    await asyncio.sleep(0.3)
    graceful = asyncio.ensure_future(outcome(c.call("tcp.disconnect", conn)))
    await asyncio.sleep(0.3)
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    r = await answered_within(sending, 5)
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await answered_within(graceful, 5))
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    t.append(await answered_within(graceful, 5))
    return t


async def offload_held_behind_fin(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """A graceful disconnect waits behind bytes the peer does not read and an offload is asked:
    offloaded it is answered at once; in the host it waits for the FIN's ACK. What comes after
    does not wait behind it: a send and a second graceful disconnect are refused, an abortive
    one resets (docs/rpc.md tcp.offload, tcp.disconnect). The offload's own answer is
    placement, not compared: only that it comes."""
    stop_reading(s)
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, b"o" * (2 * 1024 * 1024))))
    await asyncio.sleep(0.3)
    graceful = asyncio.ensure_future(outcome(c.call("tcp.disconnect", conn)))
    await asyncio.sleep(0.3)
    offloading = asyncio.ensure_future(outcome(c.call("tcp.offload", conn)))
    await asyncio.sleep(0.3)
    for call in (
        ("tcp.send", conn, b"x"),
        ("tcp.disconnect", conn),
        ("tcp.disconnect", conn, True),
    ):
        t.append(await answered_within(asyncio.ensure_future(outcome(c.call(*call))), 5))
    r = await answered_within(sending, 5)
    t.append(r[0] if isinstance(r, tuple) else r)
    t.append(await answered_within(graceful, 5))
    t.append(await answered_within(offloading, 5) != "no answer")
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def waitall_holding(c: AsyncClient, conn: int, s: socket.socket) -> asyncio.Future[Any]:
    """A waitall read of 10 bytes, pending once the peer's first 3 (`abc`) have arrived."""
    pending = asyncio.ensure_future(
        outcome(c.call("tcp.recv", conn, 10, 10_000, {"waitall": True}))
    )
    await asyncio.sleep(0.3)
    s.sendall(b"abc")
    await asyncio.sleep(0.3)
    return pending


async def upload_with_waitall_partial(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = await waitall_holding(c, conn, s)
    t.append(await outcome(c.call("tcp.upload", conn)))
    s.sendall(b"defghij")
    t.append(await pending)
    return t


async def waitall_partial_then_rst(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = await waitall_holding(c, conn, s)
    peer_reset(s)
    t.append(await pending)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    return t


async def offload_under_waitall_then_rst(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """Bytes a waitall read waits with go down at an offload (`BufferedData`, without PSH) and
    sit in a push-mode request for the push timer when the peer resets: the read gets them,
    then the next one the error. The offload is refused where the mode's fault stays on."""
    t: Transcript = []
    await outcome(c.call("tcp.upload", conn))
    pending = await waitall_holding(c, conn, s)
    await outcome(c.call("tcp.offload", conn))
    peer_reset(s)  # well within the push timer (engine.push_ticks_ms, 500)
    t.append(await pending)
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    return t


async def waitall_then_offload(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = await waitall_holding(c, conn, s)
    await outcome(c.call("tcp.offload", conn))
    s.sendall(b"defghij")
    t.append(await pending)
    return t


async def offload_with_unread_and_fin(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    s.sendall(b"u" * 3000)
    await asyncio.sleep(0.3)
    s.sendall(b"v" * 3000)
    s.shutdown(socket.SHUT_WR)
    await asyncio.sleep(0.3)
    await outcome(c.call("tcp.offload", conn))
    t.append(await recv_all(c, conn, 6000) == b"u" * 3000 + b"v" * 3000)
    t.append(await outcome(c.call("tcp.recv", conn, 100, 5000)))
    t.append(await outcome(c.call("tcp.send", conn, b"ok")))
    t.append(await asyncio.to_thread(peer_read, s, 2))
    return t


async def offload_with_send_stuck(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    stop_reading(s)
    data = bytes(range(249)) * 8000
    t: Transcript = []
    sending = asyncio.ensure_future(outcome(c.call("tcp.send", conn, data)))
    await asyncio.sleep(0.5)
    offloading = asyncio.ensure_future(outcome(c.call("tcp.offload", conn)))
    got = await asyncio.to_thread(peer_read, s, len(data))
    t.append(got == data)
    await offloading
    t.append(await sending)
    t.append(await outcome(c.call("tcp.send", conn, b"tail")))
    t.append(await asyncio.to_thread(peer_read, s, 4))
    return t


async def rst_behind_unread(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    """The peer sends more than the daemon buffers, then resets before anything is read: what
    arrived reads in order, then the reset. How much arrives is not compared: the bytes still in
    the peer's send queue go with its RST, as many as the window left there, and the window
    depends on how much the daemon buffers, the host stack (engine.rx_buffer_bytes) or the NIC,
    and on when its reads ran."""
    data = bytes(range(239)) * 4000  # ~0.9 MiB
    await asyncio.to_thread(s.sendall, data)
    await asyncio.sleep(0.5)
    peer_reset(s)
    await asyncio.sleep(0.5)
    got = b""
    while True:
        r = await outcome(c.call("tcp.recv", conn, 65536, 3000))
        if not isinstance(r, bytes) or not r:
            break
        got += r
    return [len(got) > 0, got == data[: len(got)], r]


async def waitall_pending_then_close(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = await waitall_holding(c, conn, s)
    t.append(await outcome(c.call("tcp.close", conn)))
    t.append(await answered_within(pending, 5))
    return t


async def waitall_partial_then_abortive(
    c: AsyncClient, conn: int, s: socket.socket, ev: list[str]
) -> Transcript:
    t: Transcript = []
    pending = await waitall_holding(c, conn, s)
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    t.append(await answered_within(pending, 5))
    t.append(await outcome(c.call("tcp.recv", conn, 10, 1000)))
    return t


SCENARIOS: dict[str, Scenario] = {
    "peer_fin_after_data": peer_fin_after_data,
    "peer_rst_pending_recv": peer_rst_pending_recv,
    "graceful_disconnect": graceful_disconnect,
    "graceful_then_peer_data": graceful_then_peer_data,
    "abortive_disconnect": abortive_disconnect,
    "recv_timeout_loses_nothing": recv_timeout_loses_nothing,
    "close_with_pending_recv": close_with_pending_recv,
    "peer_fin_with_unread": peer_fin_with_unread,
    "large_send_peer_reads": large_send_peer_reads,
    "close_with_send_stuck": close_with_send_stuck,
    "waitall_short_at_eof": waitall_short_at_eof,
    "rst_after_fin": rst_after_fin,
    "upload_with_pending_recv": upload_with_pending_recv,
    "upload_with_unread_and_fin": upload_with_unread_and_fin,
    "upload_with_send_in_flight": upload_with_send_in_flight,
    "upload_with_disconnect_pending": upload_with_disconnect_pending,
    "offload_with_pending_recv": offload_with_pending_recv,
    "close_with_disconnect_pending": close_with_disconnect_pending,
    "fault_peer_reset": fault_peer_reset,
    "peer_rst_send_stuck": peer_rst_send_stuck,
    "stall_peer": stall_peer,
    "backpressure_in": backpressure_in,
    "abortive_with_send_stuck": abortive_with_send_stuck,
    "info_keys": info_keys,
    "waitall_larger_than_buffer": waitall_larger_than_buffer,
    "peer_close_then_send": peer_close_then_send,
    "nic_fails_mid_transfer": nic_fails_mid_transfer,
    "host_event_mid_close": host_event_mid_close,
    "waitall_timeout_then_recv": waitall_timeout_then_recv,
    "abortive_over_pending_graceful": abortive_over_pending_graceful,
    "upload_with_waitall_partial": upload_with_waitall_partial,
    "waitall_partial_then_rst": waitall_partial_then_rst,
    "waitall_then_offload": waitall_then_offload,
    "offload_under_waitall_then_rst": offload_under_waitall_then_rst,
    "offload_with_unread_and_fin": offload_with_unread_and_fin,
    "offload_with_send_stuck": offload_with_send_stuck,
    "rst_behind_unread": rst_behind_unread,
    "waitall_pending_then_close": waitall_pending_then_close,
    "waitall_partial_then_abortive": waitall_partial_then_abortive,
    "offload_held_behind_fin": offload_held_behind_fin,
}


MODES = ("host", "uploaded", "refused", "target_failure", "host_event")
#: compared with every mode in every run: the scenarios that differed (CHANGELOG), where reads,
#: disconnects and resets meet the receive requests and disconnects a connection has pending,
#: which the host stack and the target handle apart
EVERY_MODE = (
    "waitall_timeout_then_recv",
    "abortive_over_pending_graceful",
    "waitall_partial_then_rst",
)
#: and these with one mode each, which each mode shares (reads, EOF and resets; disconnects;
#: uploads and offloads with data, reads or a FIN pending); every other scenario, and these
#: with the other modes, only with CHIMNEYD_PARITY_MATRIX=full
ONE_MODE = {
    "peer_rst_pending_recv": "uploaded",
    "upload_with_waitall_partial": "refused",
    "waitall_short_at_eof": "host",
    "waitall_pending_then_close": "host_event",
    "waitall_partial_then_abortive": "refused",
    "waitall_then_offload": "target_failure",
    "recv_timeout_loses_nothing": "host",
    "rst_after_fin": "host_event",
    "peer_fin_after_data": "uploaded",
    "abortive_disconnect": "target_failure",
    "close_with_disconnect_pending": "uploaded",
    "upload_with_unread_and_fin": "refused",
    "offload_with_unread_and_fin": "host",
    "info_keys": "refused",
    "close_with_pending_recv": "host",
    "fault_peer_reset": "refused",
    "upload_with_pending_recv": "uploaded",
    "offload_with_pending_recv": "host_event",
    "offload_under_waitall_then_rst": "host_event",
}
#: modes whose fault stays on for the scenario, and scenarios that fail a NIC themselves: a
#: daemon of their own, as the next connection's offload would meet the NIC still coming back
_OWN_DAEMON_MODES = frozenset({"target_failure", "host_event"})
_OWN_DAEMON_SCENARIOS = frozenset({"nic_fails_mid_transfer", "host_event_mid_close"})
FULL_MATRIX = os.environ.get("CHIMNEYD_PARITY_MATRIX") == "full"


def cases() -> list[Any]:
    """Every scenario with every mode under CHIMNEYD_PARITY_MATRIX=full; else EVERY_MODE's
    with every mode and ONE_MODE's with theirs."""
    out = []
    for name in SCENARIOS:
        if FULL_MATRIX or name in EVERY_MODE:
            modes: tuple[str, ...] = MODES
        elif name in ONE_MODE:
            modes = (ONE_MODE[name],)
        else:
            continue
        out += [pytest.param(name, mode, id=f"{name}-{mode}") for mode in modes]
    return out


def test_the_default_cases_name_real_scenarios_and_modes() -> None:
    assert set(EVERY_MODE) <= set(SCENARIOS) and set(ONE_MODE) <= set(SCENARIOS)
    assert set(ONE_MODE.values()) == set(MODES) and not set(EVERY_MODE) & set(ONE_MODE)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the cases that leave nothing behind: each closes its connections and
    clears its faults (`run_both`); it is stopped and checked at the end of the module."""
    with daemon_factory(tmp_path_factory.mktemp("parity")) as spawn:
        yield spawn()


@pytest.mark.parametrize(("name", "mode"), cases())
async def test_host_and_offloaded_look_alike(
    request: pytest.FixtureRequest, name: str, mode: str
) -> None:
    own = mode in _OWN_DAEMON_MODES or name in _OWN_DAEMON_SCENARIOS
    daemon: Daemon = request.getfixturevalue("daemon" if own else "shared_daemon")
    offloaded, other = await run_both(daemon, mode, SCENARIOS[name])
    assert other == offloaded, f"\noffloaded: {offloaded}\n{mode}: {other}"


@pytest.mark.parametrize("offload", [False, True])
async def test_accepted_connection_look_alike(shared_daemon: Daemon, offload: bool) -> None:
    """A connection accepted on a listener with and without offload: the peer's early bytes,
    its FIN, our answer (docs/rpc.md tcp.listen, tcp.accept)."""
    c = await AsyncClient.connect(shared_daemon.address, call_timeout=60.0)
    try:
        lid = await c.tcp_listen(HOST, 0, offload=offload)
        port = (await c.tcp_listener_info(lid))["port"]
        t: Transcript = [await outcome(c.call("tcp.accept", lid, 100))]
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(b"early")
            s.shutdown(socket.SHUT_WR)
            conn = await c.tcp_accept(lid, 10_000)
            t.append(await recv_all(c, conn, 5))
            t.append(await outcome(c.call("tcp.recv", conn, 10, 5000)))
            t.append(await outcome(c.call("tcp.send", conn, b"reply")))
            t.append(await outcome(c.call("tcp.disconnect", conn)))
            t.append(await asyncio.to_thread(peer_read, s, 100))
        t.append((await c.tcp_listener_info(lid))["pending"])
        assert t == [
            ("TIMEOUT", "TIMEOUT: no connection on listener N"),
            b"early",
            b"",
            5,
            "NDIS_STATUS_SUCCESS",
            b"reply",
            0,
        ], t
    finally:
        await c.close()


# -- accepted connections and resets -------------------------------------------------------------
# Each runs on a listener that offloads what it accepts and on one that does not, and the two
# transcripts are compared, as the matrix above compares modes of a connected one. The peer's
# RST comes at each place an accepted connection can wait: in the kernel's accept queue, in the
# listener's queue (accepted, offloaded or not, no `tcp.accept` yet), or while a `tcp.accept`
# waits. Only with CHIMNEYD_PARITY_MATRIX=full.
class Accepting:
    """One accept scenario's listener: the client, its daemon, the listener and its port, and
    every event its connections had so far (placement ones too), in order."""

    def __init__(self, c: AsyncClient, d: Daemon, offload: bool) -> None:
        self.c, self.d, self.offload = c, d, offload
        self.lid = self.port = 0
        self.seen: list[str] = []

    async def event(self, name: str) -> None:
        """Until the listener's connection had the event `name` (each scenario has one)."""

        async def there() -> bool:
            return name in self.seen

        await wait_until(there)

    @contextlib.contextmanager
    def daemon_held(self) -> Iterator[None]:
        """The daemon stopped (SIGSTOP) for the block: what the peer does meanwhile, the
        kernel alone handles, and the connection waits in the kernel's accept queue."""
        os.kill(self.d.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.d.proc.pid, signal.SIGCONT)


AcceptScenario = Callable[[Accepting], Awaitable[Transcript]]


def peer_connect(port: int, data: bytes = b"", fin: bool = False) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=10)
    if data:
        s.sendall(data)
    if fin:
        s.shutdown(socket.SHUT_WR)
    return s


async def pending_is(c: AsyncClient, lid: int, n: int) -> None:
    async def there() -> bool:
        return bool((await c.tcp_listener_info(lid))["pending"] == n)

    await wait_until(there)


async def after_reset(c: AsyncClient, conn: int) -> Transcript:
    """What a client sees of a connection its peer reset: reads, a send, disconnects, close."""
    t: Transcript = []
    for _ in range(3):
        r = await outcome(c.call("tcp.recv", conn, 100, 3000))
        t.append(r)
        if not isinstance(r, bytes) or not r:
            break
    t.append(await outcome(c.call("tcp.send", conn, b"x")))
    t.append(await outcome(c.call("tcp.disconnect", conn)))
    t.append(await outcome(c.call("tcp.disconnect", conn, True)))
    t.append(await outcome(c.call("tcp.close", conn)))
    return t


async def reset_in_kernel_queue(a: Accepting) -> Transcript:
    """The peer sends and resets before the daemon took the connection from the kernel."""
    with a.daemon_held():
        peer_reset(peer_connect(a.port, b"early"))
    conn = await a.c.tcp_accept(a.lid, 10_000)
    return await after_reset(a.c, conn)


async def reset_while_pending(a: Accepting) -> Transcript:
    """The daemon holds the connection (offloaded, on an offloading listener) when the peer
    sends and resets; `tcp.accept` comes after."""
    s = peer_connect(a.port)
    await pending_is(a.c, a.lid, 1)
    if a.offload:
        await a.event("offloaded")
    s.sendall(b"early")
    peer_reset(s)
    await a.event("TcpIndicateAbort")
    conn = await a.c.tcp_accept(a.lid, 10_000)
    return await after_reset(a.c, conn)


async def fin_then_reset_while_pending(a: Accepting) -> Transcript:
    s = peer_connect(a.port, b"bye", fin=True)
    await pending_is(a.c, a.lid, 1)
    await a.event("TcpIndicateDisconnect")
    peer_reset(s)
    await a.event("TcpIndicateAbort")
    conn = await a.c.tcp_accept(a.lid, 10_000)
    return await after_reset(a.c, conn)


async def reset_while_accept_waits(a: Accepting) -> Transcript:
    accepting = asyncio.ensure_future(a.c.tcp_accept(a.lid, 10_000))
    await asyncio.sleep(0.3)  # the accept waiting (a settle: it takes the connection either way)
    with a.daemon_held():
        peer_reset(peer_connect(a.port, b"early"))
    return await after_reset(a.c, await accepting)


ACCEPT_SCENARIOS: dict[str, AcceptScenario] = {
    "reset_in_kernel_queue": reset_in_kernel_queue,
    "reset_while_pending": reset_while_pending,
    "fin_then_reset_while_pending": fin_then_reset_while_pending,
    "reset_while_accept_waits": reset_while_accept_waits,
}


async def run_accept(d: Daemon, offload: bool, scenario: AcceptScenario) -> Transcript:
    c = await AsyncClient.connect(d.address, call_timeout=60.0)
    a = Accepting(c, d, offload)
    c.on_tcp_event(lambda conn, event, info: a.seen.append(event))
    await c.events_subscribe("*")
    try:
        a.lid = await c.tcp_listen(HOST, 0, offload=offload)
        a.port = (await c.tcp_listener_info(a.lid))["port"]
        t = await scenario(a)
        await a.event("closed")
        t.append(("pending", (await c.tcp_listener_info(a.lid))["pending"]))
        t.append(("events", [e for e in a.seen if e not in _PLACEMENT]))
        return t
    finally:
        await c.close()


# defined only for the full matrix: an empty parameter set would be a skip in a plain run
if FULL_MATRIX:

    @pytest.mark.parametrize("name", sorted(ACCEPT_SCENARIOS))
    async def test_accepted_and_reset_look_alike(shared_daemon: Daemon, name: str) -> None:
        offloaded = await run_accept(shared_daemon, True, ACCEPT_SCENARIOS[name])
        host = await run_accept(shared_daemon, False, ACCEPT_SCENARIOS[name])
        assert host == offloaded, f"\noffloaded: {offloaded}\nhost: {host}"
        async with await shared_daemon.aclient() as c:
            await settled(c.stack_stats)  # nothing of them left

    @pytest.mark.parametrize("offload", [True, False])
    async def test_reset_connections_nobody_accepted_go_with_their_client(
        shared_daemon: Daemon, offload: bool
    ) -> None:
        """Connections reset in the kernel's accept queue and in the listener's, never accepted:
        they are closed with their listener when its client leaves, and nothing of them is left."""
        d = shared_daemon
        c = await AsyncClient.connect(d.address, call_timeout=60.0)
        a = Accepting(c, d, offload)
        c.on_tcp_event(lambda conn, event, info: a.seen.append(event))
        await c.events_subscribe("*")
        lid = await c.tcp_listen(HOST, 0, offload=offload)
        port = (await c.tcp_listener_info(lid))["port"]
        with a.daemon_held():
            peer_reset(peer_connect(port, b"one"))
        await pending_is(c, lid, 1)
        s = peer_connect(port, b"two")
        await pending_is(c, lid, 2)
        peer_reset(s)

        async def both_reset() -> bool:
            return a.seen.count("TcpIndicateAbort") == 2

        await wait_until(both_reset)
        await c.close()
        async with await d.aclient() as admin:
            stats = await settled(admin.stack_stats)
        assert stats["engine"]["wires"] == 0 and stats["engine"]["listeners"] == 0, stats
