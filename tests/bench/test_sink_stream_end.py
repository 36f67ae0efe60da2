"""A sender to the sink ends its stream with an empty message, so a byte written after the count
the sink confirmed fails the run too. The sink answers `D` once the header's count has arrived;
bytes that come after it (a send the engine repeated once it had completed, a byte made up at
the end) reach it after that answer, and without an end the sender never hears of them: they
read as the next message's header, whose answer nobody waits for. A wrong header (no message is
shorter than its header or near a TiB) is a wrong byte as well."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import baselines, bulk_bench
from bench.common import MIB
from bench.peers import SINK_HEADER, Sink, sink_payloads


class _Wire:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


def _feed(*reads: bytes) -> bytes:
    """`reads` through a Sink, one read each; what it answered."""
    sink = Sink()
    wire = _Wire()
    sink.connection_made(wire)  # type: ignore[arg-type]
    for part in reads:
        buf = sink.get_buffer(len(part))
        buf[: len(part)] = part
        sink.buffer_updated(len(part))
    return bytes(wire.out)


async def _sink_port() -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("bad", [0, 7, 1 << 41], ids=["zero", "shorter-than-header", "huge"])
def test_a_header_no_message_can_have_is_a_wrong_byte(bad: int) -> None:
    reply = _feed(SINK_HEADER.pack(bad) + sink_payloads()[0][:100])
    assert reply == b"X" + SINK_HEADER.pack(0), reply


def test_bytes_after_a_confirmed_message_fail_its_end() -> None:
    body = sink_payloads()[0][:1000]
    message = SINK_HEADER.pack(SINK_HEADER.size + len(body)) + body
    end = SINK_HEADER.pack(SINK_HEADER.size)
    # a faithful stream: the message confirmed, then the empty end message
    assert _feed(message, end) == b"D" + SINK_HEADER.pack(len(message)) + b"D" + end
    # one byte more, read after the confirmation: the end is no end
    got = _feed(message, body[-1:] + end)
    assert got[:9] == b"D" + SINK_HEADER.pack(len(message)) and got[9:10] == b"X", got


class _TrailingSender(baselines._Sender):
    """The raw sender, writing one byte more once the sink has confirmed the stream."""

    def data_received(self, data: bytes) -> None:
        if not self.reply:
            self.transport.write(b"\x07")
        super().data_received(data)


async def test_raw_send_fails_on_a_byte_after_the_confirmed_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = await _sink_port()
    try:
        assert await baselines.raw_send(port, 2 * MIB) > 0  # a faithful stream passes
        monkeypatch.setattr(baselines, "_Sender", _TrailingSender)
        with pytest.raises(RuntimeError, match="after the"):
            await baselines.raw_send(port, 2 * MIB)
    finally:
        server.close()


class _Repeating:
    """An engine that sends the last bytes of the stream again once the sink confirmed it (as
    an engine that repeated a completed send would): every call is the engine's."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    async def recv(self, conn: int, *args: Any) -> bytes:
        reply: bytes = await self._engine.recv(conn, *args)
        if reply[:1] == b"D" and SINK_HEADER.unpack(reply[1:9])[0] > SINK_HEADER.size:
            await self._engine.send(conn, sink_payloads()[0][-3:])
        return reply


async def test_the_engine_bulk_send_fails_on_a_byte_after_the_confirmed_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = await _sink_port()
    real = bulk_bench.start_engine

    async def repeating(*args: Any) -> Any:
        return _Repeating(await real(*args))

    try:
        assert (await bulk_bench.engine_bulk(1, 2 * MIB, port))["bytes"] > 0
        monkeypatch.setattr(bulk_bench, "start_engine", repeating)
        with pytest.raises(RuntimeError, match="after the"):
            await bulk_bench.engine_bulk(1, 2 * MIB, port)
    finally:
        server.close()
