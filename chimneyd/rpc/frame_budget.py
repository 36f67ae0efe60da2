"""A daemon-wide budget for bytes held in partial frames (requests not fully received yet).

Each client may hold up to `max_message_bytes` of an unfinished frame; many clients doing so at
once would pin that many times the limit (31 clients x 8 MiB = 254 MB). Past the budget, the
client holding the largest partial frame is dropped. Chosen over refusing the next large frame:
refusing would let a few stalled clients keep the whole budget and turn everyone else's large
requests away until their deadline, while dropping the largest frees the most with one close and
lands on whoever holds the most. A client that sends its frames at once never holds one for long
and is not at risk unless it alone holds more than the rest together.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Holder = TypeVar("Holder")


class FrameBudget(Generic[Holder]):
    """Partial-frame bytes per holder (only those holding some), and their total."""

    __slots__ = ("held", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[Holder, int] = {}
        self.total = 0

    def set(self, holder: Holder, nbytes: int) -> list[Holder]:
        """`holder` now holds `nbytes` of a partial frame. Returns the holders to drop (largest
        first), already taken out of the budget, so that the total fits again."""
        self.total += nbytes - self.held.pop(holder, 0)
        if nbytes:
            self.held[holder] = nbytes
        victims: list[Holder] = []
        while self.total > self.limit and self.held:
            victim = max(self.held, key=self.held.__getitem__)
            self.total -= self.held.pop(victim)
            victims.append(victim)
        return victims

    def release(self, holder: Holder) -> None:
        self.total -= self.held.pop(holder, 0)


__all__ = ["FrameBudget"]
