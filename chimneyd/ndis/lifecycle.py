"""Every offloaded object's state at every layer, as transition tables (spec §3.9 [EMU]).

Everything that affects an object's state lives here (the h11 way): every legal
(state, event) pair is written once, in a table; anything else raises `IllegalTransition`
naming the object, its state and the event. An object's state has two orthogonal parts:

* its **phase** in the offload lifecycle (spec §3.9), including the host-only phases
  (`IDLE` = the host carries the connection, `CLOSED`) and `FAILED` (hardware state corrupt,
  spec §3.7);
* for a connection, its **TCP state** (RFC 793's, plus `RESET` for a connection killed by an
  RST either way), which is what the delegated `State` reports (spec §2.2).

Each layer keeps one `Lifecycle` per object — host TCBs and neighbor/path objects, IM offload
entries, target contexts — of the `Role` that says which table applies, so every layer checks
the calls it sees against the same rules. No layer keeps a flag beside it that says the same.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from chimneyd.compiled import mypyc_attr

from .errors import IllegalTransition
from .status import TcpOffloadConnectionState as TcpConn


class _Fast(Enum):
    """An enum whose members hash by identity. They are the keys of the transition tables,
    looked up several times per I/O; `Enum.__hash__` is Python code hashing the member's name
    (22 calls per verified echo round in the daemon's profile). Members are singletons and
    compare by identity, so the hash agrees with equality."""

    __hash__ = object.__hash__


class Phase(_Fast):
    """Where an object is in its offload lifecycle (spec §3.9)."""

    IDLE = "IDLE"  # not offloaded: at the host, the host stack carries the connection
    OFFLOADING = "OFFLOADING"
    OFFLOADED = "OFFLOADED"
    INVALIDATED = "INVALIDATED"
    # [EMU] spec §3.9 has one UPLOAD_REQUESTED; an optional reason (spec §5.2) leaves the target
    # carrying on normally, a mandatory one stops it, so they are two phases here.
    UPLOAD_SUGGESTED = "UPLOAD_SUGGESTED"
    UPLOAD_REQUESTED = "UPLOAD_REQUESTED"
    FAILED = "FAILED"  # hardware state corrupt (spec §3.7): only a terminate is left
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"  # below the host: the handle is dead (spec §9 item 8)
    CLOSED = "CLOSED"  # host TCB only: the connection is closed


class TcpState(_Fast):
    """The TCP connection state (RFC 793), as far as an offloaded connection can be in it."""

    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSED = "CLOSED"  # both FINs sent and acknowledged
    RESET = "RESET"  # an RST was sent or received


class Event(_Fast):
    """What happens to an object: a state operation or its completion, an indication, I/O, or a
    TCP event. Each event belongs to one part of the state (`TCP_EVENTS` or the phase)."""

    INITIATE = "NdisInitiateOffload"
    INITIATE_OFFLOADED = "InitiateOffloadComplete(offloaded)"
    INITIATE_FAILED = "InitiateOffloadComplete(not offloaded)"
    INVALIDATE = "NdisInvalidateOffload"
    DEPENDENCY_INVALIDATED = "NdisInvalidateOffload(of an object it depends on)"
    RETRIEVE = "TcpIndicateRetrieve(mandatory reason)"
    RETRIEVE_OPTIONAL = "TcpIndicateRetrieve(optional reason)"
    UPLOAD_ALL = "NDIS_STATUS_UPLOAD_ALL"
    HARDWARE_FAILURE = "hardware state corrupt"
    TERMINATE = "NdisTerminateOffload"
    TERMINATE_COMPLETE = "TerminateOffloadComplete"
    TERMINATE_FAILED = "TerminateOffloadComplete(FAILURE)"
    QUERY = "NdisQueryOffloadState"
    UPDATE = "NdisUpdateOffload"
    IO = "NdisOffloadTcpXxx"
    INDICATE = "NdisTcpOffloadXxxHandler"
    CLOSE = "close"
    # the TCP part
    FIN_SENT = "FIN sent"
    FIN_ACKED = "FIN acknowledged"
    FIN_RECEIVED = "FIN received in sequence"
    RESET = "RST sent or received"


class Role(_Fast):
    """Which table an object follows."""

    HOST_CONNECTION = "host connection"  # a TCB
    HOST_OBJECT = "host neighbor/path"
    OFFLOADED_OBJECT = "offloaded object"  # an IM offload entry or a target context


P, E, T = Phase, Event, TcpState
TCP_EVENTS = frozenset({E.FIN_SENT, E.FIN_ACKED, E.FIN_RECEIVED, E.RESET})

#: Phases in which an offloaded object carries I/O and indications (spec §3.9).
LIVE = (P.OFFLOADED, P.UPLOAD_SUGGESTED, P.INVALIDATED, P.UPLOAD_REQUESTED)
#: Phases in which the target refuses new I/O with NDIS_STATUS_UPLOAD_IN_PROGRESS (spec §3.6.4,
#: §5.2: a mandatory upload request stops processing). The pages forbid an invalidated object
#: only for sending (spec §3.5), but a target context is INVALIDATED only until its invalidate
#: completes: the InvalidState request it raises then is mandatory, and from it on receive posts
#: and forwards are refused too [INF].
UPLOAD_PENDING = frozenset({P.INVALIDATED, P.UPLOAD_REQUESTED, P.TERMINATING})


def _rows(states: tuple[Phase, ...], event: Event, to: Phase | None = None) -> dict[Key, Phase]:
    """`(s, event) -> to` for each s; `to=None` is a self-loop (legal, changes nothing)."""
    return {(s, event): (s if to is None else to) for s in states}


Key = tuple[Phase, Event]

#: Rows every role shares (spec §3.1, §3.9, §3.7).
_COMMON: dict[Key, Phase] = {
    (P.IDLE, E.INITIATE): P.OFFLOADING,
    (P.OFFLOADING, E.INITIATE_OFFLOADED): P.OFFLOADED,
    (P.OFFLOADING, E.INITIATE_FAILED): P.IDLE,
    (P.OFFLOADED, E.INVALIDATE): P.INVALIDATED,
    (P.UPLOAD_SUGGESTED, E.INVALIDATE): P.INVALIDATED,
    (P.UPLOAD_REQUESTED, E.INVALIDATE): P.UPLOAD_REQUESTED,
    # a stale neighbor or path takes every connection on it along (spec §3.5), whatever they
    # were doing; one already on its way up stays so
    **_rows((P.OFFLOADED, P.UPLOAD_SUGGESTED), E.DEPENDENCY_INVALIDATED, P.INVALIDATED),
    **_rows((P.INVALIDATED, P.UPLOAD_REQUESTED, P.TERMINATING, P.FAILED), E.DEPENDENCY_INVALIDATED),
    **_rows((P.OFFLOADED, P.UPLOAD_SUGGESTED), E.RETRIEVE_OPTIONAL, P.UPLOAD_SUGGESTED),
    # a weaker request changes nothing once a stronger reason stands
    **_rows((P.INVALIDATED, P.UPLOAD_REQUESTED), E.RETRIEVE_OPTIONAL),
    **_rows(LIVE, E.RETRIEVE, P.UPLOAD_REQUESTED),
    **_rows(LIVE, E.UPLOAD_ALL, P.UPLOAD_REQUESTED),
    **_rows(LIVE, E.HARDWARE_FAILURE, P.FAILED),
    **_rows((*LIVE, P.FAILED), E.TERMINATE, P.TERMINATING),
    # a terminate that reports corrupt hardware leaves the object for a further one (spec §3.7)
    (P.TERMINATING, E.TERMINATE_FAILED): P.FAILED,
    # indications the target raised before it saw the terminate still arrive (spec §3.6.3)
    **_rows(
        (P.TERMINATING, P.FAILED),
        E.RETRIEVE,
    ),
    **_rows((P.TERMINATING, P.FAILED), E.RETRIEVE_OPTIONAL),
    **_rows((P.TERMINATING, P.FAILED), E.UPLOAD_ALL),
    **_rows((P.TERMINATING, P.FAILED), E.HARDWARE_FAILURE),
    **_rows((P.TERMINATING, P.FAILED), E.INDICATE),
    # queries may overlap and go to any live object; updates never to an invalidated one (§3.1)
    **_rows(LIVE, E.QUERY),
    **_rows((P.OFFLOADED, P.UPLOAD_SUGGESTED, P.UPLOAD_REQUESTED), E.UPDATE),
    **_rows(LIVE, E.INDICATE),
    # I/O reaching a failed object is completed by it, aborted (spec §3.7 step 4)
    **_rows((*LIVE, P.FAILED), E.IO),
}

#: Per role, the table of its phase.
PHASES: dict[Role, dict[Key, Phase]] = {
    Role.HOST_CONNECTION: {
        **_COMMON,
        # the spec's `invalid` is a flag beside the upload request (§3.9): the host's record
        # keeps INVALIDATED when its target asks for it, so an invalidated connection takes
        # no update (§3.1, §9 item 7) and no second invalidate, which the layers below, still
        # INVALIDATED where no retrieve passed them (an UPLOAD_ALL does not), would refuse
        (P.INVALIDATED, E.RETRIEVE): P.INVALIDATED,
        (P.INVALIDATED, E.UPLOAD_ALL): P.INVALIDATED,
        (P.UPLOAD_REQUESTED, E.INVALIDATE): P.INVALIDATED,
        (P.TERMINATING, E.TERMINATE_COMPLETE): P.IDLE,  # uploaded: the host carries it again
        (P.IDLE, E.CLOSE): P.CLOSED,
    },
    Role.HOST_OBJECT: {**_COMMON, (P.TERMINATING, E.TERMINATE_COMPLETE): P.IDLE},
    Role.OFFLOADED_OBJECT: {**_COMMON, (P.TERMINATING, E.TERMINATE_COMPLETE): P.TERMINATED},
}

#: The TCP part (RFC 793 as a graph of the events a layer can observe; spec §2.2 `State`).
TCP_STATES: dict[tuple[TcpState, Event], TcpState] = {
    (T.ESTABLISHED, E.FIN_SENT): T.FIN_WAIT_1,
    (T.ESTABLISHED, E.FIN_RECEIVED): T.CLOSE_WAIT,
    (T.FIN_WAIT_1, E.FIN_ACKED): T.FIN_WAIT_2,
    (T.FIN_WAIT_1, E.FIN_RECEIVED): T.CLOSING,
    (T.FIN_WAIT_2, E.FIN_RECEIVED): T.TIME_WAIT,
    (T.CLOSE_WAIT, E.FIN_SENT): T.LAST_ACK,
    (T.CLOSING, E.FIN_ACKED): T.TIME_WAIT,
    (T.LAST_ACK, E.FIN_ACKED): T.CLOSED,
    # an RST may arrive, or be sent, in any state; seen twice (wire and forward) it is one reset
    **{(s, E.RESET): T.RESET for s in TcpState},
}

#: The delegated `State` of each TCP state (spec §2.2).
DELEGATED_STATE: dict[TcpState, TcpConn] = {
    T.ESTABLISHED: TcpConn.TcpConnectionEstablished,
    T.FIN_WAIT_1: TcpConn.TcpConnectionFinWait1,
    T.FIN_WAIT_2: TcpConn.TcpConnectionFinWait2,
    T.CLOSE_WAIT: TcpConn.TcpConnectionCloseWait,
    T.CLOSING: TcpConn.TcpConnectionClosing,
    T.LAST_ACK: TcpConn.TcpConnectionLastAck,
    T.TIME_WAIT: TcpConn.TcpConnectionTimeWait,
    T.CLOSED: TcpConn.TcpConnectionClosed,
    T.RESET: TcpConn.TcpConnectionClosed,
}
_OF_DELEGATED: dict[TcpConn, TcpState] = {
    v: k for k, v in DELEGATED_STATE.items() if k not in (T.CLOSED, T.RESET)
}

#: TCP states in which our FIN has been sent / the peer's FIN has been received in sequence.
FIN_SENT_STATES = frozenset(
    {T.FIN_WAIT_1, T.FIN_WAIT_2, T.CLOSING, T.LAST_ACK, T.TIME_WAIT, T.CLOSED}
)
FIN_RECEIVED_STATES = frozenset({T.CLOSE_WAIT, T.CLOSING, T.LAST_ACK, T.TIME_WAIT, T.CLOSED})


def tcp_state_of(
    delegated: TcpConn, now: TcpState | None = None, told_of_no_kill: bool = False
) -> TcpState:
    """The TCP state a delegated `State` names. `TcpConnectionClosed` is both a graceful end
    (from LAST_ACK) and a killed connection. It is the graceful one for a layer that knows
    its connection was in LAST_ACK (`now`), and for one that sent its FIN (`now`) and heard
    of no kill (`told_of_no_kill`): a target tells of every kill that leaves it CLOSED before
    it hands the state back (`TcpIndicateAbort`, or an upload request; a kill during the
    terminate leaves the state alone and comes up as an RST; spec §5.1, §5.2, §6.3). Such a
    layer saw its FIN go first, the layer below the peer's (which waited behind held bytes,
    spec §5.1): both FINs are out and ours is acknowledged, TIME_WAIT in its own order."""
    if delegated is TcpConn.TcpConnectionClosed:
        if now in (T.LAST_ACK, T.CLOSED):
            return T.CLOSED
        if told_of_no_kill and now in FIN_SENT_STATES:
            return T.TIME_WAIT
        return T.RESET
    return _OF_DELEGATED[delegated]


@mypyc_attr(allow_interpreted_subclasses=True)
class Lifecycle:
    """The state of one object at one layer: its phase and, for a connection, its TCP state.

    Each layer's record of an object (TCB, host neighbor or path, IM offload entry, MUX object
    or copy, target context) is its own Lifecycle: it derives from this class, and its
    `lifecycle` is itself. A separate object per layer was three 80-byte chunks of every
    offloaded connection. Such a record has no `owner` (None): an attribute pointing back at
    the record would make it a reference cycle, and a closed connection's records would then
    wait for the cycle collector instead of going at once."""

    __slots__ = ("owner", "phase", "table", "tcp")

    def __init__(
        self, owner: object, role: Role, tcp: TcpState | None = None, phase: Phase = P.IDLE
    ) -> None:
        # what names the object in errors: no string is kept per object, which counts at ten
        # thousand connections. The daemon's records pass None (the record names itself); a
        # bare Lifecycle is given its owner
        self.owner = owner
        self.table = PHASES[role]
        self.phase = phase
        self.tcp = tcp  # None for objects that are not connections

    @property
    def lifecycle(self) -> Lifecycle:
        """Itself: a layer's record is its own Lifecycle. A property, not an attribute: an
        attribute pointing at the record would be a reference cycle."""
        return self

    def fire(self, event: Event) -> None:
        """Apply `event`; raise `IllegalTransition` if the table has no such row."""
        if event in TCP_EVENTS:
            tcp = self.tcp
            nxt = TCP_STATES.get((tcp, event)) if tcp is not None else None
            if nxt is None:
                raise IllegalTransition(self._who(), str(tcp and tcp.value), event.value)
            self.tcp = nxt
            return
        phase = self.table.get((self.phase, event))
        if phase is None:
            raise IllegalTransition(self._who(), self.phase.value, event.value)
        self.phase = phase

    def reach(self, target: TcpState) -> None:
        """Catch up with the TCP state a lower layer reports (an upload hands back a state the
        layer above may not have seen every step of): fire the events that lead there. The
        layer above may also be ahead (its FIN not yet sent below): then nothing changes.
        Raise if neither state leads to the other."""
        if self.tcp is target:
            return
        path = _tcp_path(self.tcp, target)
        if path is None:
            if _tcp_path(target, self.tcp) is not None:
                return
            (sent_here, got_here), (sent_below, got_below) = _fins(self.tcp), _fins(target)
            if self.tcp is T.FIN_WAIT_1 and got_below:
                # FIN_WAIT_1 here, LAST_ACK or CLOSE_WAIT below: the peer's FIN arrived below
                # and its indication still waited behind bytes the target held (spec §5.1).
                # The FIN is news to us: take it (CLOSING), then compare again
                self.fire(E.FIN_RECEIVED)
                self.reach(target)
                return
            if got_here == got_below and (sent_here or not sent_below):
                # CLOSING here, LAST_ACK below: both FINs are out and ours is not acknowledged;
                # only the order differs (our FIN was held below while the peer's arrived).
                # CLOSING here, CLOSE_WAIT below: our FIN never left the layer below (its
                # disconnect was still queued, or failed), the peer's arrived: we are ahead
                return
            raise IllegalTransition(
                self._who(), str(self.tcp and self.tcp.value), f"reach {target.value}"
            )
        for event in path:
            self.fire(event)

    @property
    def delegated_state(self) -> TcpConn:
        assert self.tcp is not None
        return DELEGATED_STATE[self.tcp]

    def __repr__(self) -> str:
        tcp = f" {self.tcp.value}" if self.tcp is not None else ""
        return f"<Lifecycle {self._who()} {self.phase.value}{tcp}>"

    def _who(self) -> str:
        return str(self if self.owner is None else self.owner)


def _fins(state: TcpState | None) -> tuple[bool, bool]:
    """Which FINs a TCP state says were sent and received."""
    return state in FIN_SENT_STATES, state in FIN_RECEIVED_STATES


def _tcp_path(start: TcpState | None, goal: TcpState | None) -> list[Event] | None:
    """Shortest sequence of TCP events from `start` to `goal`, found in the table itself."""
    if start is None or goal is None:
        return None
    seen = {start}
    queue: deque[tuple[TcpState, list[Event]]] = deque([(start, [])])
    while queue:
        state, path = queue.popleft()
        for (frm, event), to in TCP_STATES.items():
            if frm is state and to not in seen:
                if to is goal:
                    return [*path, event]
                seen.add(to)
                queue.append((to, [*path, event]))
    return None
