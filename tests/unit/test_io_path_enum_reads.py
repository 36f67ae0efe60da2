"""The offloaded I/O path reads no enum member off its class.

On Python 3.11 a read such as `TcpState.RESET` passes through the slot of
`EnumType.__getattr__` even when the member is found: ~800 instructions under callgrind, where
a module constant costs a few (README, "Benchmarks"). The drivers' send and receive paths read
the members they test as module constants; this counts every member read off an enum class
(`EnumType.__getattribute__` wrapped) during verified echo rounds through host → IM → target
on memory wires.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any

import pytest

from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import MemoryWire

PAYLOAD = b"chimney" * 300


def _round(rig: HostRig, conn: int, wire: MemoryWire) -> None:
    """One verified echo round: a send the peer acknowledges, then a read of its answer,
    asked before the answer comes (a posted receive) and once more after it (an indication)."""
    sent = rig.call(rig.host.app_send, conn, PAYLOAD)
    wire.ack()
    rig.run()
    assert sent.done and sent.value == len(PAYLOAD), sent
    read = rig.call(rig.host.app_recv, conn, len(PAYLOAD), True)
    wire.peer_send(PAYLOAD)
    rig.run()
    assert read.done and read.value == PAYLOAD, read
    wire.peer_send(PAYLOAD)
    rig.run()
    again = rig.call(rig.host.app_recv, conn, len(PAYLOAD), True)
    assert again.done and again.value == PAYLOAD, again


def test_echo_rounds_read_no_enum_member_off_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    assert rig.host.tcbs[conn].state == "offloaded"
    _round(rig, conn, wire)  # warm: buffers posted, backlog said
    reads: Counter[str] = Counter()
    plain = type.__getattribute__

    def counting(cls: Any, name: str) -> Any:
        value = plain(cls, name)
        if isinstance(value, enum.Enum):
            reads[f"{cls.__name__}.{name}"] += 1
        return value

    monkeypatch.setattr(enum.EnumType, "__getattribute__", counting, raising=False)
    for _ in range(3):
        _round(rig, conn, wire)
    monkeypatch.undo()
    assert not reads, reads
    assert rig.problems() == []
