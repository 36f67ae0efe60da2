"""Two outages of one NIC that overlap: the NIC stays out until the last of them is cleared.

A `target_failure` is listed by `fault.list` until it is cleared, and while one is listed its
NIC is failed (docs/faults.md `target_failure`: `stack.info` shows it `failed`, offloads to it
are refused, spec §5.5: no RESUME until it works again). Clearing one of two failures of one
NIC must not indicate `NDIS_STATUS_OFFLOAD_RESUME` while the other still stands; the same for
two `nic_down`s of one NIC under a MUX. A `nic_down` and a `target_failure` of one NIC are two
states the MUX keeps apart (`taken_out`, `failed`): either keeps the NIC out of service."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import LayerConfig
from tests.integration.support import eventually
from tests.integration.test_mux import all_offloaded, lowers, nic_of, teaming


async def drained(task_owner: Any) -> None:
    """Wait until the layer's inbox has run everything pushed into it before this call: a
    RESUME a clear would push is then indicated, or never will be (inboxes are FIFO)."""
    done = asyncio.get_running_loop().create_future()
    task_owner.inbox.push(lambda: done.done() or done.set_result(None), ())
    await done


async def settled(engine: Any, *names: str) -> None:
    """Every layer named, in order from the bottom up, ran what was pushed into it so far."""
    for name in names:
        await drained(engine.driver_layer(name))


async def new_connections_go_to(engine: Any, port: int, n: int) -> list[str]:
    """The NICs `n` new connections are placed on."""
    return [nic_of(engine, await engine.connect("127.0.0.1", port)) for _ in range(n)]


async def test_a_nic_failed_twice_stays_failed_until_both_are_cleared(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(
        (LayerConfig("tcpip", "host", ("nic0",)), LayerConfig("nic0", "target", (), 64))
    )
    conn = await engine.connect("127.0.0.1", echo_port)
    first = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    second = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    engine.fault_clear(first)
    await settled(engine, "nic0", "tcpip")
    assert [f["id"] for f in engine.fault_list()] == [second]
    # the second failure still stands: the NIC is failed and the host was told no RESUME
    nic = next(la for la in engine.info()["layers"] if la["name"] == "nic0")
    assert nic["state"] == "failed", "nic0 came back while a target_failure of it is listed"
    fresh = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(fresh)["state"] == "host", "offloaded to a failed NIC"
    engine.fault_clear(second)  # the last one: RESUME, and the host offloads again
    await eventually(lambda: engine.conn_info(conn)["state"] == "offloaded")
    nic = next(la for la in engine.info()["layers"] if la["name"] == "nic0")
    assert nic["state"] == "running"


async def test_a_team_nic_failed_twice_takes_no_connection_until_both_are_cleared(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    first = engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    second = engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    engine.fault_clear(first)
    await settled(engine, "nic1", "team0", "tcpip")
    assert lowers(engine)["nic1"]["failed"], "nic1 back while a target_failure of it is listed"
    # least-loaded would put every new connection on the empty nic1 were it back
    assert "nic1" not in await new_connections_go_to(engine, echo_port, 3)
    engine.fault_clear(second)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    assert nic_of(engine, await engine.connect("127.0.0.1", echo_port)) == "nic1"


async def test_a_nic_taken_out_twice_stays_out_until_both_are_cleared(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    first = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    second = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    engine.fault_clear(first)
    await settled(engine, "team0", "tcpip")
    assert lowers(engine)["nic1"]["taken_out"], "nic1 back while a nic_down of it is listed"
    # least-loaded would put every new connection on the empty nic1 were it back
    assert "nic1" not in await new_connections_go_to(engine, echo_port, 3)
    engine.fault_clear(second)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    assert nic_of(engine, await engine.connect("127.0.0.1", echo_port)) == "nic1"


async def test_a_nic_down_and_a_target_failure_of_one_nic_each_keep_it_out(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    down = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    failed = engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    engine.fault_clear(down)  # still failed
    await settled(engine, "nic1", "team0", "tcpip")
    assert not lowers(engine)["nic1"]["in_service"]
    assert "nic1" not in await new_connections_go_to(engine, echo_port, 2)
    down = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    engine.fault_clear(failed)  # still taken out
    await settled(engine, "nic1", "team0", "tcpip")
    await eventually(lambda: not lowers(engine)["nic1"]["failed"])
    assert lowers(engine)["nic1"]["taken_out"] and not lowers(engine)["nic1"]["in_service"]
    assert "nic1" not in await new_connections_go_to(engine, echo_port, 2)
    engine.fault_clear(down)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    assert nic_of(engine, await engine.connect("127.0.0.1", echo_port)) == "nic1"


async def test_a_host_event_given_twice_withholds_the_nic_until_both_are_cleared(
    make_engine: Any, echo_port: int
) -> None:
    """Two `host_event`s of one kind on one NIC: the host offloads to it again only once
    neither is listed (docs/faults.md `host_event`: "offloads none to it until cleared")."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    spec = {"kind": "host_event", "layer": "nic0", "event": "media_disconnect"}
    first = engine.fault_inject(spec)
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    second = engine.fault_inject(spec)
    engine.fault_clear(first)
    await settled(engine, "tcpip")
    with pytest.raises(EngineError) as err:
        await engine.offload(conn)
    assert err.value.code is ErrorCode.INVALID_STATE and "media_disconnect" in str(err.value)
    engine.fault_clear(second)
    assert (await engine.offload(conn))["state"] == "offloaded"
