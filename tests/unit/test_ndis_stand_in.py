"""The NIC's stand-in for the broker (`NdisStandIn`, drivers/target/batch.py's `CompletionBatch`)
forwards every NDIS call a layer makes, flushing what it gathered first, and its attribute reads
take the interpreter's plain path: no class under it has a `__getattr__`.

A class with a `__getattr__` puts every attribute read of its objects, found or not, through the
slot of `__getattr__`, which CPython 3.11 does not specialize: ~320 instructions a read under
callgrind where a plain read costs a few, and the NIC reads its `ndis` (the clock, `send`,
`receive`) several times a verified echo round (README, "Benchmarks").
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from chimneyd.compiled import is_compiled
from chimneyd.drivers.target.batch import CompletionBatch
from chimneyd.ndis.broker import Ndis, NdisStandIn
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import NdisStatus
from chimneyd.ndis.trace import HopTrace
from chimneyd.testing.clock import ManualClock
from chimneyd.testing.factories import make_target

#: what the engine calls on its `Ndis` and no layer does: the topology it builds, the stats it
#: reads, what NDIS still keeps of initiates at shutdown
ENGINE_ONLY = {"register", "bind", "stats", "walks_in_flight"}
#: every call a layer may make on its `ndis`
LAYER_CALLS = sorted(
    name
    for name, fn in inspect.getmembers(Ndis, callable)
    if not name.startswith("_") and name not in ENGINE_ONLY
)


#: what the calls that answer something answer (the rest answer None)
RETURNS = {
    **dict.fromkeys(
        [
            "NdisSetOptionalHandlers",
            "NdisOffloadTcpSend",
            "NdisOffloadTcpReceive",
            "NdisOffloadTcpDisconnect",
            "NdisOffloadTcpForward",
            "NdisOffloadTcpReceiveReturn",
        ],
        "NdisStatus",
    ),
    "NdisMGetOffloadHandlers": "Any",
    "path_of": "list[Layer]",
    "new_trace": "HopTrace",
}


def _result_of(name: str) -> Any:
    """A value of the type `Ndis.<name>` returns, apart from any other call's: the compiled
    build checks a forwarder's result against its annotation."""
    returns = RETURNS.get(name, "None")
    if returns == "NdisStatus":
        return NdisStatus.NDIS_STATUS_RESOURCES  # not a SUCCESS a forwarder could make up
    if returns == "HopTrace":
        return HopTrace(7, 4, lambda: 0)
    if returns == "list[Layer]":
        return []
    if returns == "None":
        return None
    return object()


def test_the_table_of_results_is_the_stand_ins() -> None:
    # read off the source where it runs as Python (the compiled build's methods carry no
    # annotations, and it checks each result against its own instead)
    if is_compiled():
        return
    for name in LAYER_CALLS:
        annotated = inspect.signature(getattr(NdisStandIn, name)).return_annotation
        assert RETURNS.get(name, "None") == annotated, name


class RecordingBroker:
    """Records each call made on it, by name, with the NBL ids of a completion's chain, and
    remembers what it answered each."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.results: dict[str, Any] = {}

    def clock(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> Any:
            nbls = args[1] if len(args) == 2 and isinstance(args[1], NetBufferList) else None
            self.calls.append((name, [n.id for n in iter_chain(nbls)] if nbls else []))
            result = self.results[name] = _result_of(name)
            return result

        return call


def _nic_batching() -> tuple[Any, CompletionBatch]:
    clock = ManualClock()
    nic = make_target(Ndis(clock=clock), clock.timers(), lambda *key: None, "nic0")
    nic.complete_per_drain()  # as the asyncio runtime does
    assert nic.batch is not None
    return nic, nic.batch


def test_layer_calls_are_known() -> None:
    # the list below is Ndis's: a rename there must not empty it
    assert "NdisOffloadTcpSend" in LAYER_CALLS and "NdisTcpOffloadSendComplete" in LAYER_CALLS
    assert len(LAYER_CALLS) >= 30


@pytest.mark.parametrize("name", LAYER_CALLS)
def test_the_stand_in_forwards_each_call_after_what_it_gathered(name: str) -> None:
    assert name in vars(NdisStandIn), f"NdisStandIn has no forwarder for Ndis.{name}"
    broker = RecordingBroker()
    nic, _ = _nic_batching()
    batch = CompletionBatch(broker, nic)
    gathered = [NetBufferList.for_data(b"x")]
    batch.send(object(), gathered)
    result = getattr(batch, name)("arg")
    assert broker.calls == [
        ("NdisTcpOffloadSendComplete", [gathered[0].id]),  # the gathered completion first
        (name, []),
    ]
    assert result is broker.results[name]  # the broker's result is the call's


def test_the_nic_reads_its_stand_in_without_a_getattr_hook() -> None:
    nic, batch = _nic_batching()
    assert nic.ndis is batch
    # CPython installs the slot of `__getattr__` when the type or any base defines one
    hooked = [cls.__qualname__ for cls in type(batch).__mro__ if "__getattr__" in vars(cls)]
    assert hooked == []
    assert not hasattr(type(batch), "__getattr__")
    # what the NIC reads on its hot path is the batch's own, not the broker's looked up late
    assert batch.clock is batch.broker.clock
    assert callable(batch.send) and callable(batch.receive)
