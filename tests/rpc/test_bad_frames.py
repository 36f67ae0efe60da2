"""Bad input: frames that are not msgpack or not requests, wrong params, floods. Each closes or
answers only the client that sent it; every test ends by checking another client is served."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from chimneyd.config import ConfigError, RpcConfig
from chimneyd.rpc import session as session_mod
from chimneyd.rpc.server import RpcServer
from tests.rpc.fake_engine import FakeEngine
from tests.rpc.support import HOST, eventually, serving

NO_METHOD, INVALID_PARAMS = 1, 2

BAD_FRAMES: list[tuple[str, bytes, list[Any]]] = [
    ("not msgpack", b"\xc1", []),
    (
        "not msgpack after a good frame",
        msgpack.packb([0, 1, "tcp.list", []]) + b"\xc1",
        [[1, 1, None, []]],
    ),
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
    (
        "method int",
        msgpack.packb([0, 5, 7, []]),
        [[1, 5, [INVALID_PARAMS, "INVALID_PARAMS: method must be str or bin"], None]],
    ),
    (
        "params map",
        msgpack.packb([0, 6, "ping", {}]),
        [[1, 6, [INVALID_PARAMS, "INVALID_PARAMS: params must be an array"], None]],
    ),
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
        assert await c.read_until_closed() == answers
        assert await bystander.ok("tcp.info", conn) == {
            "state": "offloaded",
            "remote": f"{HOST}:9000",
        }
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
    monkeypatch.setattr(session_mod, "WRITE_HIGH", 64 * 1024)
    monkeypatch.setattr(session_mod, "WRITE_LOW", 16 * 1024)
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
    monkeypatch.setattr(session_mod, "HARD_WRITE_FLOOR", 256 * 1024)
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


async def test_non_loopback_listen_refused_without_token() -> None:
    server = RpcServer(FakeEngine(), RpcConfig(listen=("0.0.0.0:0",)))
    with pytest.raises(ConfigError, match=r"rpc\.listen.*token"):
        await server.start()
    assert server.servers == []
