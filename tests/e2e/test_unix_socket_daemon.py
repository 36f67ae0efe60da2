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
