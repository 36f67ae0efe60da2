"""The host posts a receive buffer again once the application has read every byte placed in it
(`receive.spare`), never while unread bytes are in it, and lets the kept ones go with its last
connection."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chimneyd.api import EngineError
from chimneyd.drivers.host import receive

SIZE = 16 * 1024


async def _offloaded(engine: Any, port: int) -> int:
    conn = await engine.connect("127.0.0.1", port)
    if engine.conn_info(conn)["state"] != "offloaded":
        assert (await engine.offload(conn))["state"] == "offloaded"
    return conn


async def _round(engine: Any, conn: int, data: bytes) -> bytes:
    # the read first: its request is posted before the echo comes, so the target fills it
    reading = engine.start_recv(conn, len(data), 10.0, True)
    await asyncio.sleep(0.01)
    assert await engine.send(conn, data) == len(data)
    return bytes(await reading)


async def test_echo_rounds_post_the_same_buffer_again(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await _offloaded(engine, echo_port)
    rng = random.Random(7)
    host = engine.host
    kept = None
    for i in range(10):
        data = rng.randbytes(SIZE)
        assert await _round(engine, conn, data) == data
        assert host.rx_spare_bytes == SIZE and len(host.rx_spares[SIZE]) == 1
        if kept is None:
            kept = host.rx_spares[SIZE][0]
        else:
            # taken for this round's request, placed in, read, and kept again: no new buffer
            assert host.rx_spares[SIZE][0] is kept, f"round {i} posted a new buffer"
    assert engine.stats()["layers"]["tcpip"]["calls"].get("NdisOffloadTcpReceive", 0) >= 10
    await engine.close(conn)
    # the last connection gone, the kept buffers go with it
    assert host.rx_spares == {} and host.rx_spare_bytes == 0


async def test_a_buffer_with_unread_bytes_is_not_posted_again(
    make_engine: Any, echo_port: int
) -> None:
    """A read that timed out leaves its request posted; the bytes the target then places in it
    wait in the TCB, viewed, not copied. The request for the rest of a later read is of the
    same size: were that buffer kept, the target would place the new bytes over the unread."""
    engine = await make_engine()
    conn = await _offloaded(engine, echo_port)
    host = engine.host
    with pytest.raises(EngineError):
        await engine.recv(conn, SIZE, 0.05)  # withdrawn; its request stays posted
    first = random.Random(1).randbytes(1000)
    assert await engine.send(conn, first) == len(first)
    for _ in range(200):  # the posted request completes with the echo (pushed)
        if engine.conn_info(conn)["bytes_received"] >= len(first):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert host.rx_spare_bytes == 0, "a buffer with unread bytes was kept"
    second = random.Random(2).randbytes(SIZE)
    # all of it: the 1,000 bytes waiting and SIZE more, for which a request of SIZE is posted
    reading = engine.start_recv(conn, len(first) + SIZE, 10.0, True)
    await asyncio.sleep(0.01)
    assert await engine.send(conn, second) == SIZE
    assert bytes(await reading) == first + second
    await engine.close(conn)


async def test_what_is_kept_stays_within_its_budget(make_engine: Any, echo_port: int) -> None:
    """At most SPARE_BYTES of buffers, none above SPARE_MAX_BYTES, only posted ones (bytearrays).
    Driven on a real host and TCB: the compiled build checks the types."""
    engine = await make_engine()
    conn = await _offloaded(engine, echo_port)
    host, tcb = engine.host, engine.host.tcbs[conn]
    assert not tcb.app_rx
    n = receive.SPARE_BYTES // SIZE
    for _ in range(n + 3):
        receive.spare(host, tcb, memoryview(bytearray(SIZE)))
    assert host.rx_spare_bytes == n * SIZE == receive.SPARE_BYTES
    assert len(host.rx_spares[SIZE]) == n
    receive.forget_spares(host)
    # a buffer above the size kept, or not a posted one (bytes), is never kept
    receive.spare(host, tcb, memoryview(bytearray(receive.SPARE_MAX_BYTES + 1)))
    receive.spare(host, tcb, memoryview(bytes(SIZE)))
    assert host.rx_spares == {} and host.rx_spare_bytes == 0
    await engine.close(conn)
