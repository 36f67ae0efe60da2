"""At debug level, one structured log line per connection event, naming the connection and the
layer, and for an upload why it happened."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.support import HOST, Daemon
from tests.web.support import web_daemon


def lines_of(d: Daemon, conn: int) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("conn") == conn and e.get("level") == "debug"]


def wait_for(d: Daemon, conn: int, name: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [e for e in lines_of(d, conn) if e["event"] == name]
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {n} {name} lines for {conn}: {lines_of(d, conn)}")


def test_connection_events_are_logged_at_debug(tmp_path: Path) -> None:
    with web_daemon(tmp_path, args=("--log-level", "debug")) as w, w.client() as c:
        d = w.daemon
        conn = c.tcp_connect(HOST, w.peer_port)
        (connected,) = wait_for(d, conn, "conn_connected")
        assert connected["layer"] == "tcpip" and connected["remote"].endswith(str(w.peer_port))
        (offloaded,) = wait_for(d, conn, "conn_offloaded")
        assert offloaded["layer"] == "nic0"
        assert offloaded["path"] == ["tcpip", "im0", "nic0"]
        c.tcp_upload(conn)
        (uploaded,) = wait_for(d, conn, "conn_uploaded")
        assert uploaded["why"].startswith("application")
        c.tcp_offload(conn)
        wait_for(d, conn, "conn_offloaded", 2)
        c.fault_inject("peer_reset", conn=conn)
        (abort,) = wait_for(d, conn, "conn_abort")
        assert abort["ndis_event"] == "TcpIndicateAbort" and abort["layer"] == "nic0"
        uploads = wait_for(d, conn, "conn_uploaded", 2)
        assert uploads[1]["why"] == "TcpIndicateAbort"
        c.fault_clear("*")
        c.tcp_close(conn)
        (closed,) = wait_for(d, conn, "conn_closed")
        assert closed["layer"] == "tcpip"
