"""`chimneyctl --token T subscribe '*'` seeing only its own connections says why: the daemon has
no admin token at all (the token is accepted and checked against nothing), or the token given
is not the admin one. It told the user to "give --token ADMIN_TOKEN", which they had done."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from chimney_client.ctl import admin_hint


class _Client:
    def __init__(self, auth: bool, listed: int) -> None:
        self.auth, self.listed = auth, listed

    def stack_info(self) -> dict[str, Any]:
        return {"rpc": {"auth": self.auth}}

    def stack_stats(self) -> dict[str, Any]:
        return {"connections": 3}

    def tcp_list(self) -> list[int]:
        return list(range(self.listed))


def _hint(token: str | None, auth: bool, listed: int) -> str | None:
    s = SimpleNamespace(args=SimpleNamespace(token=token), client=_Client(auth, listed))
    return admin_hint(s)  # type: ignore[arg-type]


def test_no_token_asks_for_one() -> None:
    hint = _hint(None, True, 0)
    assert hint is not None and hint.startswith("without the admin token"), hint
    assert "give --token ADMIN_TOKEN" in hint


def test_a_token_to_a_daemon_without_an_admin_token() -> None:
    hint = _hint("ADMIN_TOKEN", False, 0)
    assert hint is not None
    assert hint.startswith("this daemon has no admin token"), hint
    assert "CHIMNEYD_ADMIN_TOKEN" in hint and "give --token" not in hint, hint


def test_a_token_that_is_not_the_admin_one() -> None:
    hint = _hint("s3cret", True, 1)
    assert hint is not None
    assert hint.startswith("the token given is not the daemon's admin token"), hint
    assert "give --token" not in hint, hint


def test_the_admin_token_gets_no_hint() -> None:
    assert _hint("ADMIN_TOKEN", True, 3) is None
