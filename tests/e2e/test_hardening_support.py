"""The e2e helpers check what they claim (a helper that always fails, or never does, hides
the behaviour it is used to prove)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.support import Daemon, assert_daemon_serves

TOKEN = "t0k3n-for-the-helper-test"


def test_assert_daemon_serves_with_a_token(spawn_daemon: Any) -> None:
    """It compared the error slot of the auth answer with True, so it failed on every daemon
    with a token."""
    d: Daemon = spawn_daemon(f'[rpc]\ntoken = "{TOKEN}"\n', token=TOKEN)
    assert_daemon_serves(d)


def test_assert_daemon_serves_fails_with_a_wrong_token(spawn_daemon: Any) -> None:
    d: Daemon = spawn_daemon(f'[rpc]\ntoken = "{TOKEN}"\n', token=TOKEN)
    d.token = "not-the-token"
    with pytest.raises(AssertionError):
        assert_daemon_serves(d)
    d.token = TOKEN


def test_assert_daemon_serves_without_a_token(daemon: Daemon) -> None:
    assert_daemon_serves(daemon)
