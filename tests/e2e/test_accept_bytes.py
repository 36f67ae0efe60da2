"""Bytes a peer sends before, during and after `tcp.accept`, through a real daemon over RPC.

The in-process engine tests (tests/integration/test_waiting_bytes.py) cover each waiting place;
this is the path a user takes: a daemon subprocess, its listener, plain sockets as peers, and
`tcp.recv` over RPC. Several connections wait in the listener at once, each with its own bytes:
a few, more than the socket buffers hold, and a few followed by the peer's FIN. Each must come
back whole, in order, to the connection it belongs to, in host mode and offloaded.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.e2e.support import HOST, Daemon, settled, wait_until

pytestmark = pytest.mark.timeout(120, method="thread")

BIG = random.Random(7).randbytes(3 * 1024 * 1024)  # more than the daemon and kernel buffers hold
PEERS = [(b"EARLY|", False), (BIG, False), (b"LAST|", True)]  # (sent before accept, then FIN?)


async def _recv_until(c: Any, conn: int, n: int | None) -> bytes:
    """`tcp.recv` until `n` bytes came, or until end of stream when `n` is None."""
    got = bytearray()
    while n is None or len(got) < n:
        piece = await c.tcp_recv(conn, 1 << 20, 5000)
        if not piece:
            assert n is None, f"end of stream after {len(got)} of {n} bytes"
            break
        got += piece
    return bytes(got)


@pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])
async def test_bytes_before_during_and_after_accept_come_back_whole(
    daemon: Daemon, offload: bool
) -> None:
    c = await daemon.aclient()
    try:
        lid = await c.tcp_listen(HOST, 0, offload)
        port = (await c.tcp_listener_info(lid))["port"]
        peers = []
        for data, fin in PEERS:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(data)  # buffered here as far as the daemon does not read it yet
            if fin:
                writer.write_eof()
            peers.append((reader, writer, data, fin))
        drains = [asyncio.ensure_future(w.drain()) for _, w, _, _ in peers]

        async def all_pending() -> bool:
            return bool((await c.tcp_listener_info(lid))["pending"] == len(PEERS))

        await wait_until(all_pending)  # the daemon holds all three, with their bytes, unaccepted
        by_addr = {
            "{}:{}".format(*w.get_extra_info("sockname")[:2]): (w, data, fin)
            for _, w, data, fin in peers
        }
        conns = [await c.tcp_accept(lid, 10_000) for _ in PEERS]
        expected: dict[int, bytes] = {}
        for conn in conns:
            info = await c.tcp_info(conn)
            assert info["state"] == ("offloaded" if offload else "host"), info
            writer, data, fin = by_addr[info["remote"]]
            if not fin:
                writer.write(b"LATE")  # after the accept
            expected[conn] = data + (b"" if fin else b"LATE")
        for conn in conns:
            fin = expected[conn].endswith(b"LAST|")
            got = await _recv_until(c, conn, None if fin else len(expected[conn]))
            assert got == expected[conn], (conn, len(got), len(expected[conn]))
        await asyncio.gather(*drains)
        for _, writer, _, _ in peers:
            writer.close()
        for conn in conns:
            await c.tcp_close(conn)
        await settled(c.stack_stats)
    finally:
        await c.close()
