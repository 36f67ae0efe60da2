"""One shard: `python -m chimneyd.shards.shard FD`, started by the supervisor.

FD is its end of the control channel. The first frame on it is the `hello` notification: the
daemon's effective configuration (its RPC addresses as the supervisor holds them), this shard's
number, the shard count, the base of its ids and the inherited unix sockets. Then the shard is
the daemon as one process runs it (`daemon.serve`), with its RPC methods answering for every
shard and its log lines carrying `shard`. SIGINT is the supervisor's to act on (a Ctrl-C reaches
the whole process group): the shard ignores it and stops on the supervisor's SIGTERM — or by
itself when the control channel closes (the supervisor is gone).
"""

from __future__ import annotations

import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import msgpack

from chimneyd.config import ConfigError, from_raw, parse_listen

HELLO_TIMEOUT_S = 30.0


@dataclass
class ShardSetup:
    """What `daemon.serve` needs to run as a shard."""

    index: int
    count: int
    id_base: int
    timeout: float
    sock: socket.socket  # the control channel
    leftover: bytes  # bytes that came after the hello
    unix_fds: dict[str, int]
    histograms: bool = False  # the daemon serves /metrics: every shard keeps its histograms

    def sockets(self, listen: tuple[str, ...]) -> dict[str, socket.socket]:
        """A listening socket per RPC address: its own `SO_REUSEPORT` one for TCP, the
        inherited one for a unix socket (chimneyd.shards.listen)."""
        from .listen import shard_socket

        out: dict[str, socket.socket] = {}
        try:
            for addr in listen:
                if isinstance(parse_listen(addr), str):
                    out[addr] = socket.socket(fileno=self.unix_fds[addr])
                else:
                    out[addr] = shard_socket(addr)
        except BaseException:
            for sock in out.values():
                sock.close()
            raise
        return out


def read_hello(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """The first control frame (blocking, bounded), and what came after it."""
    sock.settimeout(HELLO_TIMEOUT_S)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise EOFError("the supervisor closed the control channel before the hello")
        unpacker.feed(data)
        for obj in unpacker:
            if not (isinstance(obj, list) and len(obj) == 3 and obj[1] == "hello"):
                raise ValueError("the first control frame is not the hello")
            leftover = b""
            buffered = unpacker.read_bytes(1 << 30)
            if buffered:
                leftover = buffered
            sock.setblocking(False)
            return dict(obj[2][0]), leftover


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # (a Ctrl-C blocked since the fork is dropped here; SIGTERM and SIGHUP stay blocked until
    # serve() answers them: see Supervisor.spawn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    try:
        hello, leftover = read_hello(sock)
    except EOFError:
        # the supervisor stopped (or failed to set up this shard's channel) before it said
        # hello: there is nothing to serve or drain, and this is no fault of the shard's
        return 0
    try:
        config = from_raw(hello["config"])
    except ConfigError as exc:  # the supervisor checked it: a bug
        print(f"chimneyd shard: bad configuration: {exc}", file=sys.stderr)
        return 2
    index = int(hello["index"])
    setup = ShardSetup(
        index=index,
        count=int(hello["count"]),
        id_base=int(hello["id_base"]),
        timeout=config.daemon.control_timeout_s,
        sock=sock,
        leftover=leftover,
        unix_fds={str(k): int(v) for k, v in hello["unix_fds"].items()},
        histograms=bool(hello.get("histograms")),
    )
    from chimneyd.daemon import run_shard

    return run_shard(config, setup)


if __name__ == "__main__":
    sys.exit(main())
