"""`tcp.info`'s `offload_refused` `layer` on a daemon whose hop trace is as good as off:
`engine.trace_depth` 1, the smallest allowed (docs/configuration.md). NDIS notes the failing
layer on its own per-connection state for the initiate, the NDIS handle, as the completions
go up (`NdisOffloadHandle.failed_at`), not on the trace: a NIC under the team, and the team
itself for a pinned NIC out of service, are named all the same (docs/rpc.md `tcp.info`)."""

from __future__ import annotations

from chimneyd.config import LIMITS
from tests.integration.support import EngineFactory, fail_next
from tests.integration.test_offload_refused_layer_exact import TEAMING, _failed_at, _refused

SMALLEST = LIMITS["engine.trace_depth"][0]


def test_the_smallest_trace_depth_allowed_is_one() -> None:
    assert SMALLEST == 1


async def test_a_nic_under_the_team_is_named_with_the_trace_off(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(TEAMING, trace_depth=SMALLEST)
    fail_next(engine, "nic1", "MiniportInitiateOffload")
    conn = await engine.connect("127.0.0.1", echo_port, target="nic1")
    assert _refused(engine, conn) == _failed_at("nic1")
    assert len(engine.trace(conn, None)) <= SMALLEST  # one hop: none of the initiate walk


async def test_the_team_is_named_for_a_pinned_nic_out_of_service_with_the_trace_off(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(TEAMING, trace_depth=SMALLEST)
    engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    assert _refused(engine, conn) == _failed_at("team0")
