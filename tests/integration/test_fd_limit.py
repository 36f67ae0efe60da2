"""Open-file exhaustion: the daemon refuses new connections with LIMIT, keeps serving the ones it
has, and recovers when descriptors are free again (issue: leak and fd-exhaustion behaviour)."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
import sys

import pytest

from chimney_client import AsyncClient, start_peer
from chimney_client.errors import LimitError

FD_LIMIT = 64


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def test_fd_exhaustion_refuses_then_recovers() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chimneyd",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warning",
            "--invariants",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=_limit_fds,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        addr = line.decode().split()[-1]
        peer = await start_peer("echo", "127.0.0.1", 0)
        client = await AsyncClient.connect(addr)
        conns: list[int] = []
        with pytest.raises(LimitError) as err:
            for _ in range(FD_LIMIT * 2):
                conns.append(await client.tcp_connect("127.0.0.1", peer.port))
        assert "open-file limit" in str(err.value)
        assert 10 < len(conns) < FD_LIMIT
        # the connections it has keep working, offloaded
        for conn in conns[:5]:
            assert await client.tcp_send(conn, b"still served") == 12
            assert await client.tcp_recv(conn, 100, 5000) == b"still served"
        assert await client.ping() == "pong"
        # free some descriptors: new connections work again
        for conn in conns[:10]:
            await client.tcp_close(conn)
        again = await client.tcp_connect("127.0.0.1", peer.port)
        assert (await client.tcp_info(again))["state"] == "offloaded"
        await client.tcp_send(again, b"recovered")
        assert await client.tcp_recv(again, 100, 5000) == b"recovered"
        # running out of descriptors broke no rule of spec §9
        assert (await client.stack_stats())["engine"]["invariant_violations"] == 0
        await client.close()
        await peer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.to_thread(proc.wait, 20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
