"""Why chimneyd polls SIOCOUTQ for acknowledgements instead of SO_TIMESTAMPING's TX_ACK.

Linux can report, on a socket's error queue, when the peer acknowledged the last byte of each
`send()` (`SO_TIMESTAMPING` with `SOF_TIMESTAMPING_TX_ACK | SOF_TIMESTAMPING_OPT_ID`): an event,
where chimneyd polls the unsent+unacknowledged count (`SIOCOUTQ`) of every socket that waits.
This probe measures the two things that decide it, on this kernel, with uvloop:

1. `plain`: the report arrives on loopback (read with `recvmsg(MSG_ERRQUEUE)` on a plain
   socket): how many reports and the byte offsets they name.
2. `uvloop`: a uvloop transport with the option on, idle after its writes were acknowledged,
   with the reports left unread: the CPU the event loop burns in one second. A report waiting
   on the error queue keeps the fd in EPOLLERR, and uvloop's transport has no hook to drain it,
   so the loop wakes again and again.

Run: `.venv/bin/python -m bench.txack_probe`. It prints both results; the decision and the
figures measured here are in docs/architecture.md ("Performance notes").
"""

from __future__ import annotations

import asyncio
import resource
import select
import socket
import struct
import time
from typing import Any

import uvloop

SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_TX_ACK = 1 << 9
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
FLAGS = (
    SOF_TIMESTAMPING_TX_ACK
    | SOF_TIMESTAMPING_SOFTWARE
    | SOF_TIMESTAMPING_OPT_ID
    | SOF_TIMESTAMPING_OPT_TSONLY
)
MSG_ERRQUEUE = 0x2000
IP_RECVERR = 11
SENDS = (1000, 2000, 3000)


def plain() -> list[int]:
    """The byte ids the kernel reports as acknowledged, one per send() (empty: no reports)."""
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname()[:2], timeout=2.0)
    client.settimeout(None)  # MSG_DONTWAIT below says when to stop
    peer, _ = srv.accept()
    ids: list[int] = []
    try:
        client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS)
        for n in SENDS:
            client.send(b"x" * n)
        received = 0
        while received < sum(SENDS):
            received += len(peer.recv(65536))
        poller = select.poll()
        poller.register(client, select.POLLERR)
        poller.poll(500)
        while True:
            try:
                _, ancillary, _, _ = client.recvmsg(1, 1024, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for level, kind, data in ancillary:
                if level == socket.SOL_IP and kind == IP_RECVERR:
                    # struct sock_extended_err: errno, origin, type, code, pad, info, data
                    ids.append(struct.unpack("IBBBBII", data[:16])[6])
    finally:
        for s in (client, peer, srv):
            s.close()
    return ids


class _Quiet(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def _idle_cpu(enabled: bool) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Quiet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(_Quiet, "127.0.0.1", port)
    try:
        if enabled:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, FLAGS)
        for n in SENDS:
            transport.write(b"x" * n)
        await asyncio.sleep(0.1)  # acknowledged by now, on loopback
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finally:
        transport.close()
        server.close()


def main() -> None:
    ids = plain()
    print(f"plain socket: {len(ids)} TX_ACK report(s) for {len(SENDS)} sends, byte ids {ids}")
    results: dict[str, Any] = {}
    for enabled in (False, True):
        t0 = time.perf_counter()
        cpu = uvloop.run(_idle_cpu(enabled))
        results["with" if enabled else "without"] = (cpu, time.perf_counter() - t0)
    for name, (cpu, _) in results.items():
        print(f"uvloop, {name} SO_TIMESTAMPING: {cpu:.3f} s of CPU in 1 s idle after the writes")


if __name__ == "__main__":
    main()
