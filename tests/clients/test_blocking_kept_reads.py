"""The blocking client hands kept bytes to a read already waiting in the daemon, as the asyncio
client does: a read made after one it abandoned (its own limit, an interrupt) is not left
waiting in the daemon for bytes the client holds."""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from chimney_client.blocking import Client, _Slot


def _answer(msgid: int, result: Any) -> bytes:
    data: bytes = msgpack.packb([1, msgid, None, result], use_bin_type=True)
    return data


def test_a_read_after_an_abandoned_one_gets_its_bytes_without_its_own_answer() -> None:
    ours, theirs = socket.socketpair()
    try:
        client = Client(ours, "test", call_timeout=5.0)
        # a read the client gave up on (as `call` does when its time runs out)
        gone, _ = client._codec.request("tcp.recv", (1, 100), _Slot())
        client._codec.forget(gone)
        theirs.sendall(_answer(gone, b"hello"))  # the daemon answered it late; nothing more
        assert client.tcp_recv(1, 100) == b"hello"
        assert client._codec.kept_bytes == 5
    finally:
        ours.close()
        theirs.close()
