"""SIGTERM and the web view: a browser that stopped reading its WebSocket does not hold the
daemon's stop (`rpc.shutdown_deadline_s`, docs/security.md)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

from chimney_client import Client
from tests.e2e.support import HOST
from tests.web.support import web_daemon

CONNS = 50  # open connections: a `conns` frame of some KiB
SUBS = 2000  # `sub conns` messages, each answered with a frame at once: several MiB unread
STALLED = 2  # pages that stopped reading: closed at once, not one after another
#: a bound on the whole stop, far above the deadline (not a measurement): without the fix the
#: daemon never exits
STOP_BOUND_S = 20.0
#: a bound on what waits behind the flood (a handshake, an RPC call), far above what answering
#: it costs (seconds of the daemon's CPU: tens of seconds on a loaded machine), under the
#: test's own timeout (120 s): only a hang
HANG_S = 60.0


def ws_frame(text: str) -> bytes:
    """One masked client text frame (mask 0: the payload is sent as is)."""
    data = text.encode()
    n = len(data)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + data


def stalled_page(url: str) -> socket.socket:
    """A WebSocket on `/ws` with a small receive buffer; `flood` makes it a page that stopped
    reading."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    s.settimeout(HANG_S)
    s.connect((host, int(port)))
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def flood(page: socket.socket) -> None:
    """Ask for a flood of frames, and never read them."""
    sub = ws_frame(json.dumps({"op": "sub", "topic": "conns", "size": 1000}))
    page.sendall(sub * SUBS)


def test_sigterm_is_not_held_by_a_browser_that_stopped_reading(tmp_path: Path) -> None:
    """`LiveHub.close` sent each browser a close frame and waited for it with no bound, one
    browser after another: a page that no longer reads (a stalled machine, a debugger on a
    breakpoint) kept the daemon from ever exiting on SIGTERM."""
    with web_daemon(tmp_path, "[rpc]\nshutdown_deadline_s = 1.0\n") as w:
        pages: list[socket.socket] = []
        try:
            token = w.daemon.admin_token or w.daemon.token or None
            with Client.connect(w.daemon.address, token=token, call_timeout=HANG_S) as c:
                conns = [c.tcp_connect(HOST, w.peer_port) for _ in range(CONNS)]
                # every page opens before any floods: the daemon answers a page's
                # subscriptions in one burst, and nothing else is served meanwhile
                pages = [stalled_page(w.url) for _ in range(STALLED)]
                for page in pages:
                    flood(page)
                c.ping()
                for conn in conns:
                    c.tcp_close(conn)
            time.sleep(1.0)  # the frames pile up behind the unread socket
            t0 = time.monotonic()
            try:
                w.daemon.stop(deadline=STOP_BOUND_S)
                error = ""
            except AssertionError as exc:
                error = str(exc).splitlines()[0]
            took = time.monotonic() - t0
        finally:
            for s in pages:
                with contextlib.suppress(OSError):
                    s.close()
        assert error == "", f"{error} (shutdown_deadline_s = 1; waited {took:.0f} s)"
