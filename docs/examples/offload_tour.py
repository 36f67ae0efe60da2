"""Script chimneyd from Python: offload a connection, move bytes, upload and offload again.

Run it against a daemon (`make run`, or `chimneyd --listen 127.0.0.1:7411`):

    .venv/bin/python docs/examples/offload_tour.py --rpc 127.0.0.1:7411

It starts its own loopback echo peer, so nothing else is needed. Every step checks what it gets
back; the script exits 0 when the echoed bytes are exactly the bytes sent, whatever the
connection's state was (offloaded, in the host stack, offloaded again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from chimney_client import AsyncClient, start_peer


async def tour(rpc: str, token: str | None) -> int:
    peer = await start_peer("echo")  # a loopback echo server on a free port
    client = await AsyncClient.connect(rpc, token=token, call_timeout=30.0)
    try:
        info = await client.stack_info()
        layers = " → ".join(layer["name"] for layer in info["layers"])
        print(f"chimneyd {info['version']}, contract {info['contract']}: {layers}")

        events: list[tuple[int, str, dict[str, Any]]] = []
        client.on_tcp_event(lambda conn, event, details: events.append((conn, event, details)))

        conn = await client.tcp_connect("127.0.0.1", peer.port)  # offloaded at once
        await client.events_subscribe(conn)
        state = await client.tcp_info(conn)
        print(f"conn {conn}: {state['state']} via {' → '.join(state['path'])}")

        sent = received = b""
        for step, payload in enumerate(
            [b"offloaded bytes", b"host-mode bytes", b"offloaded again"]
        ):
            if step == 1:
                print("upload:", await client.tcp_upload(conn))
            if step == 2:
                print("offload:", await client.tcp_offload(conn))
            acked = await client.tcp_send(conn, payload)  # returns once the peer acknowledged
            sent += payload
            while len(received) < len(sent):
                received += await client.tcp_recv(conn, len(sent) - len(received), 5000)
            print(f"sent {acked} bytes, echoed back: {received[-len(payload) :]!r}")

        # the hops of the last send: one NBL id from the host down to the NIC and back up
        trace = await client.trace_get(conn)
        last_nbl = next(h["nbl"] for h in reversed(trace) if h["call"] == "NdisOffloadTcpSend")
        for hop in trace:
            if hop["nbl"] == last_nbl:
                ids = [f"{key} {hop[key]}" for key in ("handle", "context") if hop[key] is not None]
                status = [hop["status"]] if hop["status"] else []
                print(f"  {hop['layer']:<6} {hop['call']:<32} nbl {last_nbl}", *ids, *status)

        # an extension: the target's delegated TCP state, read with NdisQueryOffloadState
        delegated = await client.call("tcp.query", conn)
        print(f"delegated state: {delegated['State']}, SndUna {delegated['SndUna']}")

        print("disconnect:", await client.tcp_disconnect(conn))
        assert await client.tcp_recv(conn, 100, 5000) == b"", "expected the peer's FIN"
        await client.tcp_close(conn)
        await asyncio.sleep(0.1)  # let the last notifications arrive
        print("events:", ", ".join(event for _, event, _ in events))

        stats = await client.stack_stats()
        leftover = {
            name: layer["offloads_active"] + layer["handles"] + layer["outstanding_nbls"]
            for name, layer in stats["layers"].items()
        }
        print("gauges after close:", leftover)
        if received != sent:
            print(f"MISMATCH: sent {sent!r}, received {received!r}", file=sys.stderr)
            return 1
        return 0
    finally:
        await client.close()
        await peer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rpc",
        default=os.environ.get("CHIMNEY_RPC", "127.0.0.1:7411"),
        help="daemon address (default $CHIMNEY_RPC or 127.0.0.1:7411)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("CHIMNEY_TOKEN"), help="auth token ($CHIMNEY_TOKEN)"
    )
    args = parser.parse_args()
    return asyncio.run(tour(args.rpc, args.token))


if __name__ == "__main__":
    sys.exit(main())
