"""Per-connection queues that cost nothing while empty.

A TCB or a target context has a dozen queues (reads waiting, bytes for the application, sends
unacknowledged, requests deferred, ...), and an idle offloaded connection has all of them
empty. An empty list is 56 bytes and a C allocator's chunk of 64: at ten thousand connections a
dozen of them per connection were seven megabytes. So every empty queue is the one shared
`NO_ITEMS`, and a connection gets a list of its own when it first queues something (`grown`);
a queue drained for good goes back to `NO_ITEMS`.

`NO_ITEMS` refuses to be added to: a code path that appends to it in place instead of through
`grown` raises, instead of sharing items among all connections.
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class _NoItems(list):  # type: ignore[type-arg]
    """An empty list that stays empty. Reading, iterating, `pop` (IndexError, as on any empty
    list) and `clear` (nothing to clear) behave as on `[]`; adding items raises."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("NO_ITEMS is shared by every empty queue: add with `grown`")

    append = extend = insert = __setitem__ = __iadd__ = __imul__ = _refuse


#: the empty queue every connection shares until it queues something
NO_ITEMS: list[Any] = _NoItems()


def grown(queue: list[T], item: T) -> list[T]:
    """`queue` with `item` appended: a list of its own when `queue` is `NO_ITEMS`. Assign the
    result back (`tcb.sends = grown(tcb.sends, entry)`)."""
    if queue is NO_ITEMS:
        return [item]
    queue.append(item)
    return queue


__all__ = ["NO_ITEMS", "grown"]
