"""Who owns what: every connection, listener, fault and subscription an RPC client holds.

A client sees and touches only what it made (`tcp.connect`, `tcp.accept` on its listeners,
`tcp.listen`, `fault.inject`); anything else is NOT_FOUND, as if it did not exist. It hears
the events of its connections and of those accepted on its listeners that no `tcp.accept` took
yet. A client authenticated with the admin token sees everything. When a client leaves, `leave`
hands back what must be closed and cleared.

Limits are reserved here, synchronously, before the engine call that makes the thing: a request
checks and counts in one step, so pipelined requests can never overshoot a limit, and things
being made count as much as things made.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from chimneyd.api import EngineError, ErrorCode

CLOSED_REMEMBERED = 1024  # a client's closed connection ids kept for `trace.get` after close
Unsubscribe = Callable[[], None]


class Holdings:
    """What one client holds. Changed only through `Ownership`."""

    __slots__ = (
        "admin",
        "closed",
        "conns",
        "faults",
        "gone",
        "heard",
        "listeners",
        "pending_conns",
        "pending_listeners",
        "subscriptions",
    )

    def __init__(self) -> None:
        self.admin = False  # sees and touches every connection, listener and fault
        self.gone = False  # the client left: what is made for it now is closed at once
        self.conns: set[int] = set()
        self.closed: OrderedDict[int, None] = OrderedDict()  # their traces stay readable
        self.pending_conns = 0  # connects and accepts under way
        self.listeners: set[int] = set()
        self.pending_listeners = 0
        self.faults: set[int] = set()
        self.subscriptions: dict[int | None, Unsubscribe] = {}  # None: every connection
        # connections not (yet) its own whose events reached it, and whether they came on one
        # of its listeners: asked of the engine once per connection, forgotten at `closed`
        self.heard: dict[int, bool] = {}

    def holds_nothing(self) -> bool:
        """Nothing to lose by closing this client (the idle timeout applies to it)."""
        return not (
            self.conns
            or self.pending_conns
            or self.listeners
            or self.pending_listeners
            or self.subscriptions
        )


@dataclass(slots=True)
class Departure:
    """What a client that left held, for the server to close and clear."""

    conns: set[int] = field(default_factory=set)
    listeners: set[int] = field(default_factory=set)
    faults_to_clear: set[int] = field(default_factory=set)
    unsubscribes: list[Unsubscribe] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.conns or self.listeners or self.faults_to_clear)


class Ownership:
    """The server-wide owner maps and each client's `Holdings`."""

    def __init__(self) -> None:
        self.conn_owner: dict[int, Holdings] = {}
        self.fault_owner: dict[int, Holdings | None] = {}  # None: its maker left; anyone's
        self.fault_conn: dict[int, int] = {}  # the connection a fault was put on

    def join(self) -> Holdings:
        return Holdings()

    # -- connections -----------------------------------------------------------------------------
    def conn(self, h: Holdings, conn: int, closed_ok: bool = False) -> int:
        """`conn` if the client may use it, else NOT_FOUND. `closed_ok` also admits its
        recently closed connections (their traces outlive them)."""
        if h.admin or conn in h.conns or (closed_ok and conn in h.closed):
            return conn
        raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn}")

    def sees(
        self, h: Holdings, conn: int, listener_of: Callable[[int], int | None] | None = None
    ) -> bool:
        """Whether events of `conn` may reach this client. A connection accepted on its
        listener is its own from its first event, before `tcp.accept` takes it: a listener
        with offload offloads it first, and its owner must hear that `offloaded` (else it
        hears `uploaded` of a connection it never heard was offloaded). `listener_of` names
        the listener a connection came on (None: none, or not known)."""
        if h.admin or conn in h.conns or conn in h.closed:
            return True
        if listener_of is None or not (h.listeners or h.heard):
            return False  # listens nowhere: nothing of another's is its own
        if conn in self.conn_owner:
            return False  # `tcp.accept`ed by another (an admin): that client's now
        known = h.heard.get(conn)
        if known is None:
            lid = listener_of(conn)
            known = h.heard[conn] = lid is not None and lid in h.listeners
        return known

    def forget_heard(self, h: Holdings, conn: int) -> None:
        """`conn` closed: no more events of it, nothing to remember."""
        h.heard.pop(conn, None)

    def reserve_conn(self, h: Holdings, limit: int, waiting: int = 0) -> None:
        """Count one connection being made against `limit` (LIMIT if there is no room).
        `waiting`: connections already made for this client but not yet its own (accepted on
        its listeners, not yet `tcp.accept`ed)."""
        if len(h.conns) + h.pending_conns + waiting >= limit:
            raise EngineError(ErrorCode.LIMIT, f"this client already has {limit} connections")
        h.pending_conns += 1

    def unreserve_conn(self, h: Holdings) -> None:
        h.pending_conns -= 1

    def conn_made(self, h: Holdings, conn: int) -> bool:
        """The engine made `conn` for this client: it owns it from now on (before its first
        event). False if the client is gone: the caller closes the connection."""
        if h.gone:
            return False
        h.conns.add(conn)
        self.conn_owner[conn] = h
        return True

    def conn_closed(self, conn: int) -> None:
        """`tcp.close` succeeded: the connection is gone, whoever owned it."""
        owner = self.conn_owner.pop(conn, None)
        if owner is None:
            return
        owner.conns.discard(conn)
        unsubscribe = owner.subscriptions.pop(conn, None)
        if unsubscribe is not None:
            unsubscribe()
        owner.closed[conn] = None
        while len(owner.closed) > CLOSED_REMEMBERED:
            owner.closed.popitem(last=False)

    # -- listeners -------------------------------------------------------------------------------
    def listener(self, h: Holdings, lid: int) -> int:
        if h.admin or lid in h.listeners:
            return lid
        raise EngineError(ErrorCode.NOT_FOUND, f"no listener {lid}")

    def reserve_listener(self, h: Holdings, limit: int) -> None:
        if len(h.listeners) + h.pending_listeners >= limit:
            raise EngineError(ErrorCode.LIMIT, f"this client already has {limit} listeners")
        h.pending_listeners += 1

    def unreserve_listener(self, h: Holdings) -> None:
        h.pending_listeners -= 1

    def listener_made(self, h: Holdings, lid: int) -> bool:
        if h.gone:
            return False
        h.listeners.add(lid)
        return True

    # -- faults ----------------------------------------------------------------------------------
    def add_fault(self, h: Holdings, fid: int, conn: int | None) -> None:
        h.faults.add(fid)
        self.fault_owner[fid] = h
        if conn is not None:
            self.fault_conn[fid] = conn

    def may_touch_fault(self, h: Holdings, fid: int) -> bool:
        # faults made before the server knew them, or whose maker left, are anyone's
        owner = self.fault_owner.get(fid)
        return h.admin or owner is h or owner is None

    def forget_fault(self, fid: int) -> None:
        owner = self.fault_owner.pop(fid, None)
        self.fault_conn.pop(fid, None)
        if owner is not None:
            owner.faults.discard(fid)

    def forget_all_faults(self) -> None:
        for fid in list(self.fault_owner):
            self.forget_fault(fid)

    # -- subscriptions ---------------------------------------------------------------------------
    def subscribed(self, h: Holdings, conn: int | None) -> bool:
        return conn in h.subscriptions

    def add_subscription(self, h: Holdings, conn: int | None, unsubscribe: Unsubscribe) -> None:
        h.subscriptions[conn] = unsubscribe

    def subscription_ended(self, h: Holdings, conn: int) -> None:
        """The connection `conn` closed: its subscription is over (the engine dropped it)."""
        h.subscriptions.pop(conn, None)

    # -- leaving ---------------------------------------------------------------------------------
    def leave(self, h: Holdings) -> Departure:
        """The client is gone: give up all it holds. Faults on its connections are to be
        cleared; a fault on a layer outlives its maker and becomes anyone's."""
        h.gone = True
        out = Departure(set(h.conns), set(h.listeners))
        out.unsubscribes = list(h.subscriptions.values())
        mine = h.conns | set(h.closed)
        for fid in h.faults:
            if self.fault_conn.get(fid) in mine:
                out.faults_to_clear.add(fid)
            else:
                self.fault_owner[fid] = None
        for conn in h.conns:
            if self.conn_owner.get(conn) is h:
                del self.conn_owner[conn]
        h.conns.clear()
        h.listeners.clear()
        h.faults.clear()
        h.subscriptions.clear()
        h.heard.clear()
        return out


__all__ = ["CLOSED_REMEMBERED", "Departure", "Holdings", "Ownership"]
