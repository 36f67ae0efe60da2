"""The RPC server over a real loopback socket, with the in-process FakeEngine: the methods,
answers out of order, events, a client that goes away, and shutdown.

Limits, ownership, auth, bad input, deadlines, unix sockets and internal errors have their own
modules beside this one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import msgpack
import pytest

from chimneyd.api import EngineAPI, ErrorCode
from chimneyd.observe import metrics
from chimneyd.observe.logging import write_errors
from tests.rpc.fake_engine import REFUSED_PORT, FakeEngine
from tests.rpc.support import HOST, RawClient, eventually, serving

NO_METHOD, INVALID_PARAMS, NOT_FOUND = 1, 2, 3
TIMEOUT, CONNECT_FAILED = 7, 9


def test_fake_engine_has_every_engine_api_method() -> None:
    """The double stands in for the real engine only if it offers the same calls, with the same
    parameters, sync or async alike (mypy also checks `as_api`)."""
    api = {
        name: member
        for name, member in vars(EngineAPI).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }
    assert len(api) > 20
    for name, member in api.items():
        fake = getattr(FakeEngine, name, None)
        assert fake is not None, f"FakeEngine lacks {name}"
        assert list(inspect.signature(fake).parameters) == list(
            inspect.signature(member).parameters
        ), name
        assert inspect.iscoroutinefunction(fake) == inspect.iscoroutinefunction(member), name


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


# -- basics ------------------------------------------------------------------------------------


async def test_ping_info_stats() -> None:
    async with serving(max_in_flight=7) as s:
        c = await s.client()
        assert await c.ok("ping") == "pong"
        info = await c.ok("stack.info")
        assert info["contract"] == 1
        assert [layer["name"] for layer in info["layers"]] == ["tcpip", "nic0"]
        assert info["rpc"]["listen"] == [f"{s.address[0]}:{s.address[1]}"]
        assert info["rpc"]["auth"] is False
        assert info["rpc"]["limits"]["max_in_flight"] == 7
        assert info["rpc"]["limits"]["max_message_bytes"] == 8 * 1024 * 1024
        stats = await c.ok("stack.stats")
        assert stats["rpc"] == {"clients": 1, "in_flight": 0, "buffered_frame_bytes": 0}
        assert stats["connections"] == 0
        assert stats["log"] == {"write_errors": write_errors()}  # the process-wide count


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
        assert (code, message) == (NO_METHOD, "NO_METHOD: unknown method 'no.such.method'")
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
        assert await c.ok("tcp.info", conn) == {"state": "host", "remote": f"{HOST}:9000"}
        assert await c.ok("tcp.offload", conn) == {"state": "offloaded", "path": ["tcpip", "nic0"]}
        assert await c.ok("tcp.upload", conn) == {"state": "host"}
        assert await c.ok("tcp.disconnect", conn) == "NDIS_STATUS_SUCCESS"
        assert s.engine.last_call() == ("disconnect", conn, False)
        assert await c.ok("tcp.disconnect", conn, True) == "NDIS_STATUS_SUCCESS"
        assert s.engine.last_call() == ("disconnect", conn, True)
        assert await c.ok("tcp.close", conn) is True
        assert await c.ok("tcp.list") == []
        # a closed connection's trace stays readable by its owner
        assert await c.ok("trace.get", conn) == []
        code, _ = await c.fails("tcp.info", conn)
        assert code == NOT_FOUND


async def test_big_reads_are_answered_byte_exact_in_order_with_other_answers() -> None:
    """A long `bytes` result leaves as a head and the payload itself (no packing copy): on the
    wire it is the same response, whole among the other answers."""
    sizes = [2047, 2048, 2049, 70_000, 300_000]
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        sent = b"".join(bytes([i]) * n for i, n in enumerate(sizes, 1))
        assert await c.ok("tcp.send", conn, sent) == len(sent)
        ids: list[tuple[int, bytes | str]] = []
        at = 0
        for n in sizes:  # pipelined: a ping between every two reads
            ids.append((c.request("tcp.recv", conn, n), sent[at : at + n]))
            ids.append((c.request("ping"), "pong"))
            at += n
        got = {}
        for _ in ids:  # a ping is answered at once, a read when its future is done
            msg = await c.read()
            got[msg[1]] = msg
        assert got == {msgid: [1, msgid, None, want] for msgid, want in ids}


async def test_connect_offloads_by_default() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert s.engine.last_call() == ("connect", HOST, 9000, True, None)
        assert (await c.ok("tcp.info", conn))["state"] == "offloaded"


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
        assert info == {"host": HOST, "port": 40000 + lid, "pending": 0}
        code, _ = await c.fails("tcp.accept", lid, 0)
        assert code == TIMEOUT
        incoming = s.engine.incoming(lid)
        assert await c.ok("tcp.accept", lid, 2500) == incoming
        assert s.engine.last_call() == ("accept", lid, 2.5)
        assert await c.ok("tcp.list") == [incoming]


async def test_trace_get_with_a_limit() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        for _ in range(3):
            await c.ok("tcp.send", conn, b"x")
        assert [h["seq"] for h in await c.ok("trace.get", conn)] == [1, 2, 3]
        assert [h["seq"] for h in await c.ok("trace.get", conn, 2)] == [2, 3]


async def test_stack_metrics_is_prometheus_text() -> None:
    async with serving() as s:
        c = await s.client()
        await c.ok("tcp.connect", HOST, 9000)
        text = await c.ok("stack.metrics")
        assert isinstance(text, str)
        assert 'chimney_offloads_active{layer="nic0"} 1.0' in text.splitlines(), text


class _TimedEngine:
    """What `Metrics.attach` needs of an engine: its loop, layer tasks and send hook."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tasks: list[object] = []
        self.send_observer: object = None


