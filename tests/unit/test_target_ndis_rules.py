"""The offload target against the rules of Microsoft's chimney pages that docs/spec.md restates:
disconnects (§4.5), statuses after an upload request (§3.6.4), hardware failure (§3.7), the
initiate walk (§3.2.4) and forwarded segments checked as segments from the wire (§4.6, §5.2).

The protocol stub plays the host and a MemoryWire the peer, so every status and ordering is
deterministic (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType
from chimneyd.testing import MemoryWire, OffloadTree, Stack
from chimneyd.testing.factories import loopback_target_stack

GRACEFUL = TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
ABORTIVE = TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE


class Conn:
    """One offloaded connection on the target: the stack, its wire and its handle."""

    def __init__(self, push_ticks_ms: int = 500) -> None:
        self.st: Stack = loopback_target_stack(push_ticks_ms=push_ticks_ms)
        self.wire: MemoryWire = self.st.wires.open()
        self.wire.set_home(self.st.top, "host")
        self.top = self.st.top

    def offload(self) -> Conn:
        tree = self.top.connection_tree([])
        path = tree.root.dependent_block_list
        assert path is not None
        block = path.add_dependent(self.top.tcp_block(self.wire))
        assert block.offload_handle is not None
        self.handle = block.offload_handle
        tree.tcp.append(self.handle)
        self.tree: OffloadTree = tree
        self.top.initiate(tree.root)
        self.st.run()
        assert self.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
        return self

    def send(self, *payloads: bytes) -> list[NetBufferList]:
        nbls = self.top.send(self.handle, *payloads)
        self.st.run()
        return nbls

    def terminate(self) -> None:
        self.top.terminate(self.top.reference_tree(self.tree, state="delegated"))
        self.st.run()

    def events(self) -> list[tuple[TcpOffloadEventType, int]]:
        return [(e.event_type, e.info) for e in self.top.events]

    def order(self) -> list[tuple[str, int]]:
        """Every completion the host saw, as (kind, NBL id), in the order it saw them."""
        return [(c.kind, c.nbl.id) for c in self.top.completions]


# -- disconnect (spec §4.5) ---------------------------------------------------------------------------
def test_abortive_disconnect_ends_a_pending_graceful_disconnect_as_aborted() -> None:
    """Spec §4.5: a graceful disconnect's SUCCESS means its FIN was acknowledged, and a target
    may fail a disconnect once the connection is aborted. After the host's abortive disconnect
    that FIN can never be acknowledged: the earlier graceful disconnect comes back
    REQUEST_ABORTED, in posting order (before the abortive one), not at a later terminate."""
    c = Conn().offload()
    graceful = c.top.disconnect(c.handle, GRACEFUL)
    c.st.run()
    assert c.top.completed("disconnect") == []  # the FIN is not acknowledged yet
    abortive = c.top.disconnect(c.handle, ABORTIVE)
    c.st.run()
    assert abortive.status == S.NDIS_STATUS_SUCCESS  # the RST went out
    assert c.top.completed("disconnect") == [graceful, abortive]
    assert graceful.status == S.NDIS_STATUS_REQUEST_ABORTED
