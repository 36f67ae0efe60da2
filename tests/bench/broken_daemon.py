"""A stand-in for a broken chimneyd, for tests/bench: it says it is listening, like the daemon,
and then fails every call.

    python tests/bench/broken_daemon.py error  --listen 127.0.0.1:PORT   # every request: INTERNAL
    python tests/bench/broken_daemon.py closed --listen 127.0.0.1:PORT   # names a port nobody serves

It takes `--web ADDR` and `--metrics ADDR` as the daemon does, and serves neither. It stops on
SIGTERM or when its stdin closes, as the bench stops a daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Any

import msgpack


class AlwaysError(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.unpacker = msgpack.Unpacker(raw=False)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for msg in self.unpacker:
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 0:
                err = [10, "INTERNAL: this daemon is broken on purpose (tests/bench)"]
                self.transport.write(msgpack.packb([1, msg[1], err, None]))


def _unserved_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again at once: nothing listens there


async def main(mode: str, listen: str) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def stopped() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped)

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            stopped()  # stdin closed: the bench is done with this daemon

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    host, port = listen.rsplit(":", 1)
    if mode == "error":
        server = await loop.create_server(AlwaysError, host, int(port))
        port = str(server.sockets[0].getsockname()[1])
    else:
        port = str(_unserved_port())
    print(f"chimneyd listening on {host}:{port}", flush=True)
    await stop


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("error", "closed"))
    p.add_argument("--listen", required=True)
    p.add_argument("--web")  # accepted, not served
    p.add_argument("--metrics")
    args = p.parse_args()
    asyncio.run(main(args.mode, args.listen))
