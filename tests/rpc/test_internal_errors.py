"""A bug in the engine while serving a request: that request is answered INTERNAL with a trace id,
the log line carries the same id, the method and the connection; everything else goes on."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from chimneyd.api import EngineError, ErrorCode
from chimneyd.rpc import errors
from tests.rpc.fake_engine import FakeEngine
from tests.rpc.support import HOST, serving

INTERNAL = 10


def internal_entry(logs: list[dict[str, Any]], message: str) -> dict[str, Any]:
    """The one log line whose trace id the INTERNAL answer `message` names."""
    assert message.startswith("INTERNAL: a bug, logged as trace id "), message
    trace_id = message.rsplit(" ", 1)[1]
    [entry] = [e for e in logs if e.get("trace_id") == trace_id]
    return entry


async def test_a_plain_method_that_raises() -> None:
    async with serving() as s:
        s.engine.fail["info"] = RuntimeError("the fake engine was told to explode")
        c = await s.client()
        with capture_logs() as logs:
            code, message = await c.fails("stack.info")
        assert code == INTERNAL
        entry = internal_entry(logs, message)
        assert entry["event"] == "rpc_internal_error"
        assert entry["method"] == "stack.info"
        assert entry["conn"] is None
        assert isinstance(entry["exc_info"], RuntimeError)
        assert await c.ok("ping") == "pong"  # the same client goes on
        await s.another_client_pings()


async def test_the_connection_is_named_in_the_log() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        s.engine.fail["conn_info"] = KeyError("a table the engine forgot to fill")
        s.engine.fail["send"] = IndexError("past the end of a buffer")
        with capture_logs() as logs:
            code, message = await c.fails("tcp.info", conn)  # a plain method
            assert code == INTERNAL
            assert internal_entry(logs, message)["conn"] == conn
            code, message = await c.fails("tcp.send", conn, b"x")  # an async one
            assert code == INTERNAL
            entry = internal_entry(logs, message)
        assert (entry["method"], entry["conn"]) == ("tcp.send", conn)
        assert isinstance(entry["exc_info"], IndexError)
        del s.engine.fail["send"]
        assert await c.ok("tcp.send", conn, b"ok") == 2  # the connection is still usable


async def test_other_requests_in_flight_are_not_disturbed() -> None:
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        waiting = c.request("tcp.recv", conn, 10)
        s.engine.fail["send"] = RuntimeError("boom")
        assert (await c.fails("tcp.send", conn, b"lost"))[0] == INTERNAL
        s.engine.deliver(conn, b"still here")
        assert (await c.response(waiting))[2:] == [None, b"still here"]


async def test_a_cancellation_escaping_the_engine_is_internal() -> None:
    """Nobody in the server cancelled it: not the TIMEOUT of a stopping daemon, a bug."""
    async with serving() as s:
        s.engine.fail["send"] = asyncio.CancelledError()
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        with capture_logs() as logs:
            code, message = await c.fails("tcp.send", conn, b"x")
        assert code == INTERNAL
        assert internal_entry(logs, message)["conn"] == conn
        assert await c.ok("ping") == "pong"


async def test_an_unencodable_result_is_internal() -> None:
    class Odd(FakeEngine):
        def conn_info(self, conn_id: int) -> dict[str, Any]:
            return {"state": object()}  # msgpack cannot encode this

    async with serving(Odd()) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        with capture_logs() as logs:
            code, message = await c.fails("tcp.info", conn)
        assert code == INTERNAL
        assert internal_entry(logs, message)["event"] == "rpc_unencodable_result"
        assert await c.ok("tcp.send", conn, b"fine") == 4


async def test_a_failing_subscriber_does_not_stop_the_answer() -> None:
    class Noisy(FakeEngine):
        async def upload(self, conn_id: int) -> dict[str, Any]:
            self._emit(conn_id, "uploaded", {"bad": object()})  # unencodable event info
            return {"state": "host"}

    async with serving(Noisy()) as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        assert await c.ok("events.subscribe", conn) is True
        with capture_logs() as logs:
            assert await c.ok("tcp.upload", conn) == {"state": "host"}
        assert c.notifications == []
        [entry] = [e for e in logs if e["event"] == "rpc_unencodable_event"]
        assert entry["conn"] == conn
        assert await c.ok("ping") == "pong"


def test_one_envelope_for_every_kind_of_failure() -> None:
    assert errors.envelope(ErrorCode.NOT_FOUND, "no connection 3") == [
        3,
        "NOT_FOUND: no connection 3",
    ]
    err = EngineError(ErrorCode.NDIS_STATUS, "NDIS_STATUS_REQUEST_ABORTED (0xC023000C)")
    assert errors.for_exception(err, "tcp.send") == [5, err.message]
    fd = OSError(24, "Too many open files")
    assert errors.for_exception(fd, "tcp.listen") == [
        6,
        "LIMIT: open-file limit reached: Too many open files",
    ]
    with capture_logs() as logs:
        code, message = errors.for_exception(ValueError("x"), "tcp.info", conn=4, client="c")
    assert code == INTERNAL and logs[0]["conn"] == 4 and logs[0]["client"] == "c"
    assert logs[0]["trace_id"] in message
