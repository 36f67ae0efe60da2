"""Checks of the Locust user that run in their own process (importing locust patches it for gevent).

    python -m tests.e2e.locust_checks user CASE     ChimneyUser against an in-memory daemon
    python -m tests.e2e.locust_checks gevent ADDR [MS]   the blocking Client under gevent, real daemon
    python -m tests.e2e.locust_checks options ARGS...    the `--chimney-*` options parsed by Locust
    python -m tests.e2e.locust_checks settings JSON      ChimneySettings(**JSON) made directly

Each prints one JSON object on its last line; tests/e2e/test_locust.py asserts on it.

`user` cases: `clean` (three echo rounds), `corrupt` / `drop` (the client hands back one echoed
byte changed / one byte missing), `reset` (the user injects a peer reset on its connection),
`abort` (the connection is reset with no fault aimed at it), `refused` (every offload is
refused with an NDIS status), `uploaded` (each connection is uploaded right after its offload,
both events before the connect's answer: a target that fails, a `host_event`).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import sys
from dataclasses import asdict
from typing import Any

import gevent
from gevent.event import AsyncResult
from locust.argument_parser import get_empty_argument_parser
from locust.env import Environment

from chimney_client import Client, NdisStatusError, RpcTimeout
from chimney_client.locust_user import ChimneySettings, ChimneyUser, LocustClient, add_arguments

PAYLOAD = 20_000
CHUNK = 8192
ROUNDS = 3
MUTATE_AT = 9_000  # stream offset of the byte a mutating client corrupts or drops
_ABORTED = "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C)"
_RESOURCES = "NDIS_STATUS: NDIS_STATUS_RESOURCES (0xC000009A)"


class InMemoryDaemon(Client):
    """The contract's connection calls answered in memory: every sent byte echoed back."""

    mutation = ""  # "", "corrupt", "drop"
    unexplained_abort = False  # "abort": the first connection is reset with no fault
    refuse_offload = False  # "refused": no offload taken, each refused with an NDIS status
    upload_at_once = False  # "uploaded": `uploaded` follows `offloaded` before the answer
    close_timeouts: list[float | None] = []  # the client-side bound of each `tcp.close`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.echo: dict[int, bytearray] = {}
        self.delivered: dict[int, int] = {}
        self.reset: set[int] = set()
        self.next_id = 1
        self.watching_all = False  # `events.subscribe("*")` was called
        self.in_host: set[int] = set()  # connections uploaded and not offloaded since

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        if method == "tcp.connect":
            cid = self.next_id
            self.next_id += 1
            self.echo[cid] = bytearray()
            self.delivered[cid] = 0
            if self.unexplained_abort and cid == 1:
                self.reset.add(cid)
            if self.watching_all and not self.refuse_offload:
                # the connection is the caller's before its offload (rpc.md events.subscribe):
                # `offloaded` comes before the answer
                self._event(cid, "offloaded", {"path": ["tcpip", "im0", "nic0"]})
                if self.upload_at_once:
                    # taken back by the host in the same turn, before the answer went out
                    self.in_host.add(cid)
                    self._event(cid, "uploaded", {"reason": "power_down"})
            return cid
        cid = params[0]
        if method == "events.subscribe":
            self.watching_all = self.watching_all or cid == "*"
            return True
        if method == "tcp.info":
            return {"state": "host" if self.refuse_offload or cid in self.in_host else "offloaded"}
        if method == "tcp.offload" and self.refuse_offload:
            raise NdisStatusError(5, f"{_RESOURCES} the target has no room")
        if method == "fault.inject":
            spec = params[0]
            assert spec["kind"] == "peer_reset", spec
            self.reset.add(spec["conn"])
            return 1
        if method == "tcp.close":
            InMemoryDaemon.close_timeouts.append(timeout)
            self.echo.pop(cid, None)
            self._event(cid, "closed", {})  # what the daemon sends before it answers
            return True
        if cid in self.reset and method in ("tcp.send", "tcp.recv"):
            raise NdisStatusError(5, f"{_ABORTED} connection reset")
        if method == "tcp.send":
            self.echo[cid] += params[1]
            return len(params[1])
        if method == "tcp.recv":
            buf, want = self.echo[cid], params[1]
            if not buf:
                raise RpcTimeout(7, f"TIMEOUT: nothing arrived on connection {cid}")
            chunk = bytearray(buf[:want])
            del buf[:want]
            start = self.delivered[cid]
            self.delivered[cid] += len(chunk)
            if cid == 1 and start <= MUTATE_AT < start + len(chunk):
                if self.mutation == "corrupt":
                    chunk[MUTATE_AT - start] ^= 0x01
                elif self.mutation == "drop":
                    del chunk[MUTATE_AT - start]
            return bytes(chunk)
        if method in ("tcp.upload", "tcp.offload"):
            if method == "tcp.offload":
                self.in_host.discard(cid)
            return {"state": "host" if method == "tcp.upload" else "offloaded"}
        raise AssertionError(f"unexpected call {method}")

    def _event(self, cid: int, event: str, info: dict[str, Any]) -> None:
        for sub in self._handlers.get("tcp.event", []):
            if sub.active:
                sub.handler([cid, event, info])


