"""Kept reads in stream order: concurrent and cancelled readers of a connection, in any order.

Two state machines (several readers of a connection at once; one reading loop per
connection) and one test per sequence that needs a particular interleaving: two reads
answered in one chunk whose first caller is cancelled (its bytes, then the second's or the
end of stream), bytes given back after the connection's tcp.close (not kept), a connection
handed on from a kept accept whose caller is cancelled (kept again), a parked read of a
connection closed meanwhile (the close's outcome, not the end of stream).

A model daemon (`_Daemon`) answers `tcp.recv` from a byte stream per connection, in the order
chimneyd does (requests of a connection served in the order sent, rpc-contract.md `tcp.recv`),
and a model shell drives `ClientCodec` as `AsyncClient.call` does (kept_answer, request, forget
on abandon, late for an answer whose caller was cancelled before it ran again, take_ready).
What callers take, joined in the order they take it, must be the stream: no byte lost, none
twice, none out of order (rpc-contract.md `tcp.recv`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import msgpack
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chimney_client import AsyncClient
from chimney_client.protocol import ClientCodec, Reply
from tests.clients.scripted import HANG, address, answer, response, scripted_server

CONNS = (1, 2)
RECV_TIMEOUT = [7, "TIMEOUT: nothing arrived"]
RESET = [5, "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C)"]
CLOSED = [4, "INVALID_STATE: connection 1 is closed"]
LIMIT = [6, "LIMIT: more than 256 requests in flight"]
INVALID = [2, "INVALID_PARAMS: max_bytes must be a positive integer"]


@dataclass
class _Req:
    msgid: int
    conn: int
    max_bytes: int
    waitall: bool
    forever: bool = False  # no timeout_ms: the daemon never times it out


@dataclass
class _Conn:
    stream: bytearray = field(default_factory=bytearray)  # all the peer sent
    buffered: bytearray = field(default_factory=bytearray)  # in the daemon, not yet read
    eof: bool = False
    reset: bool = False
    closed: bool = False
    queue: deque[_Req] = field(default_factory=deque)  # reads waiting in the daemon


class _Daemon:
    """chimneyd's tcp.recv as the contract states it: the reads of a connection are served in
    the order they came; a read gets 1..max_bytes bytes (waitall: max_bytes, fewer only at the
    end of stream); an empty bin at the end of stream; a timeout leaves the bytes."""

    def __init__(self) -> None:
        self.conns = {c: _Conn() for c in CONNS}

    def serve(self, conn: int) -> list[bytes]:
        c = self.conns[conn]
        frames = []
        while c.queue:
            req = c.queue[0]
            if c.buffered and (not req.waitall or len(c.buffered) >= req.max_bytes or c.eof):
                data = bytes(c.buffered[: req.max_bytes])
                del c.buffered[: req.max_bytes]
            elif c.eof and not c.buffered:
                data = b""
            elif (c.reset and not c.buffered) or c.closed:
                c.queue.popleft()
                frames.append(response(req.msgid, None, RESET if c.reset else CLOSED))
                continue
            else:
                break
            c.queue.popleft()
            frames.append(response(req.msgid, data))
        return frames


class KeptReads(RuleBasedStateMachine):
    #: one caller at a time reads each connection (a reading loop: `wait_for(recv, t)` again and
    #: again); False: callers may read a connection at once (several tasks)
    single_reader = False
    #: whether tcp.close is among the rules
    closing = True

    def __init__(self) -> None:
        super().__init__()
        self.codec: ClientCodec[int] = ClientCodec()
        self.daemon = _Daemon()
        self.next_caller = 0
        #: caller -> (msgid, conn, max_bytes) of callers waiting for their answer
        self.waiting: dict[int, tuple[int, int, int]] = {}
        #: callers answered, not yet run again, in the order they were woken (asyncio runs
        #: them in that order): (caller, conn, reply)
        self.answered: deque[tuple[int, int, Reply[int]]] = deque()
        self.taken = {c: bytearray() for c in CONNS}
        #: connections closed (what they held may be dropped)
        self.closed_taken: dict[int, None] = {}
        #: conn -> the end of stream or reset a caller took first
        self.ended: dict[int, str] = {}
        #: msgids of reads not sent (riding on an abandoned read with no timeout)
        self.riders: set[int] = set()
        #: msgids of answers marked taken at once (`ClientCodec.taken`, as the blocking
        #: client does before a handler runs): their callers return with them
        self.early: set[int] = set()
        #: conn -> how many times a read took bytes of it from what was kept (`kept_answer`)
        self.kept_takes = {c: 0 for c in CONNS}
        #: msgid of an early answer -> `kept_takes` of its conn when it was marked taken
        self.early_mark: dict[int, int] = {}
        self.log: list[str] = []

    # -- the shell (aio.AsyncClient.call / _deliver) -------------------------------------------
    def _deliver(self, replies: list[Any]) -> None:
        while replies:
            for event in replies:
                if not isinstance(event, Reply):
                    continue
                caller = event.token
                if caller in self.waiting:
                    msgid, conn, max_bytes = self.waiting.pop(caller)
                    assert msgid == event.msgid
                    if event.error is None:
                        assert isinstance(event.result, bytes)
                        assert len(event.result) <= max_bytes, (event.result, max_bytes)
                    self.answered.append((caller, conn, event))
                else:
                    self.codec.late(event)  # its caller gave up already
            replies = list(self.codec.take_ready())

    def _took(self, conn: int, data: bytes) -> None:
        if self.ended.get(conn) is not None:
            # docs/rpc.md tcp.recv: the end of stream (or a reset) comes after the last
            # byte; a caller that stops there would lose what comes after it
            assert not data, (conn, data, self.ended[conn], self.log)
        self.taken[conn] += data

    def _receive(self, frames: list[bytes]) -> None:
        for frame in frames:  # one answer per chunk: a shell may read them one by one
            self._deliver(list(self.codec.receive(frame)))

    # -- rules ----------------------------------------------------------------------------------
    @rule(
        conn=st.sampled_from(CONNS),
        max_bytes=st.integers(1, 6),
        waitall=st.booleans(),
        forever=st.booleans(),
    )
    def read(self, conn: int, max_bytes: int, waitall: bool, forever: bool = False) -> None:
        forever = forever and not waitall
        params: list[Any] = [conn, max_bytes, None if forever else 1000]
        if waitall:
            params.append({"waitall": True})
        if self.single_reader and (
            any(c == conn for _, c, _ in self.waiting.values())
            or any(c == conn for _, c, _ in self.answered)
        ):
            return
        if self.daemon.conns[conn].closed:
            return  # ids are never reused: nobody reads a closed connection
        self.log.append(f"read conn={conn} max={max_bytes} waitall={waitall} forever={forever}")
        kept = self.codec.kept_answer("tcp.recv", params)
        if kept is not None:
            assert len(kept) <= max_bytes
            self.log.append(f"  kept answer {kept!r}")
            # as a woken caller's bytes: none after the end of stream (or reset) a caller took
            assert self.ended.get(conn) is None, (conn, kept, self.ended[conn], self.log)
            self.taken[conn] += kept
            self.kept_takes[conn] += 1
            return
        caller = self.next_caller
        self.next_caller += 1
        msgid, data = self.codec.request("tcp.recv", params, caller)
        self.waiting[caller] = (msgid, conn, max_bytes)
        if not data:
            # not sent: an abandoned read of the connection with no timeout answers it
            self.log.append(f"  riding msgid={msgid}")
            self.riders.add(msgid)
            return
        sent = msgpack.unpackb(data, raw=False)[3]
        sent_waitall = len(sent) > 3 and sent[3].get("waitall") is True
        self.daemon.conns[conn].queue.append(_Req(msgid, conn, sent[1], sent_waitall, forever))
        self._receive(self.daemon.serve(conn))

    @rule(
        conn=st.sampled_from(CONNS),
        params=st.sampled_from([(0,), (6, -1), (6, None, {"peek": True}), (6, "soon")]),
        give_up=st.booleans(),
    )
    def refused_read(self, conn: int, params: tuple[Any, ...], give_up: bool) -> None:
        """A read with params the daemon refuses (INVALID_PARAMS, at once, queued nowhere),
        maybe given up on before the refusal is read: it takes nothing kept, rides on
        nothing, and what is kept stays for the next read."""
        if self.daemon.conns[conn].closed:
            return
        asked = [conn, *params]
        self.log.append(f"refused read {asked} give_up={give_up}")
        assert self.codec.kept_answer("tcp.recv", asked) is None
        msgid, data = self.codec.request("tcp.recv", asked, -1)
        assert data, "a read the daemon refuses must be sent to be answered"
        if give_up:
            self.codec.forget(msgid)
            self._deliver(list(self.codec.take_ready()))
        events = self.codec.receive(response(msgid, None, INVALID))
        replies = [e for e in events if isinstance(e, Reply)]
        assert [r.token for r in replies] == ([] if give_up else [-1]), (replies, self.log)
        if not give_up:
            self.codec.forget(msgid)
        self._deliver(list(self.codec.take_ready()))

    @rule(conn=st.sampled_from(CONNS), give_up=st.booleans())
    def limited_read(self, conn: int, give_up: bool) -> None:
        """A read with no timeout_ms the daemon refuses at once (LIMIT: requests in flight,
        queued nowhere), maybe given up on before the refusal is read: a read riding on
        another abandoned read of the connection does not get that refusal."""
        if self.daemon.conns[conn].closed:
            return
        params: list[Any] = [conn, 6, None]
        if (kept := self.codec.kept_answer("tcp.recv", params)) is not None:
            assert self.ended.get(conn) is None, (conn, kept, self.log)
            self.taken[conn] += kept  # taken from what is kept: the daemon is not asked
            self.kept_takes[conn] += 1
            return
        caller = self.next_caller
        self.next_caller += 1
        msgid, data = self.codec.request("tcp.recv", params, caller)
        self.waiting[caller] = (msgid, conn, 6)
        self.log.append(f"limited read msgid={msgid} (sent={bool(data)}) give_up={give_up}")
        if not data:
            self.log.append(f"  riding msgid={msgid}")  # nothing refused: a read riding
            self.riders.add(msgid)
            return
        if give_up:
            del self.waiting[caller]
            self.codec.forget(msgid)
            self._deliver(list(self.codec.take_ready()))
        # its caller gets the refusal (maybe after an earlier read's answer still in hand)
        self._receive([response(msgid, None, LIMIT)])

    @precondition(lambda self: bool(self.answered))
    @rule()
    def blocking_delivery(self) -> None:
        """The blocking client's delivery: every answered caller has its answer at once
        (`ClientCodec.taken`) and returns with it; what that frees is delivered in turn."""
        while todo := [r.msgid for _, _, r in self.answered if r.msgid not in self.early]:
            for msgid in todo:
                self.log.append(f"taken msgid={msgid}")
                self.early.add(msgid)
                (conn, reply) = next((c, r) for _, c, r in self.answered if r.msgid == msgid)
                self.early_mark[msgid] = self.kept_takes[conn]
                self.codec.taken(msgid)
                if reply.error is None:
                    # its caller has the bytes now: a read after it (a handler's, inside the
                    # call) may take what follows them before the call returns
                    self._took(conn, reply.result)
            self._deliver(list(self.codec.take_ready()))

    @precondition(lambda self: any(r.msgid in self.early for _, _, r in self.answered))
    @rule(index=st.integers(0, 10))
    def interrupt_taken(self, index: int) -> None:
        """The blocking client's caller of an answer marked taken is interrupted before it
        returns (a handler it runs raised KeyboardInterrupt): `late` gives its bytes back,
        then `forget`. Only while nothing after them in the stream was taken: no answer of
        its connection delivered after it, no read took bytes kept after it (the calls a
        handler makes finish, or are interrupted, before the call it runs in)."""
        items = list(self.answered)
        early = [i for i, (_, _, r) in enumerate(items) if r.msgid in self.early]
        at = early[index % len(early)]
        _, conn, reply = items[at]
        if any(c == conn for _, c, _ in items[at + 1 :]):
            return
        if self.kept_takes[conn] != self.early_mark[reply.msgid]:
            return
        del self.answered[at]
        self.log.append(f"interrupt taken msgid={reply.msgid} ({reply.result!r})")
        if reply.error is None:
            # given back: they were the last bytes taken (nothing after them was)
            held = self.taken[conn]
            assert held.endswith(reply.result), (conn, held, reply.result, self.log)
            self.taken[conn] = held[: len(held) - len(reply.result)]
            self.codec.late(reply)
        self.codec.forget(reply.msgid)
        self._deliver(list(self.codec.take_ready()))

    @rule(conn=st.sampled_from(CONNS), forever=st.booleans())
    def read_never_written(self, conn: int, forever: bool) -> None:
        """A read registered, then never written (the blocking client's send timed out or
        was interrupted before a byte went): withdrawn, nothing waits for it."""
        if self.daemon.conns[conn].closed:
            return
        params: list[Any] = [conn, 6, None if forever else 1000]
        if (kept := self.codec.kept_answer("tcp.recv", params)) is not None:
            assert self.ended.get(conn) is None, (conn, kept, self.log)
            self.taken[conn] += kept  # taken from what is kept: the daemon is not asked
            self.kept_takes[conn] += 1
            return
        msgid, data = self.codec.request("tcp.recv", params, -2)
        self.log.append(f"read never written msgid={msgid} (sent={bool(data)})")
        self.codec.withdraw(msgid)

    @rule(conn=st.sampled_from(CONNS), data=st.binary(min_size=1, max_size=5))
    def peer_sends(self, conn: int, data: bytes) -> None:
        c = self.daemon.conns[conn]
        if c.eof or c.closed:
            return
        # bytes numbered so a duplicate or a reorder shows
        base = len(c.stream)
        data = bytes((base + i) % 251 for i in range(len(data)))
        c.stream += data
        c.buffered += data
        self.log.append(f"peer sends {data!r} on {conn}")
        self._receive(self.daemon.serve(conn))

    @rule(conn=st.sampled_from(CONNS))
    def peer_reset(self, conn: int) -> None:
        c = self.daemon.conns[conn]
        if c.eof or c.closed:
            return
        c.reset = True
        c.eof = True  # nothing more comes
        self.log.append(f"peer RST on {conn}")
        self._receive(self.daemon.serve(conn))

    @precondition(lambda self: self.closing)
    @rule(conn=st.sampled_from(CONNS), refused=st.booleans(), before=st.booleans())
    def close(self, conn: int, refused: bool, before: bool) -> None:
        """tcp.close: refused (LIMIT, nothing changes) or done (reads then get INVALID_STATE
        and no caller reads the connection again). `before`: the daemon answers the reads it
        serves before the close's answer (they are in one chunk)."""
        c = self.daemon.conns[conn]
        if c.closed:
            return
        self.log.append(f"close {conn} refused={refused}")
        caller = self.next_caller
        self.next_caller += 1
        msgid, _ = self.codec.request("tcp.close", [conn], caller)
        if refused:
            self._receive([response(msgid, None, LIMIT)])
            self.codec.forget(msgid)
            return
        c.closed = True
        c.buffered.clear()
        frames = self.daemon.serve(conn)
        answer = [response(msgid, True)]
        self._receive(frames + answer if before else answer + frames)
        self.codec.forget(msgid)
        self.closed_taken[conn] = None

    @rule(conn=st.sampled_from(CONNS))
    def peer_fin(self, conn: int) -> None:
        self.daemon.conns[conn].eof = True
        self.log.append(f"peer FIN on {conn}")
        self._receive(self.daemon.serve(conn))

    @rule(conn=st.sampled_from(CONNS), index=st.integers(0, 5))
    def daemon_timeout(self, conn: int, index: int) -> None:
        """A queued read's timeout_ms runs out: TIMEOUT, the bytes stay."""
        q = self.daemon.conns[conn].queue
        timed = [req for req in q if not req.forever]
        if not timed:
            return
        req = timed[index % len(timed)]
        q.remove(req)
        self.log.append(f"daemon TIMEOUT msgid={req.msgid}")
        frames = [response(req.msgid, None, RECV_TIMEOUT)]
        frames += self.daemon.serve(conn)  # the next read may now be served
        self._receive(frames)

    @precondition(lambda self: bool(self.waiting))
    @rule(index=st.integers(0, 10))
    def cancel_waiting(self, index: int) -> None:
        caller = sorted(self.waiting)[index % len(self.waiting)]
        msgid, _, _ = self.waiting.pop(caller)
        self.log.append(f"cancel waiting msgid={msgid}")
        self.codec.forget(msgid)
        self._deliver(list(self.codec.take_ready()))

    @precondition(lambda self: bool(self.answered))
    @rule(cancel=st.booleans())
    def run_next_answered(self, cancel: bool) -> None:
        _, conn, reply = self.answered.popleft()
        # a rider gets what the read it rides on gets, never another read's refusal
        assert reply.msgid not in self.riders or "LIMIT" not in str(reply.error), (
            reply,
            self.log,
        )
        if reply.msgid in self.early:
            cancel = False  # its caller has it: it returns with it
        if cancel:
            self.log.append(f"cancel answered msgid={reply.msgid} ({reply.result!r})")
            if reply.error is None:
                self.codec.late(reply)
        else:
            self.log.append(f"take msgid={reply.msgid} {reply.result!r} err={reply.error}")
            if reply.error is None and reply.msgid not in self.early:
                self._took(conn, reply.result)  # an early one's bytes counted when marked
            ended = reply.result == b"" or (
                reply.error is not None and "ABORTED" in str(reply.error)
            )
            if ended and conn not in self.ended:
                self.ended[conn] = str(reply.error or "end of stream")
        self.codec.forget(reply.msgid)
        self._deliver(list(self.codec.take_ready()))

    @invariant()
    def taken_is_a_prefix_of_the_stream(self) -> None:
        for conn in CONNS:
            stream = bytes(self.daemon.conns[conn].stream)
            taken = bytes(self.taken[conn])
            assert stream.startswith(taken), (conn, taken, stream, self.log)

    @invariant()
    def indexes_agree_with_what_they_index(self) -> None:
        """The codec's per-connection indexes (an answer's work is with its own connection's
        reads, not with every open read) say what the maps they index say."""
        codec = self.codec
        by_conn: dict[int, dict[int, Any]] = {}
        for msgid, asked in codec._reads.items():
            if asked and type(asked[0]) is int:
                by_conn.setdefault(asked[0], {})[msgid] = asked
        assert codec._by_conn == by_conn, (codec._by_conn, codec._reads, self.log)
        for conn, reads in codec._by_conn.items():  # each in the order sent, as `_reads`
            assert list(reads) == [m for m in codec._reads if m in reads], (conn, self.log)
        orphans: dict[int, dict[int, Any]] = {}
        for msgid, asked in codec._orphans.items():
            if asked and type(asked[0]) is int:
                orphans.setdefault(asked[0], {})[msgid] = asked
        assert codec._orphans_by_conn == orphans, (codec._orphans_by_conn, self.log)
        hands: dict[int, int] = {}
        for conn in codec._in_hand.values():
            hands[conn] = hands.get(conn, 0) + 1
        assert codec._hands == hands, (codec._hands, codec._in_hand, self.log)

    def teardown(self) -> None:
        """Everything still in hand is taken; then fresh reads must get the rest."""
        while self.answered:
            self.run_next_answered(False)
        for conn in CONNS:
            c = self.daemon.conns[conn]
            if c.closed:
                # nothing is held for a closed connection (ids are never reused)
                assert conn not in self.codec._kept, (conn, self.codec._kept, self.log)
                continue
            for _ in range(4 * len(c.stream) + 4):
                # a waitall read the peer's bytes never fill waits no more
                while waitall := [i for i, req in enumerate(c.queue) if req.waitall]:
                    self.daemon_timeout(conn, waitall[0])
                while self.answered:
                    self.run_next_answered(False)
                if bytes(self.taken[conn]) == bytes(c.stream):
                    break
                self.read(conn, 6, False)
                while self.answered:
                    self.run_next_answered(False)
            for _ in range(0 * len(c.stream) + 4):
                if bytes(self.taken[conn]) == bytes(c.stream):
                    break
                while self.answered:
                    self.run_next_answered(False)
                if bytes(self.taken[conn]) == bytes(c.stream):
                    break
                self.read(conn, 6, False)
                while self.answered:
                    self.run_next_answered(False)
            assert bytes(self.taken[conn]) == bytes(c.stream), (
                conn,
                bytes(self.taken[conn]),
                bytes(c.stream),
                self.log,
            )


