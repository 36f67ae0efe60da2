"""HTTP connections to the web port are bounded (`web.max_connections`): a local process that
opens many and sends nothing cannot take the descriptors the RPC data path needs
(docs/security.md: shared capacity is bounded so that no client can take all of one)."""

from __future__ import annotations

import contextlib
import resource
import socket
from pathlib import Path

from chimney_client import ChimneyError
from tests.e2e.support import HOST
from tests.web.support import web_daemon

FD_LIMIT = 256  # a host with a low open-file limit; the default cap (128) leaves room under it
FLOOD = 400  # idle HTTP connections: more than the daemon's descriptors


def test_idle_http_connections_cannot_starve_the_data_path(tmp_path: Path) -> None:
    """Before the cap, idle connections that never send a request took every descriptor, and
    an RPC client already connected got `LIMIT` on `tcp.connect`."""
    config = "[rpc]\nmax_clients = 8\n"
    with web_daemon(tmp_path, config) as w, w.client() as c:
        # the RPC side alone (8 clients) cannot use this budget up
        resource.prlimit(w.daemon.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        host, port = w.url.removeprefix("http://").rsplit(":", 1)
        flood: list[socket.socket] = []
        try:
            for _ in range(FLOOD):
                flood.append(socket.create_connection((host, int(port)), timeout=5))
            c.ping()  # the daemon has run its accept loop since
            error = ""
            try:
                conn = c.tcp_connect(HOST, w.peer_port)
                c.tcp_close(conn)
            except ChimneyError as exc:
                error = str(exc)
        finally:
            for s in flood:
                with contextlib.suppress(OSError):
                    s.close()
        assert error == "", f"web flood of {FLOOD} idle connections starved tcp.connect: {error}"
