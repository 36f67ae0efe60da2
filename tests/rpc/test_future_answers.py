"""The answer a data-path request gets from the engine's future, for every way the future ends:
a result, an engine error, any other exception, a CancelledError set as its exception, and a
cancelled future (while serving, and while the daemon stops). The session reads the outcome
with one `exception()` call (which raises for a cancelled future only); these answers are the
ones it gave when it asked `cancelled()` first."""

from __future__ import annotations

import asyncio
from typing import Any

from chimneyd.api import EngineError, ErrorCode
from tests.rpc.support import HOST, serving


async def answer(end: Any, stopping: bool = False) -> tuple[Any, Any]:
    """(error, result) of a `tcp.send` whose engine future ends as `end(future)` says."""
    async with serving() as s:
        c = await s.client()
        conn = await c.ok("tcp.connect", HOST, 9000)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []

        def start_send(conn_id: int, data: bytes) -> asyncio.Future[Any]:
            fut = loop.create_future()
            futures.append(fut)
            return fut

        s.engine.start_send = start_send  # type: ignore[method-assign]
        msgid = c.request("tcp.send", conn, b"abc")
        async with asyncio.timeout(10):
            while not futures:
                await asyncio.sleep(0)
        if stopping:
            s.server.stopping = True
        end(futures[0])
        msg = await c.response(msgid)
        s.server.stopping = False
        return msg[2], msg[3]


async def test_a_result_is_the_answer() -> None:
    assert await answer(lambda f: f.set_result(3)) == (None, 3)


async def test_an_engine_error_is_its_error() -> None:
    err = EngineError(ErrorCode.LIMIT, "too much")
    assert await answer(lambda f: f.set_exception(err)) == (
        [int(ErrorCode.LIMIT), "LIMIT: too much"],
        None,
    )


async def test_any_other_exception_is_internal() -> None:
    error, result = await answer(lambda f: f.set_exception(RuntimeError("boom")))
    assert result is None
    assert error[0] == int(ErrorCode.INTERNAL)


async def test_a_cancelled_error_set_as_the_exception_is_not_a_cancellation() -> None:
    """The future finished with a CancelledError as its exception (not cancelled): answered as
    that exception, not as a cancellation, whether or not the daemon stops."""
    for stopping in (False, True):
        error, result = await answer(
            lambda f: f.set_exception(asyncio.CancelledError("inner")), stopping=stopping
        )
        assert result is None
        assert error[0] == int(ErrorCode.INTERNAL)
        assert error[1].startswith("INTERNAL: a bug, logged as trace id ")


async def test_a_cancelled_future_while_serving_is_an_internal_error() -> None:
    """Nobody in the server cancelled it: a cancellation escaped the engine, a bug."""
    error, result = await answer(lambda f: f.cancel())
    assert result is None
    assert error[0] == int(ErrorCode.INTERNAL)
    assert error[1].startswith("INTERNAL: a bug, logged as trace id ")


async def test_a_cancelled_future_while_stopping_is_a_timeout() -> None:
    assert await answer(lambda f: f.cancel(), stopping=True) == (
        [int(ErrorCode.TIMEOUT), "TIMEOUT: cancelled: the daemon is stopping"],
        None,
    )
