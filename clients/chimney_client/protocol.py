"""Sans-IO msgpack-RPC client codec: request ids, the pending map and stream framing.

No sockets here: `ClientCodec.request()` turns a call into bytes, `ClientCodec.receive()` turns
bytes into events. The asyncio and blocking clients are thin shells that move bytes and wake
waiters, so the protocol rules are written (and tested) once.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import msgpack

from .errors import AddressError, ProtocolError, RpcError, RpcTimeout, error_from_wire

#: docs/rpc.md "Errors": the code a read of a connection closed already gets
NOT_FOUND = 3
REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

#: How many closed connections `ClientCodec` remembers, to drop what a cancelled caller gives
#: back for one of them (a give-back comes at most a loop turn after the close's answer).
GONE_LIMIT = 1024
#: Largest frame the client accepts from the server. The daemon's own limit (8 MiB) is on what
#: it receives; a `tcp.recv` answer is bounded by the caller's `max_bytes`, so leave headroom.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: msgpack-RPC msgids are uint32; ids wrap around and skip those still pending.
MSGID_LIMIT = 1 << 32
DEFAULT_PORT = 7411
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

#: The longest server-side wait the daemon takes (docs/rpc.md, limits: `timeout_ms`).
MAX_TIMEOUT_MS = 3_600_000
#: Extra client-side time granted to calls that wait server-side (`timeout_ms`) before giving
#: up: the daemon's TIMEOUT answer should come first, the client's own limit only catches a
#: daemon that does not answer at all.
SERVER_WAIT_MARGIN = 5.0

T = TypeVar("T")


class Reply(NamedTuple, Generic[T]):
    """A response to a call still pending: `token` is what the caller registered with it (a
    tuple: one is made per answer, and a frozen dataclass took ~1 µs to make)."""

    msgid: int
    token: T
    error: RpcError | None
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: list[Any]


Event = Reply[T] | Notification


class ClientCodec(Generic[T]):
    """Encodes requests, decodes the server's stream, matches responses to pending calls.

    `T` is whatever the shell wants back with a reply (a future, a slot): the codec keeps it in
    the pending map and never looks at it.
    """

    __slots__ = (
        "_accepted",
        "_accepts",
        "_accepts_by_listener",
        "_by_conn",
        "_closes",
        "_gone",
        "_hands",
        "_in_hand",
        "_infos",
        "_kept",
        "_next_id",
        "_orphan_accepts",
        "_orphan_accepts_by_listener",
        "_orphans",
        "_orphans_by_conn",
        "_packer",
        "_parked",
        "_pending",
        "_reads",
        "_ready",
        "_riding",
        "_riding_accepts",
        "_taken",
        "_unpacker",
        "_untimed_accepts",
        "dropped_responses",
        "kept_bytes",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        # raw=False: the server always sends str for text; bin stays bytes.
        # strict_map_key=False: maps such as per-layer handle ids may be keyed by ints.
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=max_frame,
            unicode_errors="surrogateescape",
        )
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending: dict[int, T] = {}
        self._next_id = 0
        #: responses nobody waited for any more (timed out or cancelled calls), dropped silently
        self.dropped_responses = 0
        # Reads abandoned by their caller (timed out or cancelled): the daemon cannot be told
        # to withdraw them and hands them the connection's next bytes, which are kept here,
        # in stream order, for the next read of the connection (contract tcp.recv: no data
        # is lost). An end of stream needs no keeping: the daemon answers every later read
        # with one too.
        #: msgid -> the params (as its caller gave them) of each `tcp.recv` not yet forgotten;
        #: read as a `_Read` only when something is kept (a read costs one dict entry)
        self._reads: dict[int, list[Any] | tuple[Any, ...]] = {}
        #: conn id -> msgid -> params: `_reads` by connection, in the order sent, so that an
        #: answer's work is with the reads of its own connection, not with every open read
        #: (`_add_read`, `_drop_read` keep the two in step)
        self._by_conn: dict[int, dict[int, list[Any] | tuple[Any, ...]]] = {}
        #: msgid -> the params of each abandoned `tcp.recv` still unanswered
        self._orphans: dict[int, list[Any] | tuple[Any, ...]] = {}
        #: conn id -> msgid -> params: `_orphans` by connection (`_orphan`, `_unorphan`)
        self._orphans_by_conn: dict[int, dict[int, list[Any] | tuple[Any, ...]]] = {}
        #: msgids of reads not sent: an abandoned read of their connection with no timeout is
        #: still in the daemon, and they are answered with what it gets (`_ride`)
        self._riding: set[int] = set()
        #: conn id -> bytes that abandoned reads got and no read took yet
        self._kept: dict[int, bytearray] = {}
        #: bytes abandoned reads got, kept for later reads (a count: it never decreases)
        self.kept_bytes = 0
        # The same for `tcp.accept`: an abandoned accept takes the listener's next connection.
        #: msgid -> listener id of each `tcp.accept` not yet forgotten
        self._accepts: dict[int, int] = {}
        #: msgid -> listener id of each abandoned `tcp.accept` still unanswered
        self._orphan_accepts: dict[int, int] = {}
        #: listener id -> msgids: `_accepts` and `_orphan_accepts` by listener, in the order
        #: sent, so that an accept's work is with its own listener's accepts (`_add_accept`,
        #: `_drop_accept`, `_orphan_accept`, `_unorphan_accept` keep them in step)
        self._accepts_by_listener: dict[int, dict[int, None]] = {}
        self._orphan_accepts_by_listener: dict[int, dict[int, None]] = {}
        #: listener id -> conn ids abandoned accepts got and no accept took yet, oldest first
        self._accepted: dict[int, deque[int]] = {}
        #: msgids of the `tcp.accept`s sent with no timeout_ms and not answered yet (abandoned
        #: ones too): such an accept waits in the daemon until a connection comes
        self._untimed_accepts: set[int] = set()
        #: msgid -> listener id of each `tcp.listener_info` not answered: its `pending` gets
        #: the connections kept for the listener added (`_with_kept`)
        self._infos: dict[int, int] = {}
        #: msgids of accepts not sent: an abandoned accept of their listener with no timeout is
        #: still in the daemon, and they are answered with what it gets (`_ride_accept`)
        self._riding_accepts: set[int] = set()
        #: msgid -> conn id of each read answered with bytes while something was kept or
        #: abandoned, whose caller has not yet taken them (`forget`) or given them back
        #: (`late`): no later bytes of the connection are handed out before that, or a
        #: cancelled caller's bytes would come after them
        self._in_hand: dict[int, int] = {}
        #: conn id -> how many entries of `_in_hand` are of it (`_hand`, `_unhand`)
        self._hands: dict[int, int] = {}
        #: msgid -> conn id of each read answered whose caller has it but has not returned yet
        #: (`taken`): no later read waits behind it; `late` still gives it back, `forget`
        #: ends it
        self._taken: dict[int, int] = {}
        #: msgid -> the answer of each read the daemon answered while an earlier read of its
        #: connection was in its caller's hands (an error; an int: that many bytes, now kept;
        #: b"": the end of stream): its caller waits until that one is taken (`_serve`)
        self._parked: dict[int, RpcError | bytes | int] = {}
        #: msgid -> conn id of each `tcp.close` sent and not answered (also abandoned ones):
        #: what is kept for the connection is dropped when the daemon closes it, not before
        #: (it may refuse: LIMIT)
        self._closes: dict[int, int] = {}
        #: conn ids the daemon closed (`_closed`), the latest `GONE_LIMIT`, oldest first: bytes
        #: a cancelled caller gives back for one of them are dropped, not kept for the life of
        #: the client (ids are never reused: no read of it comes)
        self._gone: dict[int, None] = {}
        #: answers made outside `receive` (by `forget`, `late`): the shell takes them with
        #: `take_ready` and wakes their callers
        self._ready: list[Reply[T]] = []

    # -- outgoing ---------------------------------------------------------------------------------
    def request(
        self, method: str, params: list[Any] | tuple[Any, ...], token: T
    ) -> tuple[int, bytes]:
        """Register a call and return its msgid and the bytes to write."""
        msgid = self._next_id
        if msgid in self._pending:
            msgid = self._allocate_id()
        else:
            self._next_id = (msgid + 1) % MSGID_LIMIT
        if method in _ID_METHODS:
            params = _plain(params)
        if method == "tcp.recv" and _valid_read(params):
            # a read the daemon refuses (INVALID_PARAMS) is a plain call: it takes nothing
            # kept, rides on nothing, and what is kept is not handed to it
            asked = params
            if self._orphans and self._ride(params):
                # not sent: served by the abandoned read's answer, so a reading loop that
                # gives up on reads (wait_for) leaves one read in the daemon, not one per turn
                # (docs/rpc.md Limits: 256 requests in flight)
                self._add_read(msgid, asked)
                self._riding.add(msgid)
                self._pending[msgid] = token
                return msgid, b""
            if self._kept and (read := _Read.of(params)) is not None:
                kept = self._kept.get(read.conn)
                if (
                    kept is not None
                    and read.waitall
                    and len(kept) < read.max_bytes  # else held back by a read in hand
                    and not self._reading(read.conn)
                ):
                    # a waitall read asks only for what the kept bytes do not cover (fewer
                    # than max_bytes, or `before_read` answered it); joined when answered
                    params = [read.conn, read.max_bytes - len(kept), *params[2:]]
            self._add_read(msgid, asked)
        elif method == "tcp.accept" and _valid_accept(params):
            listener = params[0]
            self._add_accept(msgid, listener)
            if len(params) == 1 or (len(params) == 2 and params[1] is None):
                if self._orphan_accepts and self._ride_accept(listener):
                    # not sent, as a read behind an abandoned read: an accept loop of short
                    # client-side waits holds one accept in the daemon, not one per turn
                    # (docs/rpc.md Limits: 256 requests in flight)
                    self._riding_accepts.add(msgid)
                    self._pending[msgid] = token
                    return msgid, b""
                self._untimed_accepts.add(msgid)
        elif method == "tcp.close" and params and type(params[0]) is int:
            self._closes[msgid] = params[0]
        elif method == "tcp.listener_info" and params and type(params[0]) is int:
            self._infos[msgid] = params[0]
        data: bytes = self._packer.pack([REQUEST, msgid, method, list(params)])
        self._pending[msgid] = token
        return msgid, data

    def notification(self, method: str, params: list[Any] | tuple[Any, ...]) -> bytes:
        data: bytes = self._packer.pack([NOTIFICATION, method, list(params)])
        return data

    def _allocate_id(self) -> int:
        for _ in range(len(self._pending) + 1):
            msgid = self._next_id
            self._next_id = (self._next_id + 1) % MSGID_LIMIT
            if msgid not in self._pending:
                return msgid
        raise RuntimeError("no free msgid")  # pragma: no cover - needs 2**32 calls in flight

    # -- pending map ------------------------------------------------------------------------------
    def forget(self, msgid: int) -> T | None:
        """Stop waiting for `msgid` (answered, timed out, cancelled): a late response is then
        dropped, but a `tcp.recv`'s, whose bytes are kept for the next read."""
        token = self._pending.pop(msgid, None)
        asked = self._drop_read(msgid)
        if self._taken:
            self._taken.pop(msgid, None)
        if self._parked and msgid in self._parked:
            del self._parked[msgid]  # answered already: its bytes are kept
            self._riding.discard(msgid)  # a read riding, parked (`_orphan_answered`)
        elif self._riding and msgid in self._riding:
            self._riding.discard(msgid)  # never sent: nothing comes for it
        elif token is not None and asked is not None:
            self._orphan(msgid, asked)
            if self._kept and (read := _Read.of(asked)) is not None and read.conn in self._kept:
                # bytes kept it did not take (a waitall read they do not cover): a read
                # behind it waiting in the daemon is no longer behind a waiting caller and
                # gets them now (docs/rpc.md tcp.recv: as soon as they come), or it waits
                # until the peer sends more, for ever with no timeout_ms; what this one's own
                # request gets is kept after them
                self._serve(read.conn)
        listener = self._drop_accept(msgid)
        if self._riding_accepts and msgid in self._riding_accepts:
            self._riding_accepts.discard(msgid)  # never sent: nothing comes for it
        elif token is not None and listener is not None:
            self._orphan_accept(msgid, listener)
        if self._in_hand and (conn := self._unhand(msgid)) is not None:
            self._serve(conn)  # its caller took its bytes: the next read of it may go on
        return token

    def withdraw(self, msgid: int) -> None:
        """`msgid` was never written (the daemon did not read): nobody waits for an answer."""
        self._pending.pop(msgid, None)
        self._drop_read(msgid)
        self._riding.discard(msgid)
        self._drop_accept(msgid)
        self._infos.pop(msgid, None)
        self._riding_accepts.discard(msgid)
        self._untimed_accepts.discard(msgid)
        self._closes.pop(msgid, None)

    def taken(self, msgid: int) -> None:
        """The caller of `msgid`, a read answered, has its bytes, though it has not returned
        yet: a later read of the connection does not wait behind them (`_in_hand`). For a
        shell whose caller runs other code before it returns: the blocking client's calls
        run notification handlers, which may read the same connection in the same thread,
        and would wait for ever behind the answer of the call they run in. `late` still
        gives the bytes back (kept first, after what a later read took meanwhile), `forget`
        ends it. Answers this makes are taken with `take_ready`."""
        if msgid in self._pending:
            return  # not answered (or parked: its answer waits behind an earlier read)
        conn = self._unhand(msgid) if self._in_hand else None
        asked = self._drop_read(msgid)
        if conn is None:
            if asked is None or (read := _Read.of(asked)) is None:
                return  # no read, or answered and dropped already (a rider's end, an error)
            conn = read.conn
        self._taken[msgid] = conn
        self._serve(conn)  # reads answered meanwhile, parked behind it, get their answers

    def take_ready(self) -> list[Reply[T]]:
        """Answers `forget` or `late` made from what was kept: the shell wakes their callers
        (an answer whose caller is gone already goes back with `late`)."""
        ready, self._ready = self._ready, []
        return ready

    def fail_all(self) -> list[T]:
        """Take every pending token (the connection is gone; the shell fails them)."""
        tokens = list(self._pending.values())
        self._pending.clear()
        self._reads.clear()
        self._by_conn.clear()
        self._riding.clear()
        self._orphans.clear()
        self._orphans_by_conn.clear()
        self._kept.clear()
        self._in_hand.clear()
        self._hands.clear()
        self._taken.clear()
        self._parked.clear()
        self._closes.clear()
        self._gone.clear()
        self._ready.clear()
        self._accepts.clear()
        self._orphan_accepts.clear()
        self._accepts_by_listener.clear()
        self._orphan_accepts_by_listener.clear()
        self._accepted.clear()
        self._untimed_accepts.clear()
        self._riding_accepts.clear()
        self._infos.clear()
        return tokens

    def _closed(self, conn: int) -> None:
        """The daemon closed `conn` (its `tcp.close` answered true): nothing kept for it is
        handed out any more, and what its abandoned reads still get is dropped (ids are
        never reused: no read of it comes)."""
        self._kept.pop(conn, None)
        self._gone[conn] = None
        if len(self._gone) > GONE_LIMIT:
            del self._gone[next(iter(self._gone))]
        for msgid in list(self._orphans_by_conn.get(conn, ())):
            self._unorphan(msgid)
        for msgid in [m for m in self._by_conn.get(conn, ()) if m in self._riding]:
            # nothing comes for it now: answered as a read of a closed connection is
            self._answer_rider(
                msgid, error_from_wire([NOT_FOUND, f"NOT_FOUND: connection {conn} is closed"]), None
            )
        if self._parked:
            # a rider's NOT_FOUND puts no bytes in its caller's hands: an answer parked behind
            # it (a later read refused LIMIT) goes to its caller now; the abandoned read the
            # rider rode on is dropped above, its answer serves nothing any more
            self._serve(conn)
        for listener, conns in list(self._accepted.items()):
            if conn in conns:
                conns.remove(conn)
                if not conns:
                    del self._accepted[listener]

    # -- calls abandoned by their caller ----------------------------------------------------------
    def kept_answer(self, method: str, params: list[Any] | tuple[Any, ...]) -> Any:
        """The answer of a `tcp.recv` or `tcp.accept` with `params` from what abandoned ones
        got, without asking the daemon; None when it must be asked."""
        if method == "tcp.recv":
            return self.before_read(params) if self._kept else None  # nothing kept: ask
        params = _plain(params)
        if method == "tcp.accept" and self._accepted and _valid_accept(params):
            listener = params[0]
            pending = self._pending
            accepting = any(m in pending for m in self._accepts_by_listener.get(listener, ()))
            if listener in self._accepted and not accepting:
                return self._next_accepted(listener)  # no accept of it on its way
        return None

    def _next_accepted(self, listener: int) -> int:
        conns = self._accepted[listener]
        conn = conns.popleft()
        if not conns:
            del self._accepted[listener]
        return conn

    def _with_kept(self, listener: int, info: Any) -> Any:
        """A `tcp.listener_info` answer whose `pending` counts the connections kept for the
        listener too: abandoned accepts took them from the daemon (which no longer counts
        them), and the next accepts return them without asking it (docs/rpc.md)."""
        kept = self._accepted.get(listener)
        if kept and isinstance(info, dict) and type(info.get("pending")) is int:
            return {**info, "pending": info["pending"] + len(kept)}
        return info

    def _accept_answered(self, listener: int, err: RpcError | None, result: Any) -> Any:
        """An accept's answer: the connections kept for its listener come first (this one is
        kept behind them); a TIMEOUT is no answer when one was kept. `_UNCHANGED`: as it came."""
        if err is None and type(result) is int:
            self._accepted[listener].append(result)
        elif err is None:
            return _UNCHANGED
        # an error (TIMEOUT, the listener closed) comes after the connections kept ahead of
        # it: the daemon answers the next accept with it again
        return self._next_accepted(listener)

    def before_read(self, params: list[Any] | tuple[Any, ...]) -> bytes | None:
        """The answer of a `tcp.recv` with `params` from the bytes abandoned reads kept, without
        asking the daemon; None when it must be asked (nothing kept for the connection, a read
        of it on its way, which was asked first, or a waitall read they do not cover)."""
        if not self._kept:
            return None  # the common case: nothing kept anywhere
        params = _plain(params)
        if not _valid_read(params):
            return None  # the daemon answers it INVALID_PARAMS; what is kept stays
        read = _Read.of(params)
        if read is None or (kept := self._kept.get(read.conn)) is None:
            return None
        if self._reading(read.conn) or (read.waitall and len(kept) < read.max_bytes):
            return None
        if self._reads:
            self._hold_answered(-1, (read.conn,))
        if self._hands and read.conn in self._hands:
            return None  # bytes a caller has not taken yet come first (it may give them back)
        return self._take(read.conn, kept, read.max_bytes)

    def late(self, reply: Reply[T]) -> None:
        """The shell got `reply` after its caller gave up on it (timed out or cancelled): it is
        dropped, but a `tcp.recv`'s bytes or a `tcp.accept`'s connection, which go to the next
        read (accept) waiting, as they came, or are kept ahead of anything kept after them.
        Answers this makes are taken with `take_ready`."""
        msgid = reply.msgid
        listener = self._drop_accept(msgid)
        if listener is not None:
            if reply.error is None and type(reply.result) is int:
                self._accepted.setdefault(listener, deque()).appendleft(reply.result)
                self._serve_accept(listener)
            else:
                self.dropped_responses += 1
            return
        conn = self._unhand(msgid)
        asked = self._drop_read(msgid)
        if self._taken and (taken := self._taken.pop(msgid, None)) is not None:
            conn = taken  # its caller had it (`taken`), then was interrupted
        if conn is None and asked is not None and (read := _Read.of(asked)) is not None:
            conn = read.conn
        data = reply.result
        if (
            conn is None
            or reply.error is not None
            or not isinstance(data, bytes)
            or not data
            # closed: nothing is kept for it (a closed connection is never read)
            or (self._gone and conn in self._gone)
        ):
            self.dropped_responses += 1
            if conn is not None:
                self._serve(conn)  # no longer in its caller's hands
            return
        kept = self._kept.setdefault(conn, bytearray())
        kept[:0] = data
        self.kept_bytes += len(data)
        # the next read waiting gets them as they came (not joined with what is kept after
        # them: it may be a read made to take over from the cancelled one, spec §4.4 order)
        self._serve(conn, len(data))

    def _serve(self, conn: int, most: int | None = None) -> None:
        """Answer the oldest read of `conn` still waiting from what is kept for it (at most
        `most` bytes) or with its own parked answer, unless a read of it answered earlier is
        still in its caller's hands. A read whose request the daemon has not answered yet
        leaves it there: what it gets is kept in turn."""
        # a loop, not a recursion: each read answered with no bytes lets the next go on, and
        # thousands may be parked (an asyncio client's reads refused LIMIT)
        while True:
            if self._reads:
                self._hold_answered(-1, (conn,))
            if self._hands and conn in self._hands:
                return
            kept = self._kept.get(conn)
            for msgid, asked in self._by_conn.get(conn, {}).items():  # in the order they were sent
                if msgid not in self._pending:
                    continue
                read = _Read.of(asked)
                if read is None:
                    continue
                parked = msgid in self._parked
                answer = self._parked.pop(msgid, None)
                error = answer if isinstance(answer, RpcError) else None
                # the bytes of reads parked behind it are theirs (kept last, in order)
                free = (
                    len(kept) - self._reserved(conn) if kept and self._parked else len(kept or b"")
                )
                if free > 0 and (
                    not read.waitall
                    or free >= read.max_bytes
                    # its own answer was bytes (kept), the end of stream or a reset: the bytes
                    # before it first; only a waitall TIMEOUT is no answer short
                    or (parked and not isinstance(error, RpcTimeout))
                ):
                    size = read.max_bytes if most is None else min(most, read.max_bytes)
                    if read.waitall:
                        size = read.max_bytes
                    size = min(size, free)
                    assert kept is not None
                    reply = Reply(
                        msgid, self._pending.pop(msgid), None, self._take(conn, kept, size)
                    )
                    self._hand(msgid, conn)
                elif parked:
                    # nothing kept ahead of its own answer (an error, the end of stream; its bytes
                    # dropped with the connection's close: the close's outcome, `_closed`)
                    if error is None and type(answer) is int and conn in self._gone:
                        error = error_from_wire(
                            [NOT_FOUND, f"NOT_FOUND: connection {conn} is closed"]
                        )
                    result = None if error is not None else b""
                    reply = Reply(msgid, self._pending.pop(msgid), error, result)
                else:
                    return  # it waits for the daemon; no later read overtakes it
                self._drop_read(msgid)  # the walk ends here: no later read is looked at
                if msgid in self._riding:
                    self._riding.discard(msgid)  # never sent: nothing more comes for it
                elif not parked:
                    self._orphan(msgid, asked)
                self._ready.append(reply)
                break
            else:
                return  # no read of it waits
            if reply.error is None and reply.result != b"":
                return  # bytes in its caller's hands: the next read waits until it has them
            # no bytes in its caller's hands: the next read goes on at once (a waitall read's
            # TIMEOUT short of what is kept: it may take them; a read parked with its own error
            # or end too: nothing else would answer it)

    def _serve_accept(self, listener: int) -> None:
        """Answer the oldest accept of `listener` waiting in the daemon with a kept connection;
        its own request stays with the daemon (what it gets is kept in turn)."""
        if listener not in self._accepted:
            return
        for msgid in self._accepts_by_listener.get(listener, ()):
            if msgid in self._pending:
                token = self._pending.pop(msgid)
                # stays in `_accepts` until forgotten: a caller cancelled before it runs
                # again gives the connection back (`late`), kept for the next accept
                if self._riding_accepts and msgid in self._riding_accepts:
                    self._riding_accepts.discard(msgid)  # never sent: nothing more comes
                else:
                    self._orphan_accept(msgid, listener)  # its own request is in the daemon
                self._ready.append(Reply(msgid, token, None, self._next_accepted(listener)))
                return

    def _orphan_accept_failed(self, listener: int, error: Any, result: Any) -> None:
        """An abandoned accept with no timeout got an error (the listener closed): an accept
        riding on it gets it too, as the daemon would answer it (after a kept connection)."""
        if listener in self._accepted:
            self._serve_accept(listener)
            return
        untimed = self._untimed_accepts
        if any(m in untimed for m in self._orphan_accepts_by_listener.get(listener, ())):
            # another abandoned accept with no timeout still waits in the daemon: the rider
            # rides on it. This error (a refusal, LIMIT) was that request's alone; an error
            # of the listener (closed) comes to the one still waiting too, and then to it
            self.dropped_responses += 1
            return
        for msgid in self._accepts_by_listener.get(listener, ()):
            if msgid in self._riding_accepts:
                self._riding_accepts.discard(msgid)
                err = error_from_wire(error) if error is not None else None
                answer = None if err is not None else result
                self._ready.append(Reply(msgid, self._pending.pop(msgid), err, answer))
                return
        self.dropped_responses += 1

    def _ride(self, params: list[Any] | tuple[Any, ...]) -> bool:
        """Whether a read with `params` is served by an abandoned read of its connection still
        in the daemon, unsent: one that waits there with no timeout (it ends only with bytes,
        the end of stream or an error, which this one then gets), when no other read of the
        connection is on its way (what comes after that answer is its own request's), it
        is no waitall read (which the abandoned read's bytes may not cover) and it has no
        timeout itself (its TIMEOUT must come from the daemon, which only a sent read gets)."""
        read = _Read.of(params)
        if (
            read is None
            or read.waitall
            or (len(params) > 2 and params[2] is not None)
            or self._reading(read.conn)
        ):
            return False
        return any(_untimed(asked) for asked in self._orphans_by_conn.get(read.conn, {}).values())

    def _ride_accept(self, listener: int) -> bool:
        """Whether an accept of `listener` with no timeout is served by an abandoned accept of
        it with no timeout still in the daemon, unsent: when no other accept of the listener
        is on its way (what comes after that answer is its own request's). The accept's
        answer, a connection or an error (the listener closed), is then this one's."""
        pending = self._pending
        if any(m in pending for m in self._accepts_by_listener.get(listener, ())):
            return False
        untimed = self._untimed_accepts
        return any(m in untimed for m in self._orphan_accepts_by_listener.get(listener, ()))

    def _answer_rider(self, msgid: int, error: RpcError | None, result: Any) -> None:
        self._riding.discard(msgid)
        self._drop_read(msgid)
        self._ready.append(Reply(msgid, self._pending.pop(msgid), error, result))

    def _reserved(self, conn: int) -> int:
        """How many of the bytes kept for `conn` are the own answers of its parked reads."""
        reads = self._reads
        return sum(
            n
            for msgid, n in self._parked.items()
            if type(n) is int and (asked := reads.get(msgid)) and asked[0] == conn
        )

    def _hold_answered(self, msgid: int, asked: list[Any] | tuple[Any, ...]) -> bool | None:
        """Reads of the connection of `msgid` answered earlier whose callers have not run yet
        are in their hands: this answer waits behind them (a caller cancelled before it runs
        again gives its bytes back, `late`, ahead of it). Returns whether another read of the
        connection is on its way (`_reading`, found by the same walk); None: not a connection."""
        if not asked or type(conn := asked[0]) is not int:
            return None
        pending, in_hand, parked = self._pending, self._in_hand, self._parked
        reading = False
        held: list[int] = []
        for other in self._by_conn.get(conn, ()):
            if other == msgid:
                continue
            if other in pending:
                reading = True
            elif other not in in_hand and other not in parked:
                held.append(other)
        for other in held:
            self._hand(other, conn)
        return reading

    def _add_read(self, msgid: int, asked: list[Any] | tuple[Any, ...]) -> None:
        self._reads[msgid] = asked
        if asked and type(conn := asked[0]) is int:
            self._by_conn.setdefault(conn, {})[msgid] = asked

    def _drop_read(self, msgid: int) -> list[Any] | tuple[Any, ...] | None:
        asked = self._reads.pop(msgid, None)
        if asked and type(conn := asked[0]) is int and (reads := self._by_conn.get(conn)):
            reads.pop(msgid, None)
            if not reads:
                del self._by_conn[conn]
        return asked

    def _add_accept(self, msgid: int, listener: int) -> None:
        self._accepts[msgid] = listener
        self._accepts_by_listener.setdefault(listener, {})[msgid] = None

    def _drop_accept(self, msgid: int) -> int | None:
        listener = self._accepts.pop(msgid, None)
        if listener is not None and (accepts := self._accepts_by_listener.get(listener)):
            accepts.pop(msgid, None)
            if not accepts:
                del self._accepts_by_listener[listener]
        return listener

    def _orphan_accept(self, msgid: int, listener: int) -> None:
        self._orphan_accepts[msgid] = listener
        self._orphan_accepts_by_listener.setdefault(listener, {})[msgid] = None

    def _unorphan_accept(self, msgid: int) -> int | None:
        listener = self._orphan_accepts.pop(msgid, None)
        if listener is not None and (orphans := self._orphan_accepts_by_listener.get(listener)):
            orphans.pop(msgid, None)
            if not orphans:
                del self._orphan_accepts_by_listener[listener]
        return listener

    def _orphan(self, msgid: int, asked: list[Any] | tuple[Any, ...]) -> None:
        self._orphans[msgid] = asked
        if asked and type(conn := asked[0]) is int:
            self._orphans_by_conn.setdefault(conn, {})[msgid] = asked

    def _unorphan(self, msgid: int) -> list[Any] | tuple[Any, ...] | None:
        asked = self._orphans.pop(msgid, None)
        if asked and type(conn := asked[0]) is int and (orphans := self._orphans_by_conn.get(conn)):
            orphans.pop(msgid, None)
            if not orphans:
                del self._orphans_by_conn[conn]
        return asked

    def _hand(self, msgid: int, conn: int) -> None:
        """`msgid`'s answer (a read of `conn`) is in its caller's hands (see `_in_hand`)."""
        if msgid not in self._in_hand:
            self._in_hand[msgid] = conn
            self._hands[conn] = self._hands.get(conn, 0) + 1

    def _unhand(self, msgid: int) -> int | None:
        """`msgid`'s answer left its caller's hands; its connection, or None if it was not."""
        conn = self._in_hand.pop(msgid, None)
        if conn is not None:
            if (left := self._hands[conn] - 1) > 0:
                self._hands[conn] = left
            else:
                del self._hands[conn]
        return conn

    def _held(self, conn: int) -> bool:
        """Whether the answer of a read of `conn` is in its caller's hands (`_in_hand`; those
        answered and not yet taken are marked so first)."""
        if self._reads:
            self._hold_answered(-1, (conn,))
        return bool(self._hands) and conn in self._hands

    def _reading(self, conn: int) -> bool:
        """Whether a read of `conn` is on its way: sent and not answered (one answered took
        what was kept before its answer, when it was decoded)."""
        pending = self._pending
        return any(msgid in pending for msgid in self._by_conn.get(conn, ()))

    def _take(self, conn: int, kept: bytearray, max_bytes: int) -> bytes:
        data = bytes(kept[:max_bytes])
        del kept[:max_bytes]
        if not kept:
            del self._kept[conn]
        return data

    def _orphan_answered(self, asked: list[Any] | tuple[Any, ...], error: Any, result: Any) -> None:
        read = _Read.of(asked)
        if read is None or error is not None or not isinstance(result, bytes) or not result:
            # nothing taken from the stream: the next read gets the same answer; a read riding
            # on this one gets it now (after what is kept), as the daemon would answer it
            if self._riding and read is not None:
                if read.conn in self._kept:
                    self._serve(read.conn)
                    return
                err = None if error is None else error_from_wire(error)
                if isinstance(err, RpcTimeout) and not _untimed(asked):
                    # its own timeout_ms ran out: no answer of the read riding, which rides on
                    # an abandoned read with no timeout still waiting in the daemon (`_ride`)
                    self.dropped_responses += 1
                    return
                if any(
                    _untimed(other) for other in self._orphans_by_conn.get(read.conn, {}).values()
                ):
                    # another abandoned read with no timeout still waits in the daemon: the
                    # rider rides on it. This answer (a refusal, LIMIT) was that request's
                    # alone; an end or an error of the connection comes to the one still
                    # waiting too, and then to the rider, in stream order
                    self.dropped_responses += 1
                    return
                parked = self._parked
                for msgid in self._by_conn.get(read.conn, ()):
                    # a rider parked with its answer already (below) has had it: not another
                    if msgid in self._riding and msgid not in parked:
                        if (err is not None or result == b"") and self._held(read.conn):
                            # a read of it answered earlier is in its caller's hands (its
                            # bytes may come back, `late`): the end (a reset) waits behind
                            # them, as a sent read's answer does (`_parked`, `_serve`)
                            self._parked[msgid] = err if err is not None else b""
                            return
                        self._answer_rider(msgid, err, None if err is not None else result)
                        if self._parked:
                            # the rider's end puts no bytes in its caller's hands: an answer
                            # parked behind it (a later read refused LIMIT while an earlier
                            # read's bytes were in hand) goes to its caller now, after it, as
                            # after a sent read answered with no bytes (`_decode`)
                            self._serve(read.conn)
                        return
            self.dropped_responses += 1
            return
        self._kept.setdefault(read.conn, bytearray()).extend(result)
        self.kept_bytes += len(result)
        # a read sent after it waits in the daemon for what comes next: it gets these now
        self._serve(read.conn)

    def _read_answered(self, read: _Read, err: RpcError | None, result: Any) -> Any:
        """A read's answer: the bytes kept for its connection come first, up to its
        max_bytes (the rest stays kept); a TIMEOUT is no answer when bytes were kept.
        `_UNCHANGED`: as it came."""
        kept = self._kept.get(read.conn)
        if kept is None:
            return _UNCHANGED
        if err is None and isinstance(result, bytes):
            kept.extend(result)
        elif err is None:
            return _UNCHANGED
        elif isinstance(err, RpcTimeout) and read.waitall and len(kept) < read.max_bytes:
            return _UNCHANGED  # the kept bytes stay for the next read
        # an error (a reset: docs/rpc.md tcp.recv) comes after the bytes kept ahead of it;
        # the daemon answers the next read with it again
        return self._take(read.conn, kept, read.max_bytes)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, msgid: int) -> bool:
        return msgid in self._pending

    # -- incoming ---------------------------------------------------------------------------------
    def receive(self, data: bytes | bytearray | memoryview) -> list[Event[T]]:
        """Feed bytes from the server; return the complete events they finish, in wire order.

        Raises `ProtocolError` on bytes that are not msgpack-RPC; the shell must then close.
        """
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull as exc:
            raise ProtocolError("frame from server exceeds the client's max_frame") from exc
        events: list[Event[T]] = []
        try:
            for obj in self._unpacker:
                event = self._decode(obj)
                if event is not None:
                    events.append(event)
                if self._ready:  # reads/accepts answered from what this answer kept
                    events.extend(self._ready)
                    self._ready.clear()
        except ProtocolError:
            self._unclaim(events)
            raise
        except (
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            ValueError,
            TypeError,
        ) as exc:
            self._unclaim(events)
            raise ProtocolError(f"undecodable data from server: {exc}") from exc
        return events

    def _unclaim(self, events: list[Event[T]]) -> None:
        """Put back the calls answered in a batch that is thrown away: a reply decoded before
        bad bytes in the same chunk must not take its call out of the pending map, or nobody
        fails it and it waits forever; the shell's `fail_all` now reaches it."""
        for event in events:
            if isinstance(event, Reply):
                self._pending[event.msgid] = event.token

    def _decode(self, obj: Any) -> Event[T] | None:
        if not isinstance(obj, list) or not obj:
            raise ProtocolError(f"message is not a msgpack-RPC array: {obj!r:.80}")
        kind = obj[0]
        if kind == RESPONSE and len(obj) == 4:
            _, msgid, error, result = obj
            if not isinstance(msgid, int):
                raise ProtocolError(f"response msgid is not an int: {msgid!r:.40}")
            if (
                self._closes
                and (closed := self._closes.pop(msgid, None)) is not None
                and error is None
                and result is True
            ):
                self._closed(closed)
            info = self._infos.pop(msgid, None) if self._infos else None
            untimed = False
            if self._untimed_accepts and msgid in self._untimed_accepts:
                self._untimed_accepts.discard(msgid)
                untimed = True
            if msgid not in self._pending:
                asked = self._unorphan(msgid)
                listener = self._unorphan_accept(msgid)
                if asked is not None:
                    self._orphan_answered(asked, error, result)
                elif listener is not None and error is None and type(result) is int:
                    self._accepted.setdefault(listener, deque()).append(result)
                    self._serve_accept(listener)
                elif listener is not None and untimed and self._riding_accepts:
                    self._orphan_accept_failed(listener, error, result)
                else:
                    self.dropped_responses += 1
                return None
            err = None if error is None else error_from_wire(error)
            #: whether another read of its connection is on its way, from the one walk of the
            #: reads `_hold_answered` makes (None: not walked, or `_serve` changed them since)
            reading: bool | None = None
            if len(self._reads) > 1 and (asked := self._reads.get(msgid)) is not None:
                reading = self._hold_answered(msgid, asked)
            if (
                self._hands
                and (asked := self._reads.get(msgid)) is not None
                and (read := _Read.of(asked)) is not None
                and read.conn in self._hands
            ):
                # an earlier read's bytes are in its caller's hands (it may give them back):
                # this answer waits behind them
                if err is None and isinstance(result, bytes) and result:
                    self._kept.setdefault(read.conn, bytearray()).extend(result)
                    self._parked[msgid] = len(result)
                else:
                    self._parked[msgid] = err if err is not None else b""
                return None
            token = self._pending.pop(msgid)
            if (
                self._kept
                and (asked := self._reads.get(msgid)) is not None
                and (read := _Read.of(asked)) is not None
            ):
                # joined here, in wire order, not when its caller resumes: by then a later
                # abandoned read's bytes may have been kept too
                joined = self._read_answered(read, err, result)
                if joined is not _UNCHANGED:
                    self._hand(msgid, read.conn)
                    return Reply(msgid, token, None, joined)
                if read.conn in self._kept:
                    # a waitall read timed out short of what is kept: the next read waiting
                    # may be answered from it (it would wait in the daemon for later bytes).
                    # Its record goes first: a TIMEOUT puts no bytes in its caller's hands,
                    # and `_serve` would take the answered read for one in hand, holding the
                    # next read back until this caller ran again
                    if err is not None:
                        self._drop_read(msgid)
                    self._serve(read.conn)
                    reading = None
            if (
                self._accepted
                and (listener := self._accepts.get(msgid)) is not None
                and listener in self._accepted
            ):
                first = self._accept_answered(listener, err, result)
                if first is not _UNCHANGED:
                    return Reply(msgid, token, None, first)
            if (
                err is None
                and reading is not False  # the walk found no other read of it: no `_Read`
                and len(self._reads) > 1
                and isinstance(result, bytes)
                and result
                and (asked := self._reads.get(msgid)) is not None
                and (read := _Read.of(asked)) is not None
                and (self._reading(read.conn) if reading is None else reading)
            ):
                # another read of the connection waits: its answer (maybe in this same chunk)
                # waits behind these bytes, which a caller cancelled before it runs again
                # gives back (`late`), ahead of it
                self._hand(msgid, read.conn)
            if info is not None and err is None and self._accepted:
                result = self._with_kept(info, result)
            if (
                (err is not None or result == b"")
                and (asked := self._drop_read(msgid))
                and self._parked
                and (read := _Read.of(asked)) is not None
            ):
                # a read answered with no bytes (an error, the end of stream; its record is
                # dropped) puts nothing in its caller's hands that `late` could give back: no
                # later read of the connection waits behind it, and an answer parked behind an
                # earlier one (a refusal, LIMIT) goes to its caller now, after this one
                self._serve(read.conn)
            return Reply(msgid, token, err, None if err is not None else result)
        if kind == NOTIFICATION and len(obj) == 3:
            _, method, params = obj
            if isinstance(method, bytes):
                method = method.decode("utf-8", "surrogateescape")
            if not isinstance(method, str):
                raise ProtocolError(f"notification method is not a string: {method!r:.40}")
            return Notification(method, params if isinstance(params, list) else [params])
        raise ProtocolError(f"unexpected message from server: {obj!r:.80}")


