"""The blocking client: a call interrupted (Ctrl-C: KeyboardInterrupt) after its answer was
decoded keeps that answer as an abandoned call's: a `tcp.recv`'s bytes go to the next read of
the connection, a `tcp.accept`'s connection to the next accept (docs/rpc.md "Errors": no data
is lost by a call the client gives up on). The interrupt here comes from a notification
handler run in the same read as the answer, where a signal may land too."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from chimney_client.blocking import Client


def _answer(msgid: int, result: Any) -> bytes:
    data: bytes = msgpack.packb([1, msgid, None, result], use_bin_type=True)
    return data


def _tick() -> bytes:
    data: bytes = msgpack.packb([2, "tick", []], use_bin_type=True)
    return data


def _interrupt(params: list[Any]) -> None:
    raise KeyboardInterrupt


@pytest.fixture
def pair() -> Iterator[tuple[Client, socket.socket]]:
    ours, theirs = socket.socketpair()
    try:
        client = Client(ours, "test", call_timeout=5.0)
        client.on_notification("tick", _interrupt)
        yield client, theirs
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("tick_first", [False, True])
def test_bytes_of_a_read_interrupted_after_its_answer_go_to_the_next_read(
    pair: tuple[Client, socket.socket], tick_first: bool
) -> None:
    client, theirs = pair
    # the first call's msgid is 0; both frames come in one read
    frames = [_answer(0, b"hello"), _tick()]
    theirs.sendall(b"".join(reversed(frames) if tick_first else frames))
    with pytest.raises(KeyboardInterrupt):
        client.tcp_recv(1, 100)
    assert not client.closed
    # answered from what the client kept: nothing more comes from the daemon
    assert client.tcp_recv(1, 100) == b"hello"


def test_a_connection_an_interrupted_accept_got_goes_to_the_next_accept(
    pair: tuple[Client, socket.socket],
) -> None:
    client, theirs = pair
    theirs.sendall(_answer(0, 17) + _tick())
    with pytest.raises(KeyboardInterrupt):
        client.tcp_accept(3)
    assert client.tcp_accept(3) == 17