class FakeClient(LocustClient, InMemoryDaemon):
    """Reports like the real thing (LocustClient.call) over the in-memory daemon."""


class CheckedUser(ChimneyUser):
    abstract = False
    host = "127.0.0.1:1"

    def load_settings(self) -> ChimneySettings:
        return ChimneySettings(
            payload_bytes=PAYLOAD, chunk_bytes=CHUNK, upload_rate=0.0, reset_rate=0.0
        )

    def connect_client(self) -> LocustClient:
        return FakeClient(socket.socket(), self.daemon)


def _entries(env: Environment) -> list[dict[str, Any]]:
    return [
        {
            "type": e.method,
            "name": e.name,
            "requests": e.num_requests,
            "failures": e.num_failures,
            "bytes": e.total_content_length,
        }
        for e in env.stats.entries.values()
    ]


def check_user(case: str) -> dict[str, Any]:
    InMemoryDaemon.mutation = case if case in ("corrupt", "drop") else ""
    InMemoryDaemon.unexplained_abort = case == "abort"
    InMemoryDaemon.refuse_offload = case == "refused"
    InMemoryDaemon.upload_at_once = case == "uploaded"
    env = Environment(user_classes=[CheckedUser])
    env.create_local_runner()  # its listener feeds env.stats from the request event
    user = CheckedUser(env)
    if case == "reset":
        user.settings = ChimneySettings(payload_bytes=PAYLOAD, chunk_bytes=CHUNK, reset_rate=1e-9)
        user._next_reset = 0.0  # due at the first round, never again
    user.on_start()
    for _ in range(ROUNDS):
        user.echo_round()
    user.on_stop()
    errors = [
        {
            "type": e.method,
            "name": e.name,
            "error": f"{type(e.error).__name__}: {e.error}",
            "count": e.occurrences,
        }
        for e in env.stats.errors.values()
    ]
    closes = InMemoryDaemon.close_timeouts
    return {"case": case, "entries": _entries(env), "errors": errors, "close_timeouts": closes}


def check_gevent(address: str, accept_ms: int = 10_000) -> dict[str, Any]:
    """Greenlet B blocks in `tcp.accept` while greenlet A connects to B's listener.

    A runs only once B yields, and B yields only inside the accept's socket read: if the
    blocking client held the whole process there, A could not connect and the accept would end
    in TIMEOUT instead of returning A's connection.
    """
    port: AsyncResult = AsyncResult()
    log: list[str] = []

    def acceptor() -> int:
        with Client.connect(address, call_timeout=30) as b:
            lid = b.tcp_listen("127.0.0.1", 0)
            port.set(b.tcp_listener_info(lid)["port"])
            log.append("accept called")
            cid = b.tcp_accept(lid, accept_ms)
            log.append("accept returned")
            b.tcp_close(cid)
            return cid

    def connector() -> int:
        p = port.get(timeout=30)
        log.append("connect called")
        with Client.connect(address, call_timeout=30) as a:
            cid = a.tcp_connect("127.0.0.1", p)
            a.tcp_close(cid)
            return cid

    gb, ga = gevent.spawn(acceptor), gevent.spawn(connector)
    gevent.joinall([gb, ga], raise_error=True)
    return {"accepted": gb.value, "connected": ga.value, "log": log}


def check_options(args: list[str]) -> dict[str, Any]:
    """The `--chimney-*` options as Locust's parser reads them: the settings they make, or the
    usage error (exit status and message) the parser stops with."""
    parser = get_empty_argument_parser()
    add_arguments(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            options = parser.parse_args(args)
    except SystemExit as stop:
        return {"exit": stop.code, "error": err.getvalue()}
    return {"exit": None, "settings": asdict(ChimneySettings.from_options(options))}


def check_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`ChimneySettings(**kwargs)` made directly (as a worker gets the master's values): the
    error it raises, if any. JSON has no nan or inf: the strings "nan", "inf" stand for them."""
    values = {k: float(v) if v in ("nan", "inf", "-inf") else v for k, v in kwargs.items()}
    try:
        settings = ChimneySettings(**values)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": None, "call_limit_s": settings.call_limit_s}


def check_limits(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The bounds `ChimneySettings(**kwargs)` derives: a call's, the stop's grace, and the
    stop's `tcp.close`."""
    settings = ChimneySettings(**kwargs)
    return {
        "call_limit_s": settings.call_limit_s,
        "stop_grace_s": settings.stop_grace_s,
        "stop_close_limit_s": settings.stop_close_limit_s,
    }


def main(argv: list[str]) -> int:
    what, arg, *rest = argv
    checks = {
        "user": lambda: check_user(arg),
        "gevent": lambda: check_gevent(arg, *map(int, rest)),
        "options": lambda: check_options([arg, *rest]),
        "settings": lambda: check_settings(json.loads(arg)),
        "limits": lambda: check_limits(json.loads(arg)),
    }
    result = checks[what]()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
