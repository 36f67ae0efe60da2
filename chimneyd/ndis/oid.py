"""OID requests of TCP chimney offload: capabilities and parameters (spec §1.3, §8).

The host queries a target's connection-offload capabilities (`NDIS_TCP_CONNECTION_OFFLOAD`)
when it binds and again after `NDIS_STATUS_OFFLOAD_RESUME`, and sets the global parameters
(`NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS`) the target must honour. An IM that allows chimney
passes the query and the set down and the answer up; NDIS completes OID requests
asynchronously (`NdisMOidRequestComplete`), as every chimney call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntFlag
from typing import Any

from .status import NdisStatus


class Oid(Enum):
    OID_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES = (
        "OID_TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES"
    )
    OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG = "OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG"
    OID_TCP_CONNECTION_OFFLOAD_PARAMETERS = "OID_TCP_CONNECTION_OFFLOAD_PARAMETERS"


class NdisEncapsulation(IntFlag):
    """`Encapsulation` bits of `NDIS_TCP_CONNECTION_OFFLOAD`: chimney is recognised only with
    one of these two (spec §1.3)."""

    NDIS_ENCAPSULATION_IEEE_802_3 = 0x00000002
    NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED = 0x00000004


@dataclass(slots=True)
class NdisTcpConnectionOffload:
    """`NDIS_TCP_CONNECTION_OFFLOAD`: what a target can offload (spec §8)."""

    Encapsulation: int = NdisEncapsulation.NDIS_ENCAPSULATION_IEEE_802_3
    SupportIPv4: bool = True
    SupportIPv6: bool = True
    SupportIPv6ExtensionHeaders: bool = False
    SupportSack: bool = True
    CongestionAlgorithm: int = 0
    TcpConnectionOffloadCapacity: int = 0  # offloaded connections, IPv4 and IPv6 together
    Flags: int = 0
    # [EMU] the tick lengths the target's timers support (spec §8: 10, 100 or 1000 a second)
    TicksPerSecond: tuple[int, ...] = (1000,)

    def recognised(self) -> bool:
        """Without an 802.3 or LLC/SNAP-routed encapsulation chimney is not recognised."""
        wanted = (
            NdisEncapsulation.NDIS_ENCAPSULATION_IEEE_802_3
            | NdisEncapsulation.NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED
        )
        return bool(self.Encapsulation & wanted)

    def as_map(self) -> dict[str, Any]:
        return {
            "Encapsulation": int(self.Encapsulation),
            "SupportIPv4": self.SupportIPv4,
            "SupportIPv6": self.SupportIPv6,
            "SupportIPv6ExtensionHeaders": self.SupportIPv6ExtensionHeaders,
            "SupportSack": self.SupportSack,
            "CongestionAlgorithm": self.CongestionAlgorithm,
            "TcpConnectionOffloadCapacity": self.TcpConnectionOffloadCapacity,
            "Flags": self.Flags,
            "TicksPerSecond": list(self.TicksPerSecond),
        }


@dataclass(slots=True)
class NdisTcpConnectionOffloadParameters:
    """`NDIS_TCP_CONNECTION_OFFLOAD_PARAMETERS`: set by the host; a target honours the ones
    marked so in spec §8 (TicksPerSecond, TcpPushTicks, NceStaleTicks among them)."""

    TicksPerSecond: int = 1000
    TcpAckFrequency: int = 2
    TcpDelayedAckTicks: int = 200
    TcpMaximumRetransmissions: int = 5
    TcpDoubtReachabilityRetransmissions: int = 3
    TcpSwsPreventionTicks: int = 1000
    TcpDuplicateAckThreshold: int = 3
    TcpPushTicks: int = 500
    NceStaleTicks: int = 15_000
    CongestionAlgorithm: int = 0


@dataclass(slots=True)
class NdisOidRequest:
    """`NDIS_OID_REQUEST`: a query or a set of one OID, completed asynchronously."""

    oid: Oid
    set: bool = False
    data: Any = None
    status: NdisStatus = NdisStatus.NDIS_STATUS_PENDING
    # NDIS-private: the bindings the request came down through (its completion goes back up)
    source_bindings: list[Any] = field(default_factory=list)
