"""Who owns what: a client sees and touches only what it made; admin sees all; everything is
released when its owner leaves. First the `Ownership` rules on their own, then over the wire."""

from __future__ import annotations

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.rpc.ownership import CLOSED_REMEMBERED, Ownership
from tests.rpc.support import HOST, eventually, serving

TOKEN = "user-secret"
ADMIN = "admin-secret"
INVALID_PARAMS, NOT_FOUND, LIMIT = 2, 3, 6


# -- the rules, no sockets ---------------------------------------------------------------------


def test_a_connection_is_its_makers_only() -> None:
    own = Ownership()
    a, b, admin = own.join(), own.join(), own.join()
    admin.admin = True
    own.reserve_conn(a, 10)
    assert own.conn_made(a, 7) is True
    own.unreserve_conn(a)
    assert own.conn(a, 7) == 7
    assert own.conn(admin, 7) == 7
    with pytest.raises(EngineError) as err:
        own.conn(b, 7)
    assert err.value.code is ErrorCode.NOT_FOUND
    assert (own.sees(a, 7), own.sees(b, 7), own.sees(admin, 7)) == (True, False, True)


def test_closed_connections_are_remembered_boundedly() -> None:
    own = Ownership()
    a = own.join()
    for conn in range(1, CLOSED_REMEMBERED + 11):
        own.conn_made(a, conn)
        own.conn_closed(conn)
    assert a.conns == set()
    assert len(a.closed) == CLOSED_REMEMBERED
    assert own.conn(a, CLOSED_REMEMBERED + 10, closed_ok=True) == CLOSED_REMEMBERED + 10
    with pytest.raises(EngineError):
        own.conn(a, 1, closed_ok=True)  # the oldest was forgotten
    with pytest.raises(EngineError):
        own.conn(a, CLOSED_REMEMBERED + 10)  # closed: only its trace stays reachable
    assert own.conn_owner == {}


def test_a_connection_accepted_on_a_listener_is_seen_by_the_listener_owner_only() -> None:
    """Before `tcp.accept` takes it, a connection accepted on a client's listener is seen by
    that client (its events reach its "*"), by no other, and is asked about once."""
    o = Ownership()
    a, b = o.join(), o.join()
    o.listener_made(a, 7)
    o.listener_made(b, 8)
    asked: list[int] = []

    def listener_of(conn: int) -> int | None:
        asked.append(conn)
        return {5: 7}.get(conn)

    assert o.sees(a, 5, listener_of) and o.sees(a, 5, listener_of)
    assert not o.sees(b, 5, listener_of)
    assert not o.sees(a, 6, listener_of)  # no listener's: another client's connection
    assert not o.sees(a, 5)  # a connection subscription never asks
    assert asked == [5, 5, 6]  # once per client and connection
    o.forget_heard(a, 5)
    o.forget_heard(a, 6)
    assert a.heard == {}


def test_reservations_count_until_returned() -> None:
    own = Ownership()
    a = own.join()
    own.reserve_conn(a, 2)
    own.reserve_conn(a, 2)
    with pytest.raises(EngineError) as err:
        own.reserve_conn(a, 2)
    assert err.value.code is ErrorCode.LIMIT
    own.unreserve_conn(a)
    own.reserve_conn(a, 2, waiting=0)
    with pytest.raises(EngineError):
        own.reserve_conn(a, 3, waiting=1)  # 2 under way + 1 waiting on a listener


def test_nothing_is_adopted_by_a_client_that_left() -> None:
    own = Ownership()
    a = own.join()
    own.conn_made(a, 1)
    own.listener_made(a, 5)
    departure = own.leave(a)
    assert departure.conns == {1} and departure.listeners == {5}
    assert own.conn_made(a, 2) is False
    assert own.listener_made(a, 6) is False
    assert own.conn_owner == {}


def test_leaving_clears_faults_on_own_connections_and_orphans_layer_faults() -> None:
    own = Ownership()
    a, b = own.join(), own.join()
    own.conn_made(a, 1)
    own.conn_made(a, 2)
    own.conn_closed(2)
    own.add_fault(a, 10, conn=1)
    own.add_fault(a, 11, conn=2)  # on a connection it already closed
    own.add_fault(a, 12, conn=None)  # on a layer
    assert not own.may_touch_fault(b, 12)
    departure = own.leave(a)
    assert departure.faults_to_clear == {10, 11}
    assert own.fault_owner[12] is None
    assert own.may_touch_fault(b, 12)


