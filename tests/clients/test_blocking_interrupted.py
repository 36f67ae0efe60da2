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
from tests.clients.scripted import HANG, run_in_thread


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


class _SendInterrupted:
    """The client's socket, whose first `send` is interrupted (Ctrl-C while the daemon does
    not read: the send blocks, the signal lands) before it wrote a byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.interrupted = False

    def send(self, data: bytes | memoryview) -> int:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.parametrize(
    ("method", "params", "result"), [("tcp.recv", (1, 100), b"x"), ("tcp.accept", (3,), 9)]
)
def test_a_call_interrupted_before_it_was_written_is_not_waited_for(
    method: str, params: tuple[Any, ...], result: Any
) -> None:
    """A `tcp.recv` (`tcp.accept`) with no timeout interrupted before a byte of it was
    written never reached the daemon: no answer comes for it. The next one must be sent, not
    ride on it (`ClientCodec._ride`: an abandoned read with no timeout is taken as waiting in
    the daemon), where it would wait for ever for an answer that never comes."""
    ours, theirs = socket.socketpair()
    try:
        client = Client(ours, "test")
        client._sock = _SendInterrupted(ours)  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            client.call(method, *params)
        thread, out = run_in_thread(lambda: client.call(method, *params))
        theirs.settimeout(HANG)
        try:
            request = msgpack.unpackb(theirs.recv(1000), raw=False)
        except TimeoutError:
            client.close()  # the call waiting for ever raises ConnectionLost
            thread.join(HANG)
            pytest.fail(f"the next {method} was not sent: it waits for one never written")
        assert request[2:] == [method, list(params)]
        theirs.sendall(_answer(request[1], result))
        thread.join(HANG)
        assert out == [result]
    finally:
        ours.close()
        theirs.close()
