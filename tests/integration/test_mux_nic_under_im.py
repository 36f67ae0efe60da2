"""`nic_down` and `nic_up` name a NIC under a team through IMs (team0 -> imA -> nic0), as
`host_event` on that NIC reaches the MUX: the engine walks up from the NIC to the MUX it is
bound under, one walk for both (`Engine.team_above`). The MUX takes its binding on that side
(to imA) out of service and moves that NIC's connections only (spec §5.5, §5.2); a NIC under
no team stays `INVALID_PARAMS`."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import DEFAULT_LAYERS, LayerConfig
from tests.integration.support import eventually
from tests.integration.test_mux import all_offloaded, echo, lowers, nic_of
from tests.integration.test_overlapping_outages import settled

#: tcpip -> team0 (mux) -> [imA -> nic0, nic1]
THROUGH_IM = (
    LayerConfig("tcpip", "host", ("team0",)),
    LayerConfig("team0", "mux", ("imA", "nic1"), policy="round-robin"),
    LayerConfig("imA", "passthrough", ("nic0",)),
    LayerConfig("nic0", "target", ()),
    LayerConfig("nic1", "target", ()),
)


def placed(engine: Any, conns: list[int]) -> Counter[str]:
    return Counter(nic_of(engine, c) for c in conns)


async def test_nic_down_and_nic_up_reach_the_mux_through_an_im(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(THROUGH_IM)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    await eventually(all_offloaded(engine, conns))
    assert placed(engine, conns) == {"nic0": 2, "nic1": 2}
    assert [engine.conn_info(c)["path"][1:] for c in conns[:2]] == [
        ["team0", "imA", "nic0"],
        ["team0", "nic1"],
    ]
    down = engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    await eventually(lambda: not lowers(engine)["imA"]["in_service"], "imA taken out")
    await eventually(lambda: lowers(engine)["imA"]["connections"] == 0, "nic0 emptied")
    await eventually(all_offloaded(engine, conns))
    assert placed(engine, conns) == {"nic1": 4}
    assert lowers(engine)["imA"]["taken_out"]
    for c in conns:
        await echo(engine, c, os.urandom(2048))
    engine.fault_inject({"kind": "nic_up", "layer": "nic0"})
    await eventually(lambda: lowers(engine)["imA"]["in_service"], "imA back in service")
    # nothing moves by itself (docs/faults.md `nic_up`); a rebalance lets them back
    assert placed(engine, conns) == {"nic1": 4}
    engine.fault_inject({"kind": "rebalance", "layer": "team0"})
    await eventually(lambda: lowers(engine)["imA"]["connections"] == 2, "back on nic0")
    await eventually(all_offloaded(engine, conns))
    assert placed(engine, conns) == {"nic0": 2, "nic1": 2}
    for c in conns:
        await echo(engine, c, os.urandom(2048))
    engine.fault_clear(down)


async def test_clearing_nic_down_of_a_nic_under_an_im_puts_it_back(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(THROUGH_IM)
    down = engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    await eventually(lambda: not lowers(engine)["imA"]["in_service"], "imA taken out")
    conn = await engine.connect("127.0.0.1", echo_port)
    await eventually(all_offloaded(engine, [conn]))
    assert nic_of(engine, conn) == "nic1"
    engine.fault_clear(down)
    await eventually(lambda: lowers(engine)["imA"]["in_service"], "imA back in service")
    later = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    await eventually(all_offloaded(engine, later))
    assert "nic0" in placed(engine, later)
    for c in [conn, *later]:
        await echo(engine, c, os.urandom(1024))


async def test_the_nic_and_the_im_over_it_are_under_one_binding(make_engine: Any) -> None:
    """One walk: the NIC and the IM over it are under the same MUX binding, the one to imA."""
    engine = await make_engine(THROUGH_IM)
    mux, binding = engine.mux_above("nic0")
    assert (mux.name, binding.lower.name) == ("team0", "imA")
    assert engine.mux_above("imA") == (mux, binding)
    assert engine.team_above(engine.driver_layer("nic0")) == (mux, binding)


@pytest.mark.parametrize("kind", ["nic_down", "nic_up"])
@pytest.mark.parametrize("name", ["nic0", "im0", "tcpip"])
async def test_a_layer_under_no_team_is_invalid_params(
    make_engine: Any, kind: str, name: str
) -> None:
    engine = await make_engine(DEFAULT_LAYERS)
    with pytest.raises(EngineError) as err:
        engine.fault_inject({"kind": kind, "layer": name})
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert f"layer {name!r} is not under a mux" in str(err.value)
    assert engine.fault_list() == []


@pytest.mark.parametrize("kind", ["nic_down", "nic_up"])
async def test_the_team_itself_is_invalid_params(make_engine: Any, kind: str) -> None:
    engine = await make_engine(THROUGH_IM)
    with pytest.raises(EngineError) as err:
        engine.fault_inject({"kind": kind, "layer": "team0"})
    assert err.value.code == ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize(("first", "second"), [("nic0", "imA"), ("imA", "nic0")])
async def test_a_nic_taken_out_by_both_its_names_stays_out_until_both_are_cleared(
    make_engine: Any, echo_port: int, first: str, second: str
) -> None:
    """`layer=nic0` and `layer=imA` are one and the same (docs/faults.md `nic_down`): two
    `nic_down`s of one NIC, one by each name, keep it out until both are cleared, as two by
    one name do (test_overlapping_outages.py)."""
    engine = await make_engine(THROUGH_IM)
    a = engine.fault_inject({"kind": "nic_down", "layer": first})
    await eventually(lambda: not lowers(engine)["imA"]["in_service"], "imA taken out")
    b = engine.fault_inject({"kind": "nic_down", "layer": second})
    engine.fault_clear(a)
    await settled(engine, "team0", "tcpip")
    assert lowers(engine)["imA"]["taken_out"], "nic0 back while a nic_down of it is listed"
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    await eventually(all_offloaded(engine, conns))
    assert placed(engine, conns) == {"nic1": 2}
    engine.fault_clear(b)
    await eventually(lambda: lowers(engine)["imA"]["in_service"], "imA back in service")
