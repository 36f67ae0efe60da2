"""Loopback peers the benchmarks run in their own processes (the machine has 2 cores: a peer in
its own process keeps its CPU off the measured loop's core).

    python -m bench.peers sink|echo|hold|rpc-echo|rpc-proxy [--ports N]

Each prints `ready <port>[,<port>...]` once it listens on 127.0.0.1 and exits when its stdin
closes (so the parent's `finally` always ends it). `hold` answers `count` on stdin with
`held <connections held>` (its RSS is read from outside, from /proc, as the daemon's is).

sink protocol: the first 8 bytes of a connection are the big-endian byte count that follows
(header included); once that many bytes arrived the sink answers `D` + the same 8 bytes. The
sender so knows the bytes reached the peer process, not just a kernel buffer. The bytes after
the header must be the sink pattern (`sink_payloads()` in turn, the last one possibly cut
short), checked as they arrive: at the first wrong byte the sink answers `X` + its offset in the
stream (header included) at once and ignores the rest of the connection; a header no message
can have (shorter than itself, or past SINK_MAX_MESSAGE) is a wrong byte at offset 0. A sender
ends with SINK_END, an empty message, once the sink confirmed its stream, and checks that the
sink confirms that too (`check_sink_end`): a byte after the confirmed count (a send repeated
once it had completed, a byte made up at the end) reaches the sink after its `D`, where it spoils
the end's header. `check_sink_reply` turns an answer into an error, so a lost, doubled,
reordered or made-up byte fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import sys
from functools import cache
from typing import Any

import msgpack

from bench.common import PAYLOAD, install_uvloop, raise_nofile
from bench.floor_proxy import Proxy

SINK_HEADER = struct.Struct(">Q")
CONNS_PER_PORT = 5000  # perf-notes: past ~14k per listening port Linux's port search slows

#: distinct 64 KiB payloads a sender to the sink writes in turn: a send lost, doubled or swapped
#: with another within this many lands on the wrong bytes (a period of one payload would let a
#: doubled send and a lost one through unseen, the byte count matching)
SINK_PERIOD_SENDS = 16
SINK_READ = 256 * 1024  # the sink's read buffer
_SINK_SEED = 0x53494E4B  # fixed: the sender and the sink are different processes
#: no message to the sink is this long (a run moves some hundreds of MiB): a header past it is
#: bytes that are no header, such as the tail of a stream repeated after its confirmation
SINK_MAX_MESSAGE = 1 << 40
#: what a sender writes once the sink confirmed its stream: an empty message, confirmed as
#: `D` + itself only if no byte came between the stream's end and it (`check_sink_end`)
SINK_END = SINK_HEADER.pack(SINK_HEADER.size)


@cache
def _sink_pattern() -> bytes:
    """SINK_PERIOD_SENDS payloads of random bytes back to back, and again as far as one read
    can reach past the end: any read's expected bytes are one contiguous slice."""
    period = random.Random(_SINK_SEED).randbytes(SINK_PERIOD_SENDS * PAYLOAD)
    return period + period[:SINK_READ]


@cache
def sink_payloads() -> tuple[bytes, ...]:
    """What a sender to the sink writes after the header, in turn (made once: sending them costs
    the sender nothing a zero-filled payload did not)."""
    pattern = _sink_pattern()
    return tuple(pattern[i * PAYLOAD : (i + 1) * PAYLOAD] for i in range(SINK_PERIOD_SENDS))


def check_sink_reply(reply: bytes, sent: int) -> None:
    """Raise unless `reply` is the sink's confirmation of exactly `sent` bytes, all right."""
    code, (count,) = reply[:1], SINK_HEADER.unpack(reply[1 : 1 + SINK_HEADER.size])
    if code == b"X":
        raise RuntimeError(f"the sink found a wrong byte at offset {count} of {sent} sent")
    if code != b"D":
        raise RuntimeError(f"the sink answered {reply!r}")
    if count != sent:
        raise RuntimeError(f"the sink counted {count} bytes, {sent} were sent")


def check_sink_end(reply: bytes, sent: int) -> None:
    """Raise unless `reply` is the sink's confirmation of SINK_END, written after a stream of
    `sent` bytes it confirmed: anything else means bytes came after those `sent`."""
    if reply[:1] != b"D" or reply[1 : 1 + SINK_HEADER.size] != SINK_END:
        raise RuntimeError(
            f"the sink got bytes after the {sent} it confirmed: it answered the end with "
            f"{reply[: 1 + SINK_HEADER.size]!r}"
        )


