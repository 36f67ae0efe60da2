"""`chimney-peer`: loopback peers for offloaded connections (echo, sink, source).

asyncio Protocols on uvloop (no Streams: perf-notes). Usable as a library:
`server = await start_peer("echo", "127.0.0.1", 0)`, then `server.port`, `server.stats`,
`await server.close()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from .ctl_help import TerminalWidth
from .stream import PatternStream
from .version import package_version

Mode = Literal["echo", "sink", "source"]
MODES: tuple[Mode, ...] = ("echo", "sink", "source")

#: Accept queue: past ≈ 4096 unaccepted connects Linux drops SYNs (1 s retry each; perf-notes).
DEFAULT_BACKLOG = 8192
#: Write buffer marks: above HIGH the peer stops reading (echo) or writing (source), so memory
#: per connection stays bounded and TCP flow control pushes back on the daemon.
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
#: Bytes a source writes per step.
SOURCE_CHUNK = 256 * 1024
DEFAULT_SOURCE_BYTES = 1024 * 1024


@dataclass(slots=True)
class PeerStats:
    accepted: int = 0
    active: int = 0
    rejected: int = 0  # over --max-conns: reset at once
    bytes_received: int = 0
    bytes_sent: int = 0
    eofs: int = 0  # FINs received from the other side
    resets: int = 0  # connections ended by an error (RST)
    closed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PeerOptions:
    max_conns: int | None = None
    stall_ms: int = 0
    source_bytes: int = DEFAULT_SOURCE_BYTES
    seed: int = 0


class _PeerProtocol(asyncio.Protocol):
    """One accepted connection. The mode decides what happens to bytes in and out."""

    __slots__ = (
        "_closing",
        "_eof",
        "_loop",
        "_opts",
        "_read_stalled",
        "_server",
        "_source",
        "_source_left",
        "_write_paused",
        "mode",
        "transport",
    )

    def __init__(self, server: PeerServer) -> None:
        self._server = server
        self._opts = server.options
        self._loop = server.loop
        self.mode = server.mode
        self.transport: asyncio.Transport | None = None
        self._write_paused = False
        self._read_stalled = False
        self._eof = False
        self._closing = False
        self._source: PatternStream | None = None
        self._source_left = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not a check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self._server
        stats = server.stats
        stats.accepted += 1
        if self._opts.max_conns is not None and stats.active >= self._opts.max_conns:
            stats.rejected += 1
            _reset(transport)
            return
        stats.active += 1
        server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        if self.mode == "source":
            self._source = PatternStream(self._opts.seed)
            self._source_left = self._opts.source_bytes
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        if self in server.connections:
            server.connections.discard(self)
            server.stats.active -= 1
            server.stats.closed += 1
            if exc is not None:
                server.stats.resets += 1

    # -- reading ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._server.stats.bytes_received += len(data)
        if self.mode == "echo" and self.transport is not None:
            self._write(data)
        if self._opts.stall_ms > 0:
            # A slow reader: after every read, stop reading for stall_ms (TCP pushes back).
            self._stall_reading()

    def eof_received(self) -> bool:
        self._server.stats.eofs += 1
        self._eof = True
        # A source still sending keeps the half-closed connection open and closes after its
        # stream; otherwise False: the transport closes once every buffered byte is written
        # (so echo finishes returning what it got before its FIN).
        return self.mode == "source" and self._source_left > 0

    def _stall_reading(self) -> None:
        if self.transport is None or self._read_stalled:
            return
        self._read_stalled = True
        self.transport.pause_reading()
        self._loop.call_later(self._opts.stall_ms / 1000, self._unstall)

    def _unstall(self) -> None:
        self._read_stalled = False
        self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing() or self._read_stalled or self._write_paused:
            return
        if not t.is_reading():
            t.resume_reading()

    # -- writing ----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self._server.stats.bytes_sent += len(data)

    def pause_writing(self) -> None:
        # Echo: stop reading while our own output is backed up, so memory stays bounded.
        self._write_paused = True
        if self.mode == "echo" and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.mode == "echo":
            self._maybe_resume_reading()
        elif self.mode == "source":
            self._pump()

    def _pump(self) -> None:
        """Source: write the pattern until paused or done, then FIN."""
        t = self.transport
        if t is None or self._source is None or t.is_closing():
            return
        while self._source_left > 0 and not self._write_paused:
            n = min(SOURCE_CHUNK, self._source_left)
            self._write(self._source.read(n))
            self._source_left -= n
            if self._opts.stall_ms > 0 and self._source_left > 0:
                self._loop.call_later(self._opts.stall_ms / 1000, self._pump)
                return
        if self._source_left == 0 and not self._closing:
            self._closing = True
            t.write_eof()  # FIN after the stream; go on reading (and discarding) until peer FIN
            if self._eof:
                t.close()


def _reset(transport: asyncio.Transport) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    transport.abort()


class PeerServer:
    """A listening peer. Create with `start_peer()`."""

    def __init__(self, mode: Mode, options: PeerOptions) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown peer mode {mode!r} (one of {', '.join(MODES)})")
        self.mode: Mode = mode
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.stats = PeerStats()
        self.connections: set[_PeerProtocol] = set()
        self.host = ""
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def _start(self, host: str, port: int, backlog: int) -> None:
        self._server = await self.loop.create_server(
            lambda: _PeerProtocol(self), host, port, backlog=backlog, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def close(self, abort: bool = True) -> None:
        """Stop listening, then end every connection (abort: at once; else after writes)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                if abort:
                    conn.transport.abort()
                else:
                    conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        # Let connection_lost callbacks run so stats are final.
        await asyncio.sleep(0)

    async def __aenter__(self) -> PeerServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_peer(
    mode: Mode,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_conns: int | None = None,
    stall_ms: int = 0,
    source_bytes: int = DEFAULT_SOURCE_BYTES,
    seed: int = 0,
    backlog: int = DEFAULT_BACKLOG,
) -> PeerServer:
    """Listen on `host:port` (0: a free port, see `.port`) as an echo, sink or source peer."""
    server = PeerServer(mode, PeerOptions(max_conns, stall_ms, source_bytes, seed))
    await server._start(host, port, backlog)
    return server


