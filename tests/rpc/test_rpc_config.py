"""The `[rpc]` keys: defaults, and bad values refused with the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from chimneyd.config import ConfigError, RpcConfig, load_config, unix_mode


def load(tmp_path: Path, text: str) -> RpcConfig:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path).rpc


def test_defaults() -> None:
    rpc = load_config().rpc
    assert (rpc.auth_timeout_s, rpc.idle_timeout_s, rpc.frame_timeout_s) == (10.0, 300.0, 30.0)
    assert rpc.max_buffered_frame_bytes == 128 * 1024 * 1024
    assert (rpc.max_auth_failures, rpc.auth_failures_per_peer) == (3, 20)
    assert rpc.auth_failure_window_s == 60.0
    assert rpc.max_listeners_per_client == 1024
    assert unix_mode(rpc.unix_socket_mode) == 0o600


def test_keys_are_read(tmp_path: Path) -> None:
    rpc = load(
        tmp_path,
        '[rpc]\nidle_timeout_s = 5\nmax_auth_failures = 1\nunix_socket_mode = "660"\n'
        "max_message_bytes = 1024\nmax_buffered_frame_bytes = 1024\n",
    )
    assert rpc.idle_timeout_s == 5.0 and rpc.max_auth_failures == 1
    assert unix_mode(rpc.unix_socket_mode) == 0o660


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('unix_socket_mode = "0999"', "rpc.unix_socket_mode", "octal mode"),
        ('unix_socket_mode = "1777"', "rpc.unix_socket_mode", "octal mode"),
        ('unix_socket_mode = "rw"', "rpc.unix_socket_mode", "octal mode"),
        ("unix_socket_mode = 384", "rpc.unix_socket_mode", "must be a string"),
        ("max_buffered_frame_bytes = 1000", "rpc.max_buffered_frame_bytes", "at least"),
        ("frame_timeout_s = 0", "rpc.frame_timeout_s", "positive number"),
        ("max_auth_failures = 0", "rpc.max_auth_failures", "positive integer"),
        ("auth_failure_window_s = -1", "rpc.auth_failure_window_s", "positive number"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"[rpc]\n{text}\n")
    assert str(err.value).startswith(key), err.value
    assert reason in str(err.value), err.value
