"""Byte-exact integrity on real loopback sockets across repeated offload and upload."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from chimneyd.engine import Engine


def _stream(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _pump(
    engine: Engine,
    conn: int,
    payload: bytes,
    window: int,
    rng: random.Random,
    counts: dict[str, int] | None = None,
) -> None:
    """Send `payload` in random-sized pieces, `window` sends in flight (a host send backlog).
    With `counts`, start an upload-then-offload cycle every 32 KiB, while sends are in flight."""
    sem = asyncio.Semaphore(window)
    pending: list[asyncio.Task[int]] = []
    toggles: list[asyncio.Task[None]] = []
    pos = next_toggle = 0
    while pos < len(payload):
        n = rng.choice([1, 7, 100, 1460, 4096, 65536, 100_000])
        piece = payload[pos : pos + n]
        pos += len(piece)
        await sem.acquire()
        task = asyncio.ensure_future(engine.send(conn, piece))
        task.add_done_callback(lambda _t: sem.release())
        pending.append(task)
        if counts is not None and pos >= next_toggle:
            next_toggle = pos + 32 * 1024
            toggles.append(asyncio.ensure_future(_cycle(engine, conn, counts)))
    sent = await asyncio.gather(*pending)
    await asyncio.gather(*toggles)
    assert sum(sent) == len(payload)


async def _cycle(engine: Engine, conn: int, counts: dict[str, int]) -> None:
    assert (await engine.upload(conn))["state"] == "host"
    counts["upload"] += 1
    assert (await engine.offload(conn))["state"] == "offloaded"
    counts["offload"] += 1


async def _drain(engine: Engine, conn: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await engine.recv(conn, 256 * 1024, 10.0)
    return bytes(got)


async def test_echo_stream_survives_repeated_offload_and_upload(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    # hold initiates and terminates a little, so bytes arrive while they are in flight:
    # the host must forward them (initiate) or take them from the ordinary path (terminate)
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 3}
    )
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 3}
    )
    payload = _stream(1, 4 * 1024 * 1024)
    counts = {"upload": 0, "offload": 0}
    reader = asyncio.ensure_future(_drain(engine, conn, len(payload)))
    await _pump(engine, conn, payload, 16, random.Random(2), counts)
    echoed = await reader
    assert echoed == payload
    assert counts["upload"] >= 10 and counts["offload"] >= 10
    host_calls = engine.stats()["layers"]["tcpip"]["calls"]
    assert host_calls.get("NdisOffloadTcpForward", 0) > 0, (
        "no forward during initiate was exercised"
    )
    assert engine.stats()["layers"]["tcpip"]["calls"].get("NdisTerminateOffload", 0) >= 5


async def test_both_directions_independent_streams(make_engine: Any, recording: Any) -> None:
    """The peer sends its own stream while we send ours; both arrive exactly, across uploads."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    await asyncio.sleep(0.01)
    peer = peers[0]
    ours = _stream(3, 2 * 1024 * 1024)
    theirs = _stream(4, 2 * 1024 * 1024)

    async def peer_sends() -> None:
        for i in range(0, len(theirs), 50_000):
            peer.transport.write(theirs[i : i + 50_000])
            await asyncio.sleep(0)
            if peer.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.001)

    counts = {"upload": 0, "offload": 0}
    reader = asyncio.ensure_future(_drain(engine, conn, len(theirs)))
    await asyncio.gather(peer_sends(), _pump(engine, conn, ours, 8, random.Random(5), counts))
    got = await reader
    assert got == theirs
    assert counts["upload"] >= 5
    for _ in range(200):
        if len(peer.received) >= len(ours):
            break
        await asyncio.sleep(0.01)
    assert bytes(peer.received) == ours
