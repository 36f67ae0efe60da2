"""A `host_event` on a NIC of a team reaches the MUX at its start and at its clear
(docs/faults.md `host_event`, docs/architecture.md "A pin and the host's reasons reach the
placement"): a rebalance right after the clear moves connections onto that NIC again, and one
right after the start plans none onto it, with no offload of the host's in between to tell
the MUX. Before, the MUX heard of the host's reasons only through offloads: the NIC stayed out
of rebalances after the clear until the host's next offload."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.integration.support import eventually
from tests.integration.test_mux import all_offloaded, lowers, nic_of, teaming
from tests.integration.test_overlapping_outages import settled


async def _moved_after_clear(make_engine: Any, echo_port: int, nic: str, other: str) -> None:
    """Six connections, all on `other` while the host withheld `nic`; the event is cleared
    and a rebalance asked at once: three go to `nic`."""
    engine = await make_engine(teaming("least-loaded", nics=2, im_under=nic == "nic0"))
    event = engine.fault_inject({"kind": "host_event", "layer": nic, "event": "media_disconnect"})
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    await eventually(all_offloaded(engine, conns))
    assert Counter(nic_of(engine, c) for c in conns) == {other: 6}
    engine.fault_clear(event)
    engine.fault_inject({"kind": "rebalance", "layer": "team0"})
    lower = "im0" if nic == "nic0" else nic
    await eventually(
        lambda: lowers(engine)[lower]["connections"] == 3,
        f"{nic} takes its share at a rebalance after the host event's clear",
    )
    await eventually(all_offloaded(engine, conns))
    got = Counter(nic_of(engine, c) for c in conns)
    assert got == {nic: 3, other: 3}, f"{nic} left out of the rebalance: {got}"


async def test_a_rebalance_after_the_clear_moves_connections_onto_the_nic(
    make_engine: Any, echo_port: int
) -> None:
    await _moved_after_clear(make_engine, echo_port, "nic1", "nic0")


async def test_the_clear_reaches_the_mux_through_an_im_below_it(
    make_engine: Any, echo_port: int
) -> None:
    """The same with the NIC withheld below an IM (nic0 under im0 under the MUX): the
    indication reaches the MUX on im0's binding."""
    await _moved_after_clear(make_engine, echo_port, "nic0", "nic1")


async def test_a_rebalance_right_after_the_start_plans_nothing_onto_the_nic(
    make_engine: Any, echo_port: int
) -> None:
    """Six connections spread over both NICs; a `host_event` on nic1 uploads its three and
    the host offloads them again on nic0. Those re-offloads tell the MUX already; so the
    rebalance is asked before any: after the start, with the host's uploads still to come,
    the MUX plans none of nic0's connections onto nic1."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    await eventually(all_offloaded(engine, conns))
    engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    engine.fault_clear(None)  # nic1 back in service, empty
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    engine.fault_inject({"kind": "host_event", "layer": "nic1", "event": "net_event_pause"})
    engine.fault_inject({"kind": "rebalance", "layer": "team0"})
    await settled(engine, "team0", "tcpip", "team0")
    mux = engine.driver_layer("team0")
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert not plans, f"planned onto a NIC the host withholds: {plans}"
    assert Counter(nic_of(engine, c) for c in conns) == {"nic0": 6}
