"""The RPC server over a real loopback socket, with the in-process FakeEngine.

Every test that feeds the server something bad ends by checking that another client still
gets ping → "pong".
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from chimneyd.api import ErrorCode
from chimneyd.config import ConfigError, RpcConfig
from chimneyd.rpc import server as server_mod
from chimneyd.rpc.server import RpcServer
from tests.rpc.fake_engine import REFUSED_PORT, FakeEngine, as_api
from tests.rpc.support import HOST, RawClient, eventually, serving

TOKEN = "user-secret"
ADMIN = "admin-secret"

NO_METHOD, INVALID_PARAMS, NOT_FOUND = 1, 2, 3
LIMIT, TIMEOUT, DENIED, CONNECT_FAILED, INTERNAL = 6, 7, 8, 9, 10


def test_fake_engine_matches_the_protocol() -> None:
    assert as_api(FakeEngine()) is not None  # mypy checks the assignment inside


# -- basics ------------------------------------------------------------------------------------


async def test_ping_info_stats() -> None:
    async with serving(max_in_flight=7) as s:
        c = await s.client()
        assert await c.ok("ping") == "pong"
        info = await c.ok("stack.info")
        assert info["contract"] == 1
        assert info["rpc"]["listen"] == [f"{s.address[0]}:{s.address[1]}"]
        assert info["rpc"]["limits"]["max_in_flight"] == 7
        assert info["rpc"]["limits"]["max_message_bytes"] == 8 * 1024 * 1024
        stats = await c.ok("stack.stats")
        assert stats["rpc"] == {"clients": 1, "in_flight": 0}
        assert stats["connections"] == 0


async def test_method_name_as_bin() -> None:
    async with serving() as s:
        c = await s.client()
        assert await c.ok(b"ping") == "pong"  # type: ignore[arg-type]
        msgid = c.request(b"stack.info")
        msg = await c.read()
        assert msg[1] == msgid and msg[3]["contract"] == 1


async def test_error_messages_start_with_the_symbol() -> None:
    async with serving() as s:
        c = await s.client()
        code, message = await c.fails("no.such.method")
        assert (code, message.split(":")[0]) == (NO_METHOD, "NO_METHOD")
        code, message = await c.fails("tcp.info", 99)
        assert (code, message) == (NOT_FOUND, "NOT_FOUND: no connection 99")
        code, message = await c.fails("tcp.connect", HOST, REFUSED_PORT)
        assert code == CONNECT_FAILED and message.startswith("CONNECT_FAILED: ")


async def test_unknown_notification_is_ignored() -> None:
    async with serving() as s:
        c = await s.client()
        c.send_raw(msgpack.packb([2, "whatever", [1, 2]]))
        c.send_raw(msgpack.packb([2, b"tcp.event", []]))
        msgid = c.request("ping")
        assert await c.read() == [1, msgid, None, "pong"]  # nothing else came first


async def test_internal_error_carries_a_logged_trace_id() -> None:
    async with serving() as s:
        s.engine.explode = True
        c = await s.client()
        with capture_logs() as logs:
            code, message = await c.fails("stack.info")
        assert code == INTERNAL and message.startswith("INTERNAL: ")
        [entry] = [e for e in logs if e["event"] == "rpc_internal_error"]
        assert entry["trace_id"] in message
        assert entry["method"] == "stack.info"
        await s.another_client_pings()


async def test_connect_send_recv_and_ms_to_seconds() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000, {"offload": False, "target": "nic0"})
        assert s.engine.last_call() == ("connect", HOST, 9000, False, "nic0")
        assert await c.ok("tcp.send", conn, b"\x00hello") == 6
        assert await c.ok("tcp.recv", conn, 3, 1500) == b"\x00he"
        assert s.engine.last_call() == ("recv", conn, 3, 1.5)
        assert await c.ok("tcp.recv", conn, 100) == b"llo"
        assert s.engine.last_call() == ("recv", conn, 100, None)
        code, _ = await c.fails("tcp.recv", conn, 10, 0)
        assert code == TIMEOUT
        assert await c.ok("tcp.list") == [conn]
        assert (await c.ok("tcp.info", conn))["state"] == "host"
        assert await c.ok("tcp.offload", conn) == {"state": "offloaded", "path": ["tcpip", "nic0"]}
        assert await c.ok("tcp.upload", conn) == {"state": "host"}
        assert await c.ok("tcp.disconnect", conn) == "NDIS_STATUS_SUCCESS"
        assert s.engine.last_call() == ("disconnect", conn, False)
        assert await c.ok("tcp.close", conn) is True
        assert await c.ok("tcp.list") == []
        # a closed connection's trace stays readable by its owner
        assert await c.ok("trace.get", conn) == []
        code, _ = await c.fails("tcp.info", conn)
        assert code == NOT_FOUND


async def test_raw_mode_str_payload_is_sent_as_its_bytes() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        payload = b"\xff\xfe\x80 not utf-8 \xc3"
        c.msgid += 1
        frame = b"\x94\x00" + bytes([c.msgid]) + b"\xa8tcp.send\x92" + bytes([conn])
        frame += bytes([0xA0 | len(payload)]) + payload
        c.send_raw(frame)
        assert (await c.response(c.msgid))[2:] == [None, len(payload)]
        assert s.engine.last_call() == ("send", conn, payload)
        assert await c.ok("tcp.recv", conn, 100) == payload


async def test_listen_accept_and_timeout() -> None:
    async with serving() as s:
        c = await s.client()
        lid = await c.ok("tcp.listen", HOST, 0)
        info = await c.ok("tcp.listener_info", lid)
        assert info["host"] == HOST and info["pending"] == 0
        code, _ = await c.fails("tcp.accept", lid, 0)
        assert code == TIMEOUT
        incoming = s.engine.incoming(lid)
        assert await c.ok("tcp.accept", lid, 2500) == incoming
        assert s.engine.last_call() == ("accept", lid, 2.5)
        assert await c.ok("tcp.list") == [incoming]


# -- out of order --------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_out_of_order() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        slow = c.request("tcp.recv", conn, 10)  # waits: nothing was sent yet
        fast = c.request("ping")
        first = await c.read()
        assert first == [1, fast, None, "pong"]  # the later request came back first
        send = c.request("tcp.send", conn, b"data")
        answers = {}
        for _ in range(2):
            msg = await c.read()
            answers[msg[1]] = msg
        assert answers[slow] == [1, slow, None, b"data"]
        assert answers[send] == [1, send, None, 4]


async def test_many_pipelined_requests_all_answered() -> None:
    async with serving() as s:
        c = await s.client()
        ids = [c.request("ping") for _ in range(2000)]
        got = [await c.read() for _ in ids]
        assert sorted(m[1] for m in got) == ids
        assert all(m[2:] == [None, "pong"] for m in got)


# -- limits ----------------------------------------------------------------------------------------


async def test_in_flight_limit_gives_limit_and_cheap_methods_still_answer() -> None:
    async with serving(max_in_flight=2) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = [c.request("tcp.recv", conn, 10) for _ in range(2)]
        code, message = await c.fails("tcp.recv", conn, 10)
        assert code == LIMIT and "2 requests in flight" in message
        assert await c.ok("ping") == "pong"  # answered at once, not counted
        stats = await c.ok("stack.stats")
        assert stats["rpc"]["in_flight"] == 2
        await c.close()  # the two waiting recvs are cancelled with the client
        await eventually(lambda: conn in s.engine.closed, "its connection closed")
        await s.another_client_pings()
        assert len(waiting) == 2


async def test_in_flight_limit_exact() -> None:
    async with serving(max_in_flight=3) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        held = [c.request("tcp.recv", conn, 1) for _ in range(3)]
        code, _ = await c.fails("tcp.send", conn, b"xyz")  # a 4th async request
        assert code == LIMIT
        other = await s.client()
        assert await other.ok("ping") == "pong"
        assert await other.ok("stack.stats") is not None  # another client has its own budget
        assert len(held) == 3


async def test_connections_per_client_limit() -> None:
    async with serving(max_connections_per_client=2) as s:
        c = await s.client()
        a = await c.ok("tcp.connect", HOST, 9000)
        await c.ok("tcp.connect", HOST, 9000)
        code, message = await c.fails("tcp.connect", HOST, 9000)
        assert code == LIMIT and "2 connections" in message
        other = await s.client()
        assert isinstance(await other.ok("tcp.connect", HOST, 9000), int)  # per client
        await c.ok("tcp.close", a)
        assert isinstance(await c.ok("tcp.connect", HOST, 9000), int)


async def test_connections_being_made_count_against_the_limit() -> None:
    engine = FakeEngine()
    engine.connect_gate = asyncio.Event()
    async with serving(engine, max_connections_per_client=2) as s:
        c = await s.client()
        first = [c.request("tcp.connect", HOST, 9000) for _ in range(2)]
        code, _ = await c.fails("tcp.connect", HOST, 9000)  # two are still being made
        assert code == LIMIT
        engine.connect_gate.set()
        for msgid in first:
            msg = await c.response(msgid)
            assert msg[2] is None
        assert len(await c.ok("tcp.list")) == 2


async def test_message_size_limit_closes_only_that_client() -> None:
    async with serving(max_message_bytes=64 * 1024) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("tcp.send", conn, b"x" * 60_000) == 60_000  # under the limit
        c.send_raw(msgpack.packb([0, 99, "tcp.send", [conn, b"x" * 100_000]]))
        assert await c.read_until_closed() == []
        await eventually(lambda: conn in s.engine.closed, "the client's connection closed")
        await s.another_client_pings()


# -- ownership and auth ------------------------------------------------------------------------------


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
            ("trace.get", [conn]),
            ("events.subscribe", [conn]),
            ("fault.inject", [{"kind": "peer_reset", "conn": conn}]),
            ("tcp.listener_info", [lid]),
            ("tcp.accept", [lid, 0]),
        ]:
            code, message = await b.fails(method, *params)
            assert code == NOT_FOUND, (method, message)
        assert s.engine.conns[conn].state == "offloaded"  # untouched
        assert ("send", conn, b"x") not in s.engine.calls
        assert await a.ok("tcp.list") == [conn]


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
        assert sorted(f["id"] for f in await a.ok("fault.list")) == [fid, layer_fault]
        admin = await s.client(ADMIN)
        assert len(await admin.ok("fault.list")) == 2
        assert await a.ok("fault.clear", fid) is True
        assert [f["id"] for f in await a.ok("fault.list")] == [layer_fault]
        # a leaves: the fault on a layer outlives it and becomes anyone's to clear
        await a.close()
        await eventually(lambda: conn in s.engine.closed, "a's connection closed")
        assert [f["id"] for f in await b.ok("fault.list")] == [layer_fault]
        assert await b.ok("fault.clear", layer_fault) is True
        assert s.engine.faults == {}


async def test_departed_client_faults_on_its_connections_are_cleared() -> None:
    async with serving() as s:
        a = await s.client()
        conn = await a.ok("tcp.connect", HOST, 9000)
        await a.ok("fault.inject", {"kind": "stall_peer", "conn": conn, "ms": 60000})
        await a.close()
        await eventually(lambda: not s.engine.faults, "the fault cleared")


async def test_a_client_leaving_asks_the_engine_for_its_idle_trim() -> None:
    async with serving() as s:
        assert s.engine.lean_holders == [s.server]  # its owner map is trimmed with the engine's
        a = await s.client()
        assert await a.ok("ping") == "pong"
        await a.close()
        await eventually(lambda: s.engine.give_backs == 1, "the engine asked to give back")


async def test_auth_required_first_then_everything_works() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        c = await s.client()
        assert await c.ok("ping") == "pong"
        for method in ("stack.info", "tcp.list", "fault.list", "no.such.method", "tcp.connect"):
            code, message = await c.fails(method)
            assert code == DENIED and message.startswith("DENIED: "), method
        assert (await c.fails("auth", "wrong"))[0] == DENIED
        assert (await c.fails("auth", ""))[0] == DENIED
        assert (await c.fails("auth"))[0] == INVALID_PARAMS
        assert (await c.fails("stack.info"))[0] == DENIED
        assert await c.ok("auth", TOKEN) is True
        assert (await c.ok("stack.info"))["rpc"]["auth"] is True
        assert (await c.fails("no.such.method"))[0] == NO_METHOD
        await s.another_client_pings()


async def test_admin_sees_and_closes_every_connection() -> None:
    async with serving(token=TOKEN, admin_token=ADMIN) as s:
        a = await s.client(TOKEN)
        conn = await a.ok("tcp.connect", HOST, 9000)
        admin = await s.client(ADMIN)
        assert await admin.ok("tcp.list") == [conn]
        assert (await admin.ok("tcp.info", conn))["state"] == "offloaded"
        assert await admin.ok("tcp.close", conn) is True
        assert await a.ok("tcp.list") == []


async def test_admin_token_alone_does_not_lock_the_port() -> None:
    """`admin_token` without `token`: anyone may use the port; the admin token lifts ownership."""
    async with serving(admin_token=ADMIN) as s:
        a = await s.client()
        conn = await a.ok("tcp.connect", HOST, 9000)
        b = await s.client()
        assert await b.ok("tcp.list") == []
        assert (await b.fails("auth", "guess"))[0] == DENIED
        assert await b.ok("auth", ADMIN) is True
        assert await b.ok("tcp.list") == [conn]


async def test_non_loopback_listen_refused_without_token() -> None:
    server = RpcServer(FakeEngine(), RpcConfig(listen=("0.0.0.0:0",)))
    with pytest.raises(ConfigError, match=r"rpc\.listen.*token"):
        await server.start()
    assert server.servers == []


# -- a client that goes away -----------------------------------------------------------------------


async def test_disconnect_closes_connections_listeners_and_subscriptions() -> None:
    async with serving() as s:
        a = await s.client()
        conns = [await a.ok("tcp.connect", HOST, 9000) for _ in range(3)]
        lid = await a.ok("tcp.listen", HOST, 0)
        accepted = s.engine.incoming(lid)
        assert await a.ok("tcp.accept", lid) == accepted
        assert await a.ok("events.subscribe", "*") is True
        assert await a.ok("events.subscribe", conns[0]) is True
        blocked = a.request("tcp.recv", conns[1], 10)  # in flight when the client leaves
        b = await s.client()
        kept = await b.ok("tcp.connect", HOST, 9000)
        assert s.engine.subscriber_count() == 2
        await a.close()
        await eventually(
            lambda: set(s.engine.closed) == {*conns, accepted}, "a's connections closed"
        )
        await eventually(lambda: lid in s.engine.closed_listeners, "a's listener closed")
        assert s.engine.subscriber_count() == 0
        assert kept in s.engine.conns
        assert await b.ok("tcp.list") == [kept]
        assert blocked
        await s.another_client_pings()


async def test_connection_made_after_its_client_left_is_closed() -> None:
    engine = FakeEngine()
    engine.connect_gate = asyncio.Event()
    async with serving(engine) as s:
        a = await s.client()
        a.request("tcp.connect", HOST, 9000)
        await eventually(lambda: any(c[0] == "connect" for c in engine.calls), "connect began")
        await a.close()
        await eventually(lambda: not s.server.sessions, "the session ended")
        engine.connect_gate.set()
        await eventually(lambda: engine.closed == [1], "the orphan connection closed")
        assert engine.conns == {}


# -- events ----------------------------------------------------------------------------------------


async def test_subscription_notifications_only_for_own_connections() -> None:
    async with serving() as s:
        a = await s.client()
        b = await s.client()
        conn_a = await a.ok("tcp.connect", HOST, 9000)
        conn_b = await b.ok("tcp.connect", HOST, 9000)
        assert await a.ok("events.subscribe", "*") is True
        assert await b.ok("events.subscribe", b"*") is True
        assert await a.ok("tcp.upload", conn_a) == {"state": "host"}
        # the event went out before the response to the call that raised it
        assert a.notifications == [
            [2, "tcp.event", [conn_a, "uploaded", {"reason": "UploadRequested"}]]
        ]
        s.engine.raise_event(conn_a, "TcpIndicateDisconnect", {"bytes": 0})
        msgid = b.request("ping")
        assert await b.read() == [1, msgid, None, "pong"]  # no event of a's came first
        msgid = a.request("ping")
        seen = [await a.read() for _ in range(2)]
        assert seen == [
            [2, "tcp.event", [conn_a, "TcpIndicateDisconnect", {"bytes": 0}]],
            [1, msgid, None, "pong"],
        ]
        await b.ok("tcp.close", conn_b)
        assert b.notifications == [[2, "tcp.event", [conn_b, "closed", {}]]]


async def test_subscribe_to_one_connection() -> None:
    async with serving() as s:
        c = await s.client()
        one = await c.ok("tcp.connect", HOST, 9000)
        two = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("events.subscribe", one) is True
        assert await c.ok("events.subscribe", one) is True  # twice is once
        s.engine.raise_event(two, "TcpIndicateAbort")
        s.engine.raise_event(one, "TcpIndicateAbort")
        msg = await c.read()
        assert msg == [2, "tcp.event", [one, "TcpIndicateAbort", {}]]
        assert (await c.fails("events.subscribe", 12345))[0] == NOT_FOUND


# -- bad input (issue 3, item 3) ------------------------------------------------------------------

BAD_FRAMES: list[tuple[str, bytes, list[Any]]] = [
    ("not msgpack", b"\xc1", []),
    ("not msgpack after a good frame", msgpack.packb([0, 1, "tcp.list", []]) + b"\xc1", []),
    ("a map", msgpack.packb({"a": 1}), []),
    ("an int", msgpack.packb(42), []),
    ("empty array", msgpack.packb([]), []),
    ("short request", msgpack.packb([0, 1, "ping"]), []),
    ("long request", msgpack.packb([0, 1, "ping", [], 5]), []),
    ("a response", msgpack.packb([1, 1, None, "pong"]), []),
    ("type false", msgpack.packb([False, 1, "ping", []]), []),
    ("type 0.0", msgpack.packb([0.0, 1, "ping", []]), []),
    ("msgid str", msgpack.packb([0, "1", "ping", []]), []),
    ("msgid negative", msgpack.packb([0, -1, "ping", []]), []),
    ("msgid too big", msgpack.packb([0, 1 << 32, "ping", []]), []),
    ("msgid float", msgpack.packb([0, 1.0, "ping", []]), []),
    ("msgid nil", msgpack.packb([0, None, "ping", []]), []),
    ("method int", msgpack.packb([0, 5, 7, []]), [[1, 5, [INVALID_PARAMS, "x"], None]]),
    ("params map", msgpack.packb([0, 6, "ping", {}]), [[1, 6, [INVALID_PARAMS, "x"], None]]),
    ("deep nesting", b"\x91" * 100_000, []),
]


@pytest.mark.parametrize(
    "frame,answers", [b[1:] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES]
)
async def test_bad_frame_closes_only_that_client(frame: bytes, answers: list[Any]) -> None:
    async with serving() as s:
        bystander = await s.client()
        conn = await bystander.ok("tcp.connect", HOST, 9000)
        c = await s.client()
        c.send_raw(frame)
        got = await c.read_until_closed()
        got = [m for m in got if m[1] != 1]  # a good request before the garbage may be answered
        assert [[m[0], m[1], m[2][0] if m[2] else None, m[3]] for m in got] == [
            [a[0], a[1], a[2][0], a[3]] for a in answers
        ]
        for m in got:
            assert m[2][1].startswith("INVALID_PARAMS: ")
        assert await bystander.ok("tcp.info", conn) is not None
        await s.another_client_pings()


async def test_method_name_of_one_megabyte() -> None:
    async with serving() as s:
        c = await s.client()
        code, message = await c.fails("m" * (1 << 20))
        assert code == NO_METHOD and len(message) < 200
        code, message = await c.fails(b"\xff" * (1 << 20))  # type: ignore[arg-type]
        assert code == NO_METHOD
        assert await c.ok("ping") == "pong"  # the same client goes on
        await s.another_client_pings()


WRONG_PARAMS: list[tuple[str, list[Any]]] = [
    ("ping", [1]),
    ("auth", []),
    ("auth", [1]),
    ("stack.info", [None]),
    ("stack.stats", [1, 2]),
    ("tcp.connect", []),
    ("tcp.connect", [HOST]),
    ("tcp.connect", [1, 2]),
    ("tcp.connect", [HOST, "80"]),
    ("tcp.connect", [HOST, 0]),
    ("tcp.connect", [HOST, 65536]),
    ("tcp.connect", [HOST, True]),
    ("tcp.connect", [HOST, 80, "opts"]),
    ("tcp.connect", [HOST, 80, {"offload": "yes"}]),
    ("tcp.connect", [HOST, 80, {"bogus": 1}]),
    ("tcp.connect", ["", 80]),
    ("tcp.connect", [HOST, 80, {}, 4]),
    ("tcp.listen", [HOST, -1]),
    ("tcp.listen", [None, 0]),
    ("tcp.listener_info", ["1"]),
    ("tcp.listener_info", [0]),
    ("tcp.accept", [1, "soon"]),
    ("tcp.accept", [1, -5]),
    ("tcp.offload", []),
    ("tcp.offload", [1.5]),
    ("tcp.upload", [-1]),
    ("tcp.send", [1]),
    ("tcp.send", [1, 5]),
    ("tcp.send", [True, b"x"]),
    ("tcp.recv", [1]),
    ("tcp.recv", [1, 0]),
    ("tcp.recv", [1, 10, "x"]),
    ("tcp.recv", [1, 1 << 40]),
    ("tcp.disconnect", [1, "yes"]),
    ("tcp.close", [None]),
    ("tcp.info", ["x"]),
    ("tcp.list", [1]),
    ("trace.get", [1, -1]),
    ("events.subscribe", []),
    ("events.subscribe", [None]),
    ("events.subscribe", ["all"]),
    ("fault.inject", []),
    ("fault.inject", ["peer_reset"]),
    ("fault.inject", [{}]),
    ("fault.inject", [{"kind": 5}]),
    ("fault.clear", []),
    ("fault.clear", [0]),
    ("fault.clear", ["x"]),
    ("fault.list", [1]),
]


async def test_wrong_arity_and_types_are_invalid_params() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("tcp.listen", HOST, 0) == 1  # listener 1 exists and is c's
        for method, params in WRONG_PARAMS:
            params = [
                conn if type(p) is int and p == 1 and method.startswith("tcp.") else p
                for p in params
            ]
            code, message = await c.fails(method, *params)
            assert code == INVALID_PARAMS, (method, params, message)
            assert message.startswith("INVALID_PARAMS: "), message
        assert await c.ok("ping") == "pong"
        await s.another_client_pings()


async def test_invalid_params_message_names_the_param() -> None:
    async with serving() as s:
        c = await s.client()
        assert "port" in (await c.fails("tcp.connect", HOST, "x"))[1]
        conn = await c.ok("tcp.connect", HOST, 9000)
        lid = await c.ok("tcp.listen", HOST, 0)
        assert "max_bytes" in (await c.fails("tcp.recv", conn, 0))[1]
        assert "timeout_ms" in (await c.fails("tcp.accept", lid, -1))[1]
        assert "conn_id" in (await c.fails("tcp.info", "x"))[1]
        assert "takes 0 params" in (await c.fails("ping", 1))[1]


async def test_flood_without_reading_pauses_that_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that pipelines requests and never reads: the server stops reading it once its
    unread responses pass the mark, so its memory stays bounded; then every request is answered
    once the client reads."""
    monkeypatch.setattr(server_mod, "WRITE_HIGH", 64 * 1024)
    monkeypatch.setattr(server_mod, "WRITE_LOW", 16 * 1024)
    async with serving() as s:
        flood = await s.client()
        count = 300_000  # ~3.6 MB of requests, far more responses than the mark
        flood.send_raw(b"".join(msgpack.packb([0, i, "ping", []]) for i in range(count)))
        await eventually(
            lambda: any(
                x.transport is not None and not x.transport.is_reading() for x in s.sessions()
            ),
            "the flooding client paused",
        )
        [session] = [x for x in s.sessions() if x.transport and not x.transport.is_reading()]
        assert session.transport is not None
        # bounded: the mark plus what one read of requests can produce
        assert session.transport.get_write_buffer_size() < 2 * 1024 * 1024
        await s.another_client_pings()
        answered = 0
        async with asyncio.timeout(60):
            while answered < count:
                msg = await flood.read()
                assert msg == [1, answered, None, "pong"]
                answered += 1
        await s.another_client_pings()


