"""Tokens: what they gate, and how fast anyone may guess them."""

from __future__ import annotations

import msgpack
import pytest
from structlog.testing import capture_logs

from chimneyd.api import EngineError, ErrorCode
from chimneyd.rpc import server as server_mod
from chimneyd.rpc.auth import MAX_PEERS_TRACKED, Authenticator, Role
from tests.rpc.support import eventually, serving

TOKEN = "user-secret"
ADMIN = "admin-secret"
NO_METHOD, INVALID_PARAMS, DENIED = 1, 2, 8


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def denied(auth: Authenticator, peer: str, token: str) -> str:
    with pytest.raises(EngineError) as err:
        auth.verify(peer, token)
    assert err.value.code is ErrorCode.DENIED
    return err.value.detail


# -- the bucket, no sockets ----------------------------------------------------------------------


def test_roles() -> None:
    auth = Authenticator(TOKEN, ADMIN, per_peer=5, window_s=60)
    assert auth.required
    assert auth.verify("10.0.0.1", TOKEN) is Role.USER
    assert auth.verify("10.0.0.1", ADMIN) is Role.ADMIN
    assert denied(auth, "10.0.0.1", "nope") == "bad token"
    assert denied(auth, "10.0.0.1", "") == "bad token"
    assert not Authenticator("", ADMIN, 5, 60).required
    assert Authenticator("", "", 5, 60).verify("x", "anything") is Role.USER


def test_failures_per_peer_are_limited_then_refill() -> None:
    clock = Clock()
    auth = Authenticator(TOKEN, "", per_peer=3, window_s=30, clock=clock)
    for _ in range(3):
        assert denied(auth, "10.0.0.1", "guess") == "bad token"
    # the bucket is empty: even the right token is not looked at
    detail = denied(auth, "10.0.0.1", TOKEN)
    assert detail.startswith("too many failed auth attempts from this address"), detail
    assert auth.verify("10.0.0.2", TOKEN) is Role.USER  # another address is not affected
    clock.now += 10  # one failure's worth refills (3 per 30 s)
    assert auth.verify("10.0.0.1", TOKEN) is Role.USER
    assert denied(auth, "10.0.0.1", "guess") == "bad token"
    assert denied(auth, "10.0.0.1", "guess").startswith("too many")


def test_success_costs_nothing() -> None:
    auth = Authenticator(TOKEN, "", per_peer=2, window_s=60, clock=Clock())
    for _ in range(100):
        assert auth.verify("10.0.0.1", TOKEN) is Role.USER
    assert denied(auth, "10.0.0.1", "guess") == "bad token"


def test_peers_tracked_are_bounded() -> None:
    auth = Authenticator(TOKEN, "", per_peer=5, window_s=60, clock=Clock())
    for i in range(MAX_PEERS_TRACKED + 100):
        denied(auth, f"peer-{i}", "guess")
    assert len(auth._buckets) == MAX_PEERS_TRACKED


# -- over the wire -----------------------------------------------------------------------------


async def test_auth_required_first_then_everything_works() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        c = await s.client()
        assert await c.ok("ping") == "pong"
        for method in ("stack.info", "tcp.list", "fault.list", "no.such.method", "tcp.connect"):
            code, message = await c.fails(method)
            assert (code, message) == (DENIED, "DENIED: authenticate first (auth)"), method
        assert (await c.fails("auth", "wrong"))[0] == DENIED
        assert (await c.fails("auth"))[0] == INVALID_PARAMS  # not a guess: not counted
        assert (await c.fails("stack.info"))[0] == DENIED
        assert await c.ok("auth", TOKEN) is True
        assert (await c.ok("stack.info"))["rpc"]["auth"] is True
        assert (await c.fails("no.such.method"))[0] == NO_METHOD
        await s.another_client_pings()


async def test_a_few_wrong_tokens_close_the_connection() -> None:
    async with serving(token=TOKEN, max_auth_failures=3) as s:
        c = await s.client()
        for _ in range(2):
            assert await c.fails("auth", "guess") == (DENIED, "DENIED: bad token")
        assert await c.ok("ping") == "pong"  # two failures: still open
        msgid = c.request("auth", "guess")
        assert await c.read_until_closed() == [[1, msgid, [DENIED, "DENIED: bad token"], None]]
        await s.another_client_pings()


async def test_a_flood_of_guesses_in_one_write_is_cut_short() -> None:
    """20,000 wrong tokens pipelined: three answers, then the connection is closed; the rest
    are never checked."""
    async with serving(token=TOKEN, max_auth_failures=3, auth_failures_per_peer=1000) as s:
        c = await s.client()
        c.send_raw(b"".join(msgpack.packb([0, i, "auth", [f"guess-{i}"]]) for i in range(20_000)))
        answers = await c.read_until_closed()
        assert [a[1] for a in answers] == [0, 1, 2]
        assert all(a[2] == [DENIED, "DENIED: bad token"] for a in answers)
        await s.another_client_pings()


async def test_guesses_from_one_address_are_rate_limited_across_connections() -> None:
    async with serving(token=TOKEN, max_auth_failures=2, auth_failures_per_peer=4) as s:
        for _ in range(2):  # two connections, two guesses each: the address's 4 are spent
            c = await s.client()
            await c.fails("auth", "guess")
            await c.fails("auth", "guess")
            assert await c.read_until_closed() == []
        c = await s.client()
        code, message = await c.fails("auth", TOKEN)  # the right token, refused for now
        assert code == DENIED and "too many failed auth attempts" in message
        await s.another_client_pings()


async def test_unauthenticated_clients_are_not_counted_as_guessing_by_ping() -> None:
    async with serving(token=TOKEN, max_auth_failures=1) as s:
        c = await s.client()
        for _ in range(10):
            assert await c.ok("ping") == "pong"
        assert (await c.fails("stack.info"))[0] == DENIED  # DENIED, but not a guess
        assert await c.ok("auth", TOKEN) is True


async def test_token_over_plain_tcp_off_loopback_warns_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the server thinks 127.0.0.1 is off loopback, so nothing leaves this machine
    monkeypatch.setattr(server_mod, "is_loopback", lambda host: False)
    with capture_logs() as logs:
        async with serving(token=TOKEN):
            pass
    [warning] = [e for e in logs if e["event"] == "rpc_token_over_plain_tcp"]
    assert warning["log_level"] == "warning"
    assert warning["listen"] == "127.0.0.1:0"


async def test_loopback_with_a_token_does_not_warn() -> None:
    with capture_logs() as logs:
        async with serving(token=TOKEN):
            pass
    assert [e for e in logs if e["event"] == "rpc_token_over_plain_tcp"] == []
    assert any(e["event"] == "rpc_listening" for e in logs)


async def test_auth_failures_are_logged_without_the_token() -> None:
    async with serving(token=TOKEN) as s:
        c = await s.client()
        with capture_logs() as logs:
            await c.fails("auth", "the-guess-itself")
            await eventually(lambda: logs, "a log line")
        [entry] = [e for e in logs if e["event"] == "rpc_auth_failed"]
        assert "the-guess-itself" not in repr(entry)
        assert entry["failures"] == 1