class Sink(asyncio.BufferedProtocol):
    """Counts bytes into one reused buffer (no allocation per read) and checks them against the
    sink pattern: one memcmp per read (`bytes.startswith` at the pattern's offset), far cheaper
    than the copy into the buffer it follows."""

    def __init__(self) -> None:
        self.buf = bytearray(SINK_READ)
        self.view = memoryview(self.buf)
        self.pattern = _sink_pattern()
        self.period = SINK_PERIOD_SENDS * PAYLOAD
        self.header = bytearray()
        self.expected = -1
        self.received = 0
        self.failed = False  # answered `X`: the rest of the connection is ignored

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.failed:
            return
        start = 0
        if self.expected < 0:
            need = SINK_HEADER.size - len(self.header)
            start = min(need, nbytes)
            self.header += self.view[:start]
            if len(self.header) == SINK_HEADER.size:
                (self.expected,) = SINK_HEADER.unpack(self.header)
                if not SINK_HEADER.size <= self.expected <= SINK_MAX_MESSAGE:
                    # no message has this header: the bytes are something else (a repeated
                    # tail of the previous one, say), wrong from the first
                    self.failed = True
                    self.transport.write(b"X" + SINK_HEADER.pack(0))
                    return
        if start < nbytes:
            at = self.received + start - SINK_HEADER.size  # offset in the payload stream
            data = self.view[start:nbytes]
            if not self.pattern.startswith(data, at % self.period):
                self._fail(at, data)
                return
        self.received += nbytes
        if 0 <= self.expected <= self.received:
            self.transport.write(b"D" + SINK_HEADER.pack(self.received))
            self.expected = -1
            self.header = bytearray()
            self.received = 0

    def _fail(self, at: int, data: memoryview) -> None:
        """Answer `X` + the stream offset of the first wrong byte in `data` (which starts at
        payload offset `at`), now: the sender need not wait for bytes that will never count."""
        pos = at % self.period
        expected = self.pattern[pos : pos + len(data)]
        first = next(i for i in range(len(data)) if data[i] != expected[i])
        self.failed = True
        self.transport.write(b"X" + SINK_HEADER.pack(SINK_HEADER.size + at + first))

    def eof_received(self) -> bool:
        return False


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


class Holder(asyncio.Protocol):
    """Holds an idle accepted socket and nothing else (the bare server of the memory bench)."""

    __slots__ = ("transport",)
    held: list[Any] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Holder.held.append(transport)


class RpcEcho(asyncio.Protocol):
    """The minimal uvloop msgpack-RPC server: `ping` → "pong", anything else echoes params[0].
    All responses to one read go out in one write (perf-notes: batch at every hand-off)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=16 * 1024 * 1024)
        self.packer = msgpack.Packer(use_bin_type=True)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        out = []
        pack = self.packer.pack
        for msg in self.unpacker:
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 0:
                _, msgid, method, params = msg
                result = "pong" if method == "ping" else (params[0] if params else None)
                out.append(pack([1, msgid, None, result]))
        if out:
            self.transport.write(b"".join(out))


FACTORIES: dict[str, Any] = {
    "sink": Sink,
    "echo": Echo,
    "hold": Holder,
    "rpc-echo": RpcEcho,
    "rpc-proxy": Proxy,  # the echo section's floor (bench.floor_proxy)
}


class _Control(asyncio.Protocol):
    """stdin: `count` → `held N` (connections the hold server keeps); EOF → stop."""

    def __init__(self, stop: asyncio.Future[None]) -> None:
        self.stop = stop
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            if line.strip() == b"count":
                print(f"held {len(Holder.held)}", flush=True)

    def eof_received(self) -> bool:
        if not self.stop.done():
            self.stop.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stop.done():
            self.stop.set_result(None)


async def serve(kind: str, nports: int) -> None:
    loop = asyncio.get_running_loop()
    factory = FACTORIES[kind]
    servers = [
        await loop.create_server(factory, "127.0.0.1", 0, backlog=4096) for _ in range(nports)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    stop: asyncio.Future[None] = loop.create_future()
    await loop.connect_read_pipe(lambda: _Control(stop), sys.stdin)
    print("ready " + ",".join(map(str, ports)), flush=True)
    try:
        await stop
    finally:
        for s in servers:
            s.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.peers")
    p.add_argument("kind", choices=sorted(FACTORIES))
    p.add_argument("--ports", type=int, default=1)
    args = p.parse_args(argv)
    raise_nofile()
    install_uvloop()
    asyncio.run(serve(args.kind, args.ports))


if __name__ == "__main__":
    main()