#: docs/rpc.md "Limits": the largest `max_bytes` of a `tcp.recv` the daemon takes
MAX_RECV = 8 * 1024 * 1024
#: docs/rpc.md: ids are positive integers below 2**62 (chimneyd/rpc/params.py MAX_ID)
MAX_ID = 1 << 62


#: Methods whose params `ClientCodec` reads (ids, sizes, timeouts), as `_plain` makes them.
_ID_METHODS = frozenset({"tcp.recv", "tcp.accept", "tcp.close", "tcp.listener_info"})
#: Param types msgpack sends as they are (a subclass of int or float goes as a plain one)
_WIRE_TYPES = frozenset({int, float, bool, type(None), str, bytes, dict, list})


def _plain(params: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    """`params` as the daemon decodes them: an int or float subclass (an IntEnum id, a
    numpy.float64 timeout) is sent by msgpack as a plain int (float), which chimneyd takes
    (chimneyd/rpc/params.py checks the types it decodes); checked by their type here, a call
    the daemon takes would be taken as one it refuses, and skip what is kept for it."""
    for value in params:
        if type(value) not in _WIRE_TYPES:
            break
    else:
        return params  # the common case: nothing to change, nothing copied
    return [_plain_value(value) for value in params]


def _plain_value(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # bool cannot be subclassed; msgpack sends true/false
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _valid_timeout(value: Any) -> bool:
    """A `timeout_ms` the daemon takes: nil, or a number of milliseconds from 0 to an hour
    (not a bool: msgpack's true is no number there)."""
    return value is None or (type(value) in (int, float) and 0 <= value <= MAX_TIMEOUT_MS)


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _valid_read(params: list[Any] | tuple[Any, ...]) -> bool:
    """Whether the daemon takes `tcp.recv` `params` (its checks, chimneyd/rpc/methods.py
    tcp_recv: `[conn_id, max_bytes (1..8 MiB), timeout_ms?, opts {"waitall": bool}?]`); what
    it refuses with INVALID_PARAMS must not be answered from what is kept."""
    if not 2 <= len(params) <= 4 or not _valid_id(params[0]):
        return False
    if type(max_bytes := params[1]) is not int or not 0 < max_bytes <= MAX_RECV:
        return False
    if len(params) > 2 and not _valid_timeout(params[2]):
        return False
    opts = params[3] if len(params) > 3 else None
    return opts is None or (
        isinstance(opts, dict)
        and all(k == "waitall" and (v is None or isinstance(v, bool)) for k, v in opts.items())
    )


def _valid_accept(params: list[Any] | tuple[Any, ...]) -> bool:
    """Whether the daemon takes `tcp.accept` `params` (`[listener_id, timeout_ms?]`)."""
    return (
        1 <= len(params) <= 2
        and _valid_id(params[0])
        and (len(params) == 1 or _valid_timeout(params[1]))
    )


def _untimed(asked: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a `tcp.recv` with params `asked` has no timeout_ms: the daemon never times it
    out (it ends with bytes, the end of stream or an error)."""
    return len(asked) < 3 or asked[2] is None


#: what `ClientCodec` gets back for an answer it leaves as it came (not an identity test of
#: the result: CPython shares the objects of small ints and one-byte bytes)
_UNCHANGED: Any = object()


class _Read(NamedTuple):
    """A `tcp.recv` as its caller asked it (a tuple: one is made per read)."""

    conn: int
    max_bytes: int
    waitall: bool

    @staticmethod
    def of(params: list[Any] | tuple[Any, ...]) -> _Read | None:
        """The read of `tcp.recv` params; None if they are not well formed (the daemon
        answers INVALID_PARAMS: nothing kept is touched)."""
        if len(params) < 2 or type(params[0]) is not int or type(params[1]) is not int:
            return None
        if params[1] <= 0:
            return None
        opts = params[3] if len(params) > 3 else None
        return _Read(params[0], params[1], isinstance(opts, dict) and opts.get("waitall") is True)


#: What `parse_address` takes, for the message of an address it cannot parse.
ADDRESS_FORMS = f"HOST:PORT, [IPV6]:PORT, HOST (port {DEFAULT_PORT}) or unix:PATH"


def _bad_address(address: str, why: str) -> AddressError:
    return AddressError(f"bad address {address!r}: {why}; expected {ADDRESS_FORMS}")


def _unbracketed_port(address: str) -> tuple[str, str] | None:
    """(IPv6 host, port) of an IPv6 literal written with a port but no brackets, "::1:7416";
    None for a bare IPv6 address, "::1" or "fe80::1", whose last group is no port."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return None
    return host, port


def parse_address(address: str) -> tuple[str, int] | str:
    """`"host:port"`, `"[::1]:port"`, `"host"` (default port) or `"unix:/path"` (a str path).
    Raises `AddressError` (a ValueError) naming the bad value and the forms accepted."""
    text = address.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise _bad_address(text, "unix: needs a path, e.g. unix:/run/chimneyd.sock")
        return path
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise _bad_address(text, "no ']' closes the IPv6 address")
        if rest and not rest.startswith(":"):
            raise _bad_address(text, f"after ']' comes :PORT, not {rest!r}")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif (split := _unbracketed_port(text)) is not None:
        # "::1:7416" is also a valid IPv6 address (with no port): refuse to guess which
        raise _bad_address(
            text,
            f"IPv6 needs brackets: [{split[0]}]:{split[1]} "
            f"(or [{text}]:{DEFAULT_PORT} for the address {text} itself)",
        )
    else:
        host, port = text, ""
    try:
        port_n = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise _bad_address(text, f"port {port!r} is not a number") from None
    if not 0 <= port_n < 65536:
        raise _bad_address(text, f"port {port_n} is out of range (0-65535)")
    return (host or "127.0.0.1", port_n)


#: Methods that wait in the daemon, by the index of their `timeout_ms` param (rpc-contract.md:
#: `tcp.recv [conn_id, max_bytes, timeout_ms?]`, `tcp.accept [listener_id, timeout_ms?]`).
SERVER_WAIT_PARAM: dict[str, int] = {"tcp.recv": 2, "tcp.accept": 1}


class ServerWait(NamedTuple):
    """How one call is timed: a call that waits in the daemon is timed by the daemon (a tuple:
    one is made per read, and a frozen dataclass took ~1 µs to make)."""

    #: the params to send (with the call's timeout as `timeout_ms` when `implicit`)
    params: list[Any] | tuple[Any, ...]
    #: the client's own limit in seconds (None: none)
    limit: float | None
    #: `timeout_ms` was filled in with the call's timeout: the daemon's TIMEOUT answer is then
    #: the call timing out, raised as `CallTimeout`
    implicit: bool

    def is_call_timeout(self, error: BaseException) -> bool:
        """Whether `error`, the answer to this call, is the wait sent for the call's timeout
        running out (raised as `CallTimeout`). Told by the answer, not by the time it took: a
        daemon's timer may fire early by the client's clock (uvloop counts from the time cached
        at the start of its loop turn) and a client may read an answer late. The one other
        TIMEOUT a waiting call gets is a cancellation (the daemon is stopping, docs/rpc.md
        "Errors"), which stays the daemon's answer."""
        return (
            self.implicit
            and isinstance(error, RpcTimeout)
            and not error.detail.startswith(CANCELLED)
        )


#: How chimneyd's TIMEOUT answer to a request it cancelled begins ("TIMEOUT: cancelled: the
#: daemon is stopping"), as opposed to a wait that ran out ("nothing arrived on connection 7").
CANCELLED = "cancelled"


def server_wait(
    method: str, params: list[Any] | tuple[Any, ...], limit: float | None
) -> ServerWait:
    """Time one call of `method` whose timeout is `limit` seconds so that no data is lost by it.

    A `tcp.recv`/`tcp.accept` the client merely gave up on stays queued in the daemon, which
    hands it the next bytes (or connection) and its answer is dropped (contract: tcp.recv, no
    data is lost by a *server* timeout). So when a limit applies and the params carry no
    `timeout_ms` (or nil), the daemon is sent the limit as `timeout_ms` and times out itself,
    keeping the bytes; a `timeout_ms` in the params is kept and wins over the limit. Either way
    the client's own limit is `SERVER_WAIT_MARGIN` above the daemon's wait: it only catches a
    daemon that does not answer at all. A limit longer than the daemon's longest wait (an hour,
    `MAX_TIMEOUT_MS`) is the client's own, sent no `timeout_ms`: the call is not cut to an
    hour, and what the read abandoned at its end gets is kept (`ClientCodec`).
    Params of the wrong shape are sent as they are (the daemon answers INVALID_PARAMS).
    """
    index = SERVER_WAIT_PARAM.get(method)
    if limit is None or index is None or len(params) < index:
        return ServerWait(params, limit, False)
    given = params[index] if len(params) > index else None
    if given is None:
        ms = math.ceil(max(limit, 0.0) * 1000)
        if ms > MAX_TIMEOUT_MS:
            # longer than the daemon's longest wait: the client times it itself, and what an
            # abandoned tcp.recv/tcp.accept then gets is kept (`ClientCodec`)
            return ServerWait(params, limit, False)
        sent = [*params[:index], ms, *params[index + 1 :]]
        return ServerWait(sent, ms / 1000 + SERVER_WAIT_MARGIN, True)
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return ServerWait(params, max(limit, given / 1000 + SERVER_WAIT_MARGIN), False)
    return ServerWait(params, limit, False)


def recv_params(conn_id: int, max_bytes: int, timeout_ms: int | None, waitall: bool) -> list[Any]:
    """`tcp.recv`'s params: `timeout_ms` only when given or before `opts`; `{"waitall": true}`
    as `opts` (docs/rpc.md tcp.recv)."""
    params: list[Any] = [conn_id, max_bytes]
    if waitall:
        params += [timeout_ms, {"waitall": True}]
    elif timeout_ms is not None:
        params.append(timeout_ms)
    return params


def connect_opts(offload: bool, target: str | None) -> dict[str, Any]:
    """`opts` of `tcp.connect`/`tcp.listen`: only what differs from the contract defaults."""
    opts: dict[str, Any] = {}
    if not offload:
        opts["offload"] = False
    if target is not None:
        opts["target"] = target
    return opts


def fault_spec(kind: str, keys: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **keys}
