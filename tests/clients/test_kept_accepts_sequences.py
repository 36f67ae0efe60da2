"""Kept accepts in any order: accepts with and without timeout_ms, given up on, answered,
cancelled after their answer; riding accepts (`ClientCodec._ride_accept`) among them.

A model daemon answers `tcp.accept` as chimneyd does (the accepts of a listener served in the
order sent, docs/rpc.md tcp.accept; an accept with timeout_ms may time out), and a model shell
drives `ClientCodec` as `AsyncClient.call` does. Every connection the daemon hands out must
reach exactly one caller or stay kept for the next accept: none lost, none twice.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import hypothesis.strategies as st
import msgpack
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chimney_client.protocol import ClientCodec, Reply
from tests.clients.scripted import RECV_TIMEOUT, response

LIMIT = [6, "LIMIT: more than 256 requests in flight"]

LISTENER = 3


class KeptAccepts(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.codec: ClientCodec[int] = ClientCodec()
        self.queue: deque[tuple[int, bool]] = deque()  # the daemon's accepts: (msgid, timed)
        self.backlog: deque[int] = deque()  # connections no accept took yet, in the daemon
        self.next_conn = 100
        self.handed: list[int] = []  # connections the daemon handed to an accept
        self.next_caller = 0
        self.waiting: dict[int, int] = {}  # caller -> msgid
        self.answered: deque[Reply[int]] = deque()  # woken, not yet run again
        self.taken: list[int] = []
        self.riders: set[int] = set()  # msgids of accepts not sent (riding)
        self.closed: list[int] = []  # connections the client closed (tcp.close answered true)
        self.log: list[str] = []

    def _deliver(self, events: list[Any]) -> None:
        while events:
            for event in events:
                if not isinstance(event, Reply):
                    continue
                if event.token in self.waiting:
                    assert self.waiting.pop(event.token) == event.msgid
                    self.answered.append(event)
                else:
                    self.codec.late(event)
            events = list(self.codec.take_ready())

    def _serve(self) -> None:
        frames = []
        while self.queue and self.backlog:
            msgid, _ = self.queue.popleft()
            conn = self.backlog.popleft()
            self.handed.append(conn)
            frames.append(response(msgid, conn))
        for frame in frames:
            self._deliver(list(self.codec.receive(frame)))

    @rule(timed=st.booleans())
    def accept(self, timed: bool) -> None:
        params: list[Any] = [LISTENER, 1000] if timed else [LISTENER]
        self.log.append(f"accept timed={timed}")
        kept = self.codec.kept_answer("tcp.accept", params)
        if kept is not None:
            self.log.append(f"  kept {kept}")
            assert kept not in self.closed, (kept, self.log)
            self.taken.append(kept)
            return
        caller = self.next_caller
        self.next_caller += 1
        msgid, data = self.codec.request("tcp.accept", params, caller)
        self.waiting[caller] = msgid
        if data:
            sent = msgpack.unpackb(data, raw=False)[3]
            self.queue.append((msgid, len(sent) > 1 and sent[1] is not None))
            self._serve()
        else:
            self.riders.add(msgid)
            self.log.append(f"  riding msgid={msgid}")

    @rule()
    def peer_connects(self) -> None:
        self.backlog.append(self.next_conn)
        self.log.append(f"peer connects: {self.next_conn}")
        self.next_conn += 1
        self._serve()

    @rule(index=st.integers(0, 5))
    def daemon_timeout(self, index: int) -> None:
        timed = [req for req in self.queue if req[1]]
        if not timed:
            return
        req = timed[index % len(timed)]
        self.queue.remove(req)
        self.log.append(f"daemon TIMEOUT msgid={req[0]}")
        self._deliver(list(self.codec.receive(response(req[0], None, RECV_TIMEOUT))))

    @precondition(lambda self: bool(self.waiting))
    @rule(index=st.integers(0, 10))
    def give_up(self, index: int) -> None:
        caller = sorted(self.waiting)[index % len(self.waiting)]
        msgid = self.waiting.pop(caller)
        self.log.append(f"give up msgid={msgid}")
        self.codec.forget(msgid)
        self._deliver(list(self.codec.take_ready()))

    @precondition(lambda self: bool(self.answered))
    @rule(cancel=st.booleans())
    def run_next_answered(self, cancel: bool) -> None:
        reply = self.answered.popleft()
        self.log.append(f"{'cancel' if cancel else 'take'} {reply.msgid}: {reply.result}")
        if cancel:
            if reply.error is None:
                self.codec.late(reply)
        elif reply.error is None:
            assert reply.result not in self.closed, (reply.result, self.log)
            self.taken.append(reply.result)
        else:
            # only an accept sent with a timeout_ms gets a TIMEOUT (a rider never does), and
            # a rider never gets the refusal (LIMIT) of another abandoned accept while the
            # one it rides on still waits in the daemon
            assert reply.msgid not in self.riders, (reply, self.log)
        self.codec.forget(reply.msgid)
        self._deliver(list(self.codec.take_ready()))

    @rule(timed=st.booleans(), give_up=st.booleans())
    def refused_accept(self, timed: bool, give_up: bool) -> None:
        """An accept the daemon refuses at once (LIMIT: the client's connections, or requests
        in flight), maybe given up on before the refusal is read."""
        params: list[Any] = [LISTENER, 1000] if timed else [LISTENER]
        self.log.append(f"refused accept timed={timed} give_up={give_up}")
        if (kept := self.codec.kept_answer("tcp.accept", params)) is not None:
            self.taken.append(kept)  # a kept connection answers it: the daemon is not asked
            return
        caller = self.next_caller
        self.next_caller += 1
        msgid, data = self.codec.request("tcp.accept", params, caller)
        self.waiting[caller] = msgid
        if not data:
            self.riders.add(msgid)
            self.log.append(f"  riding msgid={msgid}")
            return  # rides on an accept waiting in the daemon: no refusal comes for it
        if give_up:
            self.give_up_msgid(msgid)
        self._deliver(list(self.codec.receive(response(msgid, None, LIMIT))))

    def give_up_msgid(self, msgid: int) -> None:
        for caller, waited in list(self.waiting.items()):
            if waited == msgid:
                del self.waiting[caller]
                self.codec.forget(msgid)
                self._deliver(list(self.codec.take_ready()))

    @rule(index=st.integers(0, 10))
    def close_connection(self, index: int) -> None:
        """tcp.close of a connection the daemon handed to an accept (one kept by the client
        too: `tcp.list` names it): it is no longer handed out."""
        kept = list(self.codec._accepted.get(LISTENER, ()))
        # taken or kept (a caller woken with one has not run yet: nobody knows it yet)
        open_ = [c for c in self.taken + kept if c not in self.closed]
        if not open_:
            return
        conn = open_[index % len(open_)]
        self.log.append(f"close {conn}")
        msgid, _ = self.codec.request("tcp.close", [conn], -1)
        self._deliver(list(self.codec.receive(response(msgid, True))))
        self.codec.forget(msgid)
        self.closed.append(conn)

    @rule()
    def listener_info(self) -> None:
        """`pending`: the connections the next accepts get without waiting, the daemon's
        backlog and those the client keeps."""
        msgid, _ = self.codec.request("tcp.listener_info", [LISTENER], -2)
        info = {"host": "127.0.0.1", "port": 1, "pending": len(self.backlog)}
        (reply,) = [e for e in self.codec.receive(response(msgid, info)) if isinstance(e, Reply)]
        self.codec.forget(msgid)
        available = len(self.backlog) + len(self.codec._accepted.get(LISTENER, ()))
        assert reply.result["pending"] == available, (reply.result, available, self.log)
        kept = [c for c in self.codec._accepted.get(LISTENER, ()) if c in self.closed]
        assert not kept, (kept, self.log)

    @invariant()
    def what_the_codec_awaits_is_in_the_daemon(self) -> None:
        """Abandoned accepts the codec waits for are those waiting in the daemon (an accept
        never sent gets no answer: none is awaited for it, for the client's life)."""
        queued = {msgid for msgid, _ in self.queue}
        assert set(self.codec._orphan_accepts) <= queued, (self.codec._orphan_accepts, self.log)
        assert self.codec._untimed_accepts <= queued, (self.codec._untimed_accepts, self.log)

    @invariant()
    def indexes_agree_with_what_they_index(self) -> None:
        """The codec's by-listener indexes say what `_accepts` and `_orphan_accepts` say, each
        listener's accepts in the order sent."""
        codec = self.codec
        for index, indexed in (
            (codec._accepts_by_listener, codec._accepts),
            (codec._orphan_accepts_by_listener, codec._orphan_accepts),
        ):
            by: dict[int, dict[int, None]] = {}
            for msgid, listener in indexed.items():
                by.setdefault(listener, {})[msgid] = None
            assert index == by, (index, indexed, self.log)
            for listener, msgids in index.items():
                assert list(msgids) == [m for m in indexed if m in msgids], (listener, self.log)

    @invariant()
    def no_connection_twice(self) -> None:
        assert len(self.taken) == len(set(self.taken)), (self.taken, self.log)

    @invariant()
    def every_connection_handed_out_is_taken_in_hand_or_kept(self) -> None:
        kept = list(self.codec._accepted.get(LISTENER, ()))
        in_hand = [r.result for r in self.answered if r.error is None]
        closed = [c for c in self.closed if c not in self.taken + kept + in_hand]
        assert sorted(self.taken + kept + in_hand + closed) == sorted(self.handed), (
            self.taken,
            kept,
            in_hand,
            self.handed,
            self.log,
        )

    def teardown(self) -> None:
        while self.answered:
            self.run_next_answered(False)
        while self.waiting:  # nothing more connects: the callers give up
            self.give_up(0)
        while kept := self.codec.kept_answer("tcp.accept", [LISTENER]):
            self.taken.append(kept)
        closed = [c for c in self.closed if c not in self.taken]
        assert sorted(self.taken + closed) == sorted(self.handed), (
            self.taken,
            self.handed,
            self.log,
        )


KeptAccepts.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
TestKeptAcceptsStateMachine = KeptAccepts.TestCase
