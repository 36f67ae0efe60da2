"""Block lists (spec §2.1): `add_dependents` appends many blocks in order, walking the list
once; `add_dependent` one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimneyd.ndis.blocks import new_path_block, new_tcp_block


@given(st.lists(st.integers(0, 5), max_size=12))
def test_appends_keep_their_order(batches: list[int]) -> None:
    """Batches of appends, single (`add_dependent`) or many at once, make one list in the
    order they were made."""
    path = new_path_block(None)
    made = []
    for n in batches:
        blocks = [new_tcp_block(None) for _ in range(max(n, 1))]
        if n == 0:
            path.add_dependent(blocks[0])
        else:
            path.add_dependents(blocks)
        made += blocks
    assert list(path.dependents()) == made
    assert made[-1].next_block is None if made else path.dependent_block_list is None


def test_no_blocks_change_nothing_and_a_tcp_block_takes_none() -> None:
    path = new_path_block(None)
    path.add_dependents([])
    assert path.dependent_block_list is None
    with pytest.raises(ValueError, match="no dependents"):
        new_tcp_block(None).add_dependents([new_tcp_block(None)])
