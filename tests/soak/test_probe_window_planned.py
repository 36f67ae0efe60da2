"""A worker's planned offload (the churn's, after a planned upload) refused for no room keeps
the layer tcp.info's `offload_refused` names, as a reoffload does (test_probe_window_nic.py):
without it, a refusal by a NIC beside the probe's would be taken as the probe's doing."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.soak.conn import Conn
from chimney_client.soak.state import Rpc
from tests.soak.test_probe_window_nic import _Client, _traffic

pytestmark = pytest.mark.soak

Rec = dict[str, Any]


@pytest.mark.parametrize("said", [{"status": "x", "layer": "nic1", "reason": "full"}, None])
async def test_a_refused_planned_offload_reads_the_layer_once_per_episode(
    said: Rec | None,
) -> None:
    tr = _traffic()
    client = _Client(said)
    rpc = Rpc(client=client, ops=1)  # type: ignore[arg-type]
    conn = Conn(9, 1, 0, 0, 1.0)
    tr.by_id[9], tr.rpc_by_cid[9] = conn, rpc
    for _ in range(3):  # refused three times: one episode, one read
        await tr.planned_offload(rpc, conn)
    [ep] = tr.obs["refusals"]
    assert ep["attempts"] == 3 and client.infos == 1, (ep, client.infos)
    assert ep.get("refused_by") == (said or {}).get("layer"), ep
