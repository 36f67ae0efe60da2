"""An idle engine gives back the tables its emptied dicts and sets grew to, in place."""

from __future__ import annotations

import sys

from chimneyd.runtime.memory import release_empty_containers


class Holder:
    __slots__ = ("busy", "conns", "ids", "name")

    def __init__(self) -> None:
        self.conns: dict[int, object] = {i: object() for i in range(10_000)}
        self.ids: set[int] = set(range(10_000))
        self.busy: dict[int, int] = {1: 1}
        self.name = "nic0"


def test_emptied_containers_shrink_and_keep_their_identity() -> None:
    h = Holder()
    alias_conns, alias_ids = h.conns, h.ids
    for i in range(10_000):
        del h.conns[i]
        h.ids.discard(i)
    grown = sys.getsizeof(h.conns), sys.getsizeof(h.ids)
    assert release_empty_containers([h, None]) == 2
    assert h.conns is alias_conns and h.ids is alias_ids  # every other reference stays valid
    assert sys.getsizeof(h.conns) < grown[0] // 10
    assert sys.getsizeof(h.ids) < grown[1] // 10
    assert h.busy == {1: 1}  # a container still in use is left alone
    h.conns[5] = h
    assert alias_conns[5] is h
