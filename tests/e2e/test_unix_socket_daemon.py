"""The real daemon on a unix socket: mode 0600 whatever the umask, a second daemon on the same
path refuses to start (and leaves the first one's socket alone), and exit removes only ours."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack

from tests.e2e.support import HOST, Daemon, child_env


def unix_call(path: Path, msgid: int, method: str, *params: Any) -> Any:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(msgpack.packb([0, msgid, method, list(params)]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = sock.recv(65536)
            assert data, "the daemon closed the unix connection"
            unpacker.feed(data)
            for msg in unpacker:
                return msg


def test_unix_socket_mode_ownership_and_exit(spawn_daemon: Any, tmp_path: Path) -> None:
    path = tmp_path / "chimneyd.sock"
    old = os.umask(0)  # the daemon inherits the most permissive umask there is
    try:
        d: Daemon = spawn_daemon(args=("--listen", f"unix:{path}"))
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert unix_call(path, 1, "ping") == [1, 1, None, "pong"]

    second = subprocess.run(
        [sys.executable, "-m", "chimneyd", "--listen", f"{HOST}:0", "--listen", f"unix:{path}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=child_env(),
        timeout=60,
    )
    assert second.returncode == 2, second.stderr.decode()
    assert b"another server is listening on this socket" in second.stderr
    assert os.lstat(path).st_ino == st.st_ino  # the first daemon's socket, untouched
    assert unix_call(path, 2, "ping") == [1, 2, None, "pong"]

    d.assert_clean_stop()
    assert not path.exists()


def _chimneyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chimneyd", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )


def test_a_socket_in_a_missing_directory_is_named_at_start_and_by_check_config(
    tmp_path: Path,
) -> None:
    """Start-up and --check-config alike name the address and say its directory is missing
    (bind alone says only "No such file or directory")."""
    addr = f"unix:{tmp_path}/no/such/dir/chimneyd.sock"
    for extra in ((), ("--check-config",)):
        run = _chimneyd("--listen", f"{HOST}:0", "--listen", addr, *extra)
        assert run.returncode == 2, (extra, run.stdout, run.stderr)
        assert run.stdout == "" and "listening" not in run.stdout
        (line,) = run.stderr.strip().splitlines()  # one line, no traceback
        assert line == (
            f'chimneyd: bad configuration: rpc.listen: "{addr}": the directory'
            f" {tmp_path}/no/such/dir does not exist (create it, or choose another path)"
        ), line
    assert not (tmp_path / "no").exists()


def test_check_config_finds_what_start_up_would_refuse_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """log.file in a missing directory fails --check-config as it fails start-up; a good one
    passes without the file being made (the check only looks)."""
    missing = tmp_path / "logs" / "chimneyd.log"
    config = tmp_path / "chimneyd.toml"
    config.write_text(f'[log]\nfile = "{missing}"\n')
    for extra in (("--check-config",), ("--listen", f"{HOST}:0")):
        run = _chimneyd("--config", str(config), *extra)
        assert run.returncode == 2, (extra, run.stderr)
        assert "log.file" in run.stderr and f"{tmp_path}/logs" in run.stderr, run.stderr
    (tmp_path / "logs").mkdir()
    sock = tmp_path / "chimneyd.sock"
    run = _chimneyd("--config", str(config), "--listen", f"unix:{sock}", "--check-config")
    assert run.returncode == 0, run.stderr
    assert not missing.exists() and not sock.exists()