# -- over the wire -----------------------------------------------------------------------------


async def test_clients_see_only_their_own_connections() -> None:
    async with serving() as s:
        a = await s.client()
        b = await s.client()
        conn = await a.ok("tcp.connect", HOST, 9000)
        lid = await a.ok("tcp.listen", HOST, 0)
        assert await b.ok("tcp.list") == []
        for method, params in [
            ("tcp.info", [conn]),
            ("tcp.send", [conn, b"x"]),
            ("tcp.recv", [conn, 1, 0]),
            ("tcp.offload", [conn]),
            ("tcp.upload", [conn]),
            ("tcp.disconnect", [conn]),
            ("tcp.close", [conn]),
            ("tcp.query", [conn]),
            ("tcp.update", [conn, {"RcvIndicationSize": 512}]),
            ("trace.get", [conn]),
            ("events.subscribe", [conn]),
            ("fault.inject", [{"kind": "peer_reset", "conn": conn}]),
            ("tcp.listener_info", [lid]),
            ("tcp.accept", [lid, 0]),
        ]:
            code, message = await b.fails(method, *params)
            assert code == NOT_FOUND, (method, message)
            assert message in (f"NOT_FOUND: no connection {conn}", f"NOT_FOUND: no listener {lid}")
        assert s.engine.conns[conn].state == "offloaded"  # untouched
        touched = [call for call in s.engine.calls if call[0] not in ("connect", "listen")]
        assert touched == []
        assert s.engine.faults == {}
        assert await a.ok("tcp.list") == [conn]


async def test_star_hears_a_connection_accepted_on_its_listener_before_the_accept() -> None:
    """A listener with offload offloads a connection before `tcp.accept` takes it: its owner's
    "*" hears that `offloaded` (else it hears `uploaded` of a connection it never heard was
    offloaded); another client's "*", listening elsewhere, hears nothing of it."""
    async with serving(token=TOKEN) as s:
        a = await s.client(TOKEN)
        b = await s.client(TOKEN)
        for c in (a, b):
            assert await c.ok("events.subscribe", "*") is True
        await b.ok("tcp.listen", HOST, 0)
        lid = await a.ok("tcp.listen", HOST, 0)
        conn = s.engine.incoming(lid)
        s.engine.raise_event(conn, "offloaded", {"path": ["tcpip", "nic0"]})
        assert await a.read() == [2, "tcp.event", [conn, "offloaded", {"path": ["tcpip", "nic0"]}]]
        assert await a.ok("tcp.accept", lid, 1000) == conn
        assert await a.ok("tcp.close", conn) is True
        s.engine.raise_event(conn, "closed")
        assert await a.read() == [2, "tcp.event", [conn, "closed", {}]]
        assert await b.ok("ping") == "pong"  # the events have reached b too, if they were to
        assert b.notifications == []
        [held] = [x for x in s.sessions() if x.holdings.listeners == {lid}]
        assert held.holdings.heard == {}


async def test_faults_belong_to_their_maker() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        b = await s.client(TOKEN)
        conn = await a.ok("tcp.connect", HOST, 9000)
        fid = await a.ok("fault.inject", {"kind": "stall_peer", "conn": conn, "ms": 60000})
        layer_fault = await a.ok("fault.inject", {"kind": "delay", "layer": "nic0", "ms": 5})
        assert (await b.fails("fault.clear", fid))[0] == NOT_FOUND
        assert await b.ok("fault.list") == []
        assert await b.ok("fault.clear", "*") is True  # clears nothing of a's
        assert sorted(s.engine.faults) == [fid, layer_fault]
        assert sorted(f["id"] for f in await a.ok("fault.list")) == [fid, layer_fault]
        admin = await s.client(ADMIN)
        assert sorted(f["id"] for f in await admin.ok("fault.list")) == [fid, layer_fault]
        assert await a.ok("fault.clear", fid) is True
        assert [f["id"] for f in await a.ok("fault.list")] == [layer_fault]
        # a leaves: the fault on a layer outlives it and becomes anyone's to clear
        await a.close()
        await eventually(lambda: conn in s.engine.closed, "a's connection closed")
        assert [f["id"] for f in await b.ok("fault.list")] == [layer_fault]
        assert await b.ok("fault.clear", layer_fault) is True
        assert s.engine.faults == {}


