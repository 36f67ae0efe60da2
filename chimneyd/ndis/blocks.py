"""Offload block lists and the three state objects: neighbor → path → TCP (spec §2).

One `OffloadBlock` class carries both views of a block: the protocol view (`offload_handle`) and
the miniport view (`miniport_offload_context`, `ndis_offload_handle`). NDIS converts a protocol
block list to a miniport one in place, as the real overlay does (spec §1.6); an IM driver builds a
mirror tree for its lower edge (spec §1.6 [EMU]).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .handles import NdisOffloadHandle
from .nbl import NetBufferList
from .status import NdisStatus, OffloadStateType, TcpOffloadConnectionState

# --- state structures (spec §2.2) -------------------------------------------------------------


@dataclass(slots=True)
class NeighborOffloadStateConst:
    DlSourceAddress: bytes = b""
    VlanId: int = 0


@dataclass(slots=True)
class NeighborOffloadStateCached:
    DlDestinationAddress: bytes = b""
    HostReachabilityDelta: int = 0


@dataclass(slots=True)
class NeighborOffloadStateDelegated:
    NicReachabilityDelta: int = 0


@dataclass(slots=True)
class PathOffloadStateConst:
    SourceAddress: bytes = b""
    DestinationAddress: bytes = b""


@dataclass(slots=True)
class PathOffloadStateCached:
    PathMtu: int = 65495


@dataclass(slots=True)
class PathOffloadStateDelegated:
    """Header-only in NDIS (spec §2.2)."""


TCP_FLAG_TIMESTAMP_ENABLED = 0x01
TCP_FLAG_SACK_ENABLED = 0x02
TCP_FLAG_WINDOW_SCALING_ENABLED = 0x04

TCP_FLAG_KEEP_ALIVE_ENABLED = 0x01
TCP_FLAG_NAGLING_ENABLED = 0x02
TCP_FLAG_KEEP_ALIVE_RESTART = 0x04
TCP_FLAG_MAX_RT_RESTART = 0x08
TCP_FLAG_UPDATE_RCV_WND = 0x10

#: A timer that is not running, in delegated state (spec §3.6.3, §8).
TIMER_NOT_RUNNING = -1
#: `SendBacklogSize` / `ReceiveBacklogSize` "not supported" (spec §2.2).
BACKLOG_UNSUPPORTED = 0xFFFFFFFF


@dataclass(slots=True)
class TcpOffloadStateConst:
    Flags: int = 0
    RemotePort: int = 0
    LocalPort: int = 0
    SndWindScale: int = 0
    RcvWindScale: int = 0
    RemoteMss: int = 65483
    HashValue: int = 0


@dataclass(slots=True)
class TcpOffloadStateCached:
    Flags: int = 0
    InitialRcvWnd: int = 65535
    RcvIndicationSize: int = 0
    KaProbeCount: int = 0
    KaTimeout: int = 0
    KaInterval: int = 0
    MaxRT: int = 0
    FlowLabel: int = 0
    TtlOrHopLimit: int = 64
    TosOrTrafficClass: int = 0
    UserPriority: int = 0


@dataclass(slots=True)
class TcpOffloadStateDelegated:
    State: TcpOffloadConnectionState = TcpOffloadConnectionState.TcpConnectionEstablished
    Flags: int = 0
    RcvNxt: int = 0
    RcvWnd: int = 0
    SndUna: int = 0
    SndNxt: int = 0
    SndMax: int = 0
    SndWnd: int = 0
    MaxSndWnd: int = 0
    SendWL1: int = 0
    CWnd: int = 0
    SsThresh: int = 0
    SRtt: int = 0  # 8x ticks, USHORT (spec §8)
    RttVar: int = 0  # 4x ticks, USHORT
    TsRecent: int = 0
    TsRecentAge: int = 0
    TsTime: int = 0
    TotalRT: int = 0
    DupAckCount: int = 0
    SndWndProbeCount: int = 0
    KeepAliveProbeCount: int = 0
    KeepAliveTimeoutDelta: int = TIMER_NOT_RUNNING
    RetransmitCount: int = 0
    RetransmitTimeoutDelta: int = TIMER_NOT_RUNNING
    # Unions (spec §2.2): pointers at initiate/terminate, sizes in a query answer.
    SendDataHead: NetBufferList | None = None
    SendDataTail: NetBufferList | None = None
    SendBacklogSize: int = BACKLOG_UNSUPPORTED
    BufferedData: NetBufferList | None = None
    ReceiveBacklogSize: int = BACKLOG_UNSUPPORTED
    DWnd: int = 0

    def as_map(self) -> dict[str, Any]:
        """The delegated variables as plain values (pointers left out) for RPC and traces."""
        return {
            "State": self.State.name,
            "RcvNxt": self.RcvNxt,
            "RcvWnd": self.RcvWnd,
            "SndUna": self.SndUna,
            "SndNxt": self.SndNxt,
            "SndMax": self.SndMax,
            "SndWnd": self.SndWnd,
            "MaxSndWnd": self.MaxSndWnd,
            "SendWL1": self.SendWL1,
            "CWnd": self.CWnd,
            "SsThresh": self.SsThresh,
            "SRtt": self.SRtt,
            "RttVar": self.RttVar,
            "TsRecent": self.TsRecent,
            "TsRecentAge": self.TsRecentAge,
            "TsTime": self.TsTime,
            "TotalRT": self.TotalRT,
            "DupAckCount": self.DupAckCount,
            "SndWndProbeCount": self.SndWndProbeCount,
            "KeepAliveProbeCount": self.KeepAliveProbeCount,
            "KeepAliveTimeoutDelta": self.KeepAliveTimeoutDelta,
            "RetransmitCount": self.RetransmitCount,
            "RetransmitTimeoutDelta": self.RetransmitTimeoutDelta,
            "SendBacklogSize": self.SendBacklogSize,
            "ReceiveBacklogSize": self.ReceiveBacklogSize,
        }


# --- blocks -------------------------------------------------------------------------------------


class BlockKind(Enum):
    NEIGHBOR = "neighbor"
    PATH = "path"
    TCP = "tcp"


_KIND_OF_TYPE = {
    **{t: BlockKind.NEIGHBOR for t in range(1, 5)},
    **{t: BlockKind.PATH for t in range(5, 13)},
    **{t: BlockKind.TCP for t in range(13, 18)},
}


class BlockRole(Enum):
    """Role of a block in an initiate tree (spec §2.3)."""

    PLACEHOLDER = "placeholder"
    LINKER = "linker"
    NEW_OFFLOAD = "new offload"


#: [EMU] A connection's placement wish, for a MUX (drivers/mux/placement.py): the NIC it must
#: go to (None: any), and the NICs it must not go to.
PlacementWish = tuple[str | None, frozenset[str]]


class OffloadBlock:
    """`NDIS_PROTOCOL_OFFLOAD_BLOCK_LIST` / `NDIS_MINIPORT_OFFLOAD_BLOCK_LIST` (spec §2.1)."""

    __slots__ = (
        "cached",
        "const",
        "delegated",
        "dependent_block_list",
        "header_type",
        "held_ns",
        "im_reserved",
        "miniport_offload_context",
        "miniport_reserved",
        "ndis_offload_handle",
        "net_buffer_list_chain",
        "next_block",
        "offload_handle",
        "port_number",
        "protocol_reserved",
        "scratch",
        "source_handle",
        "status",
        "wish",
    )

    def __init__(
        self,
        header_type: OffloadStateType,
        offload_handle: NdisOffloadHandle | None = None,
        const: Any = None,
        cached: Any = None,
        delegated: Any = None,
    ) -> None:
        self.header_type = header_type
        self.next_block: OffloadBlock | None = None
        self.dependent_block_list: OffloadBlock | None = None
        self.status = NdisStatus.NDIS_STATUS_PENDING
        # protocol view
        self.offload_handle = offload_handle
        # miniport view: the cell (the upper handle whose slot the miniport fills) or None for
        # a placeholder, and the upper handle to pass back in indications (spec §1.2).
        self.miniport_offload_context: NdisOffloadHandle | None = None
        self.ndis_offload_handle: NdisOffloadHandle | None = None
        self.protocol_reserved: Any = None
        self.miniport_reserved: Any = None
        self.im_reserved: Any = None
        self.scratch: Any = None
        self.source_handle: Any = None
        self.port_number = 0
        self.net_buffer_list_chain: NetBufferList | None = None
        self.const = const
        self.cached = cached
        self.delegated = delegated
        # [EMU] not NDIS: how long the layers above held this initiate before passing it on
        # (`fin_wait_2.spend_held`), ns; each layer copies it onto the block it sends down
        self.held_ns = 0
        # [EMU] not NDIS: where the host wishes this offload of the connection placed, read
        # by a MUX below (`MuxIm._initiate`); each IM copies it down. None: no wish, the MUX's
        # policy places it. A parameter of this initiate (spec §3.2: the host asks, the MUX
        # places, §5.5), so it goes with the request and no further
        self.wish: PlacementWish | None = None

    def mirror(self, offload_handle: Any) -> OffloadBlock:
        """The block an intermediate layer sends down for this one: its own `offload_handle`,
        the same state structures and send NBLs (spec §1.6, §3.2.5: the same state goes down,
        filled in place), and what the layers above noted on it (`held_ns`, `wish`)."""
        low = OffloadBlock(
            self.header_type, offload_handle, self.const, self.cached, self.delegated
        )
        low.net_buffer_list_chain = self.net_buffer_list_chain
        low.port_number = self.port_number
        low.held_ns = self.held_ns  # how long layers above held it (`fin_wait_2.spend_held`)
        low.wish = self.wish  # for a MUX below [EMU]
        return low

    @property
    def kind(self) -> BlockKind:
        return _KIND_OF_TYPE[int(self.header_type)]

    def role(self) -> BlockRole:
        """Placeholder, linker or new offload, from the miniport view (spec §2.3)."""
        cell = self.miniport_offload_context
        if cell is None:
            return BlockRole.PLACEHOLDER
        if cell.miniport_offload_context is not None:
            return BlockRole.LINKER
        return BlockRole.NEW_OFFLOAD

    def add_dependent(self, block: OffloadBlock) -> OffloadBlock:
        """Append `block` to this block's dependent list (returns it for chaining)."""
        if self.kind is BlockKind.TCP:
            raise ValueError("a TCP block has no dependents (spec §2.1)")
        self.dependent_block_list = chain_append(self.dependent_block_list, block)
        return block

    def add_dependents(self, blocks: list[OffloadBlock]) -> None:
        """Append single `blocks`, in order, to this block's dependent list, walking the list
        once for all of them: a whole NIC's initiate or terminate holds 10,000 connections
        under one path, and an `add_dependent` each walks n²/2 blocks in all (two seconds of
        a busy daemon's loop at a target failure's RESUME, measured)."""
        if not blocks:
            return
        if self.kind is BlockKind.TCP:
            raise ValueError("a TCP block has no dependents (spec §2.1)")
        for block, after in itertools.pairwise(blocks):
            block.next_block = after
        self.dependent_block_list = chain_append(self.dependent_block_list, blocks[0])

    def dependents(self) -> Iterator[OffloadBlock]:
        block = self.dependent_block_list
        while block is not None:
            yield block
            block = block.next_block

    def __repr__(self) -> str:
        return f"<OffloadBlock {self.kind.value} {self.header_type.name} status={self.status:#x}>"