@pytest.fixture
async def registry() -> AsyncIterator[metrics.Metrics]:
    """The daemon's metrics registry installed, its latency histograms on (as with --web)."""
    reg = metrics.Metrics(dict, probe_interval_s=60.0)
    metrics.install(reg)
    reg.attach(_TimedEngine())
    try:
        yield reg
    finally:
        reg.detach()
        metrics.install(None)


async def test_request_latencies_are_counted_after_the_answers_are_written(
    registry: metrics.Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # answers first: the histograms' bookkeeping of a read runs while the client reads them
    seen: list[tuple[int, list[int]]] = []
    record = metrics.rpc_requests

    def rpc_requests(timed: list[tuple[str, float]]) -> None:
        seen.append((len(timed), [len(session.out) for session in s.sessions()]))
        record(timed)

    monkeypatch.setattr(metrics, "rpc_requests", rpc_requests)
    async with serving() as s:
        c = await s.client()
        c.send_raw(b"".join(msgpack.packb([0, i, "ping", []]) for i in range(1, 51)))
        got = [await c.read() for _ in range(50)]
        assert [m[1] for m in got] == list(range(1, 51))
        await eventually(lambda: sum(n for n, _ in seen) == 50, "50 pings counted")
        assert all(queued == [0] for _, queued in seen), seen  # nothing left to write
        assert registry.rpc.get("ping").counts[-1] == 0  # none slower than 16.8 s
        assert sum(registry.rpc.get("ping").counts) == 50


async def test_a_request_that_waits_is_timed_until_it_is_answered(
    registry: metrics.Metrics,
) -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = c.request("tcp.recv", conn, 10)  # nothing sent yet: it waits
        await c.ok("ping")
        assert "tcp.recv" not in registry.rpc.by_value  # not answered: not counted
        await asyncio.sleep(0.05)
        assert await c.ok("tcp.send", conn, b"data") == 4
        assert await c.response(waiting) == [1, waiting, None, b"data"]
        recv = registry.rpc.get("tcp.recv")
        assert sum(recv.counts) == 1
        assert recv.sum > 0.03  # from its dispatch (50 ms of waiting), not its answer


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
        a.request("tcp.recv", conns[1], 10)  # in flight when the client leaves
        await eventually(lambda: ("recv", conns[1], 10, None) in s.engine.calls, "recv running")
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
        await eventually(lambda: s.server.rpc_stats()["in_flight"] == 0, "its recv cancelled")
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
        assert s.server.ownership.conn_owner == {}


async def test_listener_made_after_its_client_left_is_closed() -> None:
    engine = FakeEngine()
    engine.listen_gate = asyncio.Event()
    async with serving(engine) as s:
        a = await s.client()
        a.request("tcp.listen", HOST, 0)
        await eventually(lambda: any(c[0] == "listen" for c in engine.calls), "listen began")
        await a.close()
        await eventually(lambda: not s.server.sessions, "the session ended")
        engine.listen_gate.set()
        await eventually(lambda: engine.closed_listeners == [1], "the orphan listener closed")
        assert engine.listeners == {}


async def test_a_client_leaving_asks_the_engine_for_its_idle_trim() -> None:
    async with serving() as s:
        # the server's owner maps are trimmed with the engine's tables
        assert s.server.ownership in s.engine.lean_holders
        assert s.server in s.engine.lean_holders
        a = await s.client()
        assert await a.ok("ping") == "pong"
        assert s.engine.give_backs == 0
        await a.close()
        await eventually(lambda: s.engine.give_backs == 1, "the engine asked to give back")


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
        assert s.engine.subscriber_count() == 1
        s.engine.raise_event(two, "TcpIndicateAbort")
        s.engine.raise_event(one, "TcpIndicateAbort")
        msg = await c.read()
        assert msg == [2, "tcp.event", [one, "TcpIndicateAbort", {}]]
        assert (await c.fails("events.subscribe", 12345))[0] == NOT_FOUND


@pytest.mark.parametrize("first", ["by-id", "star"])
async def test_an_event_comes_once_to_a_client_subscribed_by_id_and_star(first: str) -> None:
    """The engine calls both of a client's subscriptions a connection's event matches; the
    client gets it once, whichever it made first, and its connection subscription still ends
    with the connection."""
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        keys: list[int | str] = [conn, "*"] if first == "by-id" else ["*", conn]
        for key in keys:
            assert await c.ok("events.subscribe", key) is True
        s.engine.raise_event(conn, "TcpIndicateAbort")
        assert await c.ok("tcp.close", conn) is True
        assert [n[2][:2] for n in c.notifications] == [
            [conn, "TcpIndicateAbort"],
            [conn, "closed"],
        ]
        [session] = s.sessions()
        assert list(session.holdings.subscriptions) == [None]


async def test_closing_a_connection_ends_its_subscription() -> None:
    """Per-connection subscriptions do not pile up as a client churns through connections."""
    async with serving() as s:
        c = await s.client()
        for _ in range(5):
            conn = await c.ok("tcp.connect", HOST, 9000)
            assert await c.ok("events.subscribe", conn) is True
            assert await c.ok("tcp.close", conn) is True
        [session] = s.sessions()
        assert session.holdings.subscriptions == {}
        assert s.engine.subscriber_count() == 0


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
        assert await quick.read_until_closed() == []
        with pytest.raises(OSError):
            await RawClient.connect(s.address)


async def test_a_client_paused_when_the_drain_begins_is_not_read_again() -> None:
    """Once the daemon is stopping nothing more is read from a client, even one whose reading
    was paused for back-pressure and whose answers then drain (`resume_writing`): every request
    the server read is answered (served, or TIMEOUT by the drain), none is left unanswered."""
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = c.request("tcp.recv", conn, 10)  # in flight when the drain begins
        assert await c.ok("ping") == "pong"
        [session] = s.sessions()
        session.pause_writing()  # as if its unread answers had passed WRITE_HIGH
        late = [c.request("tcp.recv", conn, 10), c.request("ping")]
        await asyncio.sleep(0.05)  # sent, not read: reading is paused
        await s.server.stop_accepting()
        drain = asyncio.ensure_future(s.server.drain(0.3))
        await asyncio.sleep(0.05)
        session.resume_writing()  # its answers drained below WRITE_LOW during the drain
        await asyncio.sleep(0.05)
        assert session.requests == 3, "requests were read after the drain began"
        assert await drain == 1
        msgs = await c.read_until_closed()
        assert [m[1] for m in msgs] == [waiting], (msgs, late)
        assert msgs[0][2][0] == TIMEOUT


async def test_requests_read_during_the_drain_are_answered() -> None:
    """Whatever was read before the clients are closed is answered: a request still running
    when the drain's deadline comes, though it started after the drain began, gets TIMEOUT."""
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        first = c.request("tcp.recv", conn, 10)
        assert await c.ok("ping") == "pong"
        [session] = s.sessions()
        await s.server.stop_accepting()
        drain = asyncio.ensure_future(s.server.drain(0.3))
        await asyncio.sleep(0.05)
        # a request dispatched after the drain began (read before reading stopped, say)
        session.dispatch(4242, "tcp.recv", [conn, 10])
        assert await drain == 2
        msgs = await c.read_until_closed()
        assert sorted(m[1] for m in msgs) == sorted([first, 4242])
        assert all(m[2][0] == TIMEOUT for m in msgs)
