"""The bulk and mux sections count only right bytes: the sender's stream is a seeded pattern
(bench.peers.sink_payloads) that the sink checks as it reads, and a sink that saw a wrong, lost,
doubled or reordered byte answers `X` with the offset of the first bad one instead of `D`, which
fails the run. A zero-filled payload and a byte count (what the sink did before) passed all of
them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import baselines, bulk_bench
from bench.bulk_bench import engine_bulk
from bench.common import MIB, PAYLOAD
from bench.peers import SINK_HEADER, Sink, check_sink_reply, sink_payloads


class _Wire:
    """The sink's transport: what it writes back."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


def _feed(stream: bytes, chunk: int = 100_003) -> bytes:
    """`stream` through a Sink in reads of `chunk` bytes (reads split sends anywhere); what the
    sink answered."""
    sink = Sink()
    wire = _Wire()
    sink.connection_made(wire)  # type: ignore[arg-type]
    for i in range(0, len(stream), chunk):
        part = stream[i : i + chunk]
        buf = sink.get_buffer(len(part))
        buf[: len(part)] = part
        sink.buffer_updated(len(part))
    return bytes(wire.out)


def _sent(n_sends: int) -> list[bytes]:
    """The payloads a sender writes, in order."""
    payloads = sink_payloads()
    return [payloads[i % len(payloads)] for i in range(n_sends)]


def _stream(sends: list[bytes], total: int | None = None) -> bytes:
    body = b"".join(sends)
    return SINK_HEADER.pack(total if total is not None else SINK_HEADER.size + len(body)) + body


N_SENDS = 40  # more than one period of the pattern


def test_the_sink_confirms_the_stream_a_sender_writes() -> None:
    stream = _stream(_sent(N_SENDS))
    reply = _feed(stream)
    assert reply == b"D" + SINK_HEADER.pack(len(stream))
    check_sink_reply(reply, len(stream))


def _flipped(sends: list[bytes]) -> list[bytes]:
    bad = bytearray(sends[5])
    bad[1234] ^= 1
    return [*sends[:5], bytes(bad), *sends[6:]]


def _lost_byte(sends: list[bytes]) -> list[bytes]:
    # one byte lost and one made up at the end, so the count still matches
    return [*sends[:7], sends[7][:99] + sends[7][100:], *sends[8:], b"\0"]


def _swapped(sends: list[bytes]) -> list[bytes]:
    return [*sends[:3], sends[4], sends[3], *sends[5:]]


def _doubled(sends: list[bytes]) -> list[bytes]:
    # a send given twice, and the one after it lost: the same number of bytes
    return [*sends[:10], sends[10], sends[10], *sends[12:]]


@pytest.mark.parametrize(
    ("damage", "first_bad"),
    [
        (lambda sends: [bytes(PAYLOAD)] * len(sends), 0),  # what the bench used to send
        (_flipped, 5 * PAYLOAD + 1234),
        (_lost_byte, 7 * PAYLOAD + 99),
        (_swapped, 3 * PAYLOAD),
        (_doubled, 11 * PAYLOAD),
    ],
    ids=["zeros", "flipped", "lost", "swapped", "doubled"],
)
def test_the_sink_fails_a_damaged_stream(damage: Any, first_bad: int) -> None:
    """The byte count of each of these matches the header: only the content tells them."""
    stream = _stream(damage(_sent(N_SENDS)))
    assert len(stream) == SINK_HEADER.size + N_SENDS * PAYLOAD
    reply = _feed(stream)
    assert reply[:1] == b"X", reply[:9]
    # the sink's offsets count the stream from its first byte, header included
    assert SINK_HEADER.unpack(reply[1:9])[0] == SINK_HEADER.size + first_bad
    with pytest.raises(RuntimeError, match="wrong byte"):
        check_sink_reply(reply, len(stream))


def test_a_confirmation_of_another_count_fails() -> None:
    """The sink confirms the bytes it counted: more (a byte made up at the end) or fewer than
    were sent is no confirmation."""
    with pytest.raises(RuntimeError, match="counted"):
        check_sink_reply(b"D" + SINK_HEADER.pack(1000), 999)
    with pytest.raises(RuntimeError, match="answered"):
        check_sink_reply(b"?" + SINK_HEADER.pack(999), 999)


# ================================================================================================
# the senders read the sink's answer: a damaged stream fails raw_send and engine_bulk
# ================================================================================================
def _damaged_payloads() -> tuple[bytes, ...]:
    payloads = list(sink_payloads())
    bad = bytearray(payloads[2])
    bad[PAYLOAD // 2] ^= 0x80
    payloads[2] = bytes(bad)
    return tuple(payloads)


async def _sink_port() -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_raw_send_fails_when_the_sink_saw_a_wrong_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = await _sink_port()
    try:
        assert await baselines.raw_send(port, 2 * MIB) > 0  # the faithful stream passes
        monkeypatch.setattr(baselines, "sink_payloads", _damaged_payloads)
        with pytest.raises(RuntimeError, match="wrong byte"):
            await baselines.raw_send(port, 2 * MIB)
    finally:
        server.close()


async def test_the_engine_bulk_send_fails_when_the_sink_saw_a_wrong_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = await _sink_port()
    try:
        assert (await engine_bulk(1, 2 * MIB, port))["bytes"] > 0
        monkeypatch.setattr(bulk_bench, "sink_payloads", _damaged_payloads)
        with pytest.raises(RuntimeError, match="wrong byte"):
            await engine_bulk(1, 2 * MIB, port)
    finally:
        server.close()
