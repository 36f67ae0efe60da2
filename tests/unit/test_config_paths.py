"""`check_paths`: what the daemon makes on disk at start (unix sockets, the log file) needs a
directory it may write in; the error names the key, the address or file and the directory."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from chimneyd.config import ConfigError, check_paths, load_config


def _check(**overrides: object) -> None:
    check_paths(load_config(None, overrides))


def test_tcp_addresses_and_no_log_file_need_nothing_on_disk() -> None:
    _check(**{"rpc.listen": ["127.0.0.1:0"]})


def test_a_unix_socket_needs_its_directory(tmp_path: Path) -> None:
    _check(**{"rpc.listen": [f"unix:{tmp_path}/x.sock"]})
    addr = f"unix:{tmp_path}/gone/x.sock"
    said = re.escape(f'rpc.listen: "{addr}": the directory {tmp_path}/gone does not exist')
    with pytest.raises(ConfigError, match=said):
        _check(**{"rpc.listen": ["127.0.0.1:0", addr]})
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="/file is not a directory"):
        _check(**{"rpc.listen": [f"unix:{tmp_path}/file/x.sock"]})


def test_the_log_file_needs_its_directory_or_to_be_writable(tmp_path: Path) -> None:
    _check(**{"log.file": str(tmp_path / "new.log")})
    assert not (tmp_path / "new.log").exists()  # only looked
    with pytest.raises(ConfigError, match=r"log\.file: .*: the directory .*/gone does not exist"):
        _check(**{"log.file": str(tmp_path / "gone" / "x.log")})
    with pytest.raises(ConfigError, match=r"log\.file: .*: is a directory"):
        _check(**{"log.file": str(tmp_path)})


def test_a_directory_we_may_not_write_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check asks the kernel (`access(2)`) whether this user may write there. Root may
    write anywhere, so the kernel's answer for another user is stood in for: the directory
    is read-only, and access says so for it alone."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access

    def access(path: Any, mode: int) -> bool:
        if str(path) == str(locked) and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    try:
        with pytest.raises(ConfigError, match="locked is not writable by this user"):
            _check(**{"log.file": str(locked / "x.log")})
        with pytest.raises(ConfigError, match="locked is not writable by this user"):
            _check(**{"rpc.listen": [f"unix:{locked}/x.sock"]})
    finally:
        locked.chmod(0o700)
