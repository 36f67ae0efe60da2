"""The rpc section's measurements count only right answers: its tcp.send echo is checked byte
for byte against a seeded stream on both sides (a daemon that echoes zeros, or loses, doubles or
reorders bytes, fails it), and a ping answered with anything but "pong" is an error. Stand-in
clients, no sockets, no timings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import rpc_bench
from bench.baselines import PING, Request, RpcResult, rpc_load
from bench.common import PAYLOAD


# ================================================================================================
# the rpc section's tcp.send echo
# ================================================================================================
class _FakeDaemon:
    """An RPC client whose daemon acknowledges every tcp.send and answers tcp.recv from what
    `echo` makes of the bytes sent so far (at most as many as asked)."""

    def __init__(self, echo: Any) -> None:
        self.echo = echo
        self.sent = bytearray()
        self.pending = bytearray()

    def call(self, method: str, *params: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if method == "tcp.send":
            self.pending += self.echo(bytes(params[1]), len(self.sent))
            self.sent += params[1]
            fut.set_result(len(params[1]))
        elif method == "tcp.recv":
            take = min(params[1], 4096)  # in chunks, as a daemon may hand them back
            fut.set_result(bytes(self.pending[:take]))
            del self.pending[:take]
        else:
            fut.set_exception(RuntimeError(method))
        return fut


def _doubled_once(data: bytes, at: int) -> bytes:
    # the second round's first 100 bytes come back twice, and its last 100 never do
    return data[:100] + data[:-100] if at == PAYLOAD else data


def _swapped_once(data: bytes, at: int) -> bytes:
    return data[4096:8192] + data[:4096] + data[8192:] if at == 2 * PAYLOAD else data


@pytest.mark.parametrize(
    "echo",
    [
        lambda data, at: bytes(len(data)),  # made-up zero bytes: the peer got nothing
        _doubled_once,
        _swapped_once,
        lambda data, at: data[:7] + bytes([data[7] ^ 1]) + data[8:],  # one flipped bit
    ],
    ids=["zeros", "doubled", "reordered", "flipped"],
)
async def test_the_rpc_echo_check_fails_a_daemon_that_damages_the_echo(echo: Any) -> None:
    """The payload was all zero bytes and the check "no non-zero byte", so made-up zeros (or
    lost, duplicated or reordered chunks of the stream) passed it: the echo section's
    PatternStream + Verifier catch every one."""
    with pytest.raises(RuntimeError, match="damaged"):
        await rpc_bench.rpc_echo_rounds(_FakeDaemon(echo), 1, 5.0, 4)  # type: ignore[arg-type]


async def test_the_rpc_echo_check_passes_a_faithful_echo_across_calls() -> None:
    """The check follows the connection's stream from one window to the next."""
    fake = _FakeDaemon(lambda data, at: data)
    pattern = rpc_bench.EchoPattern(rpc_bench.DAEMON_SEED)
    for _ in range(3):
        r = await rpc_bench.rpc_echo_rounds(fake, 1, 5.0, 2, pattern)  # type: ignore[arg-type]
        assert r.requests == 2
    assert pattern.verifier.offset == len(fake.sent) == 6 * PAYLOAD


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def _plain_round(echo: Any) -> RpcResult:
    plain = rpc_bench.PlainEcho()
    transport = _Transport()
    plain.connection_made(transport)  # type: ignore[arg-type]
    task = asyncio.create_task(plain.rounds(5.0, 1))
    await asyncio.sleep(0)
    sent = transport.written[0]
    back = echo(sent, 0)
    for i in range(0, len(back), 8192):
        plain.data_received(back[i : i + 8192])
    return await asyncio.wait_for(task, 1.0)


async def test_the_plain_side_checks_its_echo_alike() -> None:
    assert (await _plain_round(lambda data, at: data)).requests == 1
    with pytest.raises(RuntimeError, match="damaged"):
        await _plain_round(lambda data, at: bytes(len(data)))


# ================================================================================================
# the ping load
# ================================================================================================
class _FakeServer:
    """Answers each call with `answer(method)` (asynchronously, as a server would)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls = 0

    def call(self, method: str, *params: Any) -> asyncio.Future[Any]:
        self.calls += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, self.answer(method, self.calls))
        return fut


async def test_a_wrong_answer_to_a_ping_is_an_error() -> None:
    """A server that answers pings fast and wrong is not fast: every answer but "pong" counts
    as an error, and errors fail the section (rpc_bench.check_rpc)."""
    wrong = _FakeServer(lambda method, i: "pong" if i % 3 else None)
    r = await rpc_load(wrong, 4, 10.0, max_requests=30)  # type: ignore[arg-type]
    assert r.requests == 30 and r.errors == 10
    assert "answered None, not 'pong'" in r.first_error
    with pytest.raises(RuntimeError, match="10 of 30 requests failed"):
        rpc_bench.check_rpc("daemon", r)
    right = _FakeServer(lambda method, i: "pong" if method == "ping" else None)
    ok = await rpc_load(right, 4, 10.0, max_requests=30)  # type: ignore[arg-type]
    assert (ok.requests, ok.errors) == (30, 0)
    other = await rpc_load(right, 4, 10.0, Request("x", (), None), 10)  # type: ignore[arg-type]
    assert (other.requests, other.errors) == (10, 0)
    assert PING.answer == "pong"
