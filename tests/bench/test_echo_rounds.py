"""The echo section's emulated (and floor) rounds, on an in-memory client: one task per
connection for its reads, not one per round (issue 15: a task and an `asyncio.wait` per round
were client CPU the direct side does not spend), and the rules kept: every byte checked in
order, a read never cancelled, a stuck round an error. No sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import echo_bench
from bench.echo_bench import ECHO_PAYLOAD, EchoResult, _emulated_conn, _RpcSlot
from chimney_client.errors import RpcTimeout
from chimney_client.stream import PatternStream, Verifier

CID = 7
SEED = 0xEC0


class _EchoClient:
    """`tcp_send` acknowledges and echoes (in two halves, maybe altered); `tcp_recv` waits
    for echoed bytes, and counts the reads cancelled."""

    def __init__(self, flip_at: int | None = None, silent: bool = False) -> None:
        self.echoed = bytearray()
        self.sent = 0
        self.waiter: asyncio.Future[bool] | None = None
        self.flip_at = flip_at
        self.silent = silent
        self.cancelled_reads = 0

    async def tcp_send(self, conn_id: int, data: bytes) -> int:
        await asyncio.sleep(0)
        if not self.silent:
            echo = bytearray(data)
            if self.flip_at is not None and self.sent <= self.flip_at < self.sent + len(data):
                echo[self.flip_at - self.sent] ^= 0xFF
            self.echoed += echo
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(True)
        self.sent += len(data)
        return len(data)

    async def tcp_recv(self, conn_id: int, max_bytes: int, timeout_ms: int) -> bytes:
        loop = asyncio.get_running_loop()
        while not self.echoed:  # a future and a timer, no task (the test counts them)
            waiter = self.waiter = loop.create_future()
            timer = loop.call_later(timeout_ms / 1000, _timed_out, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self.cancelled_reads += 1
                raise
            finally:
                timer.cancel()
            if not self.echoed:
                raise RpcTimeout(7, "nothing arrived")
        take = min(max_bytes, len(self.echoed), ECHO_PAYLOAD // 2)
        chunk = bytes(self.echoed[:take])
        del self.echoed[:take]
        return chunk


def _timed_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _slot(client: _EchoClient) -> _RpcSlot:
    slot = _RpcSlot(client)  # type: ignore[arg-type]
    slot.streams[CID] = (PatternStream(SEED), Verifier(SEED))
    return slot


def _count_tasks(loop: asyncio.AbstractEventLoop) -> list[int]:
    made = [0]

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        made[0] += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    return made


async def test_a_window_makes_no_task_per_round() -> None:
    loop = asyncio.get_running_loop()
    client = _EchoClient()
    res = EchoResult(1)
    made = _count_tasks(loop)
    try:
        ok = await _emulated_conn(_slot(client), CID, res, loop.time() + 0.3, True)
    finally:
        loop.set_task_factory(None)
    assert ok, res.examples
    assert res.errors == 0 and res.integrity_errors == 0, res.examples
    assert res.ops > 20, res.ops
    assert res.bytes_verified == res.ops * ECHO_PAYLOAD
    assert made[0] <= 2, f"{made[0]} tasks for {res.ops} rounds"
    assert client.cancelled_reads == 0


async def test_a_wrong_byte_fails_the_round() -> None:
    client = _EchoClient(flip_at=3 * ECHO_PAYLOAD + 100)
    res = EchoResult(1)
    loop = asyncio.get_running_loop()
    ok = await asyncio.wait_for(
        _emulated_conn(_slot(client), CID, res, loop.time() + 5.0, True), 10
    )
    assert not ok
    assert res.integrity_errors == 1 and res.ops == 3, (res.ops, res.examples)
    assert f"wrong byte at {3 * ECHO_PAYLOAD + 100}" in res.examples[0]


async def test_a_stuck_round_is_an_error_and_its_read_is_never_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No echo: the read is asked again after each server-side timeout until the round is
    past its limit, then the round fails; no read is cancelled on the way."""
    monkeypatch.setattr(echo_bench, "RECV_TIMEOUT_MS", 20)
    monkeypatch.setattr(echo_bench, "ROUND_LIMIT_S", 0.2)
    client = _EchoClient(silent=True)
    res = EchoResult(1)
    ok = await asyncio.wait_for(_emulated_conn(_slot(client), CID, res, 0.0, True), 10)
    assert not ok
    assert res.errors == 1 and "stuck, 0 of" in res.examples[0], res.examples
    assert res.recv_timeouts >= 2 and client.cancelled_reads == 0
    assert res.ops == 0


