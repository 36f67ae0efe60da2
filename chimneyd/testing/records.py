"""What the stub layers record, the receive policies of the protocol stub, and the names of
the handlers on each edge (spec §7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType

from .memwire import MemoryWire

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
PENDING = S.NDIS_STATUS_PENDING
LOOPBACK = b"\x7f\x00\x00\x01"

#: Protocol-edge completion handler -> I/O kind.
COMPLETION_KIND = {
    "ProtocolTcpOffloadSendComplete": "send",
    "ProtocolTcpOffloadReceiveComplete": "receive",
    "ProtocolTcpOffloadDisconnectComplete": "disconnect",
    "ProtocolTcpOffloadForwardComplete": "forward",
}
#: Miniport-edge I/O handler -> I/O kind.
MINIPORT_IO_KIND = {
    "MiniportTcpOffloadSend": "send",
    "MiniportTcpOffloadReceive": "receive",
    "MiniportTcpOffloadDisconnect": "disconnect",
    "MiniportTcpOffloadForward": "forward",
}
#: State operation -> its miniport-edge handler.
STATE_REQUEST = {
    "Initiate": "MiniportInitiateOffload",
    "Terminate": "MiniportTerminateOffload",
    "Update": "MiniportUpdateOffload",
    "Invalidate": "MiniportInvalidateOffload",
    "Query": "MiniportQueryOffload",
}


# ================================================================================================
# records
# ================================================================================================
@dataclass(slots=True)
class IoCompletion:
    """One NBL completed up to the protocol stub, with what it carried at that moment."""

    kind: str
    binding: Binding
    nbl: NetBufferList
    status: NdisStatus
    bytes_transferred: int
    length_before: int  # data length when it was posted
    length_after: int  # data length when it came back


@dataclass(slots=True)
class StateCompletion:
    op: str
    binding: Binding
    root: OffloadBlock
    statuses: list[NdisStatus]  # every block's Status, in walk order, when it came back


@dataclass(slots=True)
class EventIndication:
    handle: NdisOffloadHandle
    event_type: TcpOffloadEventType
    info: int


@dataclass(slots=True)
class ReceiveIndication:
    handle: NdisOffloadHandle
    nbl: NetBufferList
    status: NdisStatus
    data: bytes
    returned: NdisStatus
    consumed: int


@dataclass(slots=True)
class WireEvent:
    """A wire event that reached the protocol stub as the wire's home (host mode)."""

    name: str
    ctx: Any
    args: tuple[Any, ...]


#: What the protocol stub answers a receive indication with: (status, bytes consumed).
ReceivePolicy = Callable[[NetBufferList], tuple[NdisStatus, int]]


def accept_all(nbl: NetBufferList) -> tuple[NdisStatus, int]:
    """Take the whole indication and keep the NBL until it is returned (spec §4.3)."""
    return SUCCESS, nbl.data_length


def refuse_all(nbl: NetBufferList) -> tuple[NdisStatus, int]:
    return S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0


def accept_bytes(n: int) -> ReceivePolicy:
    """Take the first `n` bytes of each indication (all of it if it is not longer)."""

    def policy(nbl: NetBufferList) -> tuple[NdisStatus, int]:
        length = nbl.data_length
        if n >= length:
            return SUCCESS, length
        if n <= 0:
            return S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0
        return S.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED, n

    return policy


def nbl_bytes(nbl: NetBufferList) -> bytes:
    return b"".join(bytes(v) for v in nbl.views())


# ================================================================================================
# offload trees the protocol stub builds
# ================================================================================================
@dataclass(slots=True)
class OffloadTree:
    """An initiate tree and the handles it offloads: neighbor → paths → TCP connections."""

    root: OffloadBlock
    neighbor: NdisOffloadHandle | None
    paths: list[NdisOffloadHandle] = field(default_factory=list)
    tcp: list[NdisOffloadHandle] = field(default_factory=list)
    wires: dict[int, MemoryWire] = field(default_factory=dict)  # TCP handle id -> wire

    @property
    def handles(self) -> list[NdisOffloadHandle]:
        """Every handle the tree names, in walk order."""
        return [b.offload_handle for b in walk(self.root) if b.offload_handle is not None]
