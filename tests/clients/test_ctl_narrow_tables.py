"""chimneyctl's one-shot tables in an 80-column terminal: `trace` prints `watch`'s rows, which
fit, rather than a table rich shrank until seq, time, layer and handles were gone; `stats`
keeps each layer's name whole; `info` wraps its rpc limits to the terminal. Piped, the full
tables."""

from __future__ import annotations

import io
import re
import sys

import pytest

from chimney_client import ctl
from tests.clients.mini_server import MiniServer


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ctl(server: MiniServer, monkeypatch: pytest.MonkeyPatch, tty: bool, *args: str) -> str:
    out = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert ctl.main(["--rpc", server.address, *args]) == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # rich's styles


def test_trace_fits_an_80_column_terminal(
    server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = _ctl(server, monkeypatch, True, "run", "connect 127.0.0.1 9000 as c", "trace c")
    lines = out.splitlines()
    assert not [line for line in lines if len(line) > 80], out
    heading = next(line for line in lines if "call" in line)
    assert heading.split()[:4] == ["seq", "t", "(µs)", "layer"], out
    first = lines[lines.index(heading) + 1].split()
    assert first[:5] == ["1", "0.0", "tcpip", "NdisOffloadTcpSend", "101"], out


def test_stats_and_info_fit_an_80_column_terminal(
    server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = _ctl(server, monkeypatch, True, "run", "stats", "info")
    lines = out.splitlines()
    assert not [line for line in lines if len(line) > 80], out
    names = [line.split()[0] for line in lines if line.split()[:1]]
    assert names.count("tcpip") == 2 and names.count("nic0") == 2, out  # stats and info


def test_a_pipe_gets_the_full_trace_table(
    server: MiniServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = _ctl(server, monkeypatch, False, "run", "connect 127.0.0.1 9000 as c", "trace c")
    heading = next(line for line in out.splitlines() if "call" in line)
    assert heading.split()[:9] == [
        "seq", "t", "(µs)", "layer", "call", "handle", "context", "nbl", "status",
    ]  # fmt: skip
