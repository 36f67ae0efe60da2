"""A tiny msgpack-RPC server speaking the chimneyd contract shape, for client tests.

It fakes just enough state (connections that echo what they are sent) and adds test-only
methods: `test.delay [seconds, value]` answers late (so answers come out of order),
`test.drop []` closes the connection without answering, `test.notify [method, params]` pushes a
notification, `test.garbage []` sends bytes that are not msgpack.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack

#: Fault kinds the daemon's fault.list never shows: they act as they are injected (faults.md).
ACT_AT_ONCE = frozenset({"peer_reset", "invalidate", "retrieve", "nic_up", "rebalance"})


class _State:
    def __init__(self) -> None:
        self.next_id = 1
        self.conns: dict[int, bytearray] = {}
        self.faults: dict[int, dict[str, Any]] = {}
        self.host_mode: set[int] = set()  # conns a test puts in host mode: no hops, state host
        # tcp.info's `offload_refused` of a conn, for a test that sets it (else no such key, as
        # from a daemon before it)
        self.offload_refused: dict[int, dict[str, Any] | None] = {}


class MiniRpc(asyncio.Protocol):
    def __init__(self, server: MiniServer) -> None:
        self.server = server
        self.unpacker = msgpack.Unpacker(raw=False)
        self.transport: Any = None
        self.subscribed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for msg in self.unpacker:
            if msg[0] == 0:
                _, msgid, method, params = msg
                if isinstance(method, bytes):
                    method = method.decode()
                self.server.requests.append((method, params))
                asyncio.get_running_loop().create_task(self.answer(msgid, method, params))

    def send(self, obj: Any) -> None:
        if not self.transport.is_closing():
            self.transport.write(msgpack.packb(obj, use_bin_type=True))

    async def answer(self, msgid: int, method: str, params: list[Any]) -> None:
        try:
            result = await self.dispatch(method, params)
        except _Drop:
            self.transport.abort()
            return
        except _Err as e:
            self.send([1, msgid, [e.code, e.message], None])
            return
        self.send([1, msgid, None, result])
        if method == "events.subscribe":
            # An event right after the answer, as a daemon would on a state change.
            self.send([2, "tcp.event", [1, "offloaded", {"path": ["tcpip", "nic0"]}]])

    async def dispatch(self, method: str, params: list[Any]) -> Any:
        st = self.server.state
        if method == "ping":
            return "pong"
        if method == "auth":
            if params[0] != "secret":
                raise _Err(8, "DENIED: bad token")
            return True
        if method == "stack.info":
            return {
                "version": "0.1.0",
                "contract": 1,
                "layers": [
                    {"name": "tcpip", "kind": "host", "lower": ["im0"], "state": "running"},
                    {"name": "im0", "kind": "passthrough", "lower": ["nic0"], "state": "running"},
                    {"name": "nic0", "kind": "target", "lower": [], "state": "running"},
                ],
                "rpc": {"listen": ["127.0.0.1:7411"]},
            }
        if method == "stack.stats":
            layer = {
                "offloads_active": len(st.conns),
                "handles": 2 * len(st.conns),
                "outstanding_nbls": 0,
                "bytes_sent": 5,
                "bytes_received": 5,
                "calls": {
                    "MiniportTcpOffloadSend": 3,
                    "NdisTcpOffloadSendComplete/NDIS_STATUS_SUCCESS": 3,
                    "NdisTcpOffloadSendComplete/NDIS_STATUS_REQUEST_ABORTED": 1,
                },
            }
            return {
                "layers": {"tcpip": layer, "im0": layer, "nic0": layer},
                "rpc": {"clients": len(self.server.clients), "in_flight": 1},
                "connections": len(st.conns),
            }
        if method == "tcp.connect":
            cid = st.next_id
            st.next_id += 1
            st.conns[cid] = bytearray()
            return cid
        if method == "tcp.list":
            return sorted(st.conns)
        if method in ("tcp.send", "tcp.recv", "tcp.info", "tcp.close", "tcp.offload"):
            if params[0] not in st.conns:
                raise _Err(3, f"NOT_FOUND: no connection {params[0]}")
            buf = st.conns[params[0]]
            if method == "tcp.send":
                data = params[1]
                if data == b"fail":
                    raise _Err(
                        5,
                        "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C) acknowledged 2 bytes",
                    )
                buf += data
                return len(data)
            if method == "tcp.recv":
                out = bytes(buf[: params[1]])
                del buf[: params[1]]
                return out
            if method == "tcp.info":
                host = params[0] in st.host_mode
                if params[0] in st.offload_refused:
                    return {
                        "state": "host" if host else "offloaded",
                        "offload_refused": st.offload_refused[params[0]],
                    }
                return {
                    "state": "host" if host else "offloaded",
                    "path": ["tcpip"] if host else ["tcpip", "im0", "nic0"],
                    "local": "127.0.0.1:50000",
                    "remote": "127.0.0.1:9000",
                    "bytes_sent": 5,
                    "bytes_received": 5,
                    "handles": {"tcpip": {"handle": 101}, "im0": {"context": 201, "handle": 202}},
                    "delegated": {"RcvNxt": 1005, "SndUna": 2005},
                    "listener": None,
                }
            if method == "tcp.offload":
                return {"state": "offloaded", "path": ["tcpip", "im0", "nic0"]}
            del st.conns[params[0]]
            return True
        if method == "trace.get":
            if params[0] in st.host_mode:
                return []
            hops = [
                {
                    "seq": 1,
                    "t_ns": 1_000_000,
                    "layer": "tcpip",
                    "call": "NdisOffloadTcpSend",
                    "handle": 101,
                    "context": None,
                    "nbl": 7,
                    "status": None,
                },
                {
                    "seq": 2,
                    "t_ns": 1_012_500,
                    "layer": "nic0",
                    "call": "MiniportTcpOffloadSend",
                    "handle": None,
                    "context": 301,
                    "nbl": 7,
                    "status": None,
                },
                {
                    "seq": 3,
                    "t_ns": 1_030_000,
                    "layer": "tcpip",
                    "call": "ProtocolTcpOffloadSendComplete",
                    "handle": None,
                    "context": None,
                    "nbl": 7,
                    "status": "NDIS_STATUS_SUCCESS",
                },
            ]
            return hops[-params[1] :] if len(params) > 1 else hops
        if method == "events.subscribe":
            return True
        if method == "fault.inject":
            fid = len(st.faults) + 1
            st.faults[fid] = {"id": fid, **params[0]}
            return fid
        if method == "fault.list":
            if params and params[0] == {"used": True}:  # as a raise_next or fail_next lists
                return [_used_up(f) for f in st.faults.values()]
            # as the daemon: a kind that acts once, as it is injected, is never active
            return [f for f in st.faults.values() if f.get("kind") not in ACT_AT_ONCE]
        if method == "fault.clear":
            if params[0] == "*":
                st.faults.clear()
            elif st.faults.pop(params[0], None) is None:
                raise _Err(3, f"NOT_FOUND: no fault {params[0]}")
            return True
        if method == "test.delay":
            await asyncio.sleep(params[0])
            return params[1]
        if method == "test.drop":
            raise _Drop
        if method == "test.notify":
            self.send([2, params[0], params[1]])
            return True
        if method == "test.garbage":
            self.transport.write(b"\xc1\xc1\xc1")
            return None
        if method == "test.echo":
            return params
        raise _Err(1, f"NO_METHOD: {method}")


class _Err(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


class _Drop(Exception):
    pass


class MiniServer:
    def __init__(self) -> None:
        self.state = _State()
        self.clients: set[MiniRpc] = set()
        self.requests: list[tuple[str, list[Any]]] = []
        self.server: asyncio.AbstractServer | None = None
        self.address = ""

    async def start(self, unix_path: str | None = None) -> MiniServer:
        loop = asyncio.get_running_loop()
        if unix_path is not None:
            self.server = await loop.create_unix_server(lambda: MiniRpc(self), unix_path)
            self.address = f"unix:{unix_path}"
        else:
            self.server = await loop.create_server(lambda: MiniRpc(self), "127.0.0.1", 0)
            self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for c in list(self.clients):
            c.transport.abort()
        await self.server.wait_closed()


@contextmanager
def mini_server_in_thread() -> Iterator[MiniServer]:
    """The mini server on its own loop in a thread, for blocking clients and chimneyctl."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server = MiniServer()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _used_up(fault: dict[str, Any]) -> dict[str, Any]:
    """A fault as fault.list `used` shows it once it went off: a raise_next's bug raised in a
    send serving 9 connections; a fail_next failed a send of connection 4, and 2 more
    failures were not kept."""
    if fault.get("kind") == "fail_next":
        hit = {"layer": "nic0", "call": "MiniportTcpOffloadSend", "conns": [4], "conns_total": 1}
        return {**fault, "active": False, "failed": [hit], "failed_dropped": 2}
    hit = {"layer": "nic0", "handler": "MiniportTcpOffloadSend", "conns_total": 9}
    return {**fault, "active": False, "raised": [{**hit, "conns": list(range(1, 10))}]}


def run_ctl(capsys: Any, server: MiniServer, *args: str) -> tuple[int, str, str]:
    """`chimneyctl --rpc SERVER ARGS…` in process: its exit status, stdout and stderr."""
    from chimney_client import ctl

    status = ctl.main(["--rpc", server.address, *args])
    out, err = capsys.readouterr()
    return status, out, err