KeptReads.TestCase.settings = settings(
    # about 4 s a machine on a fresh checkout (no example database): well within the
    # suite's per-test timeout, also while shrinking a failure
    max_examples=400,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # one shrunk sequence, not one per distinct failure: shrinking several stays within the
    # suite's per-test timeout
    report_multiple_bugs=False,
)
TestKeptReadsStateMachine = KeptReads.TestCase


class KeptReadsOneReader(KeptReads):
    single_reader = True


KeptReadsOneReader.TestCase.settings = KeptReads.TestCase.settings
TestKeptReadsOneReaderStateMachine = KeptReadsOneReader.TestCase


def test_a_read_answered_next_to_a_cancelled_one_does_not_overtake_its_given_back_bytes() -> None:
    """Two reads of a connection (two tasks) answered in one chunk, "a" then "b", nothing kept
    before: the first's caller is cancelled before it runs again and gives "a" back (`late`);
    the second read waits behind it. docs/rpc.md: a read answered but cancelled before its
    caller ran again gives its bytes back ahead of the rest, and no read of the connection is
    answered meanwhile: the callers take "a" then "b"."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("tcp.recv", (1, 1), "first")
    second, _ = codec.request("tcp.recv", (1, 1), "second")
    replies = [e for e in codec.receive(response(first, b"a") + response(second, b"b"))]
    taken: list[bytes] = []
    for reply in replies:  # the shell wakes both callers; the first is cancelled meanwhile
        assert isinstance(reply, Reply)
        if reply.token == "first":
            codec.late(reply)
            codec.forget(reply.msgid)
            for ready in codec.take_ready():  # the second read, woken now: its caller takes it
                taken.append(ready.result)
                codec.forget(ready.msgid)
        else:
            taken.append(reply.result)
            codec.forget(reply.msgid)
    taken.append(codec.before_read((1, 100)) or b"")  # the next read
    assert b"".join(taken) == b"ab", taken


def test_bytes_given_back_by_a_cancelled_read_do_not_come_after_the_end_of_stream() -> None:
    """As above with the peer's FIN: "a" then the end of stream (b"") in one chunk. The first
    caller is cancelled and gives "a" back, the second takes the end of stream and stops
    reading (docs/rpc.md tcp.recv: an empty bin at the end of stream): "a" comes first."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("tcp.recv", (1, 1), "first")
    second, _ = codec.request("tcp.recv", (1, 1), "second")
    replies = [e for e in codec.receive(response(first, b"a") + response(second, b""))]
    results: list[bytes] = []
    for reply in replies:
        assert isinstance(reply, Reply)
        if reply.token == "first":
            codec.late(reply)
            codec.forget(reply.msgid)
            results += [r.result for r in codec.take_ready()]
        else:
            results.append(reply.result)
            codec.forget(reply.msgid)
    assert results[0] != b"", f"end of stream taken before b'a', still kept: {results}"