# ================================================================================================
# command line
# ================================================================================================
def _parse_listen(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0-65535), got {value!r}")
    return host, int(port)


#: the longest --stall-ms: an hour (a longer pause is no slow peer, and past ~1e12 s the
#: event loop's timer overflows)
MAX_STALL_MS = 3_600_000


def _count(what: str, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from 0 (to `high`); a negative count, limit or size is a
    usage error (exit 2), not a peer that resets everything or sends nothing."""

    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0 or (high is not None and n > high):
            span = "0 or more" if high is None else f"0 to {high}"
            raise argparse.ArgumentTypeError(f"expected {what} ({span}), got {value!r}")
        return n

    return convert


def check_port_file(path: str) -> str | None:
    """Why the real port cannot be written to `path`, or None. Checked before listening: a
    missing directory found only after the port is open would leave a peer that listened for
    nothing (and a waiting reader without its file)."""
    if os.path.isdir(path):
        return f"--port-file {path}: is a directory"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"--port-file {path}: the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        # the port is written to a temporary file beside it, then renamed (atomic)
        return f"--port-file {path}: the directory {directory} is not writable"
    return None


def is_loopback(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or `localhost`; any other name may resolve
    anywhere, and 0.0.0.0 or :: is every interface. The daemon's rule
    (`chimneyd.config.is_loopback`), kept here: the client library does not import the daemon."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_listen(host: str, allow_remote: bool) -> str | None:
    """What to say of listening on `host`: None on loopback; a warning when off loopback and
    allowed. Off loopback without `allow_remote` raises ValueError: chimneyd dials its peers
    on loopback only (`tcp.connect` refuses any other host), so such an address would serve
    no daemon and only open the peer to the network."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ValueError(
            f"--listen {host}: not a loopback address; chimneyd connects to loopback peers "
            "only, so this would only open the peer to the network (--allow-remote to listen "
            "there anyway)"
        )
    return (
        f"chimney-peer: listening on {host}, off loopback (--allow-remote): anyone who can "
        "reach it can use this peer"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimney-peer",
        description="Loopback peer for chimneyd's offloaded connections.",
        formatter_class=TerminalWidth,  # piped too, at the terminal's width
        epilog=(
            "modes: echo returns every byte (and FIN after the last one); sink reads and discards; "
            "source sends --source-bytes of the seeded pattern stream (chimney_client.stream) "
            "then FIN. Prints 'chimney-peer MODE listening on HOST:PORT' once ready; "
            "SIGTERM/SIGINT stop it with exit status 0 and a stats line on stderr."
        ),
    )
    p.add_argument("mode", choices=MODES)
    p.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default 127.0.0.1:0)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --listen address off loopback (chimneyd itself connects to loopback "
        "peers only)",
    )
    p.add_argument("--port-file", metavar="F", help="write the real port to F once listening")
    p.add_argument(
        "--max-conns",
        type=_count("a number of connections"),
        metavar="N",
        help="reset connections beyond N open",
    )
    p.add_argument(
        "--stall-ms",
        type=_count("milliseconds", MAX_STALL_MS),
        default=0,
        metavar="N",
        help="slow peer: pause N ms after each read",
    )
    p.add_argument(
        "--source-bytes",
        type=_count("a number of bytes"),
        default=DEFAULT_SOURCE_BYTES,
        metavar="N",
        help=f"bytes a source sends per connection (default {DEFAULT_SOURCE_BYTES})",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="pattern seed (source)")
    p.add_argument("--version", action="version", version=f"chimney-peer {package_version()}")
    p.add_argument(
        "--backlog",
        type=_count("a backlog", 65535),
        default=DEFAULT_BACKLOG,
        help=argparse.SUPPRESS,
    )
    return p


