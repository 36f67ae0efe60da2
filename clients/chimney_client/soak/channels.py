"""How the coordinator and its workers talk: a deque in one process, a queue between processes."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol


class Channel(Protocol):
    def put(self, msg: dict[str, Any]) -> None: ...
    def drain(self) -> list[dict[str, Any]]: ...


class LocalChannel:
    """Between coroutines of one process."""

    def __init__(self) -> None:
        self._q: deque[dict[str, Any]] = deque()

    def put(self, msg: dict[str, Any]) -> None:
        self._q.append(msg)

    def drain(self) -> list[dict[str, Any]]:
        out = list(self._q)
        self._q.clear()
        return out


class ProcessChannel:
    """Between processes (a multiprocessing queue, polled without blocking)."""

    def __init__(self, q: Any) -> None:
        self._q = q

    def put(self, msg: dict[str, Any]) -> None:
        self._q.put(msg)

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except Exception:  # queue.Empty (or a closed queue at shutdown)
                return out
