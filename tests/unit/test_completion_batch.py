"""The NIC's completions of one drain, made as one call each (chimneyd/drivers/target/batch.py).

A recording stand-in for the broker takes the calls the batch makes; nothing else of the stack
is involved (the NIC is a real one, never called).
"""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.target.batch import CompletionBatch
from chimneyd.ndis.broker import Ndis
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.testing.clock import ManualClock
from chimneyd.testing.factories import make_target


class FakeBroker:
    """Records the calls the batch makes (a `batch.Broker`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.ticks = 0

    def clock(self) -> int:
        self.ticks += 1
        return self.ticks

    def NdisTcpOffloadSendComplete(self, caller: Any, head: NetBufferList) -> None:
        self.calls.append(("send", [n.id for n in iter_chain(head)]))

    def NdisTcpOffloadReceiveComplete(self, caller: Any, head: NetBufferList) -> None:
        self.calls.append(("receive", [n.id for n in iter_chain(head)]))

    def NdisTcpOffloadEventHandler(self, caller: Any, *args: Any) -> None:
        self.calls.append(("event", []))


def _batch() -> tuple[CompletionBatch, FakeBroker]:
    broker = FakeBroker()
    clock = ManualClock()
    ndis = Ndis(clock=clock)
    nic = make_target(ndis, clock.timers(), lambda *key: None, "nic0")
    return CompletionBatch(broker, nic), broker


def _nbls(n: int) -> list[NetBufferList]:
    return [NetBufferList.for_data(b"x") for _ in range(n)]


def test_completions_of_several_connections_go_up_in_one_call_each_at_the_flush() -> None:
    batch, broker = _batch()
    a, b, c = object(), object(), object()
    sa, sb, rc = _nbls(2), _nbls(1), _nbls(1)
    batch.send(a, sa)
    batch.send(b, sb)
    batch.receive(c, rc)
    assert broker.calls == []  # nothing before the drain ends
    batch.flush()
    assert broker.calls == [
        ("send", [n.id for n in sa + sb]),
        ("receive", [n.id for n in rc]),
    ]
    batch.flush()  # nothing gathered: no call
    assert len(broker.calls) == 2


def test_a_second_completion_of_a_connection_keeps_its_own_call() -> None:
    batch, broker = _batch()
    a, b = object(), object()
    first, other, second = _nbls(1), _nbls(1), _nbls(1)
    batch.send(a, first)
    batch.send(b, other)
    batch.receive(a, second)  # a again: what was gathered goes first
    assert broker.calls == [("send", [first[0].id, other[0].id])]
    batch.flush()
    assert broker.calls[1:] == [("receive", [second[0].id])]


def test_any_other_call_of_the_nic_comes_after_what_was_gathered() -> None:
    batch, broker = _batch()
    sent = _nbls(1)
    batch.send(object(), sent)
    batch.clock()  # reading the clock is no call: nothing is flushed
    assert broker.calls == []
    batch.NdisTcpOffloadEventHandler(None, "event")
    assert broker.calls == [("send", [sent[0].id]), ("event", [])]