async def test_admin_clears_every_fault() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        conn = await a.ok("tcp.connect", HOST, 9000)
        await a.ok("fault.inject", {"kind": "stall_peer", "conn": conn, "ms": 60000})
        await a.ok("fault.inject", {"kind": "delay", "layer": "nic0", "ms": 5})
        admin = await s.client(ADMIN)
        assert await admin.ok("fault.clear", "*") is True
        assert s.engine.faults == {}
        assert await a.ok("fault.list") == []
        assert s.server.ownership.fault_owner == {}


async def test_departed_client_faults_on_its_connections_are_cleared() -> None:
    async with serving() as s:
        a = await s.client()
        conn = await a.ok("tcp.connect", HOST, 9000)
        fid = await a.ok("fault.inject", {"kind": "stall_peer", "conn": conn, "ms": 60000})
        assert list(s.engine.faults) == [fid]
        await a.close()
        await eventually(lambda: not s.engine.faults, "the fault cleared")
        assert s.server.ownership.fault_owner == {}


async def test_admin_sees_and_closes_every_connection() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        conn = await a.ok("tcp.connect", HOST, 9000)
        admin = await s.client(ADMIN)
        assert await admin.ok("tcp.list") == [conn]
        assert (await admin.ok("tcp.info", conn))["state"] == "offloaded"
        assert await admin.ok("tcp.close", conn) is True
        assert await a.ok("tcp.list") == []
        # the owner still reads the trace of what the admin closed
        assert await a.ok("trace.get", conn) == []


async def test_admin_token_alone_does_not_lock_the_port() -> None:
    """`admin_token` without `token`: anyone may use the port; the admin token lifts ownership."""
    async with serving(admin_token=ADMIN) as s:
        a = await s.client()
        conn = await a.ok("tcp.connect", HOST, 9000)
        b = await s.client()
        assert await b.ok("tcp.list") == []
        assert (await b.fails("auth", "guess"))[0] == 8
        assert await b.ok("auth", ADMIN) is True
        assert await b.ok("tcp.list") == [conn]


async def test_admin_hears_events_of_every_connection() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        admin = await s.client(ADMIN)
        assert await admin.ok("events.subscribe", "*") is True
        conn = await a.ok("tcp.connect", HOST, 9000)
        s.engine.raise_event(conn, "TcpIndicateAbort", {"path": "host"})
        assert await admin.read() == [2, "tcp.event", [conn, "TcpIndicateAbort", {"path": "host"}]]


@pytest.mark.parametrize("how", ["owner-closes", "owner-leaves"])
async def test_a_subscription_to_a_connection_ends_when_anyone_closes_it(how: str) -> None:
    """An admin's `events.subscribe` to another client's connection leaves the admin's
    holdings once the connection is closed, whoever closes it: the admin then holds nothing
    again, so its idle timeout applies."""
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        conn = await a.ok("tcp.connect", HOST, 9000)
        admin = await s.client(ADMIN)
        assert await admin.ok("events.subscribe", conn) is True
        [held] = [x for x in s.sessions() if x.holdings.admin]
        assert not held.holdings.holds_nothing()
        if how == "owner-closes":
            assert await a.ok("tcp.close", conn) is True
        else:
            await a.close()
        await eventually(lambda: conn in s.engine.closed, "the connection closed")
        assert await admin.ok("ping") == "pong"  # the close's event has reached the admin
        assert [n[2][:2] for n in admin.notifications] == [[conn, "closed"]]
        assert held.holdings.subscriptions == {}
        assert held.holdings.holds_nothing()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "target_failure", "layer": "nic0", "conn": 999},
        {"kind": "delay", "layer": "nic0", "ms": 5, "conn": 1},
    ],
    ids=["unknown-conn", "own-conn"],
)
async def test_a_conn_key_on_a_fault_kind_without_one_is_invalid_params(
    spec: dict[str, object],
) -> None:
    """A `conn` key on a fault kind that takes none is a wrong key (INVALID_PARAMS), whether or
    not it names a connection of the caller's, not a missing connection (NOT_FOUND)."""
    async with serving() as s:
        c = await s.client()
        assert await c.ok("tcp.connect", HOST, 9000) == 1
        code, message = await c.fails("fault.inject", spec)
        assert code == INVALID_PARAMS, message
        assert "has no key 'conn'" in message
        # a kind that takes one: someone else's (or no) connection is still NOT_FOUND
        missing = {"kind": "peer_reset", "conn": 999}
        assert (await c.fails("fault.inject", missing))[0] == NOT_FOUND
        assert s.engine.faults == {}
