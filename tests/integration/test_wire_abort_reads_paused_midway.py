"""`WireSocket.abort_after_reading` (the RST a FIN_WAIT_2 timeout owes the peer, spec §8) reads
what the kernel has queued, a `recv` at a time, then resets. An owner may stop reading for
back-pressure on any `WireData` (`pause_reading`). In the daemon every `WireData` is posted to
the owner's inbox, so no owner runs inside that last read; but an owner that did — told at once,
and pausing after the first piece — must still get every byte the kernel had queued, once, in
order, and then the RST: the pause is flow control on a connection that ends here, and a byte
left in the kernel would be dropped by the RST that follows at once. On loopback sockets."""

from __future__ import annotations

import asyncio
import fcntl
import select
import socket
import struct
import termios
from typing import Any

import pytest

from chimneyd.runtime.acks import AckWatcher
from chimneyd.runtime.wire import WireSocket
from tests.integration.support import eventually
from tests.integration.test_wire_abort_reads import _peer_reset

#: more than two of the last read's `recv`s (at most 256 KiB each)
QUEUED = 600_000


class PausingOwner:
    """Told synchronously (its `post` calls it at once); stops the wire reading on the first
    `WireData`, as a full buffer would."""

    def __init__(self) -> None:
        self.wire: WireSocket | None = None
        self.data: list[tuple[int, bytes]] = []

    def WireData(self, ctx: Any, offset: int, data: bytes) -> None:
        self.data.append((offset, data))
        assert self.wire is not None
        self.wire.pause_reading()

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None  # WireAcked and the rest: not what this is about


def _inq(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


@pytest.mark.asyncio
async def test_an_owner_pausing_inside_the_last_read_loses_and_reorders_nothing() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)  # inherited by ours
    owner = PausingOwner()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def post(layer: Any, method: Any, args: tuple[Any, ...]) -> None:
            method(*args)  # at once: the owner runs inside the wire's read

        # the listener is the daemon's side here: its accepted socket keeps the big buffer
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    finally:
        listener.close()
    _, wire = await loop.connect_accepted_socket(lambda: WireSocket(post, AckWatcher(loop)), ours)
    owner.wire = wire
    wire.set_home(owner, "ctx")
    wire.pause_reading()  # the kernel queues what the peer sends: nothing read before the abort
    pattern = bytes(i % 251 for i in range(QUEUED))
    try:
        peer.setblocking(False)
        sent = 0
        while sent < QUEUED:
            _, writable, _ = select.select([], [peer], [], 5.0)
            assert writable, f"the peer could send only {sent} bytes"
            try:
                sent += peer.send(pattern[sent:])
            except BlockingIOError:
                continue
        await eventually(lambda: _inq(wire.fd) == QUEUED, "every byte queued in our kernel")
        wire.resume_reading()  # reading on, and the abort comes before the loop reads anything
        wire.abort_after_reading()
        assert wire.closed
        told = b"".join(data for _, data in owner.data)
        assert told == pattern, f"told {len(told)} of {QUEUED} bytes, or not in order"
        pos = 0
        for offset, data in owner.data:  # each piece at its stream offset, none twice
            assert offset == pos, (offset, pos)
            pos += len(data)
        # read in several pieces: the owner had paused reading before the later ones
        assert len(owner.data) >= 3, len(owner.data)
        assert wire.bytes_read == QUEUED
        await _peer_reset(peer)
    finally:
        wire.close()
        peer.close()
