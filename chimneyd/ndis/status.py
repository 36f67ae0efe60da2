"""Status codes, event types, upload reasons and flags, with their NDIS values (spec §6.1, §5)."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class NdisStatus(IntEnum):
    """`NDIS_STATUS_*` values used by the chimney (spec §6.1).

    Two codes have no value in the public header (`OFFLOAD_CONNECTION_REJECTED`,
    `OFFLOAD_PATH_MTU`); they get values in an unused part of the chimney block so they can be
    carried and named, and are flagged here so nobody mistakes them for header values.
    """

    NDIS_STATUS_SUCCESS = 0x00000000
    NDIS_STATUS_PENDING = 0x00000103
    NDIS_STATUS_FAILURE = 0xC0000001
    NDIS_STATUS_RESOURCES = 0xC000009A
    NDIS_STATUS_NOT_SUPPORTED = 0xC00000BB
    NDIS_STATUS_INVALID_STATE = 0xC0000184
    NDIS_STATUS_REQUEST_ABORTED = 0xC023000C
    NDIS_STATUS_PAUSED = 0xC023002A
    NDIS_STATUS_UPLOAD_IN_PROGRESS = 0xC0231001
    NDIS_STATUS_REQUEST_UPLOAD = 0xC0231002
    NDIS_STATUS_UPLOAD_REQUESTED = 0xC0231003
    NDIS_STATUS_OFFLOAD_TCP_ENTRIES = 0xC0231004
    NDIS_STATUS_OFFLOAD_PATH_ENTRIES = 0xC0231005
    NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES = 0xC0231006
    NDIS_STATUS_OFFLOAD_IP_ADDRESS_ENTRIES = 0xC0231007
    NDIS_STATUS_OFFLOAD_HW_ADDRESS_ENTRIES = 0xC0231008
    NDIS_STATUS_OFFLOAD_VLAN_ENTRIES = 0xC0231009
    NDIS_STATUS_OFFLOAD_TCP_XMIT_BUFFER = 0xC023100A
    NDIS_STATUS_OFFLOAD_TCP_RCV_BUFFER = 0xC023100B
    NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW = 0xC023100C
    NDIS_STATUS_OFFLOAD_VLAN_MISMATCH = 0xC023100D
    NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED = 0xC023100E
    NDIS_STATUS_OFFLOAD_POLICY = 0xC023100F
    NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED = 0xC0231010
    NDIS_STATUS_OFFLOAD_REQUEST_RESET = 0xC0231011
    # No public header value (spec §6.1): emulator-assigned, outside the header's range.
    NDIS_STATUS_OFFLOAD_CONNECTION_REJECTED = 0xC02310F0
    NDIS_STATUS_OFFLOAD_PATH_MTU = 0xC02310F1
    NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS = 0x40020004
    NDIS_STATUS_OFFLOAD_STATE_INVALID = 0x40020005
    # Adapter status indications (spec §5.5).
    NDIS_STATUS_OFFLOAD_PAUSE = 0x40020001
    NDIS_STATUS_UPLOAD_ALL = 0x40020002
    NDIS_STATUS_OFFLOAD_RESUME = 0x40020003

    def describe(self) -> str:
        """`NDIS_STATUS_REQUEST_ABORTED (0xC023000C)`, the form RPC error messages use."""
        return f"{self.name} (0x{self.value:08X})"


#: Per-block statuses legal when completing an initiate (spec §3.2.4).
INITIATE_BLOCK_STATUSES = frozenset(
    {
        NdisStatus.NDIS_STATUS_SUCCESS,
        NdisStatus.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS,
        NdisStatus.NDIS_STATUS_FAILURE,
        NdisStatus.NDIS_STATUS_RESOURCES,
        NdisStatus.NDIS_STATUS_OFFLOAD_TCP_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_PATH_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_IP_ADDRESS_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_HW_ADDRESS_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_VLAN_ENTRIES,
        NdisStatus.NDIS_STATUS_OFFLOAD_TCP_XMIT_BUFFER,
        NdisStatus.NDIS_STATUS_OFFLOAD_TCP_RCV_BUFFER,
        NdisStatus.NDIS_STATUS_OFFLOAD_TCP_RCV_WINDOW,
        NdisStatus.NDIS_STATUS_OFFLOAD_VLAN_MISMATCH,
        NdisStatus.NDIS_STATUS_OFFLOAD_PATH_MTU,
        NdisStatus.NDIS_STATUS_OFFLOAD_CONNECTION_REJECTED,
    }
)
#: Query, update, invalidate and terminate allow only these per block (spec §3.1 item 5).
STATE_OP_BLOCK_STATUSES = frozenset(
    {NdisStatus.NDIS_STATUS_SUCCESS, NdisStatus.NDIS_STATUS_FAILURE}
)
#: An initiate block with one of these statuses was offloaded (spec §2.3, §3.9).
OFFLOADED_STATUSES = frozenset(
    {NdisStatus.NDIS_STATUS_SUCCESS, NdisStatus.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS}
)


class TcpOffloadEventType(IntEnum):
    """`TCP_OFFLOAD_EVENT_TYPE` (spec §5.1)."""

    TcpIndicateSendBacklogChange = 1
    TcpIndicateDisconnect = 2
    TcpIndicateRetrieve = 3
    TcpIndicateAbort = 4


class TcpUploadReason(IntEnum):
    """`TCP_UPLOAD_REASON` (spec §5.2)."""

    LowActivity = 1
    HighDropRate = 2
    SmallIO = 3
    NoBufferPreposting = 4
    ReceivedUrgentData = 5
    HighFragmentation = 6
    HighOutOfOrderPackets = 7
    TimeoutExpiration = 8
    InvalidState = 9
    UploadRequested = 10
    HardwareFailure = 11

    @property
    def mandatory(self) -> bool:
        """A mandatory reason stops the target processing the connection (spec §5.2)."""
        return self >= TcpUploadReason.ReceivedUrgentData and self not in (
            TcpUploadReason.HighFragmentation,
            TcpUploadReason.HighOutOfOrderPackets,
        )


class TcpDisconnectFlags(IntFlag):
    """Flags of `NdisOffloadTcpDisconnect` (spec §4.5)."""

    TCP_DISCONNECT_GRACEFUL_CLOSE = 0x01
    TCP_DISCONNECT_ABORTIVE_CLOSE = 0x02


class TcpOffloadConnectionState(IntEnum):
    """`TCP_OFFLOAD_CONNECTION_STATE` (spec §2.2)."""

    TcpConnectionClosed = 0
    TcpConnectionListen = 1
    TcpConnectionSynSent = 2
    TcpConnectionSynRcvd = 3
    TcpConnectionEstablished = 4
    TcpConnectionFinWait1 = 5
    TcpConnectionFinWait2 = 6
    TcpConnectionCloseWait = 7
    TcpConnectionClosing = 8
    TcpConnectionLastAck = 9
    TcpConnectionTimeWait = 10


#: States the host never offloads (spec §2.2).
NOT_OFFLOADABLE_STATES = frozenset(
    {
        TcpOffloadConnectionState.TcpConnectionClosed,
        TcpOffloadConnectionState.TcpConnectionListen,
        TcpOffloadConnectionState.TcpConnectionSynSent,
        TcpOffloadConnectionState.TcpConnectionSynRcvd,
        TcpOffloadConnectionState.TcpConnectionTimeWait,
    }
)


class OffloadStateType(IntEnum):
    """`OFFLOAD_STATE_TYPE` (spec §2.1)."""

    NeighborOffloadConstState = 1
    NeighborOffloadCachedState = 2
    NeighborOffloadDelegatedState = 3
    NeighborOffloadState = 4
    Ip4OffloadConstState = 5
    Ip4OffloadCachedState = 6
    Ip4OffloadDelegatedState = 7
    Ip4OffloadState = 8
    Ip6OffloadConstState = 9
    Ip6OffloadCachedState = 10
    Ip6OffloadDelegatedState = 11
    Ip6OffloadState = 12
    TcpOffloadConstState = 13
    TcpOffloadCachedState = 14
    TcpOffloadDelegatedState = 15
    TcpOffloadResourceState = 16
    TcpOffloadState = 17
    FilterReservedOffloadState = 0xFE


class IndicateOffloadEvent(IntEnum):
    """`INDICATE_OFFLOAD_EVENT` codes of `NdisMOffloadEventIndicate` (spec §5.4)."""

    NeighborReachabilityInDoubt = 1
    NeighborReachabilityQuery = 2


def status_name(value: int) -> str:
    """Name of an NDIS status value; unknown values print as hex."""
    try:
        return NdisStatus(value).name
    except ValueError:
        return f"0x{value:08X}"