def walk(root: OffloadBlock | None) -> Iterator[OffloadBlock]:
    """Depth first, then next: the mandatory traversal order (spec §3.2.2)."""
    block = root
    while block is not None:
        yield block
        yield from walk(block.dependent_block_list)
        block = block.next_block


def new_neighbor_block(
    handle: NdisOffloadHandle | None,
    const: NeighborOffloadStateConst | None = None,
    cached: NeighborOffloadStateCached | None = None,
    delegated: NeighborOffloadStateDelegated | None = None,
) -> OffloadBlock:
    return OffloadBlock(OffloadStateType.NeighborOffloadState, handle, const, cached, delegated)


def new_path_block(
    handle: NdisOffloadHandle | None,
    const: PathOffloadStateConst | None = None,
    cached: PathOffloadStateCached | None = None,
    delegated: PathOffloadStateDelegated | None = None,
    ipv6: bool = False,
) -> OffloadBlock:
    kind = OffloadStateType.Ip6OffloadState if ipv6 else OffloadStateType.Ip4OffloadState
    return OffloadBlock(kind, handle, const, cached, delegated)


def new_tcp_block(
    handle: NdisOffloadHandle | None,
    const: TcpOffloadStateConst | None = None,
    cached: TcpOffloadStateCached | None = None,
    delegated: TcpOffloadStateDelegated | None = None,
) -> OffloadBlock:
    return OffloadBlock(OffloadStateType.TcpOffloadState, handle, const, cached, delegated)


@dataclass(slots=True)
class TreeMirror:
    """Block-to-block map an IM keeps in its call entry for a mirrored tree (spec §1.6 [EMU])."""

    pairs: list[tuple[OffloadBlock, OffloadBlock]] = field(default_factory=list)


def chain_append(head: OffloadBlock | None, block: OffloadBlock) -> OffloadBlock:
    """The `next_block` list starting at `head` with `block` at its end (`block` alone when
    the list was empty): how siblings and dependent lists grow (spec §2.1)."""
    if head is None:
        return block
    last = head
    while last.next_block is not None:
        last = last.next_block
    last.next_block = block
    return head
