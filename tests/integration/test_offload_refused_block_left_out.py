"""A running engine whose IM leaves a connection's TCP block out of its initiate completion
after the NIC failed it (lost below, spec §6.3 [EMU]): `tcp.info` names the NIC (docs/rpc.md
`tcp.info`), and NDIS keeps nothing of the initiate once it is over. The engine's shutdown
reports what NDIS still keeps (`left_over` `ndis`), which every engine test's teardown
requires empty (conftest). The invariant checker is off here, as in a daemon by default: the
tree the IM changed is a violation it would report, and then lose track of the objects in it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.config import EngineConfig
from chimneyd.engine import EngineError, start_engine
from chimneyd.ndis.blocks import OffloadBlock
from tests.integration.support import EngineFactory, drained, fail_next, topology
from tests.unit.test_ndis_failed_at_block_left_out import _left_out


async def test_a_block_the_im_leaves_out_after_the_nic_failed_it_names_the_nic(
    echo_port: int,
) -> None:
    engine = await start_engine(EngineConfig(), topology(1))
    try:
        conn = await engine.connect("127.0.0.1", echo_port, offload=False)
        im = engine.ndis.layers["im0"]
        complete = im.chimney_handlers["ProtocolInitiateOffloadComplete"]

        def leaves_it_out(binding: Any, lower_root: OffloadBlock) -> None:
            handle = engine.host.tcbs[conn].handle
            assert handle is not None
            _left_out(lower_root.im_reserved.upper_root, handle)
            complete(binding, lower_root)

        im.chimney_handlers["ProtocolInitiateOffloadComplete"] = leaves_it_out
        fail_next(engine, "nic0", "MiniportInitiateOffload")
        try:
            with pytest.raises(EngineError, match="lost below"):
                await asyncio.wait_for(engine.offload(conn), 5.0)
        finally:
            im.chimney_handlers["ProtocolInitiateOffloadComplete"] = complete
        refused = engine.conn_info(conn)["offload_refused"]
        assert refused is not None and refused["status"] is None, refused
        assert refused["layer"] == "nic0", refused
        assert engine.ndis.walks_in_flight() == 0
        await asyncio.wait_for(engine.close(conn), 5.0)
        await drained(engine)
        assert engine.layer_errors == 1  # the host's, for the broken contract
    finally:
        report = await engine.shutdown(2.0)
    assert report["left_over"] == {}, report


async def test_what_ndis_still_keeps_of_an_initiate_is_left_over_at_shutdown(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(topology(0))
    planted = (0, engine.host)  # any object: the report counts what NDIS keeps
    engine.ndis._walk_trees[0] = [planted]  # type: ignore[list-item]
    try:
        report = await engine.shutdown(2.0)
    finally:
        del engine.ndis._walk_trees[0]
    assert report["left_over"] == {"ndis": {"initiate_walks": 1}}, report
