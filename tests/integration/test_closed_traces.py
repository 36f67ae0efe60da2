"""trace.get still answers for closed connections after the idle engine packed their traces
together, and keeps only the newest CLOSED_TRACES_KEPT of them."""

from __future__ import annotations

from typing import Any

from chimneyd.api import EngineError, ErrorCode


async def test_closed_traces_survive_the_idle_archive(
    make_engine: Any, echo_port: int, monkeypatch: Any
) -> None:
    engine = await make_engine()
    engine.traces.keep = 3
    seen: dict[int, list[dict[str, Any]]] = {}

    async def one_round() -> int:
        conn = await engine.connect("127.0.0.1", echo_port, offload=True)
        await engine.send(conn, b"x" * 1000)
        assert await engine.recv(conn, 1000, 5.0, True) == b"x" * 1000
        await engine.close(conn)
        seen[conn] = engine.trace(conn, None)
        return conn

    first = [await one_round() for _ in range(2)]
    engine.trim._run(1)  # what the engine does on its own once idle
    assert engine.traces.archive is not None and not engine.traces.recent
    for conn in first:
        assert engine.trace(conn, None) == seen[conn]
        assert engine.trace(conn, 5) == seen[conn][-5:]
    later = [await one_round() for _ in range(2)]  # closed after the archive: kept as before
    assert engine.traces.recent
    for conn in first + later:
        assert engine.trace(conn, None) == seen[conn]
    engine.trim._run(1)  # merged: only the newest 3 stay
    assert [engine.trace(c, None) for c in first[1:] + later] == [
        seen[c] for c in first[1:] + later
    ]
    try:
        engine.trace(first[0], None)
    except EngineError as err:
        assert err.code == ErrorCode.NOT_FOUND
    else:
        raise AssertionError("the oldest closed trace should be gone")