async def _serve(args: argparse.Namespace) -> int:
    host, port = args.listen
    server = await start_peer(
        args.mode,
        host,
        port,
        max_conns=args.max_conns,
        stall_ms=args.stall_ms,
        source_bytes=args.source_bytes,
        seed=args.seed,
        backlog=args.backlog,
    )
    if args.port_file:
        # Atomic: a reader polling the file never sees a partial port.
        tmp = f"{args.port_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{server.port}\n")
        os.replace(tmp, args.port_file)
    print(f"chimney-peer {args.mode} listening on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
    stats = " ".join(f"{k}={v}" for k, v in server.stats.as_dict().items())
    print(f"chimney-peer {args.mode} stopped: {stats}", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        warning = remote_listen(args.listen[0], args.allow_remote)
    except ValueError as exc:
        parser.error(str(exc))
    if args.port_file and (problem := check_port_file(args.port_file)):
        parser.error(problem)  # exit 2 before anything listens
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        runner = asyncio.run
    try:
        return int(runner(_serve(args)))
    except OSError as exc:
        print(cannot_listen(args.listen, exc), file=sys.stderr)
        return 1


def cannot_listen(listen: tuple[str, int], exc: OSError) -> str:
    """The error of a peer that could not start: bind's own error need not name the address,
    and an address in use (another peer, or chimneyd) gets the hint chimneyd's own has."""
    host, port = listen
    bracketed = f"[{host}]" if ":" in host else host
    addr = f"{bracketed}:{port}"
    if exc.errno != errno.EADDRINUSE:
        return f"chimney-peer: {exc}"
    return (
        f"chimney-peer: cannot listen on {addr}: {exc}\n"
        f"hint: another program (another chimney-peer?) listens there: stop it, or give another "
        f"address with --listen (--listen {bracketed}:0 picks a free port; --port-file says which)"
    )


if __name__ == "__main__":
    sys.exit(main())
