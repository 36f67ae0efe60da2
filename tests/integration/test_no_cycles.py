"""The steady data path frees what it makes by reference counting alone.

A reference cycle made per request lives until the collector's next young collection, and
whatever it holds lives with it: a cycle through each read's request held that read's bytes,
tens of thousands of reads' worth between collections, and cost the 100-connection echo bench
~15% of the daemon's CPU per round. The collector still runs in the daemon (`runtime.memory`);
these tests check that it finds nothing of the engine's on this path."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chimneyd.api import EngineError, ErrorCode

ROUNDS = 50


@contextmanager
def cyclic_garbage() -> Iterator[Counter[str]]:
    """Count, by type, what the collector finds unreachable after the block (the block runs
    with the collector off, so nothing is collected while it runs)."""
    found: Counter[str] = Counter()
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        for obj in gc.garbage:
            t = type(obj)
            found[f"{t.__module__}.{t.__qualname__}"] += 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()


def _engines(found: Counter[str]) -> dict[str, int]:
    """What of it the daemon's code made: its own types, and the futures it answers with."""
    return {k: v for k, v in found.items() if k.startswith(("chimneyd.", "_asyncio.Future"))}


async def test_send_and_read_rounds_leave_no_cycle(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    payload = bytes(range(256)) * 16
    await engine.send(conn, payload)
    assert await engine.recv(conn, len(payload), 5.0, True) == payload
    with cyclic_garbage() as found:
        for _ in range(ROUNDS):
            assert await engine.send(conn, payload) == len(payload)
            assert await engine.recv(conn, len(payload), 5.0, True) == payload
    assert _engines(found) == {}, found.most_common(12)


async def test_a_read_that_times_out_leaves_no_cycle(make_engine: Any, echo_port: int) -> None:
    """The withdraw path: the read's timer fires, the host withdraws it, the engine answers."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    await engine.send(conn, b"x")
    assert await engine.recv(conn, 1, 5.0) == b"x"
    with cyclic_garbage() as found:
        for _ in range(5):
            try:
                await engine.recv(conn, 10, 0.01)
            except EngineError as exc:
                assert exc.code is ErrorCode.TIMEOUT, exc
            else:
                raise AssertionError("a read with nothing to read was answered with data")
    assert _engines(found) == {}, found.most_common(12)