async def test_notifications_to_a_client_that_never_reads_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events keep coming while the client reads nothing: past the hard bound it is dropped."""
    monkeypatch.setattr(server_mod, "HARD_WRITE_FLOOR", 256 * 1024)
    async with serving(max_message_bytes=16 * 1024) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("events.subscribe", "*") is True
        [session] = s.sessions()
        big = {"pad": "x" * 4096}
        with capture_logs() as logs:
            for _ in range(100_000):
                s.engine.raise_event(conn, "TcpIndicateSendBacklogChange", big)
                await asyncio.sleep(0)
                if session.closing:
                    break
        assert session.closing
        assert any(e["event"] == "rpc_client_not_reading" for e in logs)
        await eventually(lambda: conn in s.engine.closed, "its connection closed")
        await s.another_client_pings()


# -- shutdown ---------------------------------------------------------------------------------------


async def test_drain_answers_in_flight_requests_and_closes_clients() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = c.request("tcp.recv", conn, 10)
        quick = await s.client()
        await quick.ok("ping")
        await s.server.stop_accepting()
        cancelled = await s.server.drain(0.05)
        assert cancelled == 1
        msgs = await c.read_until_closed()
        assert [m[1] for m in msgs] == [waiting]
        assert msgs[0][2][0] == TIMEOUT and msgs[0][2][1].startswith("TIMEOUT: ")
        with pytest.raises(OSError):
            await RawClient.connect(s.address)


async def test_unix_socket_listener(tmp_path: Any) -> None:
    path = tmp_path / "rpc.sock"
    path.write_text("not a socket")  # never deleted to make room
    server = RpcServer(FakeEngine(), RpcConfig(listen=(f"unix:{path}",)))
    with pytest.raises(OSError):
        await server.start()
    assert path.read_text() == "not a socket"
    path.unlink()
    await server.start()
    try:
        assert server.addresses == [f"unix:{path}"]
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(msgpack.packb([0, 1, "ping", []]))
        unpacker = msgpack.Unpacker(raw=False)
        async with asyncio.timeout(10):
            while True:
                unpacker.feed(await reader.read(100))
                msgs = list(unpacker)
                if msgs:
                    break
        assert msgs == [[1, 1, None, "pong"]]
        writer.close()
    finally:
        await server.stop_accepting()
        await server.drain(1.0)
    assert not path.exists()


def test_error_codes_match_the_contract() -> None:
    assert [(c.value, c.name) for c in ErrorCode] == [
        (1, "NO_METHOD"),
        (2, "INVALID_PARAMS"),
        (3, "NOT_FOUND"),
        (4, "INVALID_STATE"),
        (5, "NDIS_STATUS"),
        (6, "LIMIT"),
        (7, "TIMEOUT"),
        (8, "DENIED"),
        (9, "CONNECT_FAILED"),
        (10, "INTERNAL"),
    ]
