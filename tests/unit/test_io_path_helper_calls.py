"""The offloaded I/O path makes no call it only needs for a case it is not in.

Under callgrind a Python call costs some 300-500 instructions (README, "Benchmarks"), and an
echo round through host → IM → target made a dozen that did nothing for it: `take_failure`
with no `fail_next` fault set (3 a round), the target context's `lifecycle` property, which
returns the context itself (4), and `grown` for a queue appended to (5); then the host's
`at_eof` (and its `fin_reached`) and `_after_consume` with neither a paused read nor a refused
indication to undo (3.5), and the target's `watch` (2). The I/O path tests what they test in
place; this counts the calls of those helpers during verified echo rounds on memory wires,
with `sys.setprofile`.
"""

from __future__ import annotations

import sys
from collections import Counter
from types import FrameType
from typing import Any

from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import MemoryWire

PAYLOAD = b"chimney" * 300
HELPERS = {"take_failure", "lifecycle", "grown", "at_eof", "_after_consume", "watch"}


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


def test_echo_rounds_call_no_idle_helper() -> None:
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    assert rig.host.tcbs[conn].state == "offloaded"
    _round(rig, conn, wire)  # warm: buffers posted, backlog said
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in HELPERS:
            calls[
                f"{frame.f_code.co_name} from {frame.f_back and frame.f_back.f_code.co_name}"
            ] += 1

    sys.setprofile(profile)
    try:
        for _ in range(3):
            _round(rig, conn, wire)
    finally:
        sys.setprofile(None)
    assert not calls, f"helper calls in 3 echo rounds: {dict(calls)}"
