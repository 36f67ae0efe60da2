"""chimney-peer refuses before listening, as a usage error (exit 2): a --listen port above
65535 (rather than listening on it modulo 65536), a negative count or size, and a --port-file
it could not write."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chimney_client import peer


@pytest.mark.parametrize("addr", ["127.0.0.1:99999", "127.0.0.1:70000"])
def test_port_out_of_range_is_a_usage_error(addr: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chimney_client.peer", "echo", "--listen", addr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chimney-peer --listen {addr} started instead of refusing: {out.strip()}")
    assert proc.returncode == 2, (out, err)


# Counts, limits and sizes: a negative one is a usage error (exit 2), as a bad port is.


@pytest.mark.parametrize(
    "args",
    [
        ["--max-conns", "-1"],
        ["--stall-ms", "-10"],
        ["--stall-ms", "3600001"],  # past an hour: no slow peer, and the loop's timer overflows
        ["--source-bytes", "-1"],
        ["--source-bytes", "many"],
        ["--backlog", "-1"],
    ],
)
def test_a_negative_count_is_a_usage_error(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(peer, "start_peer", _must_not_listen)
    with pytest.raises(SystemExit) as stop:
        peer.main(["source", *args])
    assert stop.value.code == 2
    assert args[0] in capsys.readouterr().err


def test_the_least_values_are_taken() -> None:
    args = peer.build_parser().parse_args(
        ["sink", "--max-conns", "0", "--stall-ms", "0", "--source-bytes", "0", "--backlog", "0"]
    )
    assert (args.max_conns, args.stall_ms, args.source_bytes, args.backlog) == (0, 0, 0, 0)


# --port-file: where the real port cannot be written is found before listening.


async def _must_not_listen(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("chimney-peer listened although its arguments were bad")


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_an_unwritable_port_file_is_refused_before_listening(
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "no-such-dir" / "port" if where == "missing directory" else tmp_path
    monkeypatch.setattr(peer, "start_peer", _must_not_listen)
    with pytest.raises(SystemExit) as stop:
        peer.main(["echo", "--port-file", str(path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--port-file {path}" in err, err


def test_the_command_exits_2_and_never_says_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "port"
    proc = subprocess.run(
        [sys.executable, "-m", "chimney_client.peer", "echo", "--port-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "listening" not in proc.stdout
    assert "does not exist" in proc.stderr, proc.stderr


def test_a_port_in_use_names_the_address_and_the_option() -> None:
    """As chimneyd's own: an address in use is named, with a hint at --listen, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "chimney_client.peer", "echo", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith(f"chimney-peer: cannot listen on 127.0.0.1:{port}: "), lines
    assert "in use" in lines[-2], lines
    assert lines[-1].startswith("hint: ") and "--listen 127.0.0.1:0" in lines[-1], lines