def test_bytes_given_back_after_the_connection_is_closed_are_not_kept() -> None:
    """A read answered "x"; the connection's tcp.close is answered true (the task closing it
    ran first); then the reading task is cancelled before it ran again and gives "x" back.
    Nothing is kept for it: no read of a closed connection comes (ids are never reused;
    docs/rpc.md: what is kept is dropped when tcp.close succeeds)."""
    codec: ClientCodec[str] = ClientCodec()
    read, _ = codec.request("tcp.recv", (1, 100), "read")
    (reply,) = codec.receive(response(read, b"x" * 1000))
    close, _ = codec.request("tcp.close", (1,), "close")
    assert [r.result for r in codec.receive(response(close, True)) if isinstance(r, Reply)] == [
        True
    ]
    codec.forget(close)
    assert isinstance(reply, Reply)
    codec.late(reply)
    codec.forget(read)
    assert codec.take_ready() == []
    assert codec.before_read((1, 100)) is None, "bytes kept for a closed connection"


def test_a_connection_handed_from_a_kept_accept_is_kept_again_when_its_caller_is_cancelled() -> (
    None
):
    """An abandoned tcp.accept gets connection 7, which goes at once to the accept waiting
    behind it (`_serve_accept`); that accept's caller is cancelled before it runs again and
    gives 7 back (`late`, as `AsyncClient.call` does): connection 7 is kept for the next
    accept of the listener, not dropped (it would stay open in the daemon, the client's)."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (5, 1000), "cancelled")
    codec.forget(gone)
    mine, _ = codec.request("tcp.accept", (5, 1000), "mine")
    (reply,) = [e for e in codec.receive(response(gone, 7)) if isinstance(e, Reply)]
    assert (reply.token, reply.result) == ("mine", 7)
    codec.late(reply)  # its caller was cancelled before it ran again
    codec.forget(mine)
    codec.take_ready()
    assert codec.kept_answer("tcp.accept", (5, 1000)) == 7, "connection 7 dropped"


def test_a_parked_read_of_a_connection_closed_meanwhile_is_not_told_end_of_stream() -> None:
    """Read `a` is answered "x" from kept bytes (in its caller's hands); the daemon then
    answers read `b` with "z" (parked behind `a`, its bytes kept), and the connection's
    tcp.close with true (what is kept is dropped). When `a`'s caller takes "x", `b` gets the
    close's outcome (an error, as a fresh read of the closed connection would), not the end
    of stream: the peer sent no FIN (docs/rpc.md tcp.recv: b"" is the peer's FIN)."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    a, _ = codec.request("tcp.recv", (1, 100), "a")
    b, _ = codec.request("tcp.recv", (1, 100), "b")
    (reply_a,) = [e for e in codec.receive(response(gone, b"x")) if isinstance(e, Reply)]
    assert (reply_a.token, reply_a.result) == ("a", b"x")
    close, _ = codec.request("tcp.close", (1,), "close")
    data = response(a, b"y") + response(b, b"z") + response(close, True)
    assert [r.token for r in codec.receive(data) if isinstance(r, Reply)] == ["close"]
    codec.forget(close)
    codec.forget(a)  # a's caller takes "x"
    (reply_b,) = codec.take_ready()
    assert reply_b.token == "b"
    assert (reply_b.error, reply_b.result) != (None, b""), "b told end of stream"


class _LimitedDaemon:
    """chimneyd's reads with no timeout_ms and its `rpc.max_in_flight`: a read waits until the
    connection's next bytes (what a `tcp.send` sends, echoed); past 256 requests held, every
    request is answered LIMIT (docs/rpc.md "Limits")."""

    MAX_IN_FLIGHT = 256

    def __init__(self) -> None:
        self.held: deque[int] = deque()  # msgids of the reads waiting, oldest first
        self.sent_reads = 0

    def __call__(self, t: Any, msgid: int, method: str, params: list[Any]) -> None:
        if len(self.held) >= self.MAX_IN_FLIGHT:
            answer(t, msgid, None, LIMIT)
        elif method == "tcp.recv":
            self.sent_reads += 1
            self.held.append(msgid)
        elif method == "tcp.send":
            answer(t, msgid, len(params[1]))
            if self.held:  # the echo goes to the oldest read waiting
                answer(t, self.held.popleft(), bytes(params[1]))
        else:
            answer(t, msgid, None)


async def test_a_polling_loop_of_short_waits_does_not_fill_the_daemons_limit() -> None:
    """A loop of `wait_for(c.tcp_recv(...), t)` with no call_timeout sends no timeout_ms: each
    read it gives up on stays in the daemon. A read of a connection that already has such a
    read there is not sent: it gets that read's answer. So the loop holds one read in the
    daemon, not one per turn, and after 300 turns (more than the daemon's 256) a send and a
    read still work, and the read gets the bytes."""
    daemon = _LimitedDaemon()
    srv = await scripted_server(daemon)
    try:
        c = await AsyncClient.connect(address(srv))
        try:
            for _ in range(300):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.tcp_recv(1, 100), 0.001)
            assert await asyncio.wait_for(c.tcp_send(1, b"hello"), HANG) == 5
            assert await asyncio.wait_for(c.tcp_recv(1, 100), HANG) == b"hello"
            assert daemon.sent_reads == 1
        finally:
            await c.close()
    finally:
        srv.close()


def test_a_read_inside_a_call_whose_answer_is_taken_gets_the_bytes_after_it() -> None:
    """Found by the machine in a CI run: the blocking client marks an answer taken (its caller
    has it) before a handler runs; a read the handler makes then gets the bytes kept after that
    answer, and what the application holds is still the stream in order."""
    machine = KeptReads()
    machine.peer_sends(conn=1, data=b"ab")
    machine.peer_fin(conn=1)
    machine.read(conn=1, forever=False, max_bytes=1, waitall=False)
    machine.read(conn=1, forever=False, max_bytes=1, waitall=False)
    machine.cancel_waiting(index=0)
    machine.blocking_delivery()
    machine.limited_read(conn=1, give_up=False)
    machine.taken_is_a_prefix_of_the_stream()
    machine.indexes_agree_with_what_they_index()
    machine.teardown()


def test_a_rider_parked_with_its_end_does_not_get_a_later_refusal() -> None:
    """Found by the one-reader machine (seed 11): a read rides on an abandoned read with no
    timeout; that read's end of stream comes while another read's answer is in its caller's
    hands, so the rider's end waits behind it (parked); a later read given up on is refused
    LIMIT. That refusal was the later read's alone: the rider still gets its end, not LIMIT."""
    machine = KeptReadsOneReader()
    machine.read(conn=1, forever=True, max_bytes=1, waitall=False)
    machine.cancel_waiting(index=0)
    machine.limited_read(conn=1, give_up=False)
    machine.read(conn=2, forever=False, max_bytes=1, waitall=False)
    machine.cancel_waiting(index=1)
    machine.limited_read(conn=1, give_up=False)
    machine.peer_fin(conn=1)
    machine.limited_read(conn=1, give_up=True)
    machine.read(conn=1, forever=False, max_bytes=1, waitall=False)
    machine.taken_is_a_prefix_of_the_stream()
    machine.indexes_agree_with_what_they_index()
    machine.teardown()


def test_a_refusal_parked_behind_a_read_still_waiting_reaches_its_caller() -> None:
    """Found by the one-reader machine (a seed in the example database): a waitall read waits
    in the daemon; two reads after it are refused LIMIT, and the second refusal is parked
    behind the first's answer, still in its caller's hands. The waitall read then ends in an
    error (TIMEOUT: no bytes in anyone's hands), so nothing holds the parked refusal back any
    more: its caller gets it (it waited for ever, and the caller with it)."""
    machine = KeptReadsOneReader()
    machine.peer_sends(conn=2, data=b"\x00")
    machine.read(conn=2, forever=False, max_bytes=2, waitall=True)
    machine.limited_read(conn=2, give_up=False)
    machine.limited_read(conn=2, give_up=False)
    machine.taken_is_a_prefix_of_the_stream()
    machine.indexes_agree_with_what_they_index()
    machine.teardown()


def test_an_error_ending_the_read_ahead_releases_the_answer_parked_behind_it() -> None:
    """The same at the codec: read 0's bytes are in its caller's hands; read 1 (waitall) waits
    in the daemon; read 2 is refused LIMIT, parked behind read 0's bytes. Read 0's caller
    takes them (read 1, still waiting, is now ahead of the refusal); read 1 times out. Every
    caller gets its own answer, in the order sent, and nothing is left pending."""
    codec: ClientCodec[str] = ClientCodec()
    zero, _ = codec.request("tcp.recv", (2, 1, 1000), "zero")
    got = [e for e in codec.receive(response(zero, b"x")) if isinstance(e, Reply)]
    first, _ = codec.request("tcp.recv", (2, 2, 1000, {"waitall": True}), "first")
    third, _ = codec.request("tcp.recv", (2, 6, None), "third")
    got += [e for e in codec.receive(response(third, None, LIMIT)) if isinstance(e, Reply)]
    assert [r.token for r in got] == ["zero"]  # the refusal waits behind b"x" in hand
    codec.forget(zero)
    got = [e for e in codec.take_ready() if isinstance(e, Reply)]
    assert got == []  # read 1 is ahead of it, waiting in the daemon
    got += [e for e in codec.receive(response(first, None, RECV_TIMEOUT)) if isinstance(e, Reply)]
    assert [(r.token, type(r.error).__name__) for r in got] == [
        ("first", "RpcTimeout"),
        ("third", "LimitError"),
    ]
    assert codec.pending == 0
