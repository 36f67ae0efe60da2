"""A read's future, which withdraws its read when cancelled.

Kept out of the compiled modules (deploy/compiled-modules.txt): mypyc cannot build a subclass
of asyncio's C `Future`, even as a plain Python class.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Abandonable(Protocol):
    def abandon(self) -> None: ...


class ReadFuture(asyncio.Future[Any]):
    """A read's future: cancelling it (its client left, its task was cancelled) withdraws the
    read from the host, as a timed-out one is. Else the read would stay queued in the host and
    take the connection's next bytes for nobody (the future is cancelled: the request drops
    them), and the request would never leave the engine's pending table. Done in `cancel`
    itself, not in a done-callback: reads that complete (nearly all) cost nothing more than
    making this object (~0.3 µs over `loop.create_future()`)."""

    __slots__ = ("request",)

    def __init__(self, loop: asyncio.AbstractEventLoop, request: Abandonable) -> None:
        super().__init__(loop=loop)
        self.request: Abandonable | None = request  # None once the host has answered

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False  # already answered: nothing is queued in the host
        request = self.request
        if request is not None:
            request.abandon()
        return True
