"""The daemon's log is a pipe whose reader has gone (`chimneyd 2>&1 | head`, a dead log shipper):
every log line now fails to write, and still the daemon serves clients and stops on SIGTERM."""

from __future__ import annotations

import signal

from tests.e2e.support import HOST, READY_TIMEOUT, LineReader, RawConn, popen_chimneyd

STOP_WITHIN = 20.0  # the shutdown deadline is 3 s; this only bounds a hang


def test_a_broken_log_pipe_never_stops_the_daemon() -> None:
    proc = popen_chimneyd("--listen", f"{HOST}:0", "--log-format", "json", "--log-level", "debug")
    try:
        out = LineReader(proc.stdout)
        ready = out.wait_for("chimneyd listening on ", READY_TIMEOUT)
        host, _, port = ready.split()[3].rpartition(":")
        assert proc.stderr is not None
        proc.stderr.close()  # the reader goes away: every later log write hits EPIPE
        # clients come and go, each logging connect and disconnect lines that cannot be written
        for round_ in range(5):
            with RawConn((host, int(port)), timeout=10) as raw:
                assert raw.call(round_, "ping", []) == [1, round_, None, "pong"]
                stats = raw.call(100 + round_, "stack.stats", [])[3]
        assert stats["log"]["write_errors"] > 0  # the daemon knows it is losing lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_WITHIN) == 0  # TimeoutExpired if SIGTERM went unheard
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
