"""One connection offloaded straight onto the offload target under test, over a MemoryWire:
the protocol stub's side of the target's unit tests (spec §3.2, §6.2)."""

from __future__ import annotations

from chimneyd.testing import MemoryWire, OffloadTree, Stack
from chimneyd.testing.factories import loopback_target_stack


class OffloadedConn:
    """The protocol stub over the target, one connection offloaded on a MemoryWire."""

    def __init__(self) -> None:
        self.st: Stack = loopback_target_stack()
        self.nic = self.st.under_test[0]
        self.wire: MemoryWire = self.st.wires.open()
        self.top = self.st.top
        self.tree: OffloadTree = self.top.connection_tree([self.wire])
        self.top.initiate(self.tree.root)
        self.st.run()
        (self.handle,) = self.tree.tcp
        self.ctx = self.handle.miniport_offload_context
