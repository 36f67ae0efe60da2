"""The stretches a worker keeps on a NIC (`placements`) for a NIC outage are those the outage
can judge: on its NIC, in its shard (outcomes `_each_left_its_nic` selects no other). An
outage on nic1 of shard 0 keeps none on nic0, none of shard 1; and the check that a notice
came in time (`placements_pruned`, PLACEMENT_GRACE_S) looks only at the stretches it could
have needed."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak.conn import Conn
from chimney_client.soak.state import PLACEMENT_GRACE_S, Rpc, WorkerState
from tests.soak.test_outage_accounts import _state

pytestmark = pytest.mark.soak

G = PLACEMENT_GRACE_S


def _stretch(st: WorkerState, cid: int, nic: str, shard: int | None, on: float, off: float) -> None:
    """`cid`, of an RPC client on `shard`, offloaded on `nic` at `on` and closed at `off`."""
    rpc = Rpc(client=None, ops=1, shard=shard)  # type: ignore[arg-type]
    st.rpc_by_cid[cid] = rpc
    conn = Conn(cid, 1, 0, 0, on)
    conn.path = ["tcpip", "team0", nic]
    st.placement(conn, "offloaded", None, on)
    conn.state, conn.since = "offloaded", on
    st.placement(conn, "closing", None, off)
    conn.state, conn.since = "closing", off


def _kept(st: WorkerState) -> list[int]:
    return sorted(p["conn"] for p in st.obs["placements"])


def _all_spanning(st: WorkerState) -> None:
    """Stretches that all span t=30, on each NIC of each shard, and one of a daemon of one
    process (no shard)."""
    cid = 0
    for nic in ("nic0", "nic1"):
        for shard in (0, 1, None):
            cid += 1
            _stretch(st, cid, nic, shard, 10.0, 40.0)


def test_an_outage_on_a_nic_of_one_shard_keeps_only_the_stretches_it_judges() -> None:
    st = _state()
    st.told_outage(30.0, "nic1", 0)
    _all_spanning(st)
    st.prune_placements(40.0 + G + 0.1)
    # 4: nic1 in shard 0, 6: nic1 with no shard (a daemon of one process)
    assert _kept(st) == [4, 6], st.obs["placements"]
    assert "placements_pruned" not in st.errors


def test_an_outage_in_every_shard_keeps_its_nics_stretches_in_each() -> None:
    st = _state()
    st.told_outage(30.0, "nic0", None)
    _all_spanning(st)
    st.prune_placements(40.0 + G + 0.1)
    assert _kept(st) == [1, 2, 3]


def test_a_notice_that_names_no_nic_keeps_every_stretch_spanning_it() -> None:
    """What an older coordinator tells (t0 only): as before, every NIC, every shard."""
    st = _state()
    st.told_outage(30.0)
    _all_spanning(st)
    st.prune_placements(40.0 + G + 0.1)
    assert _kept(st) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("dropped", "told", "late"),
    [
        (("nic0", 0), ("nic1", 0), False),  # another NIC's stretch: not one it needed
        (("nic1", 1), ("nic1", 0), False),  # its NIC, another shard's
        (("nic1", 0), ("nic1", 0), True),
        (("nic1", None), ("nic1", 0), True),  # a daemon of one process: every stretch
        (("nic1", 1), ("nic1", None), True),  # an outage in every shard
    ],
)
def test_a_late_notice_is_an_error_only_where_it_needed_a_stretch_dropped(
    dropped: tuple[str, Any], told: tuple[str, Any], late: bool
) -> None:
    st = _state()
    _stretch(st, 1, dropped[0], dropped[1], 10.0, 30.2)
    st.prune_placements(30.2 + G + 0.1)  # judged before the notice came: dropped
    assert _kept(st) == []
    st.told_outage(30.0, *told)
    assert ("placements_pruned" in st.errors) is late, st.errors
