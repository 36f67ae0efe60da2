"""The shared empty queue of per-connection state (`chimneyd.drivers.queues`)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.queues import NO_ITEMS, grown


def test_grown_gives_an_empty_queue_a_list_of_its_own() -> None:
    q: list[int] = NO_ITEMS
    q = grown(q, 1)
    assert q == [1] and q is not NO_ITEMS
    assert NO_ITEMS == []
    same = grown(q, 2)
    assert same is q and q == [1, 2]


def test_the_shared_empty_queue_refuses_items() -> None:
    with pytest.raises(TypeError):
        NO_ITEMS.append(1)
    with pytest.raises(TypeError):
        NO_ITEMS.insert(0, 1)
    with pytest.raises(TypeError):
        NO_ITEMS.extend([1])
    q: list[int] = NO_ITEMS
    with pytest.raises(TypeError):
        q += [1]
    assert NO_ITEMS == []


def test_the_shared_empty_queue_reads_as_empty() -> None:
    assert not NO_ITEMS and len(NO_ITEMS) == 0 and list(NO_ITEMS) == []
    NO_ITEMS.clear()
    with pytest.raises(IndexError):
        NO_ITEMS.pop(0)
