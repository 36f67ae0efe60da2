"""The per-object offload lifecycle as one transition table (spec §3.9 [EMU]).

Every legal (state, call) pair is written once, in `TRANSITIONS`; anything else raises
`IllegalTransition` naming the object, its state and the call (the h11 way). Host TCBs, IM
offload entries and NIC contexts each carry an `OffloadLifecycle`, so each layer checks the calls
it sees against the same rules.
"""

from __future__ import annotations

from enum import Enum

from .errors import IllegalTransition


class OffloadState(Enum):
    IDLE = "IDLE"
    OFFLOADING = "OFFLOADING"
    OFFLOADED = "OFFLOADED"
    INVALIDATED = "INVALIDATED"
    UPLOAD_REQUESTED = "UPLOAD_REQUESTED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


class Call(Enum):
    """What happens to an object: a state operation, its completion, an indication, or I/O."""

    INITIATE = "NdisInitiateOffload"
    INITIATE_OFFLOADED = "InitiateOffloadComplete(offloaded)"
    INITIATE_FAILED = "InitiateOffloadComplete(not offloaded)"
    INVALIDATE = "NdisInvalidateOffload"
    RETRIEVE = "TcpIndicateRetrieve"
    UPLOAD_ALL = "NDIS_STATUS_UPLOAD_ALL"
    TERMINATE = "NdisTerminateOffload"
    TERMINATE_COMPLETE = "TerminateOffloadComplete"
    TERMINATE_FAILED = "TerminateOffloadComplete(FAILURE)"
    QUERY = "NdisQueryOffloadState"
    UPDATE = "NdisUpdateOffload"
    IO = "NdisOffloadTcpXxx"
    INDICATE = "NdisTcpOffloadXxxHandler"


S, C = OffloadState, Call
_IO_STATES = (S.OFFLOADED, S.INVALIDATED, S.UPLOAD_REQUESTED)

#: (state, call) -> next state. Self-loops are calls that are legal but change nothing.
TRANSITIONS: dict[tuple[OffloadState, Call], OffloadState] = {
    (S.IDLE, C.INITIATE): S.OFFLOADING,
    (S.OFFLOADING, C.INITIATE_OFFLOADED): S.OFFLOADED,
    (S.OFFLOADING, C.INITIATE_FAILED): S.IDLE,
    (S.OFFLOADED, C.INVALIDATE): S.INVALIDATED,
    (S.INVALIDATED, C.INVALIDATE): S.INVALIDATED,
    (S.UPLOAD_REQUESTED, C.INVALIDATE): S.UPLOAD_REQUESTED,
    (S.OFFLOADED, C.RETRIEVE): S.UPLOAD_REQUESTED,
    (S.INVALIDATED, C.RETRIEVE): S.UPLOAD_REQUESTED,
    (S.UPLOAD_REQUESTED, C.RETRIEVE): S.UPLOAD_REQUESTED,
    (S.OFFLOADED, C.UPLOAD_ALL): S.UPLOAD_REQUESTED,
    (S.INVALIDATED, C.UPLOAD_ALL): S.UPLOAD_REQUESTED,
    (S.UPLOAD_REQUESTED, C.UPLOAD_ALL): S.UPLOAD_REQUESTED,
    (S.OFFLOADED, C.TERMINATE): S.TERMINATING,
    (S.INVALIDATED, C.TERMINATE): S.TERMINATING,
    (S.UPLOAD_REQUESTED, C.TERMINATE): S.TERMINATING,
    (S.TERMINATING, C.TERMINATE_COMPLETE): S.TERMINATED,
    # a terminate that reports corrupt hardware leaves the object for a further terminate (§3.7)
    (S.TERMINATING, C.TERMINATE_FAILED): S.UPLOAD_REQUESTED,
    # Indications the target raised before it saw the terminate still reach the host.
    (S.TERMINATING, C.RETRIEVE): S.TERMINATING,
    (S.TERMINATING, C.UPLOAD_ALL): S.TERMINATING,
    (S.TERMINATING, C.INDICATE): S.TERMINATING,
    # Queries may go to any offloaded object; updates never to an invalidated one (spec §3.1).
    (S.OFFLOADED, C.QUERY): S.OFFLOADED,
    (S.INVALIDATED, C.QUERY): S.INVALIDATED,
    (S.UPLOAD_REQUESTED, C.QUERY): S.UPLOAD_REQUESTED,
    (S.OFFLOADED, C.UPDATE): S.OFFLOADED,
    (S.UPLOAD_REQUESTED, C.UPDATE): S.UPLOAD_REQUESTED,
    **{(s, C.IO): s for s in _IO_STATES},
    **{(s, C.INDICATE): s for s in _IO_STATES},
}


class OffloadLifecycle:
    """The lifecycle state of one offloaded object at one layer, plus the spec's orthogonal flags."""

    __slots__ = (
        "aborted",
        "fin_received",
        "fin_sent",
        "invalid",
        "owner",
        "state",
        "upload_requested",
    )

    def __init__(self, owner: object) -> None:
        # the owner (TCB, IM entry, NIC context) names the object in errors: no string is kept
        # per object, which counts at ten thousand connections
        self.owner = owner
        self.state = OffloadState.IDLE
        self.fin_sent = False
        self.fin_received = False
        self.aborted = False
        self.upload_requested = False
        self.invalid = False

    def fire(self, call: Call) -> OffloadState:
        """Apply `call`; raise `IllegalTransition` if the table has no such row."""
        try:
            nxt = TRANSITIONS[(self.state, call)]
        except KeyError:
            raise IllegalTransition(self.name, self.state.value, call.value) from None
        if call is Call.INVALIDATE:
            self.invalid = True
        elif call is Call.RETRIEVE or call is Call.UPLOAD_ALL:
            self.upload_requested = True
        self.state = nxt
        return nxt

    @property
    def name(self) -> str:
        return str(self.owner)

    def allows(self, call: Call) -> bool:
        return (self.state, call) in TRANSITIONS

    @property
    def io_allowed(self) -> bool:
        return self.state in _IO_STATES

    def __repr__(self) -> str:
        return f"<OffloadLifecycle {self.name} {self.state.value}>"
