"""Outages of one NIC cleared in every order: the NIC is out exactly while `fault.list` lists a
fault that holds it out, and back once none does (docs/faults.md `target_failure`, `nic_down`,
`host_event`; spec §5.5: RESUME only when the NIC works again). Each test here is one order of
injections and clears the first tests (test_overlapping_outages.py) leave out: clears in the
other order, a clear of all, a clear of a fault already cleared, outages of two NICs or of two
host events, a `nic_up` between two `nic_down`s, a `target_failure` beside a `host_event`."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import LayerConfig
from tests.integration.support import eventually
from tests.integration.test_mux import all_offloaded, lowers, nic_of, teaming
from tests.integration.test_overlapping_outages import new_connections_go_to, settled

SINGLE = (LayerConfig("tcpip", "host", ("nic0",)), LayerConfig("nic0", "target", (), 64))


def nic_state(engine: Any, name: str = "nic0") -> str:
    state: str = next(la for la in engine.info()["layers"] if la["name"] == name)["state"]
    return state


def listed(engine: Any) -> list[int]:
    return sorted(f["id"] for f in engine.fault_list())


async def test_two_failures_of_one_nic_cleared_newest_first_and_by_a_stale_id(
    make_engine: Any, echo_port: int
) -> None:
    """Cleared in the order opposite to test_overlapping_outages', and the first clear given
    twice: the second is NOT_FOUND and changes nothing (the NIC stays failed)."""
    engine = await make_engine(SINGLE)
    conn = await engine.connect("127.0.0.1", echo_port)
    first = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    second = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    engine.fault_clear(second)
    with pytest.raises(EngineError) as err:
        engine.fault_clear(second)
    assert err.value.code is ErrorCode.NOT_FOUND
    await settled(engine, "nic0", "tcpip")
    assert listed(engine) == [first]
    assert nic_state(engine) == "failed", "nic0 back while a target_failure of it is listed"
    engine.fault_clear(first)
    await eventually(lambda: engine.conn_info(conn)["state"] == "offloaded")
    assert nic_state(engine) == "running" and listed(engine) == []


async def test_a_clear_of_all_brings_back_a_nic_failed_twice(
    make_engine: Any, echo_port: int
) -> None:
    """`fault.clear` of all undoes the faults one by one: the last undo finds none left
    holding the NIC and resumes it (no leak: failed with nothing listed)."""
    engine = await make_engine(SINGLE)
    conn = await engine.connect("127.0.0.1", echo_port)
    engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    engine.fault_clear(None)
    assert listed(engine) == []
    await eventually(lambda: engine.conn_info(conn)["state"] == "offloaded")
    assert nic_state(engine) == "running"


async def test_failures_of_two_nics_each_end_at_their_own_clear(
    make_engine: Any, echo_port: int
) -> None:
    """Only a failure of the same NIC holds it: nic1 comes back at its clear while nic2's
    failure still stands."""
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    one = engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    two = engine.fault_inject({"kind": "target_failure", "layer": "nic2"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(lambda: lowers(engine)["nic2"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    engine.fault_clear(one)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"], "nic1 back at its clear")
    assert lowers(engine)["nic2"]["failed"] and listed(engine) == [two]
    engine.fault_clear(two)
    await eventually(lambda: lowers(engine)["nic2"]["in_service"], "nic2 back at its clear")


async def test_a_nic_down_after_a_nic_up_takes_the_nic_out_again(
    make_engine: Any, echo_port: int
) -> None:
    """nic_down, nic_up (the NIC is back, the first nic_down still listed: docs/faults.md
    "or at a nic_up"), nic_down again: the second takes it out, though the first still
    holds it, and the NIC is back only once both are cleared."""
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    first = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    engine.fault_inject({"kind": "nic_up", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    second = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await settled(engine, "team0", "tcpip")
    assert lowers(engine)["nic1"]["taken_out"], "a nic_down after a nic_up left the NIC in"
    assert "nic1" not in await new_connections_go_to(engine, echo_port, 3)
    engine.fault_clear(second)
    await settled(engine, "team0", "tcpip")
    assert lowers(engine)["nic1"]["taken_out"], "nic1 back while a nic_down of it is listed"
    engine.fault_clear(first)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    assert nic_of(engine, await engine.connect("127.0.0.1", echo_port)) == "nic1"


async def test_two_host_events_of_one_nic_each_end_at_their_own_clear(
    make_engine: Any, echo_port: int
) -> None:
    """Only a host_event of the same event holds it: clearing a media disconnect ends it
    while a capability disabled still stands, and the NIC is offered again once that too is
    cleared (no event left withheld with nothing listed)."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    media = engine.fault_inject(
        {"kind": "host_event", "layer": "nic0", "event": "media_disconnect"}
    )
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    cap = engine.fault_inject(
        {"kind": "host_event", "layer": "nic0", "event": "capability_disabled"}
    )
    engine.fault_clear(media)
    await settled(engine, "tcpip")
    with pytest.raises(EngineError) as err:
        await engine.offload(conn)
    assert "capability_disabled" in str(err.value) and "media_disconnect" not in str(err.value)
    engine.fault_clear(cap)
    assert listed(engine) == []
    assert (await engine.offload(conn))["state"] == "offloaded"


async def test_a_nic_back_from_failure_stays_withheld_by_a_host_event(
    make_engine: Any, echo_port: int
) -> None:
    """A target_failure and a host_event of one NIC: the failure's clear (RESUME) does not
    end the host's own reason, so nothing is offloaded to the NIC until it too is cleared."""
    engine = await make_engine(SINGLE)
    conn = await engine.connect("127.0.0.1", echo_port)
    failure = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    event = engine.fault_inject(
        {"kind": "host_event", "layer": "nic0", "event": "media_disconnect"}
    )
    engine.fault_clear(failure)
    await eventually(lambda: nic_state(engine) == "running")
    await settled(engine, "nic0", "tcpip")
    assert engine.conn_info(conn)["state"] == "host", "offloaded to a NIC the host withholds"
    with pytest.raises(EngineError) as err:
        await engine.offload(conn)
    assert "media_disconnect" in str(err.value)
    engine.fault_clear(event)
    assert listed(engine) == []
    assert (await engine.offload(conn))["state"] == "offloaded"