async def test_a_wrong_byte_in_a_rounds_last_chunk_fails_the_round() -> None:
    """Every chunk of a round is checked, not only its first: the echo comes back in two
    halves here, and the wrong byte is the last of round 3."""
    last = 4 * ECHO_PAYLOAD - 1
    client = _EchoClient(flip_at=last)
    res = EchoResult(1)
    loop = asyncio.get_running_loop()
    ok = await asyncio.wait_for(
        _emulated_conn(_slot(client), CID, res, loop.time() + 5.0, True), 10
    )
    assert not ok, "a wrong byte in a round's last chunk went unseen"
    assert res.integrity_errors == 1 and res.ops == 3, (res.ops, res.examples)
    assert f"wrong byte at {last}" in res.examples[0]


async def test_no_reader_is_left_running_after_the_window() -> None:
    """A connection's reader ends with its window (the next window starts its own): one left
    waiting would read, and check against its stale verifier, what belongs to the next."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kw)
        made.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        slot = _slot(_EchoClient())
        for _ in range(2):  # two windows on the same connection, as the bench runs them
            res = EchoResult(1)
            assert await _emulated_conn(slot, CID, res, loop.time() + 0.05, True), res.examples
            await asyncio.sleep(0)  # the reader's last step: it was told no more rounds
            running = [t for t in made if not t.done()]
            assert not running, f"{len(running)} reader(s) still running after the window"
    finally:
        loop.set_task_factory(None)
    assert len(made) == 2


async def test_a_round_held_back_by_the_clients_bound_counts_that_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client carrying more connections than ROUNDS_PER_CLIENT bounds their rounds: a round
    waiting for the bound is not sent, its latency runs from before the wait (the direct side
    has no such wait), and the bound is given back after the round."""
    clock = [0.0]
    monkeypatch.setattr(echo_bench, "time", _Clock(clock))
    client = _EchoClient()
    slot = _slot(client)
    for i in range(echo_bench.ROUNDS_PER_CLIENT):  # more connections than the bound
        slot.streams[CID + 1 + i] = (PatternStream(SEED + 1 + i), Verifier(SEED + 1 + i))
    for _ in range(echo_bench.ROUNDS_PER_CLIENT):
        await slot.sem.acquire()  # every other connection's round runs
    res = EchoResult(1)
    conn = asyncio.ensure_future(_emulated_conn(slot, CID, res, 0.0, True))
    for _ in range(10):
        await asyncio.sleep(0)
    assert client.sent == 0, "a round went past the client's bound"
    clock[0] = 100.0  # the time the round waited for the bound
    for _ in range(echo_bench.ROUNDS_PER_CLIENT):
        slot.sem.release()
    assert await asyncio.wait_for(conn, 10), res.examples
    assert res.ops == 1 and res.latencies == [100.0], "the wait for the bound is not latency"
    for _ in range(echo_bench.ROUNDS_PER_CLIENT):
        assert not slot.sem.locked(), "the round kept the client's bound"
        await slot.sem.acquire()


class _Clock:
    """`time` for echo_bench: `perf_counter` reads `clock[0]`."""

    def __init__(self, clock: list[float]) -> None:
        self._clock = clock

    def perf_counter(self) -> float:
        return self._clock[0]


async def test_a_bug_in_the_read_is_raised_once_where_the_round_is_awaited() -> None:
    """A read that raises what no round expects (a bug) fails the round where it is awaited,
    as the task per round did; its reader does not end with it too, which asyncio would log
    once more as "Task exception was never retrieved" (nobody awaits the reader)."""

    class _Broken(_EchoClient):
        async def tcp_recv(self, conn_id: int, max_bytes: int, timeout_ms: int) -> bytes:
            raise ValueError("a bug in the read")

    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kw)
        made.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        with pytest.raises(ValueError, match="a bug in the read"):
            await _emulated_conn(_slot(_Broken()), CID, EchoResult(1), 0.0, True)
        await asyncio.sleep(0)
    finally:
        loop.set_task_factory(None)
    (reader,) = made
    assert reader.done() and reader.exception() is None, "the reader's error is logged again"
